"""C-STORE SCU sender: spooled instances to a PACS or AI node over DIMSE (pynetdicom).

Owns one association per worker (reused across batches, released after ``idle_close``
seconds), the presentation contexts it proposes, the choice between streaming the spool file
and re-encoding it, and the classification of each C-STORE response (``classify``). It must not
decide retries: every failure becomes a transient or permanent outcome for the dispatcher.

Presentation contexts: per SOP class, one context with only the stored transfer syntax (so an
SCP that supports it cannot pick another and force a needless transcode), plus one with the
destination's fallbacks. An instance whose stored syntax was accepted, and which needs no morph,
is sent straight from the spool file without being decoded (``send_c_store(path)`` with
pynetdicom's ``STORE_SEND_CHUNKED_DATASET``, set once in ``engine.app.configure_libraries``).
Otherwise it is decoded, morphed, and transcoded to the first fallback the SCP accepted.

Why TCP_NODELAY (the ~45 ms stall per C-STORE): pynetdicom's DUL thread writes each P-DATA-TF
PDU with its own ``socket.send`` - the command set in one small write, then the dataset in one
or more. With Nagle's algorithm on, a small segment is held back while an earlier one is still
unacknowledged; the SCP has nothing to say until the dataset is complete, so it delays its ACK
(Linux: up to ~40 ms, the delayed-ACK timer). Write-write-read on one connection therefore
stalls once per message: ~22 instances/s. Setting TCP_NODELAY on the association's socket as
soon as it is established sends every PDU at once.

The "unexpected C-STORE … association lost" pitfall: pynetdicom's association reactor and
``send_c_store`` hand the response queue over with a busy-wait on a flag that can be stale, so
the reactor occasionally takes the C-STORE-RSP itself (logging "Received unexpected C-STORE
service message"), drops it, and the sender waits out the DIMSE timeout and aborts. TCP_NODELAY
makes responses fast enough to hit that window. radflow's SCU associations never serve requests,
so the reactor's non-blocking queue read is turned off for them (the race is gone); and as a
second line, a send that gets no response aborts the association, reconnects and resends every
instance of the batch that had no response yet (at-least-once: the SCP may see one twice, with
the same SOP Instance UID).
"""

from __future__ import annotations

import asyncio
import io
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_preamble
from pynetdicom import build_context
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from engine.dicom.wire import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    FileSpan,
    c_store_rq_command,
    set_nodelay,
    write_message,
)
from engine.egress.classify import Verdict, classify_dimse
from engine.egress.delivery import Delivery, DicomObject, MorphFn, SendOutcome, failed
from engine.egress.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from engine.egress.objects import (
    is_large,
    morphed,
    transcode,
    verified_bytes,
    verified_file,
)
from engine.observability.logging import about, get_logger
from engine.observability.metrics import (
    EGRESS_DIMSE_ASSOCIATIONS,
    EGRESS_DIMSE_RECONNECTS,
    EGRESS_TRANSCODED,
)
from engine.reactor import EventDrivenAE
from engine.settings import DimseDestination
from engine.status import DimseStatus
from engine.tls import client_ssl_context, tls_failure

log = get_logger("engine.egress.dimse")

#: PS3.8 9.3.2.2: at most 128 presentation contexts per association
MAX_CONTEXTS = 128
#: resends of the same batch after an association loss before the rest is left to the
#: dispatcher's backoff
MAX_RECONNECTS = 2


class AssociationLost(TransientDeliveryError):
    """The association ended (or went silent) while a C-STORE had no response."""

    reason = "association_lost"


@dataclass(frozen=True, slots=True)
class _Item:
    index: int
    obj: DicomObject


def plan_contexts(objs: Sequence[DicomObject], fallbacks: Sequence[str]
                  ) -> list[tuple[str, tuple[str, ...]]]:
    """(SOP class, transfer syntaxes) to propose for ``objs``, in first-seen order: the stored
    syntax alone, then the fallbacks, per SOP class."""
    out: dict[tuple[str, tuple[str, ...]], None] = {}
    for obj in objs:
        out[(obj.sop_class_uid, (obj.transfer_syntax_uid,))] = None
        out[(obj.sop_class_uid, tuple(fallbacks))] = None
    return list(out)


