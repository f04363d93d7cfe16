"""The admin server over HTTPS in a running radflow: the certificate is served, re-read on
SIGHUP (new connections get the new one, a broken file keeps the old), the console's session
cookie is ``__Host-`` prefixed and Secure, and the server beyond loopback refuses to start with
no user and no token."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.certs import have_openssl, make_cert
from tests.helpers.proc import HOST, RadflowFactory, RadflowProcess

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(not have_openssl(), reason="openssl not installed")]
PASSWORD = "https-password-1"


def https(rf: RadflowProcess, cafile: Path, method: str = "GET", path: str = "/healthz",
          body: bytes | None = None) -> http.client.HTTPResponse:
    context = ssl.create_default_context(cafile=str(cafile))
    conn = http.client.HTTPSConnection(HOST, rf.http_port, context=context, timeout=30)
    conn.request(method, path, body=body,
                 headers={"Content-Type": "application/json"} if body else {})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def test_https_certificate_reloaded_on_sighup_and_secure_cookie(radflow: RadflowFactory,
                                                                tmp_path: Path) -> None:
    first = make_cert(tmp_path, "first")
    second = make_cert(tmp_path, "second")
    live_cert, live_key = tmp_path / "admin.pem", tmp_path / "admin.key"
    shutil.copy(first[0], live_cert)
    shutil.copy(first[1], live_key)
    rf = radflow({"http": {"tls_cert": str(live_cert), "tls_key": str(live_key)}},
                 wait_ready=False)
    subprocess.run([sys.executable, "-m", "engine", "users", "add", "alice", "--role", "admin",
                    "--password-stdin", "--config", str(rf.config_path)],
                   input=PASSWORD + "\n", text=True, check=True, capture_output=True)
    assert https(rf, first[0]).status == 200
    login = https(rf, first[0], "POST", "/api/v1/session",
                  json.dumps({"user": "alice", "password": PASSWORD}).encode())
    assert login.status == 200
    cookie = login.getheader("Set-Cookie") or ""
    assert cookie.startswith("__Host-radflow_session=")
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "max-age" in (login.getheader("Strict-Transport-Security") or "")

    shutil.copy(second[0], live_cert)
    shutil.copy(second[1], live_key)
    assert rf.proc is not None
    rf.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while not rf.events("admin.tls_reloaded"):
        assert time.monotonic() < deadline, "no admin.tls_reloaded"
        time.sleep(0.1)
    assert https(rf, second[0]).status == 200
    with pytest.raises(ssl.SSLCertVerificationError):
        https(rf, first[0])

    live_key.write_text("not a key\n")
    rf.proc.send_signal(signal.SIGHUP)
    while not rf.events("admin.tls_reload_failed"):
        assert time.monotonic() < deadline + 30, "no admin.tls_reload_failed"
        time.sleep(0.1)
    assert https(rf, second[0]).status == 200  # the certificate in use is kept


def test_beyond_loopback_without_user_or_token_refuses_to_start(radflow: RadflowFactory,
                                                                tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "admin")
    rf = radflow({"http": {"host": "0.0.0.0", "tls_cert": str(cert), "tls_key": str(key)}},
                 start=False)
    with pytest.raises(Exception, match="radflow users add"):
        rf.start(wait_ready=False, timeout=60)
