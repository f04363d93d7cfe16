"""TLS clients radflow must turn away, on its DICOM TLS port and its MLLP TLS port: one that
offers only TLS 1.0 or 1.1, one whose certificate has expired, and one whose certificate comes
from a CA the site does not trust.

What a site checks for each: the handshake fails (the client says so), radflow logs one line
naming the listener, the client's address and the reason in plain words, no association is
accepted and no HL7 message is taken; and a proper client still gets in afterwards.

Real clients: ``openssl s_client -tls1``/``-tls1_1`` (with ``DEFAULT@SECLEVEL=0``, or the
client's own OpenSSL would not even offer those versions), DCMTK's ``echoscu +tls``, and the
``hl7`` package's MLLP client over Python's ``ssl``. Certificates are made in the test with
``cryptography`` (:mod:`tests.helpers.pki`).
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import hl7
import hl7.mllp
import pytest

from tests.helpers.pki import Authority, Issued
from tests.helpers.proc import HOST, RadflowProcess, echoscu, free_port
from tests.integration.test_hl7_ingress import msa, order

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")]


class Site:
    """The site CA with radflow's and a modality's certificates, an expired one from the
    same CA, and one from a CA nobody configured."""

    def __init__(self, folder: Path) -> None:
        self.ca = Authority(folder / "site", "site-ca")
        self.radflow = self.ca.issue("radflow")
        self.modality = self.ca.issue("modality")
        self.expired = self.ca.issue("expired", expired=True)
        self.untrusted = Authority(folder / "other", "other-ca").issue("stranger")


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path / "pki")


def tls_radflow(radflow: Any, site: Site) -> RadflowProcess:
    tls = {"cert_file": str(site.radflow.cert), "key_file": str(site.radflow.key),
           "client_ca_file": str(site.ca.cert)}
    rf: RadflowProcess = radflow({
        "dicom": {"listeners": [{"tls": tls, "acse_timeout": 10}]},
        "hl7": {"listeners": [{"host": HOST, "port": free_port(), "tls": tls}]},
    })
    return rf


def mllp_port(rf: RadflowProcess) -> int:
    return int(rf.config["hl7"]["listeners"][0]["port"])


def s_client(port: int, version: str, site: Site) -> subprocess.CompletedProcess[str]:
    """``openssl s_client`` offering only ``version`` (``tls1``, ``tls1_1``), with the
    modality's valid certificate: only the protocol version is wrong."""
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"{HOST}:{port}", f"-{version}",
         "-cipher", "DEFAULT@SECLEVEL=0", "-CAfile", str(site.ca.cert),
         "-cert", str(site.modality.cert), "-key", str(site.modality.key)],
        input="", capture_output=True, text=True, timeout=30, check=False)


def handshake_refused(result: subprocess.CompletedProcess[str], version: str) -> bool:
    """s_client offered ``version`` and the server ended the handshake: no cipher agreed."""
    output = result.stdout + result.stderr
    offered = {"tls1": "TLSv1\n", "tls1_1": "TLSv1.1\n"}[version]
    return result.returncode != 0 and "Cipher is (NONE)" in output and \
        f"Protocol  : {offered}" in output


async def _send(port: int, message: str, ctx: ssl.SSLContext) -> hl7.Message:
    reader, writer = await hl7.mllp.open_hl7_connection(HOST, port, ssl=ctx,
                                                        encoding="latin-1")
    try:
        writer.writemessage(hl7.parse(message))
        await writer.drain()
        return await asyncio.wait_for(reader.readmessage(), 10)
    finally:
        writer.close()


def mllp_send(port: int, message: str, site: Site, client: Issued) -> hl7.Message:
    ctx = ssl.create_default_context(cafile=str(site.ca.cert))
    ctx.check_hostname = False  # radflow's certificate names 127.0.0.1, not a host name
    ctx.load_cert_chain(str(client.cert), str(client.key))
    return asyncio.run(_send(port, message, ctx))


def dicom_tls_args(site: Site, client: Issued) -> tuple[str, ...]:
    return ("+tls", str(client.key), str(client.cert), "+cf", str(site.ca.cert))


def failures(rf: RadflowProcess, event: str, count: int) -> list[dict[str, Any]]:
    """The ``event`` lines once there are ``count`` of them (radflow logs each refusal as
    its connection's handshake ends, which may be just after the client gave up)."""
    deadline = time.monotonic() + 15
    found = rf.events(event)
    while len(found) < count and time.monotonic() < deadline:
        time.sleep(0.1)
        found = rf.events(event)
    return found


@pytest.mark.dcmtk
def test_the_dicom_tls_port_turns_away_old_protocols_and_bad_certificates(
        radflow: Any, site: Site) -> None:
    rf = tls_radflow(radflow, site)
    for version in ("tls1", "tls1_1"):
        result = s_client(rf.port, version, site)
        assert handshake_refused(result, version), result.stdout + result.stderr
    expired = echoscu(rf, *dicom_tls_args(site, site.expired))
    assert expired.returncode != 0, expired.stdout
    untrusted = echoscu(rf, *dicom_tls_args(site, site.untrusted))
    assert untrusted.returncode != 0, untrusted.stdout

    events = failures(rf, "ingress.dimse.tls_failed", 4)
    assert [e["reason"] for e in events] == ["protocol_version", "protocol_version",
                                             "certificate_expired", "certificate_untrusted"]
    assert all(e["peer_host"] == HOST and e["listener"] == "main" for e in events)
    assert rf.metric("radflow_dimse_rejections_total", listener="main",
                     reason="tls_failed") == 4
    assert rf.events("ingress.dimse.association.accepted") == []
    assert rf.journal_rows() == []
    # A modality with a good certificate still gets in.
    good = echoscu(rf, *dicom_tls_args(site, site.modality))
    assert good.returncode == 0, good.stdout
    assert len(rf.events("ingress.dimse.association.accepted")) == 1


def test_the_mllp_tls_port_turns_away_old_protocols_and_bad_certificates(
        radflow: Any, site: Site) -> None:
    rf = tls_radflow(radflow, site)
    port = mllp_port(rf)
    for version in ("tls1", "tls1_1"):
        result = s_client(port, version, site)
        assert handshake_refused(result, version), result.stdout + result.stderr
    for n, client in enumerate((site.expired, site.untrusted)):
        # With TLS 1.3 the client may finish its side before radflow refuses its
        # certificate: the order is written, and must not be taken.
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError,
                            OSError)):
            mllp_send(port, order(f"BADCERT{n}"), site, client)

    events = failures(rf, "ingress.hl7.tls_failed", 4)
    assert [e["reason"] for e in events] == ["protocol_version", "protocol_version",
                                             "certificate_expired", "certificate_untrusted"]
    assert all(e["peer_host"] == HOST for e in events)
    assert rf.hl7_rows() == []
    # A RIS with a good certificate still gets in.
    ack = mllp_send(port, order("GOOD1"), site, site.modality)
    assert msa(ack) == ("AA", "GOOD1")
    assert [r["ack_code"] for r in rf.hl7_rows()] == ["AA"]
