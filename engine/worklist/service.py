"""The worklist service (D2): HL7 orders in, worklist items kept, C-FIND candidates out.

:class:`WorklistService` owns the durable worklist's rules: a batch of received HL7 messages is
journaled and applied in ONE transaction (group commit), each message in its own savepoint so one
bad message never fails the others; a repeat of an (MSH-3, MSH-4, MSH-10) gets the original
outcome and changes nothing; order controls and ADT updates follow the status life cycle of
:mod:`engine.worklist.model`. It also serves candidate rows for Modality Worklist queries, the
HTTP API and the CLI, purges old final items and refreshes the worklist metrics. It must not
build ACK bytes (HL7 intake does, from :class:`Hl7Outcome`) nor DICOM answers (``query``), and
never answers a message before its commit returned.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

from engine.durable.store import (
    Hl7Disposition,
    Hl7JournalEntry,
    Hl7JournalRecord,
    Store,
    WorklistTxn,
)
from engine.errors import InvalidInput
from engine.hl7.ack import AckError, Hl7ErrorCode
from engine.hl7.message import Hl7Message, Hl7ParseError
from engine.observability.logging import correlation, get_logger
from engine.observability.metrics import WORKLIST_ITEMS, WORKLIST_PURGED
from engine.records.worklist import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    StoredWorklistItem,
    WorklistItem,
    WorklistStatus,
)
from engine.records.worklist_criteria import Constraint
from engine.status import AckCode
from engine.worklist.mapping import WorklistMapping
from engine.worklist.model import (
    Demographics,
    OrderChange,
    OrderChanges,
    OrderControl,
    PatientMerge,
    PatientUpdate,
    WorklistChange,
    can_transition,
    demographics_apply,
)
from engine.worklist.query import MwlQuery
from engine.worklist.types import (
    Hl7ContentError,
    Hl7Outcome,
    Hl7Received,
    UnsupportedMessage,
    ack_error_at,
)

log = get_logger("engine.worklist")

__all__ = ["Hl7Outcome", "Hl7Received", "WorklistConflict", "WorklistService",
           "apply_change", "received_from_bytes"]


class WorklistConflict(InvalidInput):
    """A requested change breaks the item's life cycle (e.g. cancelling a completed step)."""

    reason = "worklist_conflict"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def unparsed_error(received: Hl7Received) -> AckError:
    """The ERR of a message that could not be parsed, as journalled and as sent: no MSH
    segment at all is a segment sequence error (100), a bad delimiter, character set or byte
    a data type error (102) at the field that failed."""
    text = received.parse_error or "unparseable message"
    if received.parse_error_at is None:
        return ack_error_at("MSH", Hl7ErrorCode.SEGMENT_SEQUENCE_ERROR, text)
    return ack_error_at(received.parse_error_at, Hl7ErrorCode.DATA_TYPE_ERROR, text)


def received_from_bytes(raw: bytes, *, default_charset: str, peer_host: str = "",
                        listener: str = "api", received_at: str | None = None) -> Hl7Received:
    """Parse ``raw`` into an :class:`Hl7Received` (parse errors kept, not raised)."""
    message: Hl7Message | None = None
    error: str | None = None
    error_at: str | None = None
    try:
        message = Hl7Message.parse(raw, default_charset=default_charset)
    except Hl7ParseError as exc:
        error, error_at = str(exc), exc.field_path
    return Hl7Received(raw=raw, message=message, parse_error=error, peer_host=peer_host,
                       listener=listener, received_at=received_at or now_iso(),
                       parse_error_at=error_at)


# --- applying a planned change (runs inside the store's transaction) -----------------------
def _find_order(txn: WorklistTxn, change: OrderChange) -> list[StoredWorklistItem]:
    found = []
    for stored in txn.items_for_order(change.placer_order_number, change.filler_order_number):
        item = stored.item
        if change.placer_order_number:
            if item.placer_order_number != change.placer_order_number:
                continue
            if change.filler_order_number and item.filler_order_number and \
                    item.filler_order_number != change.filler_order_number:
                continue
        elif item.filler_order_number != change.filler_order_number:
            continue
        # Order numbers are the placer's; another hospital may reuse them.
        if change.source and item.source and item.source != change.source:
            continue
        found.append(stored)
    return found


