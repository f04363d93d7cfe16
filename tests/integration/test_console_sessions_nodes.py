"""Console sessions shared by radflow nodes: two radflow processes on one PostgreSQL (as two
nodes behind a balancer run), a login made on one is answered as logged in by the other, with
the same CSRF token; a logout, a new password (from the command line) and a lock-out on either
node end the session on both."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.helpers import pg
from tests.helpers.proc import HOST, RadflowFactory, RadflowProcess

pytestmark = pytest.mark.timeout(300)
PASSWORD = "operator-pass-1"
NEW_PASSWORD = "operator-pass-2"


def users(rf: RadflowProcess, *args: str, stdin: str | None = None) -> None:
    subprocess.run([sys.executable, "-m", "engine", "users", *args, "--config",
                    str(rf.config_path)], input=stdin, capture_output=True, text=True,
                   timeout=60, check=True)


def call(rf: RadflowProcess, method: str, path: str, body: Any = None, cookie: str = "",
         csrf: str = "") -> tuple[int, dict[str, Any], str]:
    """Status, JSON answer and the session cookie set (if any) of one call to ``rf``."""
    headers = {"Content-Type": "application/json"}
    if cookie:
        headers["Cookie"] = f"radflow_session={cookie}"
    if csrf:
        headers["X-CSRF-Token"] = csrf
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{HOST}:{rf.http_port}{path}", data=data,
                                 method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, raw, set_cookie = resp.status, resp.read(), resp.headers.get("Set-Cookie")
    except urllib.error.HTTPError as exc:
        status, raw, set_cookie = exc.code, exc.read(), None
    value = ""
    if set_cookie and set_cookie.startswith("radflow_session="):
        value = set_cookie.split(";")[0].split("=", 1)[1]
    return status, json.loads(raw or b"{}"), value


def login(rf: RadflowProcess, password: str = PASSWORD) -> tuple[str, str]:
    status, body, cookie = call(rf, "POST", "/api/v1/session",
                                {"user": "olga", "password": password})
    assert status == 200 and cookie, body
    return cookie, str(body["csrf"])


def who(rf: RadflowProcess, cookie: str) -> int:
    return call(rf, "GET", "/api/v1/session", cookie=cookie)[0]


def test_a_login_on_one_node_holds_on_the_other_and_ends_on_both(
        radflow: RadflowFactory) -> None:
    if (why := pg.unavailable()) is not None:
        pytest.skip(why)
    with pg.schema() as schema:
        nodes = [radflow({"storage": pg.radflow_storage(schema),
                          "engine": {"node_id": f"node-{n}"},
                          "http": {"max_failed_logins": 3}}) for n in "ab"]
        a, b = nodes
        users(a, "add", "olga", "--role", "operator", "--password-stdin",
              stdin=PASSWORD + "\n")

        # Logged in on a; b answers as logged in, and takes a change with a's CSRF token.
        cookie, csrf = login(a)
        status, body, _ = call(b, "GET", "/api/v1/session", cookie=cookie)
        assert status == 200 and body["user"] == "olga" and body["csrf"] == csrf
        status, body, _ = call(b, "POST", "/api/v1/tokens", {"label": "from b"}, cookie, csrf)
        assert status == 201, body
        assert call(b, "POST", "/api/v1/tokens", {"label": "x"}, cookie, "forged")[0] == 403

        # Logging out on b ends the session on a.
        assert call(b, "DELETE", "/api/v1/session", cookie=cookie, csrf=csrf)[0] == 200
        assert who(a, cookie) == 401

        # A new password set with the command line ends the session on both nodes.
        cookie, _ = login(a)
        assert who(b, cookie) == 200
        users(b, "passwd", "olga", "--password-stdin", stdin=NEW_PASSWORD + "\n")
        assert who(a, cookie) == 401 and who(b, cookie) == 401

        # Wrong passwords on a lock the account: the session opened on b ends.
        cookie, _ = login(b, NEW_PASSWORD)
        assert who(a, cookie) == 200
        for _ in range(3):
            assert call(a, "POST", "/api/v1/session",
                        {"user": "olga", "password": "not it"})[0] == 401
        assert who(b, cookie) == 401
        assert call(b, "POST", "/api/v1/session",
                    {"user": "olga", "password": NEW_PASSWORD})[0] == 423
