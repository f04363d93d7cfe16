"""Delivery over TLS to real peers: C-STORE to DCMTK ``storescp +tls`` (mutual TLS, as DICOM's
TLS secure transport profile uses it), MPPS to a pynetdicom MPPS SCP over TLS (DCMTK has no MPPS
SCP), and STOW-RS over HTTPS to Orthanc behind a TLS-terminating proxy (Debian's Orthanc crashes
when it serves HTTPS itself). Certificates come from a test CA made with openssl.

What a site checks: with the site's CA configured, everything arrives; against a peer whose
certificate the CA did not sign, nothing is sent, no row is lost or dead-lettered (fixing the
configuration lets the queue drain), and the row's last error says it was the certificate.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engine.durable.sqlite import SqliteStore
from engine.settings import (
    ClientTlsSettings,
    DicomwebDestination,
    DimseDestination,
    MppsDestination,
    TlsSettings,
)
from tests.helpers.certs import have_openssl, make_cert
from tests.helpers.outbox import (
    FAST_RETRY,
    all_done,
    enqueue_instances,
    running_dispatcher,
    spool_series,
    wait_until,
)
from tests.helpers.peers import Orthanc, Storescp, TlsProxy, have_orthanc, have_storescp
from tests.helpers.proc import HOST

pytestmark = pytest.mark.skipif(not have_openssl(), reason="needs openssl")

needs_storescp = pytest.mark.skipif(not have_storescp(), reason="DCMTK storescp not installed")
needs_orthanc = pytest.mark.skipif(not have_orthanc(), reason="Orthanc + DICOMweb not installed")


class Pki:
    """A site CA, a server certificate it signed, a client certificate it signed, and a server
    certificate nobody the site trusts signed."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.ca = make_cert(folder, "site-ca")
        self.server = make_cert(folder, "pacs", ca=self.ca)
        self.client = make_cert(folder, "radflow", ca=self.ca)
        self.stranger = make_cert(folder, "stranger")


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


def tls_storescp(base: Path, cert: tuple[Path, Path], trusted: Path) -> Storescp:
    # storescp's default peer authentication requires a client certificate signed by a CA in
    # its +cf list: radflow must present its own.
    return Storescp(base, extra=("+tls", str(cert[1]), str(cert[0]), "+cf", str(trusted)))


def dimse_tls(port: int, pki: Pki) -> DimseDestination:
    return DimseDestination(
        type="dimse", ae_title="SINK", host=HOST, port=port, concurrency=1, retry=FAST_RETRY,
        timeout=10, idle_close=1,
        tls=ClientTlsSettings(ca_file=pki.ca[0], cert_file=pki.client[0],
                              key_file=pki.client[1]))


async def failed_on_certificate(store: SqliteStore, destination: str) -> bool:
    rows = await store.outbox_rows(destination)
    return bool(rows) and all(
        int(str(r["attempts"])) >= 1 and "certificate" in str(r["last_error"] or "").lower()
        for r in rows)


@needs_storescp
async def test_cstore_over_mutual_tls_to_storescp(store: SqliteStore, spool: Path,
                                                  tmp_path: Path, pki: Pki) -> None:
    scp = tls_storescp(tmp_path / "scp", pki.server, trusted=pki.ca[0]).start()
    try:
        instances = spool_series(spool, 12)
        await enqueue_instances(store, spool, "pacs", instances)
        async with running_dispatcher(store, spool, {"pacs": dimse_tls(scp.port, pki)}):
            await wait_until(lambda: all_done(store), timeout=60, what="delivered over TLS")
        assert scp.received() == {i.sop_instance_uid for i in instances}
    finally:
        scp.stop()


@needs_storescp
async def test_cstore_to_an_untrusted_certificate_is_held_not_lost(
        store: SqliteStore, spool: Path, tmp_path: Path, pki: Pki) -> None:
    scp = tls_storescp(tmp_path / "scp", pki.stranger, trusted=pki.ca[0]).start()
    try:
        instances = spool_series(spool, 3)
        await enqueue_instances(store, spool, "pacs", instances)
        async with running_dispatcher(store, spool, {"pacs": dimse_tls(scp.port, pki)}):
            await wait_until(lambda: failed_on_certificate(store, "pacs"), timeout=30,
                             what="every row failed on the certificate")
        assert scp.received() == set()
        assert await store.count_dead_letters("pacs") == 0
    finally:
        scp.stop()


