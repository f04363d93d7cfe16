"""The Modality Worklist C-FIND SCP handler: thin, synchronous, on the association's thread.

:func:`handle_find` parses the Identifier (``engine.worklist.query``), fetches candidate rows from
the worklist through the one :class:`~engine.bridge.LoopBridge` (the store answers from its
indexes on its reader thread), makes the exact PS3.4 check and builds each answer here, on the
association's own thread, so the event loop only ever runs the indexed lookup. Answers go out
one by one as Pending, with C-CANCEL checked between them; failures become named statuses from
``engine.status``. It must not hold module state, talk SQL or ``await``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from engine import charsets
from engine.bridge import LoopBridge
from engine.errors import RadflowError
from engine.observability.logging import get_logger
from engine.observability.metrics import MWL_FIND_MATCHES, MWL_FIND_REQUESTS, MWL_FIND_SECONDS
from engine.status import DimseStatus, c_find_status_for, error_comment
from engine.worklist import charset
from engine.worklist.model import StoredWorklistItem, WorklistItem
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


def answer_for(query: MwlQuery, item: WorklistItem) -> Dataset:
    """The answer dataset, in the item's character set when that can hold it, else UTF-8."""
    ds = query.response(item)
    if not charsets.fits(item_texts(item), item.specific_character_set):
        # pydicom would refuse to encode it (writing validation is RAISE) and pynetdicom
        # would then fail the whole C-FIND with 0xC312; UTF-8 holds every name.
        ds.SpecificCharacterSet = charset.UTF8[0]
    return ds


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
        for stored in hits:
            if event.is_cancelled:
                account("cancelled")
                yield DimseStatus.CANCEL, None
                return
            yield pending, answer_for(query, stored.item)
            state.sent += 1
        account("success")
        yield DimseStatus.SUCCESS, None
    finally:
        account("aborted")  # no-op unless the association went away mid-answer


@dataclass
class _FindState:
    sent: int = 0
    done: bool = False


class _TooMany(RadflowError):
    reason = "too_many_matches"