def chunk_by_contexts(items: Sequence[_Item], fallbacks: Sequence[str],
                      limit: int = MAX_CONTEXTS) -> list[list[_Item]]:
    """Split ``items`` (in order) so each part needs at most ``limit`` contexts."""
    parts: list[list[_Item]] = []
    current: list[_Item] = []
    needed: set[tuple[str, tuple[str, ...]]] = set()
    for item in items:
        extra = set(plan_contexts([item.obj], fallbacks)) - needed
        if current and len(needed) + len(extra) > limit:
            parts.append(current)
            current, needed = [], set()
            extra = set(plan_contexts([item.obj], fallbacks))
        current.append(item)
        needed |= extra
    if current:
        parts.append(current)
    return parts


def handshake_failure(tls: tuple[ssl.SSLContext, str] | None, ae_title: str, host: str,
                      port: int) -> TransientDeliveryError | None:
    """The error for an association that failed in its TLS handshake (``tls``: pynetdicom's
    ``tls_args``), or ``None``. Transient like any refusal: a certificate is fixed in
    configuration, and the queue then drains."""
    error = tls_failure(tls[0] if tls else None)
    if error is None:
        return None
    return TransientDeliveryError(f"TLS handshake with {ae_title}@{host}:{port} failed: {error}",
                                  reason="tls_failed")


def _quiet_reactor(assoc: Association) -> None:
    """Close pynetdicom's response race for an SCU-only association (see module docstring):
    the association reactor's non-blocking read is the only ``get_msg(block=False)`` caller,
    and on an association that never serves requests every message belongs to the ``send_*``
    call blocked on the queue."""
    dimse = assoc.dimse
    blocking_get = dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        if not block:
            return None, None
        return blocking_get(block=True)

    dimse.get_msg = get_msg  # type: ignore[method-assign]


def _park_reactor(assoc: Association) -> None:
    """Pause the association reactor for good (it only serves requests, and an SCU
    association gets none); release and abort restart it to finish."""
    assoc._reactor_checkpoint.clear()
    deadline = time.monotonic() + 1.0
    while not assoc._is_paused and time.monotonic() < deadline:
        time.sleep(0.0001)


def dataset_offset(data: bytes) -> int:
    """Where the dataset starts in a Part 10 file: after the preamble, ``DICM`` and the file
    meta group, whose length (0002,0000) is its first element (PS3.10 7.1)."""
    head = data[:144]
    if len(head) == 144 and head[128:132] == b"DICM" and head[132:138] == b"\x02\x00\x00\x00UL":
        return 144 + int.from_bytes(head[140:144], "little")
    # No group length: let pydicom walk the group.
    fp = io.BytesIO(data)
    read_preamble(fp, False)
    read_dataset(fp, is_implicit_VR=False, is_little_endian=True,
                 stop_when=lambda tag, _vr, _length: tag.group != 2)
    return fp.tell()