def _order_label(change: OrderChange) -> str:
    return change.placer_order_number or change.filler_order_number


def _apply_order(txn: WorklistTxn, change: OrderChange, now: str) -> list[int]:
    existing = _find_order(txn, change)
    if change.control is OrderControl.NEW:
        assert change.item is not None
        if existing:
            raise Hl7ContentError(change.order_path, Hl7ErrorCode.DUPLICATE_KEY_IDENTIFIER,
                                  f"order {_order_label(change)} already exists "
                                  f"(worklist item {existing[0].id})")
        item = change.item.replace(status=WorklistStatus.SCHEDULED, created_at=now,
                                   updated_at=now)
        return [txn.insert_item(item)]
    if not existing:
        raise Hl7ContentError(change.order_path, Hl7ErrorCode.UNKNOWN_KEY_IDENTIFIER,
                              f"unknown order {_order_label(change)}")
    ids: list[int] = []
    for stored in existing:
        old = stored.item
        if change.control is OrderControl.CHANGE:
            assert change.item is not None
            if old.status.is_final:
                raise Hl7ContentError(change.order_path, Hl7ErrorCode.APPLICATION_RECORD_LOCKED,
                                      f"order {_order_label(change)} is {old.status.value} "
                                      "and can no longer change")
            new = change.item.replace(
                status=old.status, created_at=old.created_at, updated_at=now,
                # A generated UID must not move under a modality that may already use it.
                study_instance_uid=old.study_instance_uid
                if change.study_uid_generated and old.study_instance_uid
                else change.item.study_instance_uid)
        else:
            assert change.new_status is not None
            if old.status == change.new_status:
                ids.append(stored.id)
                continue  # a repeated cancel or status change is already true
            if not can_transition(old.status, change.new_status):
                raise Hl7ContentError(
                    "ORC-5" if change.control is OrderControl.STATUS_CHANGE else "ORC-1",
                    Hl7ErrorCode.APPLICATION_RECORD_LOCKED,
                    f"order {_order_label(change)} cannot go from {old.status.value} to "
                    f"{change.new_status.value}")
            new = old.replace(status=change.new_status, updated_at=now)
        txn.update_item(stored.id, new)
        ids.append(stored.id)
    return ids


def _patient_items(txn: WorklistTxn, patient_id: str, issuer: str) -> list[StoredWorklistItem]:
    # An item without an issuer belongs to whoever the message names: sites that do not send
    # PID-3.4 still get their updates; two issuers never mix.
    return [s for s in txn.items_for_patient(patient_id, None)
            if not issuer or s.item.issuer_of_patient_id in ("", issuer)]


def _apply_demographics(txn: WorklistTxn, items: list[StoredWorklistItem],
                        patient: Demographics, now: str) -> list[int]:
    ids = []
    for stored in items:
        if stored.item.status.is_final:
            continue  # a final step is never changed again (it is what was performed)
        txn.update_item(stored.id, demographics_apply(stored.item, patient).replace(
            updated_at=now))
        ids.append(stored.id)
    return ids


def apply_change(txn: WorklistTxn, change: WorklistChange, now: str) -> tuple[int, ...]:
    """Write ``change`` through ``txn``; the worklist item ids it touched.

    Raises :class:`Hl7ContentError` when the change does not fit the current state (unknown
    order, duplicate order, life-cycle violation); the caller's savepoint undoes partial work.
    """
    if isinstance(change, OrderChanges):
        ids: list[int] = []
        for order in change.orders:
            ids.extend(_apply_order(txn, order, now))
        return tuple(ids)
    if isinstance(change, PatientUpdate):
        p = change.patient
        return tuple(_apply_demographics(
            txn, _patient_items(txn, p.patient_id, p.issuer_of_patient_id), p, now))
    if isinstance(change, PatientMerge):
        return tuple(_apply_demographics(
            txn, _patient_items(txn, change.prior_patient_id, change.prior_issuer),
            change.patient, now))
    raise TypeError(f"unknown change {type(change).__name__}")


