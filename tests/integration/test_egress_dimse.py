"""C-STORE delivery against real SCPs, the dispatcher driven in-process: DCMTK storescp for the
normal path, outages and a peer dying mid-batch; pynetdicom SCPs for the answers storescp never
gives (Out of Resources, a refusal, silence).

The invariant every test checks: every row's instance reaches its destination (possibly twice
after a fault, always with the same SOP Instance UID), and only a permanent refusal is
dead-lettered.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from engine.durable.sqlite import SqliteStore
from engine.egress.policy import CircuitState
from engine.observability.metrics import (
    EGRESS_DIMSE_ASSOCIATIONS,
    EGRESS_TRANSCODED,
    INTEGRITY_FAILURES,
)
from engine.settings import DimseDestination
from tests.helpers.outbox import (
    FAST_RETRY,
    all_done,
    enqueue_instances,
    running_dispatcher,
    spool_series,
    wait_until,
)
from tests.helpers.peers import ScriptedScp, Storescp, have_storescp
from tests.helpers.proc import HOST, free_port

pytestmark = pytest.mark.skipif(not have_storescp(), reason="DCMTK storescp not installed")


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


def dimse(port: int, ae: str = "SINK", **kw: object) -> DimseDestination:
    base: dict[str, object] = {"type": "dimse", "ae_title": ae, "host": HOST, "port": port,
                               "concurrency": 1, "retry": FAST_RETRY, "timeout": 10,
                               "idle_close": 1}
    base.update(kw)
    return DimseDestination.model_validate(base)


async def test_every_instance_arrives_on_one_reused_association(
        store: SqliteStore, spool: Path, tmp_path: Path) -> None:
    scp = Storescp(tmp_path / "scp").start()
    try:
        instances = spool_series(spool, 40)
        before = EGRESS_DIMSE_ASSOCIATIONS.labels("pacs", "established")._value.get()
        await enqueue_instances(store, spool, "pacs", instances)
        async with running_dispatcher(store, spool, {"pacs": dimse(scp.port, batch_size=16)}):
            await wait_until(lambda: all_done(store), what="all rows delivered")
        assert scp.received() == {i.sop_instance_uid for i in instances}
        # three lease pages, one association
        assert EGRESS_DIMSE_ASSOCIATIONS.labels("pacs", "established")._value.get() - before == 1
        # sent unchanged: the dataset bytes storescp wrote are the spooled ones
        got = pydicom.dcmread(scp.out / f"CT.{instances[0].sop_instance_uid}")
        assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert got.PixelData == pydicom.dcmread(instances[0].path).PixelData
    finally:
        scp.stop()


async def test_an_association_closed_when_idle_is_opened_again_for_the_next_rows(
        store: SqliteStore, spool: Path, tmp_path: Path) -> None:
    scp = Storescp(tmp_path / "scp").start()
    try:
        instances = spool_series(spool, 10)
        first, later = instances[:5], instances[5:]
        before = EGRESS_DIMSE_ASSOCIATIONS.labels("pacs", "established")._value.get()
        await enqueue_instances(store, spool, "pacs", first)
        async with running_dispatcher(store, spool, {"pacs": dimse(scp.port)}):
            await wait_until(lambda: all_done(store), what="the first rows delivered")
            await asyncio.sleep(2.5)  # past idle_close (1 s): the association is released
            await enqueue_instances(store, spool, "pacs", later)
            await wait_until(lambda: all_done(store), what="the later rows delivered")
        assert scp.received() == {i.sop_instance_uid for i in [*first, *later]}
        assert EGRESS_DIMSE_ASSOCIATIONS.labels("pacs", "established")._value.get() - before == 2
    finally:
        scp.stop()


async def test_destination_down_at_start_then_up(store: SqliteStore, spool: Path,
                                                 tmp_path: Path) -> None:
    port = free_port()
    instances = spool_series(spool, 25)
    await enqueue_instances(store, spool, "pacs", instances)
    async with running_dispatcher(store, spool, {"pacs": dimse(port)}) as dispatcher:
        await wait_until(lambda: dispatcher.circuit("pacs").state is not CircuitState.CLOSED,
                         what="circuit opened while the PACS is down")
        scp = Storescp(tmp_path / "scp", port=port).start()
        try:
            await wait_until(lambda: all_done(store), timeout=60, what="delivered after outage")
            assert scp.received() == {i.sop_instance_uid for i in instances}
        finally:
            scp.stop()
    assert await store.count_dead_letters("pacs") == 0


async def test_destination_dies_mid_batch_and_everything_arrives(
        store: SqliteStore, spool: Path, tmp_path: Path) -> None:
    scp = Storescp(tmp_path / "scp").start()
    instances = spool_series(spool, 300, size=64)
    uids = {i.sop_instance_uid for i in instances}
    await enqueue_instances(store, spool, "pacs", instances)
    try:
        async with running_dispatcher(store, spool, {"pacs": dimse(scp.port, batch_size=64)}):
            await wait_until(lambda: len(scp.received()) >= 40, what="first instances arrive")
            scp.kill()  # mid-batch: no release, no abort, the connection just drops
            killed_at = len(scp.received())
            assert killed_at < len(uids)
            await asyncio.sleep(1.0)
            scp = Storescp(tmp_path / "scp", port=scp.port).start()
            await wait_until(lambda: all_done(store), timeout=90, what="delivered after crash")
        assert scp.received() == uids  # every instance, under its own UID
    finally:
        scp.stop()
    assert await store.count_dead_letters("pacs") == 0


async def test_stored_syntax_not_accepted_is_transcoded(store: SqliteStore, spool: Path,
                                                       tmp_path: Path) -> None:
    scp = Storescp(tmp_path / "scp").start()  # storescp accepts uncompressed syntaxes only
    try:
        instances = spool_series(spool, 5, RLELossless)
        before = EGRESS_TRANSCODED.labels("pacs")._value.get()
        await enqueue_instances(store, spool, "pacs", instances)
        dest = dimse(scp.port, transfer_syntaxes=[ImplicitVRLittleEndian])
        async with running_dispatcher(store, spool, {"pacs": dest}):
            await wait_until(lambda: all_done(store), what="transcoded instances delivered")
        assert scp.received() == {i.sop_instance_uid for i in instances}
        assert EGRESS_TRANSCODED.labels("pacs")._value.get() - before == 5
        got = pydicom.dcmread(scp.out / f"CT.{instances[0].sop_instance_uid}")
        assert got.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        original = pydicom.dcmread(instances[0].path)
        original.decompress()
        assert got.PixelData == original.PixelData
    finally:
        scp.stop()


async def test_out_of_resources_is_retried(store: SqliteStore, spool: Path) -> None:
    scp = ScriptedScp(lambda ds, seen: 0xA700 if seen == 1 else 0x0000)
    try:
        instances = spool_series(spool, 12)
        await enqueue_instances(store, spool, "pacs", instances)
        async with running_dispatcher(store, spool, {"pacs": dimse(scp.port, "FAULTY")}):
            await wait_until(lambda: all_done(store), what="delivered after Out of Resources")
        assert scp.stored == {i.sop_instance_uid for i in instances}
        assert all(n >= 2 for n in scp.seen.values())
        assert await store.count_dead_letters("pacs") == 0
    finally:
        scp.stop()


async def test_a_permanent_refusal_is_dead_lettered_and_the_others_flow(
        store: SqliteStore, spool: Path) -> None:
    instances = spool_series(spool, 10)
    refused = instances[2].sop_instance_uid
    scp = ScriptedScp(lambda ds, seen: 0xA900 if ds.SOPInstanceUID == refused else 0x0000)
    try:
        await enqueue_instances(store, spool, "pacs", instances)
        async with running_dispatcher(store, spool, {"pacs": dimse(scp.port, "FAULTY")}):
            await wait_until(lambda: store.count_dead_letters("pacs"), what="dead letter")
            await wait_until(lambda: len(scp.stored) == 9, what="the others delivered")
        assert scp.stored == {i.sop_instance_uid for i in instances} - {refused}
        assert scp.seen[refused] == 1  # refused once, never retried
        (dead,) = await store.list_dead_letters("pacs")
        assert "0xA900" in (dead.last_error or "")
    finally:
        scp.stop()


async def test_a_silent_destination_times_out_and_does_not_hold_up_the_others(
        store: SqliteStore, spool: Path, tmp_path: Path) -> None:
    silent = ScriptedScp(lambda ds, seen: None)  # accepts the association, never answers
    scp = Storescp(tmp_path / "scp").start()
    try:
        instances = spool_series(spool, 30)
        await enqueue_instances(store, spool, "silent", instances)
        await enqueue_instances(store, spool, "pacs", instances)
        destinations = {"silent": dimse(silent.port, "FAULTY", timeout=1),
                        "pacs": dimse(scp.port)}
        async with running_dispatcher(store, spool, destinations):
            await wait_until(lambda: all_done(store, "pacs"), timeout=20,
                             what="the healthy destination is served")
            assert scp.received() == {i.sop_instance_uid for i in instances}
            await wait_until(lambda: min(silent.seen.values(), default=0) >= 0
                             and sum(silent.seen.values()) >= 2, what="silent retried")
        rows = await store.outbox_rows("silent")
        assert all(r["state"] in ("pending", "leased") for r in rows)  # kept, not dead
        assert any("no C-STORE response" in str(r["last_error"] or "") for r in rows)
    finally:
        silent.stop()
        scp.stop()


async def test_a_corrupt_spool_file_dead_letters_integrity_failed_and_the_rest_flow(
        store: SqliteStore, spool: Path, tmp_path: Path) -> None:
    # A damaged file is caught before it leaves: dead-lettered at once (permanent, both digests
    # in the error), never sent, the PACS's circuit untouched, the intact rows delivered.
    scp = Storescp(tmp_path / "scp").start()
    try:
        instances = spool_series(spool, 20)
        flipped, truncated = instances[3], instances[11]
        await enqueue_instances(store, spool, "pacs", instances)
        data = bytearray(flipped.path.read_bytes())
        data[-10] ^= 0xFF  # one pixel byte: same size, another digest
        flipped.path.write_bytes(bytes(data))
        with open(truncated.path, "r+b") as fh:
            fh.truncate(truncated.path.stat().st_size // 2)
        before = INTEGRITY_FAILURES.labels("pacs")._value.get()
        destination = dimse(scp.port, batch_size=4,
                             retry=FAST_RETRY.model_copy(update={"circuit_failures": 1}))
        async with running_dispatcher(store, spool, {"pacs": destination}) as dispatcher:
            await wait_until(lambda: all_done_but(store, 2), what="intact rows delivered")
            assert dispatcher.circuit("pacs").state is CircuitState.CLOSED
            assert dispatcher.circuit("pacs").opened == 0
        intact = {i.sop_instance_uid for i in instances} - {flipped.sop_instance_uid,
                                                           truncated.sop_instance_uid}
        assert scp.received() == intact  # the damaged ones never reached the PACS
        dead = await store.list_dead_letters("pacs")
        assert len(dead) == 2
        for row in dead:
            assert row.attempts == 1  # permanent: never retried
            assert (row.last_error or "").startswith("integrity_failed")
            assert (row.last_error or "").count("sha256") == 2  # recorded and found
        assert INTEGRITY_FAILURES.labels("pacs")._value.get() - before == 2
    finally:
        scp.stop()


async def all_done_but(store: SqliteStore, dead: int) -> bool:
    rows = await store.outbox_rows("pacs")
    states = [str(r["state"]) for r in rows]
    return states.count("dead") == dead and states.count("done") == len(states) - dead
