"""C-STORE intake end to end below the network: real spool, real SQLite store, the group-commit
journal and the bridge, with the loop in the test and ``accept`` on a worker thread as
pynetdicom's association thread would call it."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pydicom
import pytest
from dicom_samples import (
    CT_IMAGE_STORAGE,
    DEFLATED,
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    JPEG_BASELINE,
    MR_IMAGE_STORAGE,
    UID_ROOT,
    encapsulated_dataset,
    encode,
    sample_dataset,
)
from journal_samples import CountingStore
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info

from engine.bridge import LoopBridge
from engine.bus import EventBus
from engine.dicom.wire import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from engine.durable.journal import JournalWriter
from engine.durable.spool import Spool
from engine.durable.sqlite import SqliteStore
from engine.durable.store import DuplicatePolicy, InstanceCommitResult, InstanceOutcome
from engine.errors import (
    BridgeTimeout,
    DuplicateRejected,
    InvalidIdentifier,
    InvalidInput,
    MalformedDataset,
    OutOfResources,
    ShuttingDown,
    SopClassMismatch,
    StorageFailure,
)
from engine.events import Event, InstanceStored
from engine.ingress.dimse.intake import (
    ReceivedInstance,
    StoreIntake,
    file_meta_bytes,
)
from engine.observability.metrics import REGISTRY

PREAMBLE = b"\x00" * 128 + b"DICM"
SOP_UID = UID_ROOT + "1.1"


def request(
    dataset: bytes,
    *,
    ts: str = EXPLICIT_LE,
    sop_instance_uid: str = SOP_UID,
    sop_class_uid: str = CT_IMAGE_STORAGE,
    calling_ae: str = "../../x",
) -> ReceivedInstance:
    return ReceivedInstance(
        listener="unit",
        local_ae="RADFLOW",
        calling_ae=calling_ae,
        called_ae="RADFLOW",
        peer_host="10.0.0.7",
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
        transfer_syntax_uid=ts,
        dataset=dataset,
    )


@dataclass
class Rig:
    spool: Spool
    store: CountingStore
    journal: JournalWriter
    bus: EventBus
    bridge: LoopBridge
    events: list[Event] = field(default_factory=list)

    def intake(
        self, policy: DuplicatePolicy = DuplicatePolicy.VERSION, timeout: float = 10.0
    ) -> StoreIntake:
        return StoreIntake(self.spool, self.journal, self.bus, self.bridge, policy, timeout)

    async def accept(
        self,
        req: ReceivedInstance,
        policy: DuplicatePolicy = DuplicatePolicy.VERSION,
        timeout: float = 10.0,
    ) -> InstanceCommitResult:
        return await asyncio.to_thread(self.intake(policy, timeout).accept, req)

    def object_files(self) -> list[Path]:
        return sorted(p for p in self.spool.objects_dir.rglob("*") if p.is_file())

    def temp_files(self) -> list[Path]:
        return sorted(self.spool.tmp_dir.iterdir())


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    await asyncio.to_thread(spool.open)
    inner = SqliteStore(tmp_path / "radflow.db")
    await inner.open()
    store = CountingStore(inner)
    bus = EventBus()
    bridge = LoopBridge()
    bridge.attach(asyncio.get_running_loop())
    journal = JournalWriter(store, spool, bridge)  # type: ignore[arg-type]
    r = Rig(spool, store, journal, bus, bridge)
    bus.subscribe(Event, r.events.append)
    await bus.start()
    await journal.start()
    yield r
    bridge.close()
    await journal.stop()
    await bus.stop()
    await inner.close()


async def settle(rig: Rig) -> None:
    """Every event intake has announced so far is delivered (announcements follow the rows'
    "durable" marks, which ride on the next commit or a short flush). A mark is queued from
    the file's fsync, which may finish a moment after intake answered (a busy machine): the
    flush is repeated until no row waits for its mark."""
    deadline = time.monotonic() + 10.0
    while True:
        await rig.journal.flush_marks()
        if not await rig.store.inner.instances_not_durable() or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    await rig.bus.stop(deadline=1.0)
    await rig.bus.start()


# --- the good path -------------------------------------------------------------------------------
SYNTAX_CASES = {
    "explicit_le": (EXPLICIT_LE, sample_dataset),
    "implicit_le": (IMPLICIT_LE, sample_dataset),
    "explicit_be": (EXPLICIT_BE, sample_dataset),
    "deflated": (DEFLATED, sample_dataset),
    "jpeg_baseline": (JPEG_BASELINE, encapsulated_dataset),
}


@pytest.mark.parametrize("case", SYNTAX_CASES)
async def test_a_good_instance_is_stored_byte_for_byte(rig: Rig, case: str) -> None:
    ts, make = SYNTAX_CASES[case]
    ds = make(SOP_UID)
    dataset = encode(ds, ts)
    req = request(dataset, ts=ts)
    received_before = (
        REGISTRY.get_sample_value("radflow_dimse_instances_received_total", {"listener": "unit"})
        or 0
    )

    result = await rig.accept(req)

    assert result.outcome is InstanceOutcome.STORED and result.version == 1
    row = await rig.store.inner.get_instance(SOP_UID)
    assert row is not None and row.id == result.journal_id
    rec = row.record
    assert (rec.sop_class_uid, rec.transfer_syntax_uid) == (CT_IMAGE_STORAGE, ts)
    assert (rec.patient_id, rec.accession_number, rec.modality) == ("PID-001", "ACC-001", "CT")
    assert rec.study_instance_uid == ds.StudyInstanceUID
    assert rec.series_instance_uid == ds.SeriesInstanceUID
    assert (rec.calling_ae, rec.called_ae, rec.peer_host, rec.listener) == (
        "../../x",
        "RADFLOW",
        "10.0.0.7",
        "unit",
    )

    # the file is preamble + meta + the dataset exactly as received (never re-encoded)
    stored = rig.spool.read(rec.spool_path)
    assert stored == PREAMBLE + file_meta_bytes(req) + dataset
    assert rec.size_bytes == len(stored)
    assert rig.object_files() == [rig.spool.path_of(rec.spool_path)]
    assert rig.temp_files() == []
    # the path comes from the clock and an internal id, never from the peer
    assert re.fullmatch(r"objects/\d{4}/\d{2}/\d{2}/\d{2}/[0-9a-f]{25}\.dcm", rec.spool_path)
    assert rec.spool_path == f"{rec.spool_path.rsplit('/', 1)[0]}/{rec.object_id}.dcm"

    back = pydicom.dcmread(rig.spool.path_of(rec.spool_path))
    assert back.file_meta.TransferSyntaxUID == ts
    assert back.file_meta.MediaStorageSOPInstanceUID == SOP_UID
    assert back.SOPInstanceUID == SOP_UID

    await settle(rig)
    [event] = rig.events
    assert isinstance(event, InstanceStored)
    assert (event.journal_id, event.object_id, event.version) == (row.id, rec.object_id, 1)
    assert (
        REGISTRY.get_sample_value("radflow_dimse_instances_received_total", {"listener": "unit"})
        == received_before + 1
    )


@pytest.mark.parametrize("calling_ae", ["CT_SCANNER_1", "../../x", "A", "SIXTEEN_CHARS_AE"])
@pytest.mark.parametrize("ts", [EXPLICIT_LE, DEFLATED, JPEG_BASELINE])
def test_file_meta_matches_pydicoms_encoding(calling_ae: str, ts: str) -> None:
    req = request(b"", ts=ts, calling_ae=calling_ae, sop_instance_uid=UID_ROOT + "12.345")
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = req.sop_class_uid
    meta.MediaStorageSOPInstanceUID = req.sop_instance_uid
    meta.TransferSyntaxUID = req.transfer_syntax_uid
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    meta.SourceApplicationEntityTitle = req.local_ae
    meta.SendingApplicationEntityTitle = req.calling_ae
    meta.ReceivingApplicationEntityTitle = req.called_ae
    buf = DicomBytesIO()
    write_file_meta_info(buf, meta, enforce_standard=True)
    assert file_meta_bytes(req) == buf.getvalue()


async def test_many_associations_at_once_share_commits(rig: Rig) -> None:
    rig.store.delay = 0.05  # while one batch commits, the other threads queue up
    reqs = [
        request(
            encode(sample_dataset(f"{UID_ROOT}7.{n}"), EXPLICIT_LE),
            sop_instance_uid=f"{UID_ROOT}7.{n}",
        )
        for n in range(24)
    ]
    results = await asyncio.gather(*(rig.accept(r) for r in reqs))
    assert {r.outcome for r in results} == {InstanceOutcome.STORED}
    assert await rig.store.inner.count_instances() == 24
    assert len(rig.object_files()) == 24
    assert len(rig.store.batches) < 24


# --- refusals ------------------------------------------------------------------------------------
async def assert_nothing_kept(rig: Rig) -> None:
    assert rig.object_files() == []
    assert rig.temp_files() == []
    assert await rig.store.inner.count_instances() == 0
    assert rig.store.batches == []  # the loop was never asked


@pytest.mark.parametrize("uid", ["../../x", "1.2.03", "1." + "2" * 63, ""])
async def test_an_invalid_sop_instance_uid_is_refused_before_anything_is_written(
    rig: Rig,
    uid: str,
) -> None:
    req = request(encode(sample_dataset(), EXPLICIT_LE), sop_instance_uid=uid)
    with pytest.raises(InvalidIdentifier):
        await rig.accept(req)
    await assert_nothing_kept(rig)


async def test_an_invalid_sop_class_uid_is_refused(rig: Rig) -> None:
    req = request(encode(sample_dataset(), EXPLICIT_LE), sop_class_uid="1.2.840.10008.5.1.4.1.1.02")
    with pytest.raises(InvalidIdentifier):
        await rig.accept(req)
    await assert_nothing_kept(rig)


@pytest.mark.parametrize("ts", [EXPLICIT_LE, IMPLICIT_LE, DEFLATED])
async def test_a_truncated_dataset_is_refused_and_nothing_is_kept(rig: Rig, ts: str) -> None:
    data = encode(sample_dataset(), ts)
    with pytest.raises(MalformedDataset):
        await rig.accept(request(data[:-5], ts=ts))
    await assert_nothing_kept(rig)


async def test_a_sop_class_mismatch_is_refused(rig: Rig) -> None:
    data = encode(sample_dataset(sop_class_uid=MR_IMAGE_STORAGE), EXPLICIT_LE)
    with pytest.raises(SopClassMismatch):
        await rig.accept(request(data, sop_class_uid=CT_IMAGE_STORAGE))
    await assert_nothing_kept(rig)


async def test_a_sop_instance_mismatch_is_refused(rig: Rig) -> None:
    data = encode(sample_dataset(UID_ROOT + "1.2"), EXPLICIT_LE)
    with pytest.raises(InvalidInput):
        await rig.accept(request(data, sop_instance_uid=UID_ROOT + "1.3"))
    await assert_nothing_kept(rig)


async def test_no_room_is_out_of_resources_before_writing(rig: Rig) -> None:
    rig.spool.min_free_bytes = rig.spool.free_bytes() + 1024**4
    with pytest.raises(OutOfResources):
        await rig.accept(request(encode(sample_dataset(), EXPLICIT_LE)))
    await assert_nothing_kept(rig)


# --- duplicates ----------------------------------------------------------------------------------
async def test_an_identical_resend_is_answered_identical_and_stored_once(rig: Rig) -> None:
    req = request(encode(sample_dataset(), EXPLICIT_LE))
    first = await rig.accept(req)
    [first_file] = rig.object_files()

    again = await rig.accept(req)

    assert again.outcome is InstanceOutcome.IDENTICAL
    assert again.journal_id == first.journal_id
    assert rig.object_files() == [first_file]  # the second copy was removed
    assert await rig.store.inner.count_instances() == 1
    await settle(rig)
    assert len(rig.events) == 1  # nothing new to route


def changed_copy() -> tuple[ReceivedInstance, ReceivedInstance]:
    a = sample_dataset(patient_id="PID-001")
    b = sample_dataset(patient_id="PID-002")  # same SOP Instance UID, other content
    return request(encode(a, EXPLICIT_LE)), request(encode(b, EXPLICIT_LE))


async def test_version_policy_keeps_both(rig: Rig) -> None:
    a, b = changed_copy()
    await rig.accept(a)
    second = await rig.accept(b, DuplicatePolicy.VERSION)
    assert (second.outcome, second.version) == (InstanceOutcome.NEW_VERSION, 2)
    assert len(rig.object_files()) == 2
    latest = await rig.store.inner.get_instance(SOP_UID)
    assert latest is not None and latest.record.patient_id == "PID-002"


async def test_ignore_policy_keeps_the_first_file_only(rig: Rig) -> None:
    a, b = changed_copy()
    await rig.accept(a)
    [first_file] = rig.object_files()
    second = await rig.accept(b, DuplicatePolicy.IGNORE)
    assert second.outcome is InstanceOutcome.IGNORED
    assert rig.object_files() == [first_file]


async def test_reject_policy_refuses_and_removes_the_new_file(rig: Rig) -> None:
    a, b = changed_copy()
    await rig.accept(a)
    [first_file] = rig.object_files()
    with pytest.raises(DuplicateRejected):
        await rig.accept(b, DuplicatePolicy.REJECT)
    assert rig.object_files() == [first_file]
    assert await rig.store.inner.count_instances() == 1


# --- the loop side fails or is gone --------------------------------------------------------------
async def test_a_failed_commit_removes_the_file(rig: Rig) -> None:
    rig.store.fail_with = StorageFailure("disk I/O error")
    with pytest.raises(StorageFailure):
        await rig.accept(request(encode(sample_dataset(), EXPLICIT_LE)))
    assert rig.object_files() == []
    assert await rig.store.inner.count_instances() == 0


async def test_after_the_bridge_closed_intake_answers_shutting_down(rig: Rig) -> None:
    rig.bridge.close()
    with pytest.raises(ShuttingDown):
        await rig.accept(request(encode(sample_dataset(), EXPLICIT_LE)))
    assert await rig.store.inner.count_instances() == 0
    assert rig.store.batches == []
    # Whatever file was written has no journal row: the start-up recovery removes it.
    leftovers = dict(rig.spool.recent_objects(3600))
    assert await rig.store.inner.known_object_ids(list(leftovers)) == set()


async def test_a_commit_slower_than_the_deadline_times_out_but_keeps_its_file(rig: Rig) -> None:
    rig.store.delay = 0.5
    with pytest.raises(BridgeTimeout):
        await rig.accept(request(encode(sample_dataset(), EXPLICIT_LE)), timeout=0.1)
    # The commit was already queued and lands; its row must never lack its bytes.
    for _ in range(100):
        row = await rig.store.inner.get_instance(SOP_UID)
        if row is not None:
            break
        await asyncio.sleep(0.02)
    assert row is not None
    assert rig.spool.path_of(row.record.spool_path).exists()


async def test_a_resend_after_a_timeout_is_identical(rig: Rig) -> None:
    req = request(encode(sample_dataset(), EXPLICIT_LE))
    rig.store.delay = 0.3
    with pytest.raises(BridgeTimeout):
        await rig.accept(req, timeout=0.05)
    rig.store.delay = 0
    again = await rig.accept(replace(req))
    assert again.outcome is InstanceOutcome.IDENTICAL
    assert len(rig.object_files()) == 1


# --- the file's fsync runs beside the commit -----------------------------------------------------
async def durable_flag(rig: Rig, journal_id: int | None) -> int | None:
    def read(conn: object) -> int | None:
        row = conn.execute(  # type: ignore[attr-defined]
            "SELECT durable FROM instances WHERE id = ?", (journal_id,)).fetchone()
        return None if row is None else int(row[0])

    return await rig.store.inner._read(read)


async def test_the_row_commits_while_the_file_is_fsynced_and_success_waits_for_both(
    rig: Rig, monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, object] = {}
    real_sync = rig.spool.sync
    loop = asyncio.get_running_loop()

    def slow_sync(spooled: object, **kw: object) -> None:
        # The commit was started before the fsync: let it land, then look at the row.
        time.sleep(0.3)
        row = asyncio.run_coroutine_threadsafe(
            rig.store.inner.get_instance(SOP_UID), loop).result(5)
        seen["row during fsync"] = row
        real_sync(spooled, **kw)  # type: ignore[arg-type]
        seen["fsync done"] = time.monotonic()

    monkeypatch.setattr(rig.spool, "sync", slow_sync)
    result = await rig.accept(request(encode(sample_dataset(), EXPLICIT_LE)))
    answered = time.monotonic()

    assert seen["row during fsync"] is not None  # the two overlapped
    assert answered >= seen["fsync done"]  # type: ignore[operator]
    await settle(rig)
    [event] = rig.events  # announced (to the router) only once the file is durable
    assert isinstance(event, InstanceStored) and event.journal_id == result.journal_id
    for _ in range(50):  # the "durable" mark rides on the next commit or a flush
        if await durable_flag(rig, result.journal_id) == 1:
            break
        await asyncio.sleep(0.05)
    assert await durable_flag(rig, result.journal_id) == 1


async def test_a_failed_file_fsync_withdraws_the_row_and_answers_failure(
    rig: Rig, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def failing_sync(spooled: object, **kw: object) -> None:
        raise StorageFailure("spool fsync failed: Input/output error")

    monkeypatch.setattr(rig.spool, "sync", failing_sync)
    with pytest.raises(StorageFailure):
        await rig.accept(request(encode(sample_dataset(), EXPLICIT_LE)))
    assert await rig.store.inner.count_instances() == 0
    assert rig.object_files() == []
    await settle(rig)
    assert rig.events == []  # nothing routed

    monkeypatch.undo()  # the modality's retry is stored normally
    again = await rig.accept(request(encode(sample_dataset(), EXPLICIT_LE)))
    assert again.outcome is InstanceOutcome.STORED


async def test_a_failed_fsync_of_a_new_version_makes_the_old_one_current_again(
    rig: Rig, monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = changed_copy()
    first = await rig.accept(a)
    monkeypatch.setattr(rig.spool, "sync", lambda spooled, **kw: (_ for _ in ()).throw(
        StorageFailure("spool fsync failed")))
    with pytest.raises(StorageFailure):
        await rig.accept(b, DuplicatePolicy.VERSION)
    current = await rig.store.inner.get_instance(SOP_UID)
    assert current is not None and current.id == first.journal_id
    assert not current.superseded and current.record.patient_id == "PID-001"


@pytest.mark.parametrize("original_ok", [True, False], ids=["fsync_ok", "fsync_failed"])
async def test_an_identical_copy_is_answered_only_after_the_originals_fsync(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, original_ok: bool,
) -> None:
    """Two associations send the same instance at once: the copy that matches the first one's
    row must not get a success before that row's file is on disk, nor at all if it failed."""
    release = threading.Event()
    first_in_sync = threading.Event()
    real_sync = rig.spool.sync
    calls = 0

    def gated_sync(spooled: object, **kw: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            first_in_sync.set()
            release.wait(10)
            if not original_ok:
                raise StorageFailure("spool fsync failed: Input/output error")
        real_sync(spooled, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(rig.spool, "sync", gated_sync)
    req = request(encode(sample_dataset(), EXPLICIT_LE))
    first = asyncio.ensure_future(rig.accept(req))
    await asyncio.to_thread(first_in_sync.wait, 10)
    await asyncio.sleep(0.2)  # let the first row commit
    copy = asyncio.ensure_future(rig.accept(replace(req)))
    await asyncio.sleep(0.3)
    assert not copy.done()  # held while the original's file is not durable
    release.set()
    if original_ok:
        assert (await first).outcome is InstanceOutcome.STORED
        assert (await copy).outcome is InstanceOutcome.IDENTICAL
        assert await rig.store.inner.count_instances() == 1
    else:
        with pytest.raises(StorageFailure):
            await first
        with pytest.raises(StorageFailure):
            await copy  # its sender retries, and the retry is stored anew
        assert await rig.store.inner.count_instances() == 0
