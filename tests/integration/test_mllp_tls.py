"""HL7 over MLLP with TLS against a running radflow: the ``hl7`` package's asyncio MLLP client
over an SSL connection gets its ACK, a client that does not speak TLS gets nothing and the
listener keeps serving, and a listener that asks for client certificates refuses a client
without one. Certificates are made with the openssl command-line tool for each test."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any

import hl7
import hl7.mllp
import pytest

from tests.helpers.certs import have_openssl, make_cert
from tests.helpers.proc import HOST, RadflowProcess, free_port
from tests.integration.test_hl7_ingress import msa, order, worklist

pytestmark = pytest.mark.skipif(not have_openssl(), reason="needs openssl")


def tls_radflow(radflow: Any, cert: Path, key: Path, client_ca: Path | None = None
                ) -> RadflowProcess:
    tls: dict[str, str] = {"cert_file": str(cert), "key_file": str(key)}
    if client_ca is not None:
        tls["client_ca_file"] = str(client_ca)
    rf: RadflowProcess = radflow({"hl7": {"listeners": [
        {"host": HOST, "port": free_port(), "tls": tls}]}})
    return rf


def port_of(rf: RadflowProcess) -> int:
    return int(rf.config["hl7"]["listeners"][0]["port"])


async def send_tls(port: int, message: str, ctx: ssl.SSLContext) -> hl7.Message:
    reader, writer = await hl7.mllp.open_hl7_connection(HOST, port, ssl=ctx,
                                                        encoding="latin-1")
    try:
        writer.writemessage(hl7.parse(message))
        await writer.drain()
        return await asyncio.wait_for(reader.readmessage(), 10)
    finally:
        writer.close()


def client_context(server_cert: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(server_cert))
    ctx.check_hostname = False  # the certificate names an IP address, not a host name
    return ctx


def test_an_order_over_tls_is_acknowledged(radflow: Any, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "radflow")
    rf = tls_radflow(radflow, cert, key)
    ack = asyncio.run(send_tls(port_of(rf), order("TLS0001"), client_context(cert)))
    assert msa(ack) == ("AA", "TLS0001")
    assert len(worklist(rf)) == 1


def test_a_plain_client_gets_nothing_and_the_listener_keeps_serving(radflow: Any,
                                                                     tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "radflow")
    rf = tls_radflow(radflow, cert, key)
    with socket.create_connection((HOST, port_of(rf)), timeout=10) as sock:
        sock.sendall(b"\x0b" + order("PLAIN1").encode("latin-1") + b"\x1c\x0d")
        try:
            answer = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    assert b"MSA" not in answer
    failed = rf.wait_for_event("ingress.hl7.tls_failed", timeout=15)
    assert failed["peer_host"] == HOST and failed["reason"] == "not_tls"
    ack = asyncio.run(send_tls(port_of(rf), order("TLS0002"), client_context(cert)))
    assert msa(ack) == ("AA", "TLS0002")
    assert [i["accession_number"] for i in worklist(rf)] == ["ACC1"]


def test_client_certificates_are_required_when_configured(radflow: Any, tmp_path: Path) -> None:
    ca = make_cert(tmp_path, "site-ca")
    cert, key = make_cert(tmp_path, "radflow")
    client_cert, client_key = make_cert(tmp_path, "ris", ca=ca)
    rf = tls_radflow(radflow, cert, key, client_ca=ca[0])
    anonymous = client_context(cert)
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, OSError)):
        asyncio.run(send_tls(port_of(rf), order("ANON1"), anonymous))
    failed = rf.wait_for_event("ingress.hl7.tls_failed", timeout=15)
    assert failed["peer_host"] == HOST and failed["reason"] == "no_client_certificate"
    known = client_context(cert)
    known.load_cert_chain(str(client_cert), str(client_key))
    ack = asyncio.run(send_tls(port_of(rf), order("RIS0001"), known))
    assert msa(ack) == ("AA", "RIS0001")
