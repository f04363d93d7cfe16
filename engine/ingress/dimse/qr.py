"""The Query/Retrieve SCP handlers over the spool (C-FIND, C-MOVE, C-GET): thin, synchronous.

Patient Root and Study Root, every level. Each handler parses the Identifier
(:mod:`engine.ingress.dimse.qr_query`), asks the store's Q/R index through the one
:class:`~engine.bridge.LoopBridge` (bounded by a timeout), and answers on the association's
thread: C-FIND answers go out one by one as Pending with C-CANCEL checked between them; C-MOVE
and C-GET read each spooled file and hand it to pynetdicom's C-STORE sub-operations (C-MOVE
on a new association to the Move Destination, which must be a configured destination or in
``query_retrieve.move_destinations``; C-GET on the requestor's own association), with Cancel
checked between sub-operations. Only instances still in the spool are found (the index row
goes with the journal row). It must not hold module state, talk SQL or ``await``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.events import Event
from pynetdicom.presentation import build_context

from engine.bridge import LoopBridge
from engine.durable.qr import QrLocated, QrQuery, QrRecord
from engine.durable.store import Store
from engine.errors import RadflowError
from engine.ingress.dimse.qr_query import QrRequest, answer, parse
from engine.observability import audit_sink
from engine.observability.logging import get_logger
from engine.observability.metrics import QR_INSTANCES_SENT, QR_REQUESTS, QR_SECONDS
from engine.status import DimseStatus, c_find_status_for, error_comment

if TYPE_CHECKING:  # handlers.py binds these handlers, so a runtime import would be circular
    from engine.ingress.dimse.handlers import ListenerPolicy

log = get_logger("engine.ingress.dimse")

QrAnswer = tuple[int | Dataset, Dataset | None]
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_VERIFICATION = "1.2.840.10008.1.1"
_MAX_CONTEXTS = 128  # PS3.8 9.3.2: odd context ids 1..255
_MAX_SUBOPERATIONS = 65_535  # the Number of ... Sub-operations are US

# PS3.4 C.3.1 / C.3.2 (Patient Root and Study Root, FIND / MOVE / GET)
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
FIND_SOP_CLASSES = (PATIENT_ROOT_FIND, STUDY_ROOT_FIND)
RETRIEVE_SOP_CLASSES = (PATIENT_ROOT_MOVE, PATIENT_ROOT_GET, STUDY_ROOT_MOVE, STUDY_ROOT_GET)


@dataclass(frozen=True)
class QrProvider:
    """What the Q/R handlers need, bound once per engine."""

    bridge: LoopBridge
    store: Store
    spool_root: Path
    #: Move Destination AE title -> (host, port)
    move_destinations: Mapping[str, tuple[str, int]]
    find_limit: int
    timeout: float

    def find(self, query: QrQuery) -> list[QrRecord]:
        return self.bridge.call(self.store.qr_find(query), self.timeout)

    def locate(self, query: QrQuery) -> list[QrLocated]:
        return self.bridge.call(self.store.qr_locate(query), self.timeout)

    def read(self, located: QrLocated) -> Dataset:
        return pydicom.dcmread(self.spool_root / located.spool_path)


def _failure(status: DimseStatus, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = int(status)
    ds.ErrorComment = comment[:64]
    return ds


class _TooMany(RadflowError):
    reason = "too_many_matches"


@dataclass
class _Account:
    """Counts and logs one request once, before its final answer (pynetdicom stops iterating
    after a final status, so code after that yield would run only at garbage collection)."""

    policy: ListenerPolicy
    operation: str
    event: Event
    started: float
    done: bool = False
    sent: int = 0
    #: C-MOVE / C-GET once sub-operations began: (destination AE, its host), what was
    #: located and what was handed to pynetdicom to send (the audit trail records both)
    destination: tuple[str, str] | None = None
    located: list[QrLocated] = field(default_factory=list)
    handed: list[QrLocated] = field(default_factory=list)

    def begin_transfer(self, destination: str, host: str, found: list[QrLocated]) -> None:
        self.destination, self.located = (destination, host), found
        self._audit_transfer(True, found, True)

    def _audit_transfer(self, begin: bool, items: list[QrLocated], ok: bool,
                        detail: str = "") -> None:
        assert self.destination is not None
        destination, host = self.destination
        assoc = self.event.assoc
        studies: dict[str, tuple[str, dict[str, int]]] = {}
        for item in self.located:  # every study named, even one nothing of was sent
            studies.setdefault(item.study_instance_uid, (item.patient_id, {}))
        for item in items:
            classes = studies[item.study_instance_uid][1]
            classes[item.sop_class_uid] = classes.get(item.sop_class_uid, 0) + 1
        for item in self.located:
            studies[item.study_instance_uid][1].setdefault(item.sop_class_uid, 0)
        audit_sink.notify(lambda a: a.retrieve(
            begin=begin, move=self.operation == "c_move",
            calling_ae=str(assoc.requestor.ae_title).strip(),
            called_ae=str(assoc.acceptor.ae_title).strip(),
            peer_host=str(assoc.requestor.address), destination_ae=destination,
            destination_host=host, studies=studies, ok=ok, detail=detail))

    def __call__(self, outcome: str, **extra: Any) -> None:
        if self.done:
            return
        self.done = True
        if self.destination is not None:
            whole = outcome == "success" and len(self.handed) == len(self.located)
            self._audit_transfer(False, self.handed, whole, "" if whole else (
                f"{outcome}: {len(self.handed)} of {len(self.located)} instances sent"))
        elapsed = time.perf_counter() - self.started
        QR_SECONDS.labels(self.policy.name, self.operation).observe(elapsed)
        QR_REQUESTS.labels(self.policy.name, self.operation, outcome).inc()
        calling = str(self.event.assoc.requestor.ae_title).strip()
        log.info(f"ingress.dimse.{self.operation}.answered", listener=self.policy.name,
                 calling_ae=calling, outcome=outcome, matches=self.sent,
                 seconds=round(elapsed, 6), **extra)
        if self.operation == "c_find":
            identifier = getattr(self.event.request, "Identifier", None)
            audit_sink.notify(lambda a: a.query(
                calling_ae=calling, called_ae=str(self.event.assoc.acceptor.ae_title).strip(),
                peer_host=str(self.event.assoc.requestor.address),
                sop_class_uid=str(self.event.request.AffectedSOPClassUID or ""),
                identifier=identifier.getvalue() if identifier is not None else b"",
                transfer_syntax_uid=str(self.event.context.transfer_syntax),
                ok=outcome in ("success", "cancelled")))


def _refuse(account: _Account, exc: Exception, find: bool = True) -> Dataset:
    status = DimseStatus.OUT_OF_RESOURCES if isinstance(exc, _TooMany) else c_find_status_for(exc)
    if not find and status == DimseStatus.OUT_OF_RESOURCES:
        status = DimseStatus.UNABLE_TO_CALCULATE_MATCHES
    reason = exc.reason if isinstance(exc, RadflowError) else "internal_error"
    log_fn = log.warning if isinstance(exc, RadflowError) else log.exception
    log_fn(f"ingress.dimse.{account.operation}.failed", listener=account.policy.name,
           reason=reason, status=f"0x{int(status):04X}", detail=str(exc),
           calling_ae=str(account.event.assoc.requestor.ae_title).strip())
    account(reason)
    return _failure(status, error_comment(exc))


def handle_qr_find(event: Event, policy: ListenerPolicy, qr: QrProvider
                   ) -> Iterator[QrAnswer]:
    """EVT_C_FIND for Patient Root and Study Root Query/Retrieve - FIND."""
    account = _Account(policy, "c_find", event, time.perf_counter())
    try:
        try:
            request: QrRequest = parse(event.identifier, limit=qr.find_limit)
            records = qr.find(request.query)
            if len(records) > qr.find_limit:
                raise _TooMany(f"more than {qr.find_limit} matches: narrow the query")
        except Exception as exc:
            yield _refuse(account, exc), None
            return
        retrieve_ae = policy.config.ae_title
        for record in records:
            if event.is_cancelled:
                account("cancelled")
                yield DimseStatus.CANCEL, None
                return
            yield DimseStatus.PENDING, answer(request, record, retrieve_ae)
            account.sent += 1
        account("success", level=request.query.level)
        yield DimseStatus.SUCCESS, None
    finally:
        account("aborted")


def _contexts(found: list[QrLocated]) -> list[Any]:
    """Presentation contexts for the sub-association: each SOP class in the uncompressed
    syntaxes, and in each compressed syntax it is kept in (bytes leave as received)."""
    wanted: dict[tuple[str, tuple[str, ...]], None] = {}
    for item in found:
        ts = item.transfer_syntax_uid
        syntaxes = _UNCOMPRESSED if ts in _UNCOMPRESSED else (ts,)
        wanted[(item.sop_class_uid, syntaxes)] = None
    return [build_context(sop, list(ts)) for sop, ts in list(wanted)[:_MAX_CONTEXTS]]


def _quiet_sub_association(event: Event) -> None:
    """Close pynetdicom's response race on the C-MOVE sub-association: its reactor's
    non-blocking read could take a C-STORE response meant for the sub-operation waiting on it
    ("unexpected C-STORE service message", then a wait until the DIMSE timeout). That
    association only sends, so every message it receives belongs to the blocked ``send_*``.
    The same fix as the C-STORE sender's, which this stage cannot import."""
    dimse = event.assoc.dimse
    blocking_get = dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        if not block:
            return None, None
        return blocking_get(block=True)

    dimse.get_msg = get_msg  # type: ignore[method-assign]