def large_dataset(path: Path) -> FileSpan:
    """The dataset of a spooled Part 10 file too large to read whole: where it starts (from
    the file's first 64 KiB, which hold the meta group) to the end of the file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64 * 1024)
        offset = dataset_offset(head)
        return FileSpan(path, offset, path.stat().st_size - offset)
    except Exception as exc:  # pydicom raises many types for a damaged meta
        raise PermanentDeliveryError(f"cannot send: {exc}", reason="unsendable") from exc


def _send_direct(assoc: Association, context_id: int, command: bytes,
                 dataset: bytes | memoryview | FileSpan) -> None:
    """Write one message's P-DATA-TF PDUs at once (:func:`engine.dicom.wire.write_message`).

    pynetdicom hands each PDU to its DUL thread, which encodes and writes it on its next loop
    turn: for a 0.5 MB instance to a peer taking 16 KiB PDUs that is 32 hand-overs between two
    threads contending for the GIL, ~5 ms per instance. Plain TCP only: an SSL socket must not
    be written by one thread while another reads it, so TLS uses the DUL.
    """
    sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    if sock is None:
        raise AssociationLost("the association has no socket")
    write_message(assoc, sock, context_id, command, dataset)


def open_association(ae: EventDrivenAE, host: str, port: int, *, ae_title: str,
                     contexts: list[PresentationContext],
                     tls: tuple[ssl.SSLContext, str] | None,
                     max_pdu: int | None = None) -> Association:
    """An established association to ``ae_title@host:port``, or the transient error that
    says why not: ``unreachable``, ``tls_failed`` (with the handshake's own words) or
    ``association_rejected`` / ``association_failed``. Shared by the C-STORE and MPPS senders
    and by the destination check."""
    try:
        assoc = ae.associate(host, port, contexts=contexts, ae_title=ae_title,
                             max_pdu=max_pdu if max_pdu is not None else ae.maximum_pdu_size,
                             tls_args=tls)
    except (OSError, RuntimeError, ValueError) as exc:
        raise TransientDeliveryError(f"cannot associate: {exc}", reason="unreachable") from exc
    if not assoc.is_established:
        tls_failed = handshake_failure(tls, ae_title, host, port)
        if tls_failed is not None:
            raise tls_failed
        # Refused (wrong AE title, not allowed) is a site configuration matter and not an
        # object's fault: transient, so fixing the config lets the queue drain.
        if assoc.is_rejected:
            raise TransientDeliveryError(f"association rejected by {ae_title}@{host}:{port}",
                                         reason="association_rejected")
        unreachable = _connect_error(host, port, ae.connection_timeout)
        if unreachable is not None:
            raise TransientDeliveryError(f"cannot connect to {host}:{port}: {unreachable}",
                                         reason="unreachable")
        how = "aborted" if assoc.is_aborted else "failed"
        raise TransientDeliveryError(f"association {how} by {ae_title}@{host}:{port} during "
                                     "negotiation", reason="association_failed")
    set_nodelay(assoc)
    return assoc


def _connect_error(host: str, port: int, timeout: float | None) -> str | None:
    """Why a TCP connection to ``host:port`` fails now (``None`` if it opens).

    pynetdicom logs a failed connect and returns an association that is merely "not
    established": the operating system's words ("Connection refused", "No route to host")
    are lost. Trying the connection once more, only on that failure path, recovers them.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout or 15.0):
            return None
    except TimeoutError:
        return f"no answer within {timeout or 15.0:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)


def verify(ae: EventDrivenAE, host: str, port: int, *, ae_title: str,
           tls: tuple[ssl.SSLContext, str] | None) -> str:
    """C-ECHO ``ae_title@host:port`` on an association of its own (blocking); a short text
    of the answer, or a :class:`DeliveryError` with the exact reason."""
    assoc = open_association(ae, host, port, ae_title=ae_title,
                             contexts=[build_context(Verification)], tls=tls)
    try:
        if not assoc.accepted_contexts:
            raise TransientDeliveryError(f"{ae_title}@{host}:{port} does not accept "
                                         "Verification (C-ECHO)", reason="context_rejected")
        status = assoc.send_c_echo()
        code = getattr(status, "Status", None)
        if code is None:
            raise TransientDeliveryError("no C-ECHO response (timeout or association lost)",
                                         reason="association_lost")
        if int(code) != DimseStatus.SUCCESS:
            raise TransientDeliveryError(f"C-ECHO answered 0x{int(code):04X}",
                                         reason=f"status_{int(code):04x}", status=int(code))
        return f"C-ECHO 0x0000 from {ae_title}@{host}:{port}"
    finally:
        if assoc.is_established:
            try:
                assoc.release()
            except Exception:  # the peer vanished: nothing left to release politely
                assoc.abort()


