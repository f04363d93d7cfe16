"""The Modality Worklist C-FIND SCP handler: thin, synchronous, on the association's thread.

:func:`handle_find` parses the Identifier (``engine.worklist.query``), fetches candidate rows from
the worklist through the one :class:`~engine.bridge.LoopBridge` (the store answers from its
indexes on its reader thread), makes the exact PS3.4 check and builds each answer here, on the
association's own thread, so the event loop only ever runs the indexed lookup. Answers go out
one by one as Pending, with C-CANCEL checked between them; on a plain-TCP association in a Little
Endian syntax each is encoded from the query's compiled shape and written straight to the peer
(``engine.worklist.answer``, ``engine.dicom.wire``), otherwise pynetdicom encodes and sends the
Dataset. Failures become named statuses from ``engine.status``. It must not hold module state,
talk SQL or ``await``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.events import Event

from engine.bridge import LoopBridge
from engine.dicom import charsets, wire
from engine.errors import RadflowError
from engine.observability import audit_sink
from engine.observability.logging import get_logger
from engine.observability.metrics import MWL_FIND_MATCHES, MWL_FIND_REQUESTS, MWL_FIND_SECONDS
from engine.records.worklist import StoredWorklistItem, WorklistItem
from engine.status import DimseStatus, c_find_status_for, error_comment
from engine.worklist import charset
from engine.worklist.query import MwlQuery, item_texts
from engine.worklist.service import WorklistService

if TYPE_CHECKING:  # handlers.py binds handle_find, so a runtime import would be circular
    from engine.ingress.dimse.handlers import ListenerPolicy

log = get_logger("engine.ingress.dimse")

FindAnswer = tuple[int | Dataset, Dataset | None]


@dataclass(frozen=True)
class MwlProvider:
    """What the C-FIND handler needs, bound once per listener."""

    bridge: LoopBridge
    worklist: WorklistService
    timeout: float

    def candidates(self, query: MwlQuery) -> list[StoredWorklistItem]:
        """Candidate rows for ``query``, fetched on the loop (blocks this thread, bounded)."""
        return self.bridge.call(self.worklist.find_candidates(query), self.timeout)


def _failure(status: DimseStatus, comment: str) -> Dataset:
    answer = Dataset()
    answer.Status = int(status)
    answer.ErrorComment = comment[:64]
    return answer


def _sort_key(stored: StoredWorklistItem) -> tuple[str, str, int]:
    item = stored.item
    return (item.scheduled_procedure_step_start_date, item.scheduled_procedure_step_start_time,
            stored.id)


def answer_charset(item: WorklistItem) -> tuple[str, ...]:
    """The item's character set when that can hold its texts, else UTF-8."""
    if charsets.fits(item_texts(item), item.specific_character_set):
        return item.specific_character_set
    # pydicom would refuse to encode it (writing validation is RAISE) and pynetdicom would
    # then fail the whole C-FIND with 0xC312; UTF-8 holds every name.
    return charset.UTF8


def answer_for(query: MwlQuery, item: WorklistItem) -> Dataset:
    """The answer dataset, in :func:`answer_charset`."""
    return query.response(item, answer_charset(item))


class _DirectAnswers:
    """Pending answers written straight to the association (see ``engine.dicom.wire``):
    encoded from the query's compiled shape instead of through pydicom and pynetdicom."""

    def __init__(self, event: Event, query: MwlQuery) -> None:
        self._assoc = event.assoc
        self._query = query
        self._context_id = int(event.context.context_id)
        self._implicit = str(event.context.transfer_syntax) == ImplicitVRLittleEndian
        self._message_id = int(event.request.MessageID or 0)
        self._sop_class = str(event.request.AffectedSOPClassUID or "")

    @classmethod
    def for_event(cls, event: Event, query: MwlQuery) -> _DirectAnswers | None:
        if wire.direct_socket(event.assoc) is None:
            return None
        if str(event.context.transfer_syntax) not in (ImplicitVRLittleEndian,
                                                      ExplicitVRLittleEndian):
            return None  # deflate and big endian: pynetdicom's encoder
        return cls(event, query)

    def send(self, status: int, item: WorklistItem) -> bool:
        """Send one pending answer; False when it must go through pynetdicom instead."""
        sock = wire.direct_socket(self._assoc)
        if sock is None:
            return False
        identifier = self._query.response_bytes(item, answer_charset(item), self._implicit)
        if identifier is None:
            return False
        command = wire.response_command(wire.C_FIND_RSP, self._message_id,
                                              self._sop_class, status, has_dataset=True)
        wire.send_response(self._assoc, sock, self._context_id, command, identifier)
        return True


