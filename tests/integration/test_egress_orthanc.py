"""Orthanc as a destination: C-STORE into its DICOM port and STOW-RS into its DICOMweb plugin,
with Orthanc's own REST API as the witness of what arrived."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.durable.sqlite import SqliteStore
from engine.settings import DicomwebDestination, DimseDestination
from tests.helpers.outbox import (
    FAST_RETRY,
    all_done,
    enqueue_instances,
    running_dispatcher,
    spool_series,
    wait_until,
)
from tests.helpers.peers import Orthanc, have_orthanc
from tests.helpers.proc import HOST, free_port

pytestmark = [pytest.mark.orthanc,
              pytest.mark.skipif(not have_orthanc(), reason="Orthanc + DICOMweb not installed")]


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    peer = Orthanc(tmp_path / "orthanc").start()
    yield peer
    peer.stop()


async def test_cstore_and_stow_to_orthanc(store: SqliteStore, spool: Path, orthanc: Orthanc
                                          ) -> None:
    by_dimse = spool_series(spool, 15)
    by_stow = spool_series(spool, 23)
    await enqueue_instances(store, spool, "orthanc-dimse", by_dimse)
    await enqueue_instances(store, spool, "orthanc-web", by_stow)
    destinations = {
        "orthanc-dimse": DimseDestination(type="dimse", ae_title=orthanc.ae_title, host=HOST,
                                          port=orthanc.dicom_port, concurrency=2,
                                          retry=FAST_RETRY, timeout=15),
        "orthanc-web": DicomwebDestination(type="dicomweb", url=orthanc.stow_url,
                                           batch_max_count=10, retry=FAST_RETRY, timeout=30),
    }
    async with running_dispatcher(store, spool, destinations):
        await wait_until(lambda: all_done(store), timeout=60, what="delivered to Orthanc")
    assert orthanc.received() == {i.sop_instance_uid for i in by_dimse + by_stow}


async def test_stow_down_then_up_and_bad_payload_dead_lettered(store: SqliteStore, spool: Path,
                                                               tmp_path: Path) -> None:
    instances = spool_series(spool, 12)
    await enqueue_instances(store, spool, "web", instances)
    missing = spool_series(spool, 1)
    await enqueue_instances(store, spool, "web", missing)
    missing[0].path.unlink()  # its spool file is gone: permanent, never blocks the batch
    peer = Orthanc(tmp_path / "orthanc")  # configured, not started yet: the port is closed
    dest = DicomwebDestination(type="dicomweb", url=peer.stow_url, batch_max_count=5,
                               retry=FAST_RETRY, timeout=10)
    async with running_dispatcher(store, spool, {"web": dest}):
        await wait_until(lambda: store.count_dead_letters("web"), what="missing file dead")
        peer.start()
        try:
            await wait_until(lambda: _delivered(store, 12), timeout=60, what="STOW after outage")
            assert peer.received() == {i.sop_instance_uid for i in instances}
        finally:
            peer.stop()
    (dead,) = await store.list_dead_letters("web")
    assert "missing" in (dead.last_error or "")


async def _delivered(store: SqliteStore, n: int) -> bool:
    rows = await store.outbox_rows("web")
    return sum(1 for r in rows if r["state"] == "done") == n


async def test_stow_to_a_closed_port_is_transient(store: SqliteStore, spool: Path) -> None:
    instances = spool_series(spool, 2)
    await enqueue_instances(store, spool, "web", instances)
    dest = DicomwebDestination(type="dicomweb", url=f"http://{HOST}:{free_port()}/studies",
                               retry=FAST_RETRY, timeout=2)
    async with running_dispatcher(store, spool, {"web": dest}):
        await wait_until(lambda: _tried(store), what="tried")
    assert await store.count_dead_letters("web") == 0


async def _tried(store: SqliteStore) -> bool:
    rows = await store.outbox_rows("web")
    return all(int(str(r["attempts"])) >= 1 and r["last_error"] for r in rows)