class DimseSender:
    """One worker's C-STORE SCU for one destination (not thread-safe: one batch at a time)."""

    def __init__(self, name: str, config: DimseDestination, spool_root: Path,
                 morph: MorphFn | None = None) -> None:
        self.name = name
        self.config = config
        self.spool_root = spool_root
        self.morph = morph
        self.max_batch = config.batch_size
        self._fallbacks = tuple(config.transfer_syntaxes)
        self._ae = EventDrivenAE(ae_title=config.calling_ae_title)
        self._ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        self._ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        self._ae.acse_timeout = config.timeout
        self._ae.dimse_timeout = config.timeout
        self._ae.network_timeout = config.timeout
        self._ae.connection_timeout = min(config.timeout, 15.0)
        self._ae.maximum_pdu_size = config.max_pdu_size
        self._tls = ((client_ssl_context(config.tls),
                      config.tls.server_hostname or config.host) if config.tls else None)
        self._assoc: Association | None = None
        self._proposed: set[tuple[str, tuple[str, ...]]] = set()
        self._last_used = 0.0
        self._msg_id = 0
        self._lock = threading.Lock()  # one batch at a time, even if misused

    # --- the Sender protocol ---------------------------------------------------------------
    async def send(self, batch: Sequence[Delivery]) -> list[SendOutcome]:
        return await asyncio.to_thread(self.send_batch, batch)

    async def idle(self) -> None:
        if self._assoc is not None and \
                time.monotonic() - self._last_used >= self.config.idle_close:
            await asyncio.to_thread(self._release_idle)

    async def close(self) -> None:
        await asyncio.to_thread(self._close_sync)

    def _release_idle(self) -> None:
        # Called between batches (the worker found nothing to send): the sender lives on.
        with self._lock:
            self._release()

    async def check(self) -> str:
        """C-ECHO with this destination's AE titles, TLS and timeouts."""
        return await asyncio.to_thread(verify, self._ae, self.config.host, self.config.port,
                                       ae_title=self.config.ae_title, tls=self._tls)

    def _close_sync(self) -> None:
        # The sender's end. A batch cancelled at shutdown (after the grace) may still be
        # running on its thread: wait for it a moment, then abort rather than release an
        # association another thread is using, or is still negotiating.
        self._ae.refuse_new()  # that batch must not open another association
        if self._lock.acquire(timeout=1.0):
            try:
                self._release()
            finally:
                self._lock.release()
            return
        aborted = self._abort()
        if aborted:
            # pynetdicom then reports an "ACSE timeout" for a request cut short: say why first.
            log.info("egress.dimse.aborted", destination=self.name, associations=aborted,
                     why="stopping while a batch was still under way")

    # --- the worker thread -----------------------------------------------------------------
    def send_batch(self, batch: Sequence[Delivery]) -> list[SendOutcome]:
        """Deliver ``batch`` in order (blocking)."""
        with self._lock:
            outcomes: list[SendOutcome | None] = [None] * len(batch)
            items: list[_Item] = []
            for i, delivery in enumerate(batch):
                try:
                    items.append(_Item(i, DicomObject.of(delivery)))
                except DeliveryError as exc:
                    outcomes[i] = failed(exc)
            for part in chunk_by_contexts(items, self._fallbacks):
                self._send_part(part, outcomes)
            self._last_used = time.monotonic()
            return [o if o is not None else failed(TransientDeliveryError("not sent"))
                    for o in outcomes]

    def _send_part(self, part: list[_Item], outcomes: list[SendOutcome | None]) -> None:
        pending = list(part)
        reconnects = 0
        while pending:
            try:
                assoc = self._association_for([it.obj for it in pending])
            except DeliveryError as exc:
                for it in pending:
                    outcomes[it.index] = failed(exc)
                return
            try:
                while pending:
                    item = pending[0]
                    outcomes[item.index] = self._store_one(assoc, item.obj)
                    pending.pop(0)
            except AssociationLost as exc:
                # Everything from ``item`` on had no response: abort, reconnect, resend.
                self._abort()
                reconnects += 1
                EGRESS_DIMSE_RECONNECTS.labels(self.name, exc.reason).inc()
                log.warning("egress.dimse.association_lost", destination=self.name,
                            unanswered=len(pending), reconnect=reconnects, detail=str(exc))
                if reconnects > MAX_RECONNECTS:
                    for it in pending:
                        outcomes[it.index] = failed(exc)
                    return

    def _store_one(self, assoc: Association, obj: DicomObject) -> SendOutcome:
        with about(destination=self.name, sop_instance_uid=obj.sop_instance_uid):
            return self._store_one_about(assoc, obj)

    def _store_one_about(self, assoc: Association, obj: DicomObject) -> SendOutcome:
        started = time.perf_counter()
        notes: dict[str, Any] = {}
        try:
            context = self._context_for(assoc, obj.sop_class_uid, obj.transfer_syntax_uid)
            dataset: memoryview | FileSpan | Dataset
            if is_large(obj) and not obj.morph and self._tls is None \
                    and context.transfer_syntax[0] == obj.transfer_syntax_uid:
                # Too large to hold: verified by a streaming read, sent from the file.
                status = self._c_store(assoc, obj, context, large_dataset(
                    verified_file(obj, self.spool_root)))
                return self._outcome(status, started, notes)
            data = verified_bytes(obj, self.spool_root)  # before a byte of it is sent
            if obj.morph or context.transfer_syntax[0] != obj.transfer_syntax_uid:
                ds = morphed(data, obj.morph, self.morph, obj.secret_fingerprint)
                current = str(ds.file_meta.get("TransferSyntaxUID", obj.transfer_syntax_uid)
                              if hasattr(ds, "file_meta") else obj.transfer_syntax_uid)
                if current != obj.transfer_syntax_uid:
                    # The morph re-encoded the pixels (cleaning them decompresses): choose the
                    # context for what is sent now.
                    context = self._context_for(assoc, obj.sop_class_uid, current)
                target = str(context.transfer_syntax[0])
                if target != current:
                    ds = transcode(ds, target)
                    EGRESS_TRANSCODED.labels(self.name).inc()
                    notes["transcoded_to"] = target
                if obj.morph:
                    notes["morphed"] = len(obj.morph)
                dataset = ds
            else:
                try:
                    dataset = memoryview(data)[dataset_offset(data):]
                except Exception as exc:  # pydicom raises many types for a damaged meta
                    raise PermanentDeliveryError(f"cannot send: {exc}",
                                                 reason="unsendable") from exc
            status = self._c_store(assoc, obj, context, dataset)
        except DeliveryError as exc:
            if isinstance(exc, AssociationLost):
                raise
            return failed(exc, time.perf_counter() - started)
        return self._outcome(status, started, notes)

    @staticmethod
    def _outcome(status: int, started: float, notes: dict[str, Any]) -> SendOutcome:
        seconds = time.perf_counter() - started
        code = int(status)
        notes["status"] = f"0x{code:04X}"
        verdict = classify_dimse(code)
        if verdict is Verdict.DELIVERED:
            return SendOutcome(None, seconds, notes)
        cls = PermanentDeliveryError if verdict is Verdict.PERMANENT else TransientDeliveryError
        return SendOutcome(cls(f"C-STORE answered 0x{code:04X}", reason=f"status_{code:04x}",
                               status=code), seconds, notes)

    def _c_store(self, assoc: Association, obj: DicomObject, context: PresentationContext,
                 dataset: memoryview | FileSpan | Dataset) -> int:
        """One C-STORE on ``context``; the response status.

        pynetdicom's ``send_c_store`` is not used: it pauses the association reactor with a
        sleep-polled hand-over on every call (up to ~1 ms each, and the race described above),
        and builds the command through pydicom. radflow parks that reactor once per
        association (:func:`_park_reactor`), builds the command itself, writes the PDUs
        (:func:`_send_direct`) and reads the response from pynetdicom's DIMSE queue.
        """
        if not assoc.is_established:
            raise AssociationLost("association ended")
        self._msg_id = self._msg_id % 65535 + 1
        try:
            data: bytes | memoryview | FileSpan
            if isinstance(dataset, memoryview | FileSpan):
                # From the spool: the dataset bytes after the file meta, unchanged.
                data = dataset
            else:
                ts = context.transfer_syntax[0]
                encoded = encode(dataset, ts.is_implicit_VR, ts.is_little_endian,
                                 ts.is_deflated)
                if encoded is None:
                    raise ValueError("pydicom could not encode the dataset")
                data = encoded
        except (OSError, ValueError) as exc:
            raise PermanentDeliveryError(f"cannot send: {exc}", reason="unsendable") from exc
        sop_class, sop_instance = obj.sop_class_uid, obj.sop_instance_uid
        if isinstance(dataset, Dataset):
            # A morph may remap UIDs: the command names the instance actually sent.
            sop_class = str(dataset.get("SOPClassUID", sop_class))
            sop_instance = str(dataset.get("SOPInstanceUID", sop_instance))
        command = c_store_rq_command(self._msg_id, sop_class, sop_instance)
        context_id = int(context.context_id or 0)
        try:
            if self._tls is None:
                _send_direct(assoc, context_id, command, data)
            else:
                req = C_STORE()
                req.MessageID = self._msg_id
                req.AffectedSOPClassUID = sop_class
                req.AffectedSOPInstanceUID = sop_instance
                req.Priority = 0x0002
                assert not isinstance(data, FileSpan)  # large objects over TLS are read whole
                req.DataSet = io.BytesIO(data)
                assoc.dimse.send_msg(req, context_id)
            _cx, rsp = assoc.dimse.get_msg(block=True)
        except OSError as exc:
            raise AssociationLost(f"connection error: {exc}") from exc
        if rsp is None:
            # The DIMSE timeout passed, or the peer aborted / closed the connection.
            raise AssociationLost("no C-STORE response (timeout or association lost)")
        if not isinstance(rsp, C_STORE) or rsp.MessageIDBeingRespondedTo != self._msg_id:
            raise AssociationLost(f"unexpected answer {type(rsp).__name__} to C-STORE "
                                  f"{self._msg_id}")
        status = rsp.Status
        if status is None:
            raise AssociationLost("C-STORE response without a status")
        return int(status)

    # --- associations ----------------------------------------------------------------------
    def _context_for(self, assoc: Association, sop_class_uid: str, transfer_syntax_uid: str
                     ) -> PresentationContext:
        accepted = [cx for cx in assoc.accepted_contexts
                    if cx.abstract_syntax == sop_class_uid]
        for cx in accepted:
            if cx.transfer_syntax[0] == transfer_syntax_uid:
                return cx
        for ts in self._fallbacks:  # the destination's order of preference
            for cx in accepted:
                if cx.transfer_syntax[0] == ts:
                    return cx
        raise PermanentDeliveryError(
            f"{self.config.ae_title} accepts SOP class {sop_class_uid} in none of the "
            f"proposed transfer syntaxes", reason="context_rejected")

    def _association_for(self, objs: Sequence[DicomObject]) -> Association:
        needed = set(plan_contexts(objs, self._fallbacks))
        assoc = self._assoc
        if assoc is not None and assoc.is_established and needed <= self._proposed:
            return assoc
        # Keep the contexts already in use when they fit: mixed batches then reuse one
        # association instead of renegotiating on every change of SOP class.
        wanted = needed | self._proposed if len(needed | self._proposed) <= MAX_CONTEXTS \
            else needed
        self._release()
        ordered = sorted(wanted)
        contexts = [build_context(sop, list(ts)) for sop, ts in ordered]
        started = time.perf_counter()
        try:
            assoc = open_association(self._ae, self.config.host, self.config.port,
                                     ae_title=self.config.ae_title, contexts=contexts,
                                     tls=self._tls, max_pdu=self.config.max_pdu_size)
        except TransientDeliveryError as exc:
            EGRESS_DIMSE_ASSOCIATIONS.labels(
                self.name, "rejected" if exc.reason == "association_rejected" else "failed"
            ).inc()
            raise
        _quiet_reactor(assoc)
        _park_reactor(assoc)
        EGRESS_DIMSE_ASSOCIATIONS.labels(self.name, "established").inc()
        log.info("egress.dimse.associated", destination=self.name,
                 called_ae=self.config.ae_title, calling_ae=self.config.calling_ae_title,
                 contexts=len(contexts), accepted=len(assoc.accepted_contexts),
                 seconds=round(time.perf_counter() - started, 4))
        self._assoc = assoc
        self._proposed = set(ordered)
        return assoc

    def _release(self) -> None:
        assoc, self._assoc = self._assoc, None
        self._proposed = set()
        if assoc is None:
            return
        if assoc.is_established:
            try:
                assoc.release()
            except Exception:  # the peer vanished: nothing left to release politely
                assoc.abort()
            log.debug("egress.dimse.released", destination=self.name)

    def _abort(self) -> int:
        """Abort this sender's associations, one still being negotiated included (it is not
        ``_assoc`` yet); how many."""
        assoc, self._assoc = self._assoc, None
        self._proposed = set()
        aborted = 0
        if assoc is not None and not assoc.is_aborted:
            assoc.abort()
            aborted = 1
        return aborted + self._ae.abort_all()