def _retrieve(event: Event, account: _Account, qr: QrProvider, found: list[QrLocated]
              ) -> Iterator[QrAnswer]:
    """The (status, dataset) yields of C-MOVE and C-GET after the sub-operation count."""
    for item in found:
        if event.is_cancelled:
            account("cancelled")
            yield DimseStatus.CANCEL, None
            return
        try:
            ds = qr.read(item)
        except Exception as exc:
            # The file went (retention) or does not read: this sub-operation fails, and the
            # final answer lists it among the failed instances.
            log.warning(f"ingress.dimse.{account.operation}.unreadable",
                        listener=account.policy.name, sop_instance_uid=item.sop_instance_uid,
                        detail=str(exc))
            failed = Dataset()
            failed.SOPInstanceUID = item.sop_instance_uid
            yield DimseStatus.PENDING, failed  # not a valid dataset: counted as failed
            continue
        QR_INSTANCES_SENT.labels(account.policy.name, account.operation).inc()
        account.sent += 1
        account.handed.append(item)
        yield DimseStatus.PENDING, ds
    account("success")
    yield DimseStatus.SUCCESS, None


def _locate(event: Event, account: _Account, qr: QrProvider) -> list[QrLocated]:
    request = parse(event.identifier, limit=_MAX_SUBOPERATIONS, retrieve=True)
    found = qr.locate(request.query)
    if len(found) > _MAX_SUBOPERATIONS:
        raise _TooMany(f"more than {_MAX_SUBOPERATIONS} instances: retrieve less at once")
    return found