# --- outcomes ------------------------------------------------------------------------------
def _errors_json(errors: Sequence[AckError]) -> str:
    return json.dumps([{**asdict(e), "code": int(e.code)} for e in errors],
                      ensure_ascii=False)


def errors_from_json(text: str) -> tuple[AckError, ...]:
    out = []
    for raw in json.loads(text or "[]"):
        raw["code"] = Hl7ErrorCode(raw["code"])
        out.append(AckError(**raw))
    return tuple(out)


def _disposition(code: AckCode, errors: Sequence[AckError] = (), text: str | None = None,
                 ids: tuple[int, ...] = (), *, retryable: bool = False) -> Hl7Disposition:
    return Hl7Disposition(ack_code=code.value, errors_json=_errors_json(errors), text=text,
                          worklist_item_ids=ids, applied=code is AckCode.APPLICATION_ACCEPT,
                          retryable=retryable)


def _entry(received: Hl7Received) -> Hl7JournalEntry:
    msg = received.message
    if msg is None:
        return Hl7JournalEntry(None, None, None, None, None, received.peer_host,
                               received.listener, received.received_at, received.raw)
    return Hl7JournalEntry(msg.sending_application, msg.sending_facility,
                           msg.control_id or None, msg.message_type, msg.trigger_event,
                           received.peer_host, received.listener, received.received_at,
                           received.raw)


def _order_keys(plans: Sequence[WorklistChange | Exception | None]) -> list[tuple[str, str]]:
    """The (placer, filler) order numbers the plans will look up (``_find_order``)."""
    return [(o.placer_order_number, o.filler_order_number) for plan in plans
            if isinstance(plan, OrderChanges) for o in plan.orders]


def change_keys(plan: WorklistChange | Exception | None) -> dict[str, str]:
    """The correlation keys of a planned change: what ties the message to its order's images,
    steps and deliveries in logs and events (several orders in one message: comma-joined)."""
    if isinstance(plan, OrderChanges):
        items = [o.item for o in plan.orders if o.item is not None]

        def joined(values: Sequence[str]) -> str:
            return ",".join(dict.fromkeys(v for v in values if v))

        return correlation(
            placer_order_number=joined([o.placer_order_number for o in plan.orders]),
            filler_order_number=joined([o.filler_order_number for o in plan.orders]),
            accession_number=joined([i.accession_number for i in items]),
            study_instance_uid=joined([i.study_instance_uid for i in items]),
            patient_id=joined([i.patient_id for i in items]))
    if isinstance(plan, PatientUpdate | PatientMerge):
        return correlation(patient_id=plan.patient.patient_id)
    return {}