@pytest.fixture
async def https_orthanc(tmp_path: Path, pki: Pki) -> AsyncIterator[tuple[Orthanc, str]]:
    """Orthanc behind a TLS proxy with the site CA's server certificate, and its HTTPS STOW
    URL."""
    peer = Orthanc(tmp_path / "orthanc").start()
    proxy = await TlsProxy(*pki.server, target_port=peer.http_port).start()
    try:
        yield peer, f"https://{HOST}:{proxy.port}/dicom-web/studies"
    finally:
        await proxy.stop()
        peer.stop()


@needs_orthanc
@pytest.mark.orthanc
async def test_stow_over_https_with_the_site_ca(store: SqliteStore, spool: Path, pki: Pki,
                                                https_orthanc: tuple[Orthanc, str]) -> None:
    peer, url = https_orthanc
    instances = spool_series(spool, 7)
    await enqueue_instances(store, spool, "web", instances)
    dest = DicomwebDestination(type="dicomweb", url=url, ca_file=pki.ca[0], batch_max_count=5,
                               retry=FAST_RETRY, timeout=30)
    async with running_dispatcher(store, spool, {"web": dest}):
        await wait_until(lambda: all_done(store), timeout=60, what="STOW over HTTPS")
    assert peer.received() == {i.sop_instance_uid for i in instances}


@needs_orthanc
@pytest.mark.orthanc
async def test_stow_verifies_the_certificate_by_default(
        store: SqliteStore, spool: Path, https_orthanc: tuple[Orthanc, str]) -> None:
    peer, url = https_orthanc
    await enqueue_instances(store, spool, "web", spool_series(spool, 2))
    # No ca_file: the system's CAs, which never signed the test CA's certificate.
    dest = DicomwebDestination(type="dicomweb", url=url, retry=FAST_RETRY, timeout=10)
    async with running_dispatcher(store, spool, {"web": dest}):
        await wait_until(lambda: failed_on_certificate(store, "web"), timeout=30,
                         what="refused on the certificate")
    assert peer.received() == set()
    assert await store.count_dead_letters("web") == 0


async def test_mpps_forwarded_over_mutual_tls(store: SqliteStore, tmp_path: Path,
                                              pki: Pki) -> None:
    """A pynetdicom MPPS SCP serving TLS that asks for a client certificate."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

    from engine.tls import server_ssl_context
    from tests.helpers.proc import free_port
    from tests.integration.test_egress_hl7_fhir_mpps import enqueue

    created: list[str] = []

    def on_create(event: Any) -> tuple[int, Dataset]:
        created.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000, event.attribute_list

    port = free_port()
    ae = AE(ae_title="RIS_MPPS")
    ae.add_supported_context(ModalityPerformedProcedureStep)
    context = server_ssl_context(TlsSettings(cert_file=pki.server[0], key_file=pki.server[1],
                                             client_ca_file=pki.ca[0]))
    server = ae.start_server((HOST, port), block=False, ssl_context=context,
                             evt_handlers=[(evt.EVT_N_CREATE, on_create)])
    try:
        uid, step = generate_uid(), Dataset()
        step.PerformedProcedureStepStatus = "IN PROGRESS"
        await enqueue(store, "ris-mpps", "mpps", [
            {"mpps": {"operation": "create", "sop_instance_uid": uid,
                      "dataset": step.to_json_dict()}}])
        dest = MppsDestination(
            type="mpps", ae_title="RIS_MPPS", host=HOST, port=port, retry=FAST_RETRY,
            tls=ClientTlsSettings(ca_file=pki.ca[0], cert_file=pki.client[0],
                                  key_file=pki.client[1]))
        async with running_dispatcher(store, tmp_path, {"ris-mpps": dest}):
            await wait_until(lambda: all_done(store), what="MPPS forwarded over TLS")
        assert created == [uid]
    finally:
        server.shutdown()
