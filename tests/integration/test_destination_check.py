"""Checking a destination from radflow: ``radflow destinations list|check`` and
``POST /api/v1/destinations/{name}/check``, against real peers.

C-ECHO to DCMTK ``storescp`` (plain and over TLS) and to radflow's own MPPS SCP; an MLLP
connection to the ``hl7`` package's receiver and to a TLS server; a QIDO-RS search on Orthanc's
DICOMweb plugin (with and without the right credentials); ``/metadata`` of an aiohttp FHIR
endpoint. What an operator reads: ok or not, the latency, and the exact error.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.egress.check import CheckResult, DestinationChecker
from engine.egress.dispatcher import DestinationConfig, default_sender_factory
from engine.settings import (
    ClientTlsSettings,
    DicomwebDestination,
    DimseDestination,
    FhirDestination,
    Hl7Destination,
    HttpAuth,
    MppsDestination,
)
from tests.conftest import RadflowFactory
from tests.helpers.certs import have_openssl, make_cert
from tests.helpers.peers import (
    FhirServer,
    MllpReceiver,
    Orthanc,
    Storescp,
    have_orthanc,
    have_storescp,
)
from tests.helpers.proc import HOST, REPO_ROOT, RadflowProcess, free_port

needs_storescp = pytest.mark.skipif(not have_storescp(), reason="DCMTK storescp not installed")
needs_orthanc = pytest.mark.skipif(not have_orthanc(), reason="Orthanc + DICOMweb not installed")
needs_openssl = pytest.mark.skipif(not have_openssl(), reason="needs openssl")


async def check(name: str, config: DestinationConfig, tmp_path: Path) -> CheckResult:
    checker = DestinationChecker({name: config}, default_sender_factory(tmp_path))
    return await checker.check(name)


def dimse(port: int, **extra: Any) -> DimseDestination:
    return DimseDestination(type="dimse", ae_title="PACS", host=HOST, port=port, timeout=10,
                            **extra)


# --- dimse and mpps: C-ECHO ---------------------------------------------------------------------
@needs_storescp
async def test_a_dimse_destination_answers_c_echo(tmp_path: Path) -> None:
    scp = Storescp(tmp_path / "scp", ae_title="PACS").start()
    try:
        result = await check("pacs", dimse(scp.port), tmp_path)
    finally:
        scp.stop()
    assert result.ok, result
    assert result.detail == f"C-ECHO 0x0000 from PACS@{HOST}:{scp.port}"
    assert result.target == f"PACS@{HOST}:{scp.port}"
    assert result.seconds > 0


async def test_an_unreachable_dimse_destination_says_why(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    result = await check("pacs", dimse(port), tmp_path)
    assert not result.ok
    assert result.reason == "unreachable"
    assert result.detail == f"cannot connect to {HOST}:{port}: Connection refused"


@needs_storescp
@needs_openssl
async def test_a_certificate_the_site_ca_did_not_sign_is_named(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = make_cert(pki, "site-ca")
    client = make_cert(pki, "radflow", ca=ca)
    stranger = make_cert(pki, "stranger")
    scp = Storescp(tmp_path / "scp", ae_title="PACS",
                   extra=("+tls", str(stranger[1]), str(stranger[0]), "+cf", str(ca[0]))).start()
    try:
        result = await check("pacs", dimse(scp.port, tls=ClientTlsSettings(
            ca_file=ca[0], cert_file=client[0], key_file=client[1])), tmp_path)
    finally:
        scp.stop()
    assert not result.ok
    assert result.reason == "tls_failed"
    assert "CERTIFICATE_VERIFY_FAILED" in result.detail
    assert result.detail.startswith(f"TLS handshake with PACS@{HOST}:{scp.port} failed")


async def test_an_mpps_destination_answers_c_echo(radflow: RadflowFactory,
                                                  tmp_path: Path) -> None:
    rf: RadflowProcess = radflow()  # radflow's own MPPS SCP is a real peer
    result = await check("ris-mpps", MppsDestination(
        type="mpps", ae_title=rf.ae_title, host=HOST, port=rf.port, timeout=10), tmp_path)
    assert result.ok, result
    assert result.detail == f"C-ECHO 0x0000 from {rf.ae_title}@{HOST}:{rf.port}"


# --- hl7: the connection, plain and TLS --------------------------------------------------------
async def test_an_hl7_destination_accepts_the_connection(tmp_path: Path) -> None:
    receiver = await MllpReceiver().start()
    try:
        result = await check("ris", Hl7Destination(type="hl7", host=HOST, port=receiver.port),
                             tmp_path)
    finally:
        await receiver.stop()
    assert result.ok, result
    assert result.detail == f"MLLP connection to {HOST}:{receiver.port} (plain TCP)"
    assert receiver.received == []  # nothing was sent


async def _tls_server(cert: tuple[Path, Path]) -> tuple[asyncio.AbstractServer, int]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    port = free_port()
    return await asyncio.start_server(on_client, HOST, port, ssl=ctx), port


@needs_openssl
async def test_an_hl7_destination_over_tls_checks_the_certificate(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = make_cert(pki, "site-ca")
    server_cert = make_cert(pki, "ris", ca=ca)
    stranger = make_cert(pki, "stranger")
    good, good_port = await _tls_server(server_cert)
    bad, bad_port = await _tls_server(stranger)
    tls = ClientTlsSettings(ca_file=ca[0])
    try:
        ok = await check("ris", Hl7Destination(type="hl7", host=HOST, port=good_port, tls=tls),
                         tmp_path)
        refused = await check("ris", Hl7Destination(type="hl7", host=HOST, port=bad_port,
                                                    tls=tls), tmp_path)
    finally:
        for server in (good, bad):
            server.close()
    assert ok.ok, ok
    assert ok.detail.startswith(f"MLLP connection to {HOST}:{good_port} (TLS TLSv1.")
    assert not refused.ok
    assert refused.reason == "tls_failed"
    assert "CERTIFICATE_VERIFY_FAILED" in refused.detail


# --- dicomweb and fhir: an authenticated GET -----------------------------------------------------
@needs_orthanc
async def test_a_dicomweb_destination_answers_a_qido_search(tmp_path: Path) -> None:
    orthanc = Orthanc(tmp_path / "orthanc", extra={
        "AuthenticationEnabled": True, "RegisteredUsers": {"radflow": "s3cret"}}).start()
    try:
        def stow(password: str) -> DicomwebDestination:
            return DicomwebDestination(type="dicomweb", url=orthanc.stow_url, timeout=10,
                                       auth=HttpAuth(type="basic", username="radflow",
                                                     password=password))  # type: ignore[arg-type]
        ok = await check("ai-node", stow("s3cret"), tmp_path)
        wrong = await check("ai-node", stow("wrong"), tmp_path)
    finally:
        orthanc.stop()
    assert ok.ok, ok
    assert ok.detail == f"QIDO-RS GET {orthanc.stow_url}?limit=1: HTTP 2xx, 0 studies"
    assert not wrong.ok
    assert wrong.reason == "http_401"
    assert "answered HTTP 401 (check the destination's auth)" in wrong.detail


async def test_a_fhir_destination_serves_its_capability_statement(tmp_path: Path) -> None:
    server = await FhirServer(token="t0ken").start()
    try:
        def ehr(token: str) -> FhirDestination:
            return FhirDestination(type="fhir", base_url=server.base_url, timeout=10,
                                   auth=HttpAuth(type="bearer", token=token))  # type: ignore[arg-type]
        ok = await check("ehr", ehr("t0ken"), tmp_path)
        wrong = await check("ehr", ehr("stale"), tmp_path)
    finally:
        await server.stop()
    assert ok.ok, ok
    assert ok.detail == (f"FHIR GET {server.base_url}/metadata: CapabilityStatement, FHIR "
                         "version 4.0.1")
    assert not wrong.ok
    assert wrong.reason == "http_401"
    assert server.requests == [("GET", "/fhir/metadata")] * 2  # nothing written


# --- the command line and the API -----------------------------------------------------------------
@needs_storescp
def test_the_cli_lists_and_checks_destinations(tmp_path: Path) -> None:
    scp = Storescp(tmp_path / "scp", ae_title="PACS").start()
    down = free_port()
    config = tmp_path / "radflow.yaml"
    config.write_text(yaml.safe_dump({
        "storage": {"sqlite_path": str(tmp_path / "db"), "spool_dir": str(tmp_path / "spool")},
        "routing": {"routes_dir": str(tmp_path)},
        "destinations": {
            "pacs": {"type": "dimse", "ae_title": "PACS", "host": HOST, "port": scp.port},
            "archive": {"type": "dimse", "ae_title": "ARCHIVE", "host": HOST, "port": down}}}))

    def radflow_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "engine", "destinations", *args,
                               "--config", str(config)], capture_output=True, text=True,
                              timeout=120, cwd=REPO_ROOT)
    try:
        listed = radflow_cli("list")
        one = radflow_cli("check", "pacs")
        every = radflow_cli("check", "--all", "--json")
        unknown = radflow_cli("check", "nope")
    finally:
        scp.stop()
    assert listed.returncode == 0
    assert f"pacs             dimse     no   PACS@{HOST}:{scp.port}" in listed.stdout
    assert one.returncode == 0, one.stderr
    assert one.stdout.startswith("pacs: ok in ")
    assert f"C-ECHO 0x0000 from PACS@{HOST}:{scp.port}" in one.stdout
    assert every.returncode == 1  # one of them is down
    results = {r["destination"]: r for r in json.loads(every.stdout)}
    assert results["pacs"]["ok"] is True
    assert results["archive"]["ok"] is False
    assert results["archive"]["detail"] == f"cannot connect to {HOST}:{down}: Connection refused"
    assert unknown.returncode == 2
    assert "no destination 'nope'" in unknown.stderr


def _api(rf: RadflowProcess, method: str, path: str) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://{HOST}:{rf.http_port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=90) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@needs_storescp
def test_the_api_lists_and_checks_destinations(radflow: RadflowFactory, tmp_path: Path) -> None:
    scp = Storescp(tmp_path / "scp", ae_title="PACS").start()
    try:
        rf = radflow({"destinations": {"pacs": {"type": "dimse", "ae_title": "PACS",
                                                "host": HOST, "port": scp.port}}})
        status, listing = _api(rf, "GET", "/api/v1/destinations")
        assert status == 200
        assert listing == {"destinations": [{"name": "pacs", "type": "dimse",
                                             "target": f"PACS@{HOST}:{scp.port}",
                                             "tls": False}]}
        status, result = _api(rf, "POST", "/api/v1/destinations/pacs/check")
        assert status == 200
        assert result["ok"] is True and result["reason"] is None
        assert result["detail"] == f"C-ECHO 0x0000 from PACS@{HOST}:{scp.port}"
        assert _api(rf, "POST", "/api/v1/destinations/nope/check")[0] == 404
    finally:
        scp.stop()