def handle_find(event: Event, policy: ListenerPolicy, mwl: MwlProvider) -> Iterator[FindAnswer]:
    """EVT_C_FIND for the Modality Worklist Information Model - FIND."""
    started = time.perf_counter()
    calling = event.assoc.requestor.ae_title
    state = _FindState()

    def account(outcome: str) -> None:
        # Called before the last answer: pynetdicom stops iterating after a final status, so
        # code after that yield would only run when the generator is garbage-collected.
        if state.done:
            return
        state.done = True
        elapsed = time.perf_counter() - started
        MWL_FIND_SECONDS.labels(policy.name).observe(elapsed)
        MWL_FIND_MATCHES.labels(policy.name).inc(state.sent)
        MWL_FIND_REQUESTS.labels(policy.name, outcome).inc()
        log.info("ingress.dimse.c_find.answered", listener=policy.name, calling_ae=calling,
                 outcome=outcome, matches=state.sent, seconds=round(elapsed, 6))
        audit_sink.notify(lambda a: a.query(
            calling_ae=str(calling).strip(), called_ae=str(event.assoc.acceptor.ae_title).strip(),
            peer_host=str(event.assoc.requestor.address),
            sop_class_uid=str(event.request.AffectedSOPClassUID or ""),
            identifier=_identifier_bytes(event),
            transfer_syntax_uid=str(event.context.transfer_syntax),
            ok=outcome in ("success", "cancelled")))

    try:
        try:
            query = MwlQuery.parse(event.identifier,
                                   case_insensitive_pn=mwl.worklist.pn_case_insensitive)
            candidates = mwl.candidates(query)
            limit = mwl.worklist.find_limit
            hits = sorted((c for c in candidates if query.matches(c.item)), key=_sort_key) \
                if len(candidates) <= limit else candidates
            if len(hits) > limit:
                raise _TooMany(f"more than {limit} matches: narrow the query")
        except Exception as exc:
            status = DimseStatus.OUT_OF_RESOURCES if isinstance(exc, _TooMany) \
                else c_find_status_for(exc)
            reason = exc.reason if isinstance(exc, RadflowError) else "internal_error"
            log_fn = log.warning if isinstance(exc, RadflowError) else log.exception
            log_fn("ingress.dimse.c_find.failed", listener=policy.name, reason=reason,
                   status=f"0x{int(status):04X}", detail=str(exc), calling_ae=calling)
            account(reason)
            yield _failure(status, error_comment(exc)), None
            return
        pending = DimseStatus.PENDING_WARNING if query.unsupported else DimseStatus.PENDING
        direct = _DirectAnswers.for_event(event, query)
        for stored in hits:
            if event.is_cancelled:
                account("cancelled")
                yield DimseStatus.CANCEL, None
                return
            if direct is None or not direct.send(int(pending), stored.item):
                yield pending, answer_for(query, stored.item)
            state.sent += 1
        account("success")
        yield DimseStatus.SUCCESS, None
    finally:
        account("aborted")  # no-op unless the association went away mid-answer


def _identifier_bytes(event: Event) -> bytes:
    """The C-FIND identifier as it came on the wire (the Query audit record carries it)."""
    identifier = getattr(event.request, "Identifier", None)
    return identifier.getvalue() if identifier is not None else b""


@dataclass
class _FindState:
    sent: int = 0
    done: bool = False


class _TooMany(RadflowError):
    reason = "too_many_matches"
