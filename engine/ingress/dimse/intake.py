"""Durable C-STORE intake (D1): check, spool, commit, then say yes.

:class:`StoreIntake` runs on the association's own thread, where blocking file I/O belongs: it
checks the identifiers and the dataset's encoding, writes the bytes exactly as received behind a
fresh Part 10 file meta header to the spool, and then does two things at once: the journal row
commits on the store's writer thread (which fsyncs the file's directory entries first; the
event loop is not on this path) while this thread fsyncs the file. Success is answered only
when both are done; a file whose fsync failed has its row withdrawn (through the bridge).
Overlapping the two saves one of the two disk flushes a success waits for. It raises an engine
error that ``engine.status`` turns into the wire status, never builds paths from peer input,
never leaves a half-written file behind, and does not know about pynetdicom events.
"""

from __future__ import annotations

import itertools
import mmap
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from engine.bridge import LoopBridge, result_within
from engine.bus import EventBus
from engine.crashpoints import crash_point
from engine.dicom.vr import is_valid_uid
from engine.dicom.wire import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from engine.durable.journal import JournalWriter
from engine.durable.spool import Spool, SpooledObject
from engine.durable.store import (
    DuplicatePolicy,
    InstanceCommit,
    InstanceCommitResult,
    InstanceOutcome,
    InstanceRecord,
)
from engine.errors import (
    BridgeTimeout,
    DuplicateRejected,
    InvalidIdentifier,
    InvalidInput,
    ShuttingDown,
    SopClassMismatch,
    StorageFailure,
)
from engine.events import InstanceStored
from engine.ingress.dimse.encoding import check_structure, read_keys
from engine.ingress.dimse.spill import SpillPolicy, file_chunks
from engine.observability.logging import about, correlation, get_logger
from engine.observability.metrics import (
    DIMSE_BYTES_RECEIVED,
    DIMSE_DUPLICATES,
    DIMSE_INSTANCES_RECEIVED,
)

log = get_logger("engine.ingress.dimse")

_PREAMBLE = b"\x00" * 128 + b"DICM"


@dataclass(frozen=True, slots=True)
class ReceivedInstance:
    """One C-STORE request as the handler saw it."""

    listener: str
    local_ae: str
    calling_ae: str
    called_ae: str
    peer_host: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    #: the dataset bytes after the command; a read-only map of ``source`` when it was too large
    #: to hold in memory (``engine.ingress.dimse.spill``)
    dataset: bytes | mmap.mmap
    source: Path | None = None


def _element(group_elem: int, vr: bytes, value: bytes) -> bytes:
    """One Explicit VR Little Endian element of group 0002 (PS3.10 7.1)."""
    if len(value) % 2:
        # UI values pad with NUL, text values with a space (PS3.5 6.2).
        value += b"\x00" if vr == b"UI" else b" "
    tag = struct.pack("<HH", group_elem >> 16, group_elem & 0xFFFF)
    if vr == b"OB":
        return tag + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return tag + vr + struct.pack("<H", len(value)) + value


