"""PostgreSQL backend of the store: the same engine on a database several nodes share.

Writes go through one connection on one writer thread per process, exactly as the SQLite
backend's (journal commits take its urgent lane and commit in groups), so a commit waits for
the WAL flush (``synchronous_commit`` on, checked at every connection) and many acknowledgements
share it. Reads use a psycopg pool on their own threads. Several nodes are kept apart by the
database itself: unique constraints and upserts for idempotency, row claims with SKIP LOCKED and
leases for the outbox, row locks where a read decides a write. This class owns connections,
threads and the LISTEN connection, and turns driver errors into ``StorageFailure``; the SQL
lives in the package's modules by idea. A connection that dies takes its statement with it:
that call fails (its peer hears a failure and retries, and dedupe recognises a repeat), the
connection is replaced on the next call, and nothing needs a restart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from engine.durable.access import ChangeRecord, SessionRecord, TokenRecord, UserRecord
from engine.durable.commitment import (
    CommitmentPlan,
    CommitmentReport,
    CommitmentRequest,
    CommitmentResult,
    HeldInstance,
)
from engine.durable.migrations import SchemaStatus, SchemaTooNew
from engine.durable.postgresql import (
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
from engine.durable.postgresql._common import (
    SessionRefused,
    advisory_key,
    check_session,
    connect,
    conninfo,
    is_connection_error,
    notify_channel,
    scalar,
    tolerating_nul,
    where,
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
from engine.errors import PartlyCommitted, StorageFailure
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
from engine.settings import PostgresSettings

T = TypeVar("T")
Conn = psycopg.Connection[Any]
log = get_logger("engine.durable.postgresql")

#: how long a reader waits for a pooled connection before its call fails
_POOL_WAIT = 5.0
#: how long /readyz's ping waits
_PING_WAIT = 2.0
_BACKOFF_MAX = 30.0


def _reason(exc: BaseException) -> str:
    """The first line of a driver error (libpq's messages run on with hints)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class PostgresStore:
    """The shared store. ``connect_attempts``: how many times :meth:`open` tries to reach the
    server before it gives up (0: forever, with backoff, as ``radflow run`` does)."""

    def __init__(self, cfg: PostgresSettings, *, connect_attempts: int = 0,
                 migrate: bool = True) -> None:
        self.cfg = cfg
        self.where = where(cfg)
        self._connect_attempts = connect_attempts
        self._migrate = migrate
        self._writer = LaneWriter("postgresql-writer")
        self._reader = ThreadPoolExecutor(cfg.pool_size, thread_name_prefix="postgresql-reader")
        self._wconn: Conn | None = None  # touched only on the writer thread
        self._pool: ConnectionPool[Conn] | None = None
        self._open = False
        self._listen_task: asyncio.Task[None] | None = None
        #: duty -> the writer connection holding its advisory lock (touched on the writer only)
        self._leads: dict[str, Conn] = {}

    # --- plumbing ----------------------------------------------------------------------------
    def _writer_conn(self) -> Conn:
        conn = self._wconn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._wconn = None
            conn = self._wconn = connect(self.cfg)
        return conn

    def _run_write(self, fn: Callable[[Conn], T]) -> T:
        if not self._open:
            raise StorageFailure("the store is not open")
        try:
            return tolerating_nul(self._writer_conn(), fn)
        except psycopg.Error as exc:
            self._drop_if_broken(exc)
            raise StorageFailure(f"PostgreSQL at {self.where}: {_reason(exc)}") from exc
        except PartlyCommitted as exc:
            self._drop_if_broken(exc.__cause__)
            raise

    def _drop_if_broken(self, exc: BaseException | None) -> None:
        if isinstance(exc, psycopg.Error) and is_connection_error(exc) and \
                self._wconn is not None:
            self._wconn.close()
            self._wconn = None

    async def _write(self, fn: Callable[[Conn], T]) -> T:
        if not self._open:
            raise StorageFailure("the store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._writer, self._run_write, fn)
        except RuntimeError as exc:
            if "shutdown" in str(exc):
                raise StorageFailure("the store is closed") from exc
            raise

    def _run_read(self, fn: Callable[[Conn], T], wait: float = _POOL_WAIT) -> T:
        pool = self._pool
        if pool is None:
            raise StorageFailure("the store is not open")
        try:
            with pool.connection(timeout=wait) as conn:
                return tolerating_nul(conn, fn)
        except psycopg.Error as exc:
            raise StorageFailure(f"PostgreSQL at {self.where}: {_reason(exc)}") from exc

    async def _read(self, fn: Callable[[Conn], T]) -> T:
        if self._pool is None:
            raise StorageFailure("the store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, self._run_read, fn)

    # --- life cycle --------------------------------------------------------------------------
    def _connect_and_migrate(self) -> list[int]:
        conn = self._writer_conn()
        if self._migrate:
            return schema.migrate(conn, self.cfg.db_schema)
        return []

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        delay, attempt = 0.5, 0
        self._open = True  # the writer accepts the connect/migrate job
        while True:
            try:
                applied = await loop.run_in_executor(self._writer, self._connect_and_migrate)
                break
            except (SessionRefused, SchemaTooNew):
                self._open = False
                raise
            except TimeoutError as exc:
                self._open = False
                raise StorageFailure(f"PostgreSQL at {self.where}: {exc}") from exc
            except psycopg.Error as exc:
                attempt += 1
                if self._connect_attempts and attempt >= self._connect_attempts:
                    self._open = False
                    raise StorageFailure(
                        f"PostgreSQL at {self.where} is unreachable: {_reason(exc)}") from exc
                log.warning("durable.postgresql.unreachable", server=self.where,
                            reason=_reason(exc), retry_in=round(delay, 1))
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
        if applied:
            log.info("durable.postgresql.schema_migrated", server=self.where,
                     versions=applied)
        cfg = self.cfg
        self._pool = ConnectionPool(
            kwargs={**conninfo(cfg), "autocommit": True,
                    "prepare_threshold": 5 if cfg.prepared_statements else None},
            min_size=1, max_size=cfg.pool_size, open=False, name="radflow",
            # Checked at checkout (a connection from before a server restart is replaced, not
            # handed out) and renewed hourly; every new one passes the session checks.
            check=ConnectionPool.check_connection, max_lifetime=3600.0,
            configure=lambda conn: check_session(conn, cfg),
            reconnect_timeout=float("inf"))
        await loop.run_in_executor(self._reader, self._pool.open)
        log.info("durable.postgresql.opened", server=self.where, schema=cfg.db_schema,
                 pool_size=cfg.pool_size)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listen_task
            self._listen_task = None
        self._open = False

        def close_writer() -> None:
            if self._wconn is not None:
                self._wconn.close()
                self._wconn = None

        with contextlib.suppress(RuntimeError):
            await loop.run_in_executor(self._writer, close_writer)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await loop.run_in_executor(self._reader, pool.close)
        # Joined off the loop: a thread still finishing a statement must not stall it.
        await asyncio.to_thread(self._writer.shutdown, True)
        await asyncio.to_thread(self._reader.shutdown, True)

    async def ping(self) -> bool:
        if self._pool is None:
            return False
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._reader, lambda: self._run_read(
                    lambda c: c.execute("SELECT 1").fetchone() == (1,), _PING_WAIT))
        except (StorageFailure, RuntimeError):
            return False

    async def clock_offset(self) -> float | None:
        def read(conn: Conn) -> float:
            before = time.time()
            (server,) = conn.execute(
                "SELECT extract(epoch FROM clock_timestamp())::float8").fetchone() or (0.0,)
            after = time.time()
            # The server read its clock somewhere inside the round trip: its middle is the
            # best guess, off by at most half the round trip.
            return float(server) - (before + after) / 2

        if self._pool is None:
            return None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._reader, lambda: self._run_read(read, _PING_WAIT))
        except (StorageFailure, RuntimeError):
            return None

    async def schema_version(self) -> int:
        return await self._read(schema.current_version)

    async def schema_status(self) -> SchemaStatus:
        return await self._read(schema.status)

    def watch_outbox(self, wake: Callable[[str | None], None]) -> None:
        """LISTEN for new outbox rows (any node's) and call ``wake(destination)``; re-LISTEN
        after every reconnect (waking everything once, for what was missed meanwhile)."""
        if self._listen_task is None:
            self._listen_task = asyncio.create_task(self._listen(wake),
                                                    name="postgresql-listen")

    async def _listen(self, wake: Callable[[str | None], None]) -> None:
        channel = notify_channel(self.cfg.db_schema)
        delay = 1.0
        while True:
            try:
                # A dedicated autocommit connection, never a pooled one (LISTEN is per
                # session; behind a transaction-mode pooler it would silently do nothing).
                aconn = await psycopg.AsyncConnection.connect(**conninfo(self.cfg),
                                                              autocommit=True)
                async with aconn:
                    await aconn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    log.info("durable.postgresql.listening", channel=channel)
                    delay = 1.0
                    wake(None)
                    async for note in aconn.notifies():
                        wake(note.payload or None)
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                # The dispatcher keeps polling meanwhile: a lost LISTEN only delays delivery.
                log.warning("durable.postgresql.listen_lost", server=self.where,
                            reason=_reason(exc), retry_in=round(delay, 1))
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, _BACKOFF_MAX)

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
        if not self._open:
            raise StorageFailure("the store is not open")

        def run() -> list[InstanceCommitResult]:
            if sync is not None:
                sync()
            try:
                return self._run_write(lambda c: journal.commit(c, batch, durable_ids))
            except PartlyCommitted:
                raise  # the journal writer answers the committed part as committed
            except StorageFailure as exc:
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
            c, request, plan, now, self.cfg.db_schema))

    async def waiting_commitments(self, limit: int) -> list[tuple[int, CommitmentRequest]]:
        return await self._read(lambda c: commitment.waiting(c, limit))

    async def resolve_commitment(self, request_id: int, request: CommitmentRequest,
                                 plan: CommitmentPlan, now: float) -> CommitmentReport | None:
        return await self._write(lambda c: commitment.resolve(
            c, request_id, request, plan, now, self.cfg.db_schema))

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

    async def trace(self, by: TraceBy, value: str) -> TraceRecords:
        return await self._read(lambda c: trace.trace(c, by, value))

    async def hold_lead(self, duty: str) -> bool:
        """A session advisory lock on the writer's connection: the server frees it when that
        connection ends (this process died, or the connection broke and was replaced, when
        the next call tries again), so the duty moves to a live process by itself."""
        if not self._open:
            return False

        def take(conn: Conn) -> bool:
            if self._leads.get(duty) is conn:
                return True  # held on this very connection: no round trip
            key = advisory_key("radflow.lead", self.cfg.db_schema, duty)
            if not scalar(conn, "SELECT pg_try_advisory_lock(%s)", (key,)):
                return False
            self._leads[duty] = conn
            log.info("durable.postgresql.lead_taken", duty=duty)
            return True

        try:
            return await self._write(take)
        except StorageFailure:
            return False

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
        return await self._read(lambda c: retention.expired(c, received_before, limit))

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
        return await self._write(lambda c: hl7.commit_batch(c, entries, apply, order_keys))

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
        query, params = worklist.query_sql(constraints, statuses, limit, offset, newest_first)
        return await self._read(lambda c: worklist.find(c, query, params))

    async def explain_worklist(self, constraints: Sequence[Constraint],
                               statuses: Sequence[WorklistStatus]) -> list[str]:
        """PostgreSQL's plan for a worklist query, one line per node (tests, diagnostics)."""
        query, params = worklist.query_sql(constraints, statuses, 100)
        return await self._read(lambda c: worklist.explain(c, query, params))

    async def count_worklist(self, constraints: Sequence[Constraint],
                             statuses: Sequence[WorklistStatus]) -> int:
        return await self._read(lambda c: worklist.count(c, constraints, statuses))

    async def get_worklist_item(self, item_id: int) -> StoredWorklistItem | None:
        return await self._read(lambda c: worklist.get(c, item_id))

    async def add_worklist_items(self, items: Sequence[WorklistItem]) -> list[int]:
        return await self._write(lambda c: worklist.add(c, items))

    async def update_worklist_item(self, item_id: int,
                                   change: Callable[[WorklistItem], WorklistItem]
                                   ) -> StoredWorklistItem | None:
        return await self._write(lambda c: worklist.update(c, item_id, change))

    async def delete_worklist_item(self, item_id: int) -> bool:
        return await self._write(lambda c: worklist.delete(c, item_id))

    async def purge_worklist(self, statuses: Sequence[WorklistStatus], updated_before: str
                             ) -> int:
        if not statuses:
            return 0
        return await self._write(lambda c: worklist.purge(c, statuses, updated_before))

    async def worklist_counts(self) -> dict[WorklistStatus, int]:
        return await self._read(worklist.counts)

    # --- outbox (D3): the SQL is in outbox.py --------------------------------------------------
    async def enqueue_outbox(self, rows: Sequence[NewOutboxRow], now: float) -> list[int]:
        return await self._write(lambda c: outbox.enqueue(c, rows, now, self.cfg.db_schema))

    async def lease_outbox(self, destination: str, owner: str, now: float,
                           lease_seconds: float, limit: int, per_study: bool = False
                           ) -> list[OutboxRow]:
        return await self._write(lambda c: outbox.lease(
            c, destination, owner, now, lease_seconds, limit, per_study))

    async def record_outbox(self, owner: str, results: Sequence[OutboxResult], now: float
                            ) -> int:
        return await self._write(lambda c: outbox.record(c, owner, results, now))

    async def release_outbox_leases(self, owner_prefix: str, keep_owner: str) -> int:
        return await self._write(
            lambda c: outbox.release_leases(c, owner_prefix, keep_owner))

    async def outbox_stats(self, destinations: Sequence[str]) -> list[QueueStats]:
        return await self._read(lambda c: outbox.stats(c, destinations))

    async def list_dead_letters(self, destination: str | None, limit: int = 100,
                                offset: int = 0) -> list[DeadLetter]:
        return await self._read(lambda c: outbox.list_dead(c, destination, limit, offset))

    async def count_dead_letters(self, destination: str | None) -> int:
        return await self._read(lambda c: outbox.count_dead(c, destination))

    async def retry_dead_letters(self, destination: str, ids: Sequence[int] | None,
                                 now: float) -> int:
        return await self._write(
            lambda c: outbox.retry_dead(c, destination, ids, now, self.cfg.db_schema))

    async def purge_dead_letters(self, destination: str, ids: Sequence[int] | None) -> int:
        return await self._write(lambda c: outbox.purge_dead(c, destination, ids))

    async def purge_done_outbox(self, done_before: float, limit: int = 10_000) -> int:
        return await self._write(lambda c: outbox.purge_done(c, done_before, limit))

    async def outbox_rows(self, destination: str | None = None,
                          states: Sequence[OutboxState] = ()) -> list[dict[str, object]]:
        return await self._read(lambda c: outbox.rows(c, destination, states))

    # --- routing (SQL in routing.py) -----------------------------------------------------------
    async def commit_routing(self, plans: Sequence[RoutingPlan], now_iso: str, now: float
                             ) -> list[RoutingCommitResult]:
        return await self._write(lambda c: routing.commit_routing(
            c, plans, now_iso, now, self.cfg.db_schema))

    async def fire_routing_group(self, group_id: int, reason: str, now: float,
                                 build: BuildGroupRows) -> FiredGroup | None:
        return await self._write(lambda c: routing.fire_group(
            c, group_id, reason, now, build, self.cfg.db_schema))

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
        return await self._read(lambda c: routing.unrouted_procedure_step_events(
            c, after_id, limit, ids))

    async def unmatched_instances(self, limit: int, offset: int
                                  ) -> tuple[int, list[StoredInstance]]:
        return await self._read(lambda c: routing.unmatched_instances(c, limit, offset))

    async def routing_counts(self) -> dict[str, int]:
        return await self._read(routing.routing_counts)

    # --- procedure steps (MPPS): the SQL is in mpps.py ------------------------------------------
    async def create_procedure_step(self, new: NewProcedureStep, decide: mpps.LinkDecision
                                    ) -> ProcedureStepCommit:
        return await self._write(lambda c: mpps.create_step(c, new, decide))

    async def set_procedure_step(self, sop_instance_uid: str,
                                 change: Callable[[ProcedureStep], StepUpdate],
                                 decide: Callable[[PpsStatus], mpps.LinkDecision],
                                 now: str) -> ProcedureStepCommit:
        return await self._write(lambda c: mpps.set_step(
            c, sop_instance_uid, change, decide, now))

    async def link_unscheduled_procedure_steps(
            self, item_ids: Sequence[int] | None,
            decide: Callable[[PpsStatus], mpps.LinkDecision],
            now: str) -> list[ProcedureStepCommit]:
        # Asked after every accepted order, and nearly always there is no unscheduled step:
        # one pooled read says so without a transaction on the writer (three round trips it
        # would hold while orders and instances wait to commit). A step that turns up
        # meanwhile links itself to the order when it is created.
        if not await self._read(mpps.any_unscheduled):
            return []
        return await self._write(lambda c: mpps.link_unscheduled(c, item_ids, decide, now))

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
        return await self._write(lambda c: mpps.mark_complete(c, step_id, now))

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
