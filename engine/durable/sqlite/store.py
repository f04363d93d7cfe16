"""SQLite backend of the store: the embedded default, one file, WAL, ``synchronous=FULL``.

All writes go through one connection on one dedicated thread, so transactions never contend and
group commits are natural (journal commits take the thread's urgent lane: a peer waits on them);
reads use a second connection on another thread (WAL lets them run beside a write). Schema
changes are numbered migrations applied in order at open (``schema.py``). This class owns the
connections and threads and turns database errors into ``StorageFailure``; the SQL lives in the
package's modules by idea (journal, hl7, worklist, mpps, routing, outbox, retention). It must not
decide policy (see ``store.decide_duplicate``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from engine.durable.access import ChangeRecord, SessionRecord, TokenRecord, UserRecord
from engine.durable.commitment import (
    CommitmentPlan,
    CommitmentReport,
    CommitmentRequest,
    CommitmentResult,
    HeldInstance,
)
from engine.durable.qr import QrIndexRow, QrLocated, QrQuery, QrRecord
from engine.durable.routing import (
    BuildGroupRows,
    FiredGroup,
    OpenGroup,
    ProcedureStepEventRecord,
    RoutingCommitResult,
    RoutingPlan,
)
from engine.durable.sqlite import (
    access,
    commitment,
    hl7,
    journal,
    mpps,
    outbox,
    qr,
    recent_errors,
    retention,
    routing,
    schema,
    trace,
    worklist,
)
from engine.durable.sqlite._common import connect
from engine.durable.store import (
    DeadLetter,
    ExpiredInstance,
    Hl7Apply,
    Hl7CommitResult,
    Hl7JournalEntry,
    Hl7JournalRecord,
    InstanceCommit,
    InstanceCommitResult,
    JournalPurge,
    NewOutboxRow,
    OutboxResult,
    OutboxRow,
    OutboxState,
    QueueStats,
    StoredInstance,
)
from engine.durable.trace import TraceBy, TraceRecords
from engine.durable.writer_thread import LaneWriter
from engine.errors import StorageFailure
from engine.observability.logging import get_logger
from engine.observability.recent_errors import ErrorNote
from engine.records.procedure_step import (
    NewProcedureStep,
    PpsStatus,
    ProcedureStep,
    ProcedureStepCommit,
    StepUpdate,
)
from engine.records.worklist import StoredWorklistItem, WorklistItem, WorklistStatus
from engine.records.worklist_criteria import Constraint

T = TypeVar("T")
log = get_logger("engine.durable.sqlite")


class SqliteStore:
    """The embedded store."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = LaneWriter("sqlite-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="sqlite-reader")
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-checkpoint")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._cconn: sqlite3.Connection | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None

    # --- plumbing ----------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        return connect(self.path)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._wconn
        if conn is None:
            raise StorageFailure("the store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, fn, conn)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._rconn
        if conn is None:
            raise StorageFailure("the store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, fn, conn)

    # --- life cycle --------------------------------------------------------------------------
    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        self._wconn = await loop.run_in_executor(self._writer, self._connect)
        await self._write(schema.migrate)
        self._rconn = await loop.run_in_executor(self._reader, self._connect)
        # Checkpoints copy the WAL into the database file and fsync it: done inline they land
        # on whichever commit crosses the threshold (a multi-millisecond stall for the peer
        # waiting on it), so the writer never checkpoints and this task does it beside it.
        await self._write(lambda c: c.execute("PRAGMA wal_autocheckpoint=0").fetchone())
        self._cconn = await loop.run_in_executor(self._checkpointer, self._connect)
        self._checkpoint_task = asyncio.create_task(self._checkpoint_loop(),
                                                    name="sqlite-checkpoint")

    async def _checkpoint_loop(self, interval: float = 0.5) -> None:
        conn = self._cconn
        assert conn is not None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            try:
                await loop.run_in_executor(
                    self._checkpointer,
                    lambda: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())
            except sqlite3.Error as exc:
                # A busy or failed checkpoint only delays the copy; the WAL keeps the data.
                log.debug("durable.sqlite.checkpoint_skipped", detail=str(exc))

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._checkpoint_task is not None:
            self._checkpoint_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoint_task
            self._checkpoint_task = None
        if self._cconn is not None:
            cconn = self._cconn
            with contextlib.suppress(sqlite3.Error):
                await loop.run_in_executor(
                    self._checkpointer,
                    lambda: cconn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())
            await loop.run_in_executor(self._checkpointer, cconn.close)
            self._cconn = None
        if self._rconn is not None:
            await loop.run_in_executor(self._reader, self._rconn.close)
            self._rconn = None
        if self._wconn is not None:
            await loop.run_in_executor(self._writer, self._wconn.close)
            self._wconn = None
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)
        self._checkpointer.shutdown(wait=True)

    async def ping(self) -> bool:
        try:
            return await self._read(lambda c: c.execute("SELECT 1").fetchone()[0] == 1)
        except (sqlite3.Error, StorageFailure):
            return False

    async def clock_offset(self) -> float | None:
        return None  # the file lives on this machine: one clock

    async def schema_version(self) -> int:
        return await self._read(schema.schema_version)

    def watch_outbox(self, wake: Callable[[str | None], None]) -> None:
        """One process per file: the router wakes the dispatcher in memory."""

    # --- instances ---------------------------------------------------------------------------
    async def commit_instances(
        self, batch: Sequence[InstanceCommit], sync: Callable[[], None] | None = None,
        durable_ids: Sequence[int] = (),
    ) -> list[InstanceCommitResult]:
        return await asyncio.wrap_future(self.submit_instance_commits(batch, sync, durable_ids))

    def submit_instance_commits(
        self, batch: Sequence[InstanceCommit], sync: Callable[[], None] | None = None,
        durable_ids: Sequence[int] = (),
    ) -> concurrent.futures.Future[list[InstanceCommitResult]]:
        conn = self._wconn
        if conn is None:
            raise StorageFailure("the store is not open")

        def run() -> list[InstanceCommitResult]:
            try:
                if sync is not None:
                    sync()
                return journal.commit(conn, batch, durable_ids)
            except sqlite3.Error as exc:
                raise StorageFailure(f"journal commit failed: {exc}") from exc

        try:
            return self._writer.submit_urgent(run)
        except RuntimeError as exc:  # the writer was shut down
            raise StorageFailure("the store is closed") from exc

    async def get_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        return await self._read(lambda c: journal.get(c, sop_instance_uid))

    async def list_instances(self, limit: int = 100, offset: int = 0) -> list[StoredInstance]:
        return await self._read(lambda c: journal.list_instances(c, limit, offset))

    async def instances_after(self, after_id: int, limit: int,
                              study_instance_uid: str | None = None) -> list[StoredInstance]:
        return await self._read(
            lambda c: journal.instances_after(c, after_id, limit, study_instance_uid))

    async def count_instances(self) -> int:
        return await self._read(journal.count)

    # --- Storage Commitment --------------------------------------------------------------------
    async def commit_commitment_request(self, request: CommitmentRequest,
                                        plan: CommitmentPlan, now: float) -> CommitmentResult:
        return await self._write(lambda c: commitment.commit_request(
            c, request, plan, now))

    async def waiting_commitments(self, limit: int) -> list[tuple[int, CommitmentRequest]]:
        return await self._read(lambda c: commitment.waiting(c, limit))

    async def resolve_commitment(self, request_id: int, request: CommitmentRequest,
                                 plan: CommitmentPlan, now: float) -> CommitmentReport | None:
        return await self._write(lambda c: commitment.resolve(
            c, request_id, request, plan, now))

    async def commitment_holdings(self, sop_instance_uids: Sequence[str]
                                  ) -> dict[str, HeldInstance]:
        return await self._read(lambda c: commitment.held(c, sop_instance_uids))

    async def commitment_delivered(self, sop_instance_uids: Sequence[str], destination: str
                                   ) -> set[str]:
        return await self._read(lambda c: commitment.delivered(c, sop_instance_uids,
                                                               destination))

    async def record_commitment_ask(self, request_id: int, destination: str,
                                    transaction_uid: str, sent: bool, now: float = 0.0,
                                    claim_seconds: float = 0.0) -> bool:
        return await self._write(lambda c: commitment.record_ask(
            c, request_id, destination, transaction_uid, sent, now, claim_seconds))

    async def record_archive_commitment(self, transaction_uid: str,
                                        results: dict[str, int]) -> bool:
        return await self._write(lambda c: commitment.record_archive_report(
            c, transaction_uid, results))

    async def hold_lead(self, duty: str) -> bool:
        return self._wconn is not None  # one process per SQLite file (workers > 1 is refused)

    # --- Query/Retrieve index ------------------------------------------------------------------
    async def qr_index_watermark(self) -> int:
        return await self._read(qr.watermark)

    async def qr_index(self, rows: Sequence[QrIndexRow], last_instance_id: int) -> int:
        return await self._write(lambda c: qr.index(c, rows, last_instance_id))

    async def qr_find(self, query: QrQuery) -> list[QrRecord]:
        return await self._read(lambda c: qr.find(c, query))

    async def qr_locate(self, query: QrQuery) -> list[QrLocated]:
        return await self._read(lambda c: qr.locate(c, query))

    async def expired_instances(self, received_before: str, limit: int
                                ) -> list[ExpiredInstance]:
        return await self._read(
            lambda c: retention.expired(c, received_before, limit))

    async def mark_instances_durable(self, ids: Sequence[int]) -> None:
        await self._write(lambda c: journal.mark_durable(c, ids))

    async def instances_not_durable(self) -> list[StoredInstance]:
        return await self._read(journal.not_durable)

    async def withdraw_instance(self, instance_id: int) -> bool:
        return await self._write(lambda c: journal.withdraw(c, instance_id))

    async def forget_instances(self, ids: Sequence[int]) -> int:
        return await self._write(lambda c: retention.forget(c, ids))

    async def purge_journal(self, before: str, limit: int) -> JournalPurge:
        return await self._write(lambda c: retention.purge_journal(c, before, limit))

    async def known_object_ids(self, object_ids: Sequence[str]) -> set[str]:
        return await self._read(lambda c: journal.known_object_ids(c, object_ids))

    # --- HL7 journal -------------------------------------------------------------------------
    async def commit_hl7_batch(self, entries: Sequence[Hl7JournalEntry], apply: Hl7Apply,
                               order_keys: Sequence[tuple[str, str]] = ()
                               ) -> list[Hl7CommitResult]:
        # order_keys unused: a lookup in the process's own file costs no round trip.
        try:
            return await self._write(lambda c: hl7.commit_batch(c, entries, apply))
        except sqlite3.Error as exc:
            raise StorageFailure(f"HL7 journal commit failed: {exc}") from exc

    async def trace(self, by: TraceBy, value: str) -> TraceRecords:
        return await self._read(lambda c: trace.trace(c, by, value))

    async def list_hl7_messages(self, ack_codes: Sequence[str] | None = None, limit: int = 100,
                                offset: int = 0) -> list[Hl7JournalRecord]:
        return await self._read(lambda c: hl7.list_messages(c, ack_codes, limit, offset))

    async def count_hl7_messages(self, ack_codes: Sequence[str] | None = None) -> int:
        return await self._read(lambda c: hl7.count_messages(c, ack_codes))

    async def get_hl7_message(self, journal_id: int) -> Hl7JournalRecord | None:
        return await self._read(lambda c: hl7.get_message(c, journal_id))

    # --- worklist ----------------------------------------------------------------------------
    async def find_worklist(self, constraints: Sequence[Constraint],
                            statuses: Sequence[WorklistStatus], limit: int, offset: int = 0,
                            newest_first: bool = False) -> list[StoredWorklistItem]:
        sql, params = worklist.query_sql(constraints, statuses, limit, offset, newest_first)
        return await self._read(lambda c: worklist.find(c, sql, params))

    async def explain_worklist(self, constraints: Sequence[Constraint],
                               statuses: Sequence[WorklistStatus]) -> list[str]:
        """SQLite's plan for a worklist query, one line per step (tests and diagnostics)."""
        sql, params = worklist.query_sql(constraints, statuses, 100)
        return await self._read(lambda c: worklist.explain(c, sql, params))

    async def count_worklist(self, constraints: Sequence[Constraint],
                             statuses: Sequence[WorklistStatus]) -> int:
        return await self._read(lambda c: worklist.count(c, constraints, statuses))

    async def get_worklist_item(self, item_id: int) -> StoredWorklistItem | None:
        return await self._read(lambda c: worklist.get(c, item_id))

    async def add_worklist_items(self, items: Sequence[WorklistItem]) -> list[int]:
        try:
            return await self._write(lambda c: worklist.add(c, items))
        except sqlite3.Error as exc:
            raise StorageFailure(f"worklist insert failed: {exc}") from exc

    async def update_worklist_item(self, item_id: int,
                                   change: Callable[[WorklistItem], WorklistItem]
                                   ) -> StoredWorklistItem | None:
        try:
            return await self._write(lambda c: worklist.update(c, item_id, change))
        except sqlite3.Error as exc:
            raise StorageFailure(f"worklist update failed: {exc}") from exc

    async def delete_worklist_item(self, item_id: int) -> bool:
        return await self._write(lambda c: worklist.delete(c, item_id))

    async def purge_worklist(self, statuses: Sequence[WorklistStatus], updated_before: str
                             ) -> int:
        if not statuses:
            return 0
        return await self._write(lambda c: worklist.purge(c, statuses, updated_before))

    async def worklist_counts(self) -> dict[WorklistStatus, int]:
        return await self._read(worklist.counts)

    # --- outbox (D3): thin wrappers; the SQL is in outbox.py --------------------------
    async def _outbox_write(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._write(fn)
        except sqlite3.Error as exc:
            raise StorageFailure(f"outbox {what} failed: {exc}") from exc

    async def enqueue_outbox(self, rows: Sequence[NewOutboxRow], now: float) -> list[int]:
        return await self._outbox_write(
            "enqueue", lambda c: outbox.enqueue(c, rows, now))

    async def lease_outbox(self, destination: str, owner: str, now: float,
                           lease_seconds: float, limit: int, per_study: bool = False
                           ) -> list[OutboxRow]:
        return await self._outbox_write("lease", lambda c: outbox.lease(
            c, destination, owner, now, lease_seconds, limit, per_study))

    async def record_outbox(self, owner: str, results: Sequence[OutboxResult], now: float
                            ) -> int:
        return await self._outbox_write(
            "record", lambda c: outbox.record(c, owner, results, now))

    async def release_outbox_leases(self, owner_prefix: str, keep_owner: str) -> int:
        return await self._outbox_write(
            "release", lambda c: outbox.release_leases(c, owner_prefix, keep_owner))

    async def outbox_stats(self, destinations: Sequence[str]) -> list[QueueStats]:
        return await self._read(lambda c: outbox.stats(c, destinations))

    async def list_dead_letters(self, destination: str | None, limit: int = 100,
                                offset: int = 0) -> list[DeadLetter]:
        return await self._read(
            lambda c: outbox.list_dead(c, destination, limit, offset))

    async def count_dead_letters(self, destination: str | None) -> int:
        return await self._read(lambda c: outbox.count_dead(c, destination))

    async def retry_dead_letters(self, destination: str, ids: Sequence[int] | None,
                                 now: float) -> int:
        return await self._outbox_write(
            "retry", lambda c: outbox.retry_dead(c, destination, ids, now))

    async def purge_dead_letters(self, destination: str, ids: Sequence[int] | None) -> int:
        return await self._outbox_write(
            "purge", lambda c: outbox.purge_dead(c, destination, ids))

    async def purge_done_outbox(self, done_before: float, limit: int = 10_000) -> int:
        return await self._outbox_write(
            "purge", lambda c: outbox.purge_done(c, done_before, limit))

    async def outbox_rows(self, destination: str | None = None,
                          states: Sequence[OutboxState] = ()) -> list[dict[str, object]]:
        return await self._read(lambda c: outbox.rows(c, destination, states))

    # --- routing (SQL in routing.py) --------------------------------------------------
    async def commit_routing(self, plans: Sequence[RoutingPlan], now_iso: str, now: float
                             ) -> list[RoutingCommitResult]:
        try:
            return await self._write(
                lambda c: routing.commit_routing(c, plans, now_iso, now))
        except sqlite3.Error as exc:
            raise StorageFailure(f"routing commit failed: {exc}") from exc

    async def fire_routing_group(self, group_id: int, reason: str, now: float,
                                 build: BuildGroupRows) -> FiredGroup | None:
        try:
            return await self._write(
                lambda c: routing.fire_group(c, group_id, reason, now, build))
        except sqlite3.Error as exc:
            raise StorageFailure(f"routing group commit failed: {exc}") from exc

    async def open_routing_groups(self, study_instance_uid: str | None = None
                                  ) -> list[OpenGroup]:
        return await self._read(lambda c: routing.open_groups(c, study_instance_uid))

    async def unrouted_instances(self, after_id: int, limit: int) -> list[StoredInstance]:
        return await self._read(lambda c: routing.unrouted_instances(c, after_id, limit))

    async def instances_by_ids(self, ids: Sequence[int]) -> list[StoredInstance]:
        return await self._read(lambda c: routing.instances_by_ids(c, ids))

    async def unrouted_hl7_messages(self, after_id: int, limit: int
                                    ) -> list[Hl7JournalRecord]:
        return await self._read(lambda c: routing.unrouted_hl7(c, after_id, limit))

    async def unrouted_procedure_step_events(self, after_id: int, limit: int,
                                             ids: Sequence[int] | None = None
                                             ) -> list[ProcedureStepEventRecord]:
        # MPPS events → routing
        return await self._read(lambda c: routing.unrouted_procedure_step_events(
            c, after_id, limit, ids))

    async def unmatched_instances(self, limit: int, offset: int
                                  ) -> tuple[int, list[StoredInstance]]:
        return await self._read(
            lambda c: routing.unmatched_instances(c, limit, offset))

    async def routing_counts(self) -> dict[str, int]:
        return await self._read(routing.routing_counts)

    # --- procedure steps (MPPS): thin wrappers; the SQL is in mpps.py -------------------
    async def _mpps_write(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._write(fn)
        except sqlite3.Error as exc:
            raise StorageFailure(f"procedure step {what} failed: {exc}") from exc

    async def create_procedure_step(self, new: NewProcedureStep, decide: mpps.LinkDecision
                                    ) -> ProcedureStepCommit:
        return await self._mpps_write(
            "create", lambda c: mpps.create_step(c, new, decide))

    async def set_procedure_step(self, sop_instance_uid: str,
                                 change: Callable[[ProcedureStep], StepUpdate],
                                 decide: Callable[[PpsStatus], mpps.LinkDecision],
                                 now: str) -> ProcedureStepCommit:
        return await self._mpps_write("set", lambda c: mpps.set_step(
            c, sop_instance_uid, change, decide, now))

    async def link_unscheduled_procedure_steps(
            self, item_ids: Sequence[int] | None,
            decide: Callable[[PpsStatus], mpps.LinkDecision],
            now: str) -> list[ProcedureStepCommit]:
        return await self._mpps_write("link", lambda c: mpps.link_unscheduled(
            c, item_ids, decide, now))

    async def get_procedure_step(self, sop_instance_uid: str) -> ProcedureStep | None:
        return await self._read(lambda c: mpps.get_step(c, sop_instance_uid))

    async def list_procedure_steps(self, status: str | None = None,
                                   unscheduled: bool | None = None, limit: int = 100,
                                   offset: int = 0) -> tuple[int, list[ProcedureStep]]:
        return await self._read(
            lambda c: mpps.list_steps(c, status, unscheduled, limit, offset))

    async def procedure_steps_awaiting(self) -> list[tuple[ProcedureStep, tuple[str, ...]]]:
        return await self._read(mpps.awaiting)

    async def mark_procedure_step_complete(self, step_id: int, now: str) -> bool:
        return await self._mpps_write(
            "complete", lambda c: mpps.mark_complete(c, step_id, now))

    # --- access control (users, API tokens, the changes table) ------------------------------
    async def count_users(self) -> int:
        return await self._read(access.count_users)

    async def get_user(self, name: str) -> UserRecord | None:
        return await self._read(lambda c: access.get_user(c, name))

    async def list_users(self) -> list[UserRecord]:
        return await self._read(access.list_users)

    async def add_user(self, name: str, role: str, password_hash: str, now: str) -> bool:
        return await self._write(lambda c: access.add_user(c, name, role, password_hash, now))

    async def update_user(self, name: str, now: str, role: str | None = None,
                          password_hash: str | None = None) -> bool:
        return await self._write(
            lambda c: access.update_user(c, name, role, password_hash, now))

    async def remove_user(self, name: str) -> bool:
        return await self._write(lambda c: access.remove_user(c, name))

    async def set_login_state(self, name: str, failed_logins: int, locked_until: float
                              ) -> None:
        await self._write(lambda c: access.set_login_state(c, name, failed_logins,
                                                           locked_until))

    async def add_session(self, session: SessionRecord, expired_before: float) -> None:
        await self._write(lambda c: access.add_session(c, session, expired_before))

    async def get_session(self, id_hash: str) -> SessionRecord | None:
        return await self._read(lambda c: access.get_session(c, id_hash))

    async def touch_session(self, id_hash: str, now: float) -> None:
        await self._write(lambda c: access.touch_session(c, id_hash, now))

    async def end_session(self, id_hash: str) -> bool:
        return await self._write(lambda c: access.end_session(c, id_hash))

    async def add_token(self, user: str, label: str, token_hash: str, now: str) -> int:
        return await self._write(lambda c: access.add_token(c, user, label, token_hash, now))

    async def token_user(self, token_hash: str, now: str
                         ) -> tuple[TokenRecord, UserRecord] | None:
        return await self._write(lambda c: access.token_user(c, token_hash, now))

    async def list_tokens(self, user: str | None = None) -> list[TokenRecord]:
        return await self._read(lambda c: access.list_tokens(c, user))

    async def revoke_token(self, token_id: int, now: str, user: str | None = None) -> bool:
        return await self._write(lambda c: access.revoke_token(c, token_id, user, now))

    async def record_errors(self, notes: Sequence[ErrorNote], merge_after: float, keep: int
                            ) -> None:
        await self._write(lambda c: recent_errors.record(c, notes, merge_after, keep))

    async def recent_errors(self, limit: int, kinds: Sequence[str] | None = None
                            ) -> list[ErrorNote]:
        return await self._read(lambda c: recent_errors.recent(c, limit, kinds))

    async def record_change(self, change: ChangeRecord) -> None:
        await self._write(lambda c: access.record_change(c, change))

    async def list_changes(self, limit: int, offset: int) -> tuple[int, list[ChangeRecord]]:
        return await self._read(lambda c: access.list_changes(c, limit, offset))