def handle_move(event: Event, policy: ListenerPolicy, qr: QrProvider) -> Iterator[Any]:
    """EVT_C_MOVE: yields the destination, the sub-operation count, then the datasets."""
    account = _Account(policy, "c_move", event, time.perf_counter())
    try:
        destination = str(event.move_destination or "").strip()
        address = qr.move_destinations.get(destination)
        if address is None:
            log.warning("ingress.dimse.c_move.destination_unknown", listener=policy.name,
                        calling_ae=str(event.assoc.requestor.ae_title).strip(),
                        move_destination=destination)
            account("destination_unknown")
            yield None, None  # pynetdicom answers Move Destination Unknown (0xA801)
            return
        try:
            found = _locate(event, account, qr)
        except Exception as exc:
            refusal = _refuse(account, exc, find=False)
            # pynetdicom sends a failure status only after the sub-association is up; a
            # Verification context is the least a destination accepts.
            yield address[0], address[1], {"contexts": [build_context(_VERIFICATION)]}
            yield 1
            yield refusal, None
            return
        log.info("ingress.dimse.c_move.started", listener=policy.name,
                 move_destination=destination, instances=len(found))
        yield address[0], address[1], {
            "contexts": _contexts(found),
            "evt_handlers": [(evt.EVT_ESTABLISHED, _quiet_sub_association)]} if found else {}
        yield len(found)
        account.begin_transfer(destination, address[0], found)
        yield from _retrieve(event, account, qr, found)
    finally:
        account("aborted")


def handle_get(event: Event, policy: ListenerPolicy, qr: QrProvider) -> Iterator[Any]:
    """EVT_C_GET: yields the sub-operation count, then the datasets."""
    account = _Account(policy, "c_get", event, time.perf_counter())
    try:
        try:
            found = _locate(event, account, qr)
        except Exception as exc:
            refusal = _refuse(account, exc, find=False)
            yield 1
            yield refusal, None
            return
        yield len(found)
        account.begin_transfer(str(event.assoc.requestor.ae_title).strip(),
                               str(event.assoc.requestor.address), found)
        yield from _retrieve(event, account, qr, found)
    finally:
        account("aborted")