def file_meta_bytes(req: ReceivedInstance) -> bytes:
    """The Part 10 file meta information group for ``req``.

    Encoded directly rather than through pydicom's FileMetaDataset, which costs about 1 ms per
    instance (a quarter of the intake budget) for a group whose shape never changes; a unit
    test checks the bytes against pydicom's own encoding.
    """
    body = b"".join((
        _element(0x00020001, b"OB", b"\x00\x01"),
        _element(0x00020002, b"UI", req.sop_class_uid.encode("ascii")),
        _element(0x00020003, b"UI", req.sop_instance_uid.encode("ascii")),
        _element(0x00020010, b"UI", req.transfer_syntax_uid.encode("ascii")),
        _element(0x00020012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii")),
        _element(0x00020013, b"SH", IMPLEMENTATION_VERSION_NAME.encode("ascii")),
        _element(0x00020016, b"AE", req.local_ae.encode("ascii")),
        _element(0x00020017, b"AE", req.calling_ae.encode("ascii", "replace")),
        _element(0x00020018, b"AE", req.called_ae.encode("ascii", "replace")),
    ))
    return _element(0x00020000, b"UL", struct.pack("<I", len(body))) + body


class StoreIntake:
    """Makes received instances durable before their success status."""

    def __init__(self, spool: Spool, journal: JournalWriter, bus: EventBus, bridge: LoopBridge,
                 policy: DuplicatePolicy, commit_timeout: float,
                 spill_policy: SpillPolicy | None = None) -> None:
        #: where a dataset too large to hold in memory goes while it arrives
        self.spill_policy = spill_policy or SpillPolicy(64 * 1024 * 1024, spool.tmp_dir)
        self._spool = spool
        self._journal = journal
        self._bus = bus
        self._bridge = bridge
        self._policy = policy
        self._timeout = commit_timeout

    def accept(self, req: ReceivedInstance) -> InstanceCommitResult:
        """Make ``req`` durable; called on the association's thread. Raises on refusal."""
        with about(sop_instance_uid=req.sop_instance_uid, calling_ae=req.calling_ae,
                   peer_host=req.peer_host):
            return self._accept(req)

    def _accept(self, req: ReceivedInstance) -> InstanceCommitResult:
        crash_point("received")
        if not is_valid_uid(req.sop_instance_uid):
            raise InvalidIdentifier("SOP Instance UID is not a valid UID")
        if not is_valid_uid(req.sop_class_uid):
            raise InvalidIdentifier("SOP Class UID is not a valid UID")
        if self._bridge.closing:
            # Checked before writing, so a stopping engine leaves no orphan file behind.
            raise ShuttingDown("radflow is shutting down")
        self._spool.ensure_room(len(req.dataset))
        keys = read_keys(check_structure(req.dataset, req.transfer_syntax_uid))
        if keys.sop_instance_uid != req.sop_instance_uid:
            raise InvalidInput("SOP Instance UID in dataset differs from the request")
        if keys.sop_class_uid != req.sop_class_uid:
            raise SopClassMismatch("SOP Class UID in dataset differs from the request")
        if keys.unknown_charset_terms:
            # Kept as sent; pydicom reads what it can (a misspelt UTF-8 term as UTF-8).
            log.warning("ingress.dimse.c_store.unknown_charset",
                        terms=list(keys.unknown_charset_terms),
                        sop_instance_uid=req.sop_instance_uid, calling_ae=req.calling_ae,
                        peer_host=req.peer_host)
        received_at = time.time()
        # A large dataset streams from its file; ``bytes(b)`` of bytes is ``b`` itself (no copy).
        body: Iterable[bytes] = file_chunks(req.source) if req.source is not None \
            else (bytes(req.dataset),)
        spooled = self._spool.write(
            self._spool.new_id(), itertools.chain((_PREAMBLE, file_meta_bytes(req)), body),
            when=received_at, sync=False)
        crash_point("written")
        record = InstanceRecord(
            object_id=spooled.object_id,
            spool_path=spooled.rel_path,
            sop_class_uid=req.sop_class_uid,
            sop_instance_uid=req.sop_instance_uid,
            transfer_syntax_uid=req.transfer_syntax_uid,
            study_instance_uid=keys.study_instance_uid,
            series_instance_uid=keys.series_instance_uid,
            patient_id=keys.patient_id,
            accession_number=keys.accession_number,
            modality=keys.modality,
            calling_ae=req.calling_ae,
            called_ae=req.called_ae,
            peer_host=req.peer_host,
            listener=req.listener,
            size_bytes=spooled.size,
            sha256=spooled.sha256,
            received_at=datetime.fromtimestamp(received_at, UTC).isoformat(),
        )
        try:
            # Straight to the store's writer thread, which fsyncs the directory entries just
            # before the row commits, at the same time as this thread fsyncs the file.
            pending = self._journal.submit(
                InstanceCommit(record, self._policy, file_durable=False), spooled.dirs_to_sync)
        except BaseException:
            self._spool.remove(spooled.rel_path)
            raise
        sync_error: StorageFailure | None = None
        try:
            self._spool.sync(spooled)
            crash_point("fsync")
        except StorageFailure as exc:
            sync_error = exc
        try:
            result = result_within(pending, self._timeout)
            crash_point("commit")
        except (BridgeTimeout, ShuttingDown):
            # The commit may still land; keep the file so a committed row never lacks its bytes
            # (a file that did not commit is an orphan the next start removes). The journal
            # settles that row by this thread's fsync result, whenever it turns up.
            ok = sync_error is None
            journal_id = self._journal.watch.abandon(spooled.object_id, ok)
            if journal_id is not None:
                self._bridge.post(self._journal.settle_abandoned, journal_id, ok,
                                  spooled.rel_path)
            raise
        except BaseException:
            self._spool.remove(spooled.rel_path)
            raise
        if result.outcome in (InstanceOutcome.STORED, InstanceOutcome.NEW_VERSION):
            self._settle(record, spooled, result, sync_error)
        else:
            self._spool.remove(spooled.rel_path)
            if result.outcome in (InstanceOutcome.IDENTICAL, InstanceOutcome.IGNORED):
                assert result.journal_id is not None
                self._await_original(result.journal_id)
        self._account(req, result, record)
        return result

    def _settle(self, record: InstanceRecord, spooled: SpooledObject,
                result: InstanceCommitResult, sync_error: StorageFailure | None) -> None:
        """The row is committed: keep it if its file is durable, else withdraw it."""
        assert result.journal_id is not None
        journal_id = result.journal_id
        if sync_error is None:
            self._journal.watch.settle(journal_id, ok=True)
            self._bridge.post(self._stored, record, result)
            return
        self._journal.watch.settle(journal_id, ok=False)
        log.error("ingress.dimse.c_store.fsync_failed", sop_instance_uid=record.sop_instance_uid,
                  journal_id=journal_id, detail=str(sync_error),
                  **correlation(study_instance_uid=record.study_instance_uid,
                                accession_number=record.accession_number,
                                patient_id=record.patient_id))
        try:
            self._bridge.call(self._journal.withdraw(journal_id, spooled.rel_path), self._timeout)
        except Exception:  # the row stays "not durable": the next start checks its file
            log.exception("ingress.dimse.c_store.withdraw_failed", journal_id=journal_id)
        raise sync_error

    def _await_original(self, journal_id: int) -> None:
        """A copy of a row committed a moment ago: answer only once that row's file is safe."""
        settled = self._journal.watch.wait(journal_id, self._timeout)
        if settled is None:
            raise BridgeTimeout("the earlier copy of this instance is still being stored")
        if not settled:
            raise StorageFailure("the earlier copy of this instance could not be stored; "
                                 "send it again")

    def _stored(self, record: InstanceRecord, result: InstanceCommitResult) -> None:
        """On the loop, once the row and its file are both durable: mark the row, and announce
        it once the mark is committed."""
        assert result.journal_id is not None
        event = InstanceStored(
            occurred_at=datetime.now(UTC), journal_id=result.journal_id,
            object_id=record.object_id, sop_class_uid=record.sop_class_uid,
            sop_instance_uid=record.sop_instance_uid,
            study_instance_uid=record.study_instance_uid,
            series_instance_uid=record.series_instance_uid,
            transfer_syntax_uid=record.transfer_syntax_uid, calling_ae=record.calling_ae,
            called_ae=record.called_ae, peer_host=record.peer_host,
            listener=record.listener, size_bytes=record.size_bytes,
            version=result.version, accession_number=record.accession_number,
            patient_id=record.patient_id)
        self._journal.mark_durable(result.journal_id, lambda: self._bus.publish(event))

    def _account(self, req: ReceivedInstance, result: InstanceCommitResult,
                 record: InstanceRecord) -> None:
        outcome = result.outcome
        keys = correlation(study_instance_uid=record.study_instance_uid,
                           accession_number=record.accession_number,
                           patient_id=record.patient_id)
        if outcome in (InstanceOutcome.STORED, InstanceOutcome.NEW_VERSION):
            DIMSE_INSTANCES_RECEIVED.labels(req.listener).inc()
            DIMSE_BYTES_RECEIVED.labels(req.listener).inc(len(req.dataset))
            if outcome is InstanceOutcome.NEW_VERSION:
                DIMSE_DUPLICATES.labels(req.listener, "new_version").inc()
                log.info("ingress.dimse.c_store.new_version",
                         sop_instance_uid=req.sop_instance_uid, version=result.version,
                         calling_ae=req.calling_ae, **keys)
            return
        DIMSE_DUPLICATES.labels(req.listener, outcome.value).inc()
        log.info("ingress.dimse.c_store.duplicate", outcome=outcome.value,
                 sop_instance_uid=req.sop_instance_uid, calling_ae=req.calling_ae,
                 journal_id=result.journal_id, **keys)
        if outcome is InstanceOutcome.REJECTED:
            raise DuplicateRejected("SOP Instance UID already stored with other content")