class WorklistService:
    """The worklist of one engine."""

    def __init__(self, store: Store, mapping: WorklistMapping, *, retention_days: float = 30.0,
                 pn_case_insensitive: bool = True, find_limit: int = 10_000,
                 default_charset: str = "ASCII") -> None:
        self.store = store
        self.mapping = mapping
        self.retention_days = retention_days
        self.pn_case_insensitive = pn_case_insensitive
        self.find_limit = find_limit
        self.default_charset = default_charset

    # --- HL7 -------------------------------------------------------------------------------
    async def accept_hl7_batch(self, items: Sequence[Hl7Received]) -> list[Hl7Outcome]:
        """Journal and apply ``items`` in one transaction; one outcome per item, in order.

        The raw bytes are stored in the journal row itself, so they are durable with the very
        commit after which the caller may answer ``AA``. Raises ``StorageFailure`` when the
        transaction fails: then nothing of the batch is kept and every message must be answered
        as not taken (AR), never AA.
        """
        if not items:
            return []
        now = now_iso()

        # Planning is pure and the costliest step: done here, it overlaps the writer thread's
        # previous commit instead of holding the single writer (and its lock) for every batch.
        plans = [self._plan(received) for received in items]

        def apply(txn: WorklistTxn, index: int) -> Hl7Disposition:
            # Runs on the store's writer thread, inside the message's savepoint.
            return self._decide(txn, items[index], plans[index], now)

        results = await self.store.commit_hl7_batch([_entry(r) for r in items], apply,
                                                    _order_keys(plans))
        outcomes = []
        for received, plan, result in zip(items, plans, results, strict=True):
            disp = result.disposition
            outcome = Hl7Outcome(code=disp.ack_code, errors=errors_from_json(disp.errors_json),
                                 text=disp.text, duplicate=result.duplicate,
                                 journal_id=result.journal_id,
                                 worklist_item_ids=disp.worklist_item_ids,
                                 keys=change_keys(plan))
            outcomes.append(outcome)
            msg = received.message
            # Debug: ingress.hl7.ack_sent already logs every message at info.
            log.debug("worklist.hl7.applied" if not result.duplicate else "worklist.hl7.duplicate",
                     journal_id=result.journal_id, ack_code=outcome.code,
                     message_type=f"{msg.message_type}^{msg.trigger_event}" if msg else None,
                     control_id=msg.control_id if msg else None,
                     worklist_item_ids=list(outcome.worklist_item_ids), **outcome.keys,
                     # Where and which code only: error texts may quote patient data.
                     errors=[_error_key(e) for e in outcome.errors] or None)
        return outcomes

    def _plan(self, received: Hl7Received) -> WorklistChange | Exception | None:
        """The message's planned change, or the exception planning raised (None: unparsed)."""
        if received.message is None:
            return None
        try:
            return self.mapping.plan(received.message)
        except Exception as exc:
            return exc

    def _decide(self, txn: WorklistTxn, received: Hl7Received,
                plan: WorklistChange | Exception | None, now: str) -> Hl7Disposition:
        msg = received.message
        if msg is None or plan is None:
            return _disposition(AckCode.APPLICATION_REJECT, (unparsed_error(received),),
                                received.parse_error or "unparseable message")
        try:
            if isinstance(plan, Exception):
                raise plan
            ids = apply_change(txn, plan, now)
        except UnsupportedMessage as exc:
            return _disposition(AckCode.APPLICATION_REJECT, (exc.ack_error(),), exc.text)
        except Hl7ContentError as exc:
            return _disposition(AckCode.APPLICATION_ERROR, (exc.ack_error(),), str(exc))
        except Exception as exc:
            # A bug or an unexpected state must not fail the batch: AR tells the sender to try
            # again, and "retryable" lets that resend be processed instead of answered from
            # the journal.
            if _is_storage_error(exc):
                raise
            log.exception("worklist.hl7.apply_failed", control_id=msg.control_id)
            error = AckError(code=Hl7ErrorCode.APPLICATION_INTERNAL_ERROR,
                             text="internal error while applying the message")
            return _disposition(AckCode.APPLICATION_REJECT, (error,), error.text,
                                retryable=True)
        return _disposition(AckCode.APPLICATION_ACCEPT, ids=ids)

    def received(self, raw: bytes, *, peer_host: str = "", listener: str = "api"
                 ) -> Hl7Received:
        """Parse ``raw`` with this service's default character set."""
        return received_from_bytes(raw, default_charset=self.default_charset,
                                   peer_host=peer_host, listener=listener)

    async def hl7_messages(self, ack_codes: Sequence[str] | None = None, limit: int = 100,
                           offset: int = 0) -> tuple[int, list[Hl7JournalRecord]]:
        total = await self.store.count_hl7_messages(ack_codes)
        return total, await self.store.list_hl7_messages(ack_codes, limit, offset)

    # --- C-FIND ----------------------------------------------------------------------------
    async def find_candidates(self, query: MwlQuery) -> list[StoredWorklistItem]:
        """Active items meeting the query's indexed constraints (at most ``find_limit + 1``,
        so the caller can tell an oversized answer)."""
        return await self.store.find_worklist(query.constraints, ACTIVE_STATUSES,
                                              self.find_limit + 1)

    # --- operator actions ------------------------------------------------------------------
    async def list_items(self, constraints: Sequence[Constraint] = (),
                         statuses: Sequence[WorklistStatus] = (), limit: int = 100,
                         offset: int = 0) -> tuple[int, list[StoredWorklistItem]]:
        wanted = list(statuses) or list(WorklistStatus)
        total = await self.store.count_worklist(constraints, wanted)
        items = await self.store.find_worklist(constraints, wanted, limit, offset,
                                               newest_first=True)
        return total, items

    async def get_item(self, item_id: int) -> StoredWorklistItem | None:
        return await self.store.get_worklist_item(item_id)

    async def add_item(self, item: WorklistItem) -> StoredWorklistItem:
        """Add one item as given (API/CLI); timestamps are set here."""
        now = now_iso()
        item = item.replace(created_at=now, updated_at=now)
        (item_id,) = await self.store.add_worklist_items([item])
        await self.refresh_metrics()
        log.info("worklist.item.added", worklist_item_id=item_id,
                 accession_number=item.accession_number, patient_id=item.patient_id)
        return StoredWorklistItem(item_id, item)

    async def set_status(self, item_id: int, status: WorklistStatus
                         ) -> StoredWorklistItem | None:
        """Move an item along its life cycle; :class:`WorklistConflict` if not allowed."""
        now = now_iso()

        def change(item: WorklistItem) -> WorklistItem:
            if not can_transition(item.status, status):
                raise WorklistConflict(f"item cannot go from {item.status.value} to "
                                       f"{status.value}")
            return item.replace(status=status, updated_at=now)

        stored = await self.store.update_worklist_item(item_id, change)
        if stored is not None:
            await self.refresh_metrics()
            log.info("worklist.item.status_changed", worklist_item_id=item_id,
                     status=status.value)
        return stored

    async def cancel_item(self, item_id: int) -> StoredWorklistItem | None:
        return await self.set_status(item_id, WorklistStatus.CANCELLED)

    async def delete_item(self, item_id: int) -> bool:
        deleted = await self.store.delete_worklist_item(item_id)
        if deleted:
            await self.refresh_metrics()
            log.info("worklist.item.deleted", worklist_item_id=item_id)
        return deleted

    # --- retention and metrics -------------------------------------------------------------
    async def purge(self, older_than_days: float) -> int:
        """Delete final-state items last changed more than ``older_than_days`` ago."""
        cutoff = (datetime.now(UTC) - timedelta(days=older_than_days)).isoformat(
            timespec="milliseconds")
        removed = await self.store.purge_worklist(sorted(FINAL_STATUSES), cutoff)
        if removed:
            WORKLIST_PURGED.inc(removed)
            log.info("worklist.purged", items=removed, older_than_days=older_than_days)
        return removed

    async def refresh_metrics(self) -> None:
        for status, count in (await self.store.worklist_counts()).items():
            WORKLIST_ITEMS.labels(status.value).set(count)

    async def run_maintenance(self, purge_every: float = 3600.0,
                              metrics_every: float = 15.0) -> None:
        """Forever: refresh the size gauge, and purge per ``retention_days`` (0 = never)."""
        loop = asyncio.get_running_loop()
        next_purge = loop.time()
        while True:
            try:
                if self.retention_days > 0 and loop.time() >= next_purge:
                    await self.purge(self.retention_days)
                    next_purge = loop.time() + purge_every
                await self.refresh_metrics()
            except Exception:
                # Maintenance must never take the engine down; the next round tries again.
                log.exception("worklist.maintenance_failed")
            await asyncio.sleep(metrics_every)


def _error_key(error: AckError) -> str:
    where = error.segment + (f"-{error.field}" if error.field else "") if error.segment \
        else "message"
    return f"{where}:{int(error.code)}"


def _is_storage_error(exc: BaseException) -> bool:
    # The store's own failures (sqlite3.Error and friends) must fail the whole transaction;
    # they are recognised by module so that this domain module stays free of SQL imports.
    return type(exc).__module__.startswith(("sqlite3", "psycopg", "asyncpg"))
