"""SQLite backend of the store: the embedded default, one file, WAL, ``synchronous=FULL``.

All writes go through one connection on one dedicated thread, so transactions never contend and
group commits are natural (journal commits take the thread's urgent lane: a peer waits on them);
reads use a second connection on another thread (WAL lets them run beside a write). Schema
changes are numbered migrations applied in order at open. This module is the only place with
SQLite SQL; it must not decide policy (see ``store.decide_duplicate``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from engine.durable import (
    sqlite_durable,
    sqlite_mpps,
    sqlite_outbox,
    sqlite_retention,
    sqlite_routing,
)
from engine.durable.routing import (
    BuildGroupRows,
    FiredGroup,
    OpenGroup,
    ProcedureStepEventRecord,
    RoutingCommitResult,
    RoutingPlan,
)
from engine.durable.sqlite_txn import transaction
from engine.durable.store import (
    DeadLetter,
    ExpiredInstance,
    Hl7Apply,
    Hl7CommitResult,
    Hl7Disposition,
    Hl7JournalEntry,
    Hl7JournalRecord,
    InstanceCommit,
    InstanceCommitResult,
    InstanceOutcome,
    InstanceRecord,
    JournalPurge,
    NewOutboxRow,
    OutboxResult,
    OutboxRow,
    OutboxState,
    QueueStats,
    StoredInstance,
    decide_duplicate,
)
from engine.durable.writer_thread import LaneWriter
from engine.errors import StorageFailure
from engine.observability.logging import get_logger
from engine.procedure.model import (
    NewProcedureStep,
    PpsStatus,
    ProcedureStep,
    ProcedureStepCommit,
    StepUpdate,
)
from engine.worklist.model import (
    StoredWorklistItem,
    WorklistItem,
    WorklistStatus,
    fold_case,
    name_groups,
)
from engine.worklist.query import AnyOf, Column, Constraint, Criterion

T = TypeVar("T")
log = get_logger("engine.durable.sqlite")

# Each entry upgrades the schema by one version; never edit a released entry, append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE instances (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        object_id TEXT NOT NULL UNIQUE,
        spool_path TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        version INTEGER NOT NULL,
        transfer_syntax_uid TEXT NOT NULL,
        study_instance_uid TEXT,
        series_instance_uid TEXT,
        patient_id TEXT,
        accession_number TEXT,
        modality TEXT,
        calling_ae TEXT NOT NULL,
        called_ae TEXT NOT NULL,
        peer_host TEXT NOT NULL,
        listener TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        received_at TEXT NOT NULL,
        superseded INTEGER NOT NULL DEFAULT 0,
        routed_at TEXT,
        UNIQUE (sop_instance_uid, version)
    );
    CREATE INDEX instances_study ON instances (study_instance_uid);
    CREATE INDEX instances_unrouted ON instances (id) WHERE routed_at IS NULL;
    """,
    # 2: the HL7 journal (raw bytes in the row: durable with the commit that answers AA) and
    # the worklist. Worklist columns are copies of ``data`` (the item as JSON) kept for the
    # indexes Modality Worklist queries use; names are folded per PN component group.
    """
    CREATE TABLE hl7_messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sending_application TEXT,
        sending_facility TEXT,
        control_id TEXT,
        message_type TEXT,
        trigger_event TEXT,
        peer_host TEXT NOT NULL,
        listener TEXT NOT NULL,
        received_at TEXT NOT NULL,
        raw BLOB NOT NULL,
        ack_code TEXT NOT NULL,
        errors_json TEXT NOT NULL DEFAULT '[]',
        text TEXT,
        worklist_item_ids TEXT NOT NULL DEFAULT '[]',
        retryable INTEGER NOT NULL DEFAULT 0,
        UNIQUE (sending_application, sending_facility, control_id)
    );
    CREATE INDEX hl7_messages_ack ON hl7_messages (ack_code, id);
    CREATE TABLE worklist_items (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        status TEXT NOT NULL,
        patient_id TEXT NOT NULL,
        issuer_of_patient_id TEXT NOT NULL DEFAULT '',
        patient_name_norm TEXT NOT NULL DEFAULT '',
        patient_name_ideographic_norm TEXT NOT NULL DEFAULT '',
        patient_name_phonetic_norm TEXT NOT NULL DEFAULT '',
        accession_number TEXT NOT NULL DEFAULT '',
        requested_procedure_id TEXT NOT NULL DEFAULT '',
        study_instance_uid TEXT NOT NULL DEFAULT '',
        placer_order_number TEXT NOT NULL DEFAULT '',
        filler_order_number TEXT NOT NULL DEFAULT '',
        modality TEXT NOT NULL DEFAULT '',
        scheduled_station_ae_title TEXT NOT NULL DEFAULT '',
        sps_start_date TEXT NOT NULL DEFAULT '',
        sps_start_time TEXT NOT NULL DEFAULT '',
        source TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX worklist_patient ON worklist_items (patient_id);
    CREATE INDEX worklist_accession ON worklist_items (accession_number);
    CREATE INDEX worklist_requested_procedure ON worklist_items (requested_procedure_id);
    CREATE INDEX worklist_study ON worklist_items (study_instance_uid);
    CREATE INDEX worklist_placer ON worklist_items (placer_order_number);
    CREATE INDEX worklist_filler ON worklist_items (filler_order_number);
    CREATE INDEX worklist_modality_date ON worklist_items (modality, sps_start_date);
    CREATE INDEX worklist_date ON worklist_items (sps_start_date);
    CREATE INDEX worklist_station_date ON worklist_items (scheduled_station_ae_title,
                                                         sps_start_date);
    CREATE INDEX worklist_name ON worklist_items (patient_name_norm);
    CREATE INDEX worklist_name_ideographic ON worklist_items (patient_name_ideographic_norm);
    CREATE INDEX worklist_name_phonetic ON worklist_items (patient_name_phonetic_norm);
    CREATE INDEX worklist_status ON worklist_items (status, updated_at)
    """,
    # 3: the transactional outbox (D3). A row freezes everything its sender needs in
    # ``payload`` (JSON: spool path, morph steps, rendered message...), so a retry sends the
    # same bytes. Routing inserts rows and marks the journal entry routed in one transaction.
    # Times are epoch seconds (REAL) because the dispatcher compares them on every lease.
    """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        destination TEXT NOT NULL,
        kind TEXT NOT NULL,
        source_table TEXT NOT NULL,
        source_id INTEGER NOT NULL,
        route TEXT NOT NULL,
        payload TEXT NOT NULL,
        study_instance_uid TEXT,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        lease_owner TEXT,
        lease_until REAL,
        last_error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        done_at REAL
    );
    CREATE INDEX outbox_ready ON outbox (destination, state, next_attempt_at);
    CREATE INDEX outbox_study ON outbox (destination, study_instance_uid, id)
        WHERE state IN ('pending', 'leased');
    CREATE INDEX outbox_dead ON outbox (state, destination, id) WHERE state = 'dead';
    ALTER TABLE hl7_messages ADD COLUMN routed_at TEXT
    """,
    # 4: routing (issue 5). ``routing_outcome`` says what routing made of a journal entry
    # (routed, grouped, discarded, unmatched): unmatched objects stay visible and listable.
    # Series/study triggers wait in ``routing_groups`` (one open group per route and series or
    # study; its frozen decision as JSON) with their members, so the quiet-period timers are
    # rebuilt from here at start. SQL in sqlite_routing.py.
    """
    ALTER TABLE instances ADD COLUMN routing_outcome TEXT;
    ALTER TABLE hl7_messages ADD COLUMN routing_outcome TEXT;
    CREATE INDEX hl7_messages_unrouted ON hl7_messages (id) WHERE routed_at IS NULL;
    CREATE INDEX instances_unmatched ON instances (id) WHERE routing_outcome = 'unmatched';
    CREATE TABLE routing_groups (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        route TEXT NOT NULL,
        level TEXT NOT NULL,
        group_key TEXT NOT NULL,
        study_instance_uid TEXT,
        state TEXT NOT NULL DEFAULT 'open',
        decision TEXT NOT NULL,
        quiet_seconds REAL NOT NULL,
        max_wait_seconds REAL NOT NULL,
        first_at REAL NOT NULL,
        last_at REAL NOT NULL,
        fired_at REAL,
        fire_reason TEXT
    );
    CREATE UNIQUE INDEX routing_groups_open ON routing_groups (route, level, group_key)
        WHERE state = 'open';
    CREATE INDEX routing_groups_study ON routing_groups (study_instance_uid)
        WHERE state = 'open';
    CREATE TABLE routing_group_members (
        group_id INTEGER NOT NULL REFERENCES routing_groups (id),
        instance_id INTEGER NOT NULL REFERENCES instances (id),
        PRIMARY KEY (group_id, instance_id)
    ) WITHOUT ROWID
    """,
    # 5: Modality Performed Procedure Steps (issue 4; SQL in sqlite_mpps.py). One row per step
    # with its full attributes as DICOM JSON (as received, then as updated) and its worklist
    # link; ``procedure_step_events`` is the journal of Started/Completed/Discontinued facts
    # (routed like instances: ``routed_at``/``routing_outcome``); ``procedure_step_instances``
    # keeps the instances a COMPLETED step lists, the evidence that its study is complete.
    """
    CREATE TABLE procedure_steps (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sop_instance_uid TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        study_instance_uid TEXT NOT NULL DEFAULT '',
        accession_number TEXT NOT NULL DEFAULT '',
        patient_id TEXT NOT NULL DEFAULT '',
        performed_procedure_step_id TEXT NOT NULL DEFAULT '',
        modality TEXT NOT NULL DEFAULT '',
        calling_ae TEXT NOT NULL DEFAULT '',
        worklist_item_ids TEXT NOT NULL DEFAULT '[]',
        unscheduled INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        complete_at TEXT,
        dataset TEXT NOT NULL
    );
    CREATE INDEX procedure_steps_study ON procedure_steps (study_instance_uid);
    CREATE INDEX procedure_steps_awaiting ON procedure_steps (id)
        WHERE status = 'COMPLETED' AND complete_at IS NULL;
    CREATE TABLE procedure_step_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        step_id INTEGER NOT NULL REFERENCES procedure_steps (id),
        operation TEXT NOT NULL,
        status TEXT NOT NULL,
        received TEXT NOT NULL,
        received_at TEXT NOT NULL,
        routed_at TEXT,
        routing_outcome TEXT
    );
    CREATE INDEX procedure_step_events_unrouted ON procedure_step_events (id)
        WHERE routed_at IS NULL;
    CREATE TABLE procedure_step_instances (
        step_id INTEGER NOT NULL REFERENCES procedure_steps (id),
        sop_instance_uid TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL DEFAULT '',
        series_instance_uid TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (step_id, sop_instance_uid)
    ) WITHOUT ROWID;
    CREATE INDEX procedure_step_instances_uid ON procedure_step_instances (sop_instance_uid)
    """,
    # 6: spool retention (SQL in sqlite_retention.py): instances by age, and the outbox rows
    # and group memberships that still need an instance's file.
    """
    CREATE INDEX instances_received ON instances (received_at);
    CREATE INDEX outbox_source ON outbox (source_table, source_id);
    CREATE INDEX routing_group_members_instance ON routing_group_members (instance_id)
    """,
    # 7: rows committed while their file's fsync ran beside the commit; 0 until it is marked
    # (SQL in sqlite_durable.py). Every earlier row had its file fsync'd before its commit.
    """
    ALTER TABLE instances ADD COLUMN durable INTEGER NOT NULL DEFAULT 1;
    CREATE INDEX instances_not_durable ON instances (id) WHERE durable = 0
    """,
    # 8: journal retention for HL7 messages and MPPS steps (SQL in sqlite_retention.py).
    """
    CREATE INDEX hl7_messages_received ON hl7_messages (received_at);
    CREATE INDEX procedure_steps_updated ON procedure_steps (updated_at);
    CREATE INDEX procedure_step_events_step ON procedure_step_events (step_id)
    """,
)

# Query columns by name: Column values are checked against this whitelist before they reach SQL.
_WORKLIST_COLUMNS: dict[Column, str] = {c: c.value for c in Column}
_SPS_DATE_COLUMN = "sps_start_date"
assert _WORKLIST_COLUMNS[Column.SPS_DATE] == _SPS_DATE_COLUMN
_ITEM_INSERT = (
    "INSERT INTO worklist_items (status, patient_id, issuer_of_patient_id, patient_name_norm, "
    "patient_name_ideographic_norm, patient_name_phonetic_norm, accession_number, "
    "requested_procedure_id, study_instance_uid, placer_order_number, filler_order_number, "
    "modality, scheduled_station_ae_title, sps_start_date, sps_start_time, source, created_at, "
    "updated_at, data) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
_ITEM_UPDATE = (
    "UPDATE worklist_items SET status=?, patient_id=?, issuer_of_patient_id=?, "
    "patient_name_norm=?, patient_name_ideographic_norm=?, patient_name_phonetic_norm=?, "
    "accession_number=?, requested_procedure_id=?, study_instance_uid=?, "
    "placer_order_number=?, filler_order_number=?, modality=?, scheduled_station_ae_title=?, "
    "sps_start_date=?, sps_start_time=?, source=?, created_at=?, updated_at=?, data=? "
    "WHERE id=?")
_HL7_COLUMNS = (
    "id, sending_application, sending_facility, control_id, message_type, trigger_event, "
    "peer_host, listener, received_at, ack_code, errors_json, text, worklist_item_ids")


def _item_row(item: WorklistItem) -> tuple[Any, ...]:
    alpha, ideo, phon = name_groups(item.patient_name)
    return (item.status.value, item.patient_id, item.issuer_of_patient_id, fold_case(alpha),
            fold_case(ideo), fold_case(phon), item.accession_number,
            item.requested_procedure_id, item.study_instance_uid, item.placer_order_number,
            item.filler_order_number, item.modality, item.scheduled_station_ae_title,
            item.scheduled_procedure_step_start_date, item.scheduled_procedure_step_start_time,
            item.source, item.created_at, item.updated_at,
            json.dumps(item.to_json(), ensure_ascii=False, separators=(",", ":")))


def _row_to_item(row: Sequence[Any]) -> StoredWorklistItem:
    return StoredWorklistItem(int(row[0]), WorklistItem.from_json(json.loads(row[1])))


def _glob(pattern: str) -> str:
    """A DICOM wildcard pattern as an SQLite GLOB pattern (``*``/``?`` keep their meaning;
    GLOB's own ``[`` and ``]`` are made literal). GLOB, not LIKE: it is case-sensitive like
    DICOM, and its constant prefix lets SQLite range-scan the index."""
    return pattern.replace("[", "\x00").replace("]", "[]]").replace("\x00", "[[]")


def _where(constraints: Sequence[Constraint], statuses: Sequence[WorklistStatus]
           ) -> tuple[str, list[Any]]:
    terms: list[str] = []
    params: list[Any] = []

    def term(c: Criterion) -> str:
        col = _WORKLIST_COLUMNS[c.column]
        if c.op == "eq":
            params.append(c.value)
            return f"{col} = ?"
        if c.op == "wildcard":
            params.append(_glob(c.value))
            return f"{col} GLOB ?"
        if c.op == "in":
            params.extend(c.values)
            return f"{col} IN ({','.join('?' * len(c.values))})"
        parts = []
        if c.low is not None:
            params.append(c.low)
            parts.append(f"{col} >= ?")
        if c.high is not None:
            params.append(c.high)
            parts.append(f"{col} <= ?")
        return " AND ".join(parts) or "1"

    for constraint in constraints:
        if isinstance(constraint, AnyOf):
            terms.append("(" + " OR ".join(term(c) for c in constraint.criteria) + ")")
        else:
            terms.append(term(constraint))
    if statuses:
        params.extend(s.value for s in statuses)
        # Unary + keeps the planner off the status index: nearly every row is active, so it
        # would be a scan in disguise; the selective key indexes must drive the search.
        terms.append(f"+status IN ({','.join('?' * len(statuses))})")
    return (" WHERE " + " AND ".join(terms)) if terms else "", params


class _WorklistTxn:
    """:class:`~engine.durable.store.WorklistTxn` on the writer's connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def items_for_order(self, placer: str, filler: str) -> list[StoredWorklistItem]:
        if placer:
            sql, key = "placer_order_number = ?", placer
        else:
            sql, key = "filler_order_number = ?", filler
        rows = self._conn.execute(
            f"SELECT id, data FROM worklist_items WHERE {sql} ORDER BY id", (key,)).fetchall()
        return [_row_to_item(r) for r in rows]

    def items_for_patient(self, patient_id: str, issuer: str | None) -> list[StoredWorklistItem]:
        if issuer is None:
            rows = self._conn.execute(
                "SELECT id, data FROM worklist_items WHERE patient_id = ? ORDER BY id",
                (patient_id,)).fetchall()
        else:
            rows = self._conn.execute(
                "SELECT id, data FROM worklist_items WHERE patient_id = ? AND "
                "issuer_of_patient_id = ? ORDER BY id", (patient_id, issuer)).fetchall()
        return [_row_to_item(r) for r in rows]

    def insert_item(self, item: WorklistItem) -> int:
        cur = self._conn.execute(_ITEM_INSERT, _item_row(item))
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    def update_item(self, item_id: int, item: WorklistItem) -> None:
        self._conn.execute(_ITEM_UPDATE, (*_item_row(item), item_id))

_INSTANCE_COLUMNS = (
    "id, version, routed_at, superseded, object_id, spool_path, sop_class_uid, sop_instance_uid, "
    "transfer_syntax_uid, study_instance_uid, series_instance_uid, patient_id, accession_number, "
    "modality, calling_ae, called_ae, peer_host, listener, size_bytes, sha256, received_at"
)


def _row_to_instance(row: Sequence[Any]) -> StoredInstance:
    return StoredInstance(
        id=row[0], version=row[1], routed_at=row[2], superseded=bool(row[3]),
        record=InstanceRecord(*row[4:]),
    )


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
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsync'd at every commit, so a committed row survives power loss.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

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
        await self._write(self._migrate)
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

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                     " applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)")
        current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
                               ).fetchone()[0]
        for version, script in enumerate(MIGRATIONS, start=1):
            if version <= current:
                continue
            with transaction(conn):
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))

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

    async def schema_version(self) -> int:
        return await self._read(
            lambda c: c.execute("SELECT COALESCE(MAX(version),0) FROM schema_migrations"
                                ).fetchone()[0])

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
                with transaction(conn):
                    sqlite_durable.mark(conn, durable_ids)
                    return [self._commit_one(conn, item) for item in batch]
            except sqlite3.Error as exc:
                raise StorageFailure(f"journal commit failed: {exc}") from exc

        try:
            return self._writer.submit_urgent(run)
        except RuntimeError as exc:  # the writer was shut down
            raise StorageFailure("the store is closed") from exc

    @staticmethod
    def _commit_one(conn: sqlite3.Connection, item: InstanceCommit) -> InstanceCommitResult:
        rec = item.record
        existing = conn.execute(
            "SELECT id, version, sha256, size_bytes FROM instances WHERE sop_instance_uid = ? "
            "ORDER BY version DESC LIMIT 1", (rec.sop_instance_uid,)).fetchone()
        if existing is not None and existing[2] != rec.sha256:
            # A resend of an older version's bytes is a retransmission, not a new version.
            same = conn.execute(
                "SELECT id, version, sha256, size_bytes FROM instances "
                "WHERE sop_instance_uid = ? AND sha256 = ? AND size_bytes = ? LIMIT 1",
                (rec.sop_instance_uid, rec.sha256, rec.size_bytes)).fetchone()
            if same is not None:
                return InstanceCommitResult(InstanceOutcome.IDENTICAL, same[0], same[1])
        outcome = decide_duplicate(existing[2] if existing else None,
                                   existing[3] if existing else None, rec, item.policy)
        if existing is not None and outcome in (
                InstanceOutcome.IDENTICAL, InstanceOutcome.IGNORED, InstanceOutcome.REJECTED):
            return InstanceCommitResult(outcome, existing[0], existing[1])
        version = 1
        if existing is not None:
            version = existing[1] + 1
            conn.execute("UPDATE instances SET superseded = 1 WHERE id = ?", (existing[0],))
        cur = conn.execute(
            "INSERT INTO instances (object_id, spool_path, sop_class_uid, sop_instance_uid, "
            "version, transfer_syntax_uid, study_instance_uid, series_instance_uid, patient_id, "
            "accession_number, modality, calling_ae, called_ae, peer_host, listener, size_bytes, "
            "sha256, received_at, durable) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (rec.object_id, rec.spool_path, rec.sop_class_uid, rec.sop_instance_uid, version,
             rec.transfer_syntax_uid, rec.study_instance_uid, rec.series_instance_uid,
             rec.patient_id, rec.accession_number, rec.modality, rec.calling_ae, rec.called_ae,
             rec.peer_host, rec.listener, rec.size_bytes, rec.sha256, rec.received_at,
             1 if item.file_durable else 0))
        return InstanceCommitResult(outcome, cur.lastrowid, version)

    async def get_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        def run(conn: sqlite3.Connection) -> StoredInstance | None:
            row = conn.execute(
                f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE sop_instance_uid = ? "
                "ORDER BY version DESC LIMIT 1", (sop_instance_uid,)).fetchone()
            return _row_to_instance(row) if row else None

        return await self._read(run)

    async def list_instances(self, limit: int = 100, offset: int = 0) -> list[StoredInstance]:
        def run(conn: sqlite3.Connection) -> list[StoredInstance]:
            rows = conn.execute(
                f"SELECT {_INSTANCE_COLUMNS} FROM instances ORDER BY id DESC LIMIT ? OFFSET ?",
                (limit, offset)).fetchall()
            return [_row_to_instance(r) for r in rows]

        return await self._read(run)

    async def count_instances(self) -> int:
        return await self._read(
            lambda c: int(c.execute("SELECT COUNT(*) FROM instances").fetchone()[0]))

    async def expired_instances(self, received_before: str, limit: int
                                ) -> list[ExpiredInstance]:
        return await self._read(
            lambda c: sqlite_retention.expired(c, received_before, limit))

    async def mark_instances_durable(self, ids: Sequence[int]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                sqlite_durable.mark(conn, ids)

        await self._write(run)

    async def instances_not_durable(self) -> list[StoredInstance]:
        return await self._read(sqlite_durable.not_durable)

    async def withdraw_instance(self, instance_id: int) -> bool:
        return await self._write(lambda c: sqlite_durable.withdraw(c, instance_id))

    async def forget_instances(self, ids: Sequence[int]) -> int:
        return await self._write(lambda c: sqlite_retention.forget(c, ids))

    async def purge_journal(self, before: str, limit: int) -> JournalPurge:
        return await self._write(lambda c: sqlite_retention.purge_journal(c, before, limit))

    async def known_object_ids(self, object_ids: Sequence[str]) -> set[str]:
        def run(conn: sqlite3.Connection) -> set[str]:
            known: set[str] = set()
            ids = list(object_ids)
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                known.update(r[0] for r in conn.execute(
                    f"SELECT object_id FROM instances WHERE object_id IN ({marks})", chunk))
            return known

        return await self._read(run)

    # --- HL7 journal -------------------------------------------------------------------------
    async def commit_hl7_batch(self, entries: Sequence[Hl7JournalEntry], apply: Hl7Apply
                               ) -> list[Hl7CommitResult]:
        def run(conn: sqlite3.Connection) -> list[Hl7CommitResult]:
            txn = _WorklistTxn(conn)
            with transaction(conn):
                return [self._commit_hl7_one(conn, txn, entry, index, apply)
                        for index, entry in enumerate(entries)]

        try:
            return await self._write(run)
        except sqlite3.Error as exc:
            raise StorageFailure(f"HL7 journal commit failed: {exc}") from exc

    @staticmethod
    def _commit_hl7_one(conn: sqlite3.Connection, txn: _WorklistTxn, entry: Hl7JournalEntry,
                        index: int, apply: Hl7Apply) -> Hl7CommitResult:
        existing = None
        if entry.control_id is not None:
            existing = conn.execute(
                "SELECT id, ack_code, errors_json, text, worklist_item_ids, retryable "
                "FROM hl7_messages WHERE sending_application IS ? AND sending_facility IS ? "
                "AND control_id = ?",
                (entry.sending_application, entry.sending_facility, entry.control_id)
            ).fetchone()
            if existing is not None and not existing[5]:
                return Hl7CommitResult(int(existing[0]), Hl7Disposition(
                    existing[1], existing[2], existing[3],
                    tuple(json.loads(existing[4])), applied=False), duplicate=True)
        # One savepoint per message: a message whose disposition is "not applied" (or whose
        # apply fails) leaves no worklist trace, and never takes the rest of the batch along.
        conn.execute("SAVEPOINT hl7_message")
        try:
            disposition = apply(txn, index)
            if not disposition.applied:
                conn.execute("ROLLBACK TO hl7_message")
            values = (entry.message_type, entry.trigger_event, entry.peer_host, entry.listener,
                      entry.received_at, entry.raw, disposition.ack_code,
                      disposition.errors_json, disposition.text,
                      json.dumps(list(disposition.worklist_item_ids)),
                      int(disposition.retryable))
            if existing is not None:
                # A repeat of a message whose answer depended on the moment: answered anew.
                conn.execute(
                    "UPDATE hl7_messages SET message_type=?, trigger_event=?, peer_host=?, "
                    "listener=?, received_at=?, raw=?, ack_code=?, errors_json=?, text=?, "
                    "worklist_item_ids=?, retryable=? WHERE id=?", (*values, existing[0]))
                journal_id = int(existing[0])
            else:
                cur = conn.execute(
                    "INSERT INTO hl7_messages (sending_application, sending_facility, "
                    "control_id, message_type, trigger_event, peer_host, listener, "
                    "received_at, raw, ack_code, errors_json, text, worklist_item_ids, "
                    "retryable) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (entry.sending_application, entry.sending_facility, entry.control_id,
                     *values))
                assert cur.lastrowid is not None
                journal_id = int(cur.lastrowid)
            conn.execute("RELEASE hl7_message")
        except BaseException:
            conn.execute("ROLLBACK TO hl7_message")
            conn.execute("RELEASE hl7_message")
            raise
        return Hl7CommitResult(journal_id, disposition, duplicate=False)

    async def list_hl7_messages(self, ack_codes: Sequence[str] | None = None, limit: int = 100,
                                offset: int = 0) -> list[Hl7JournalRecord]:
        def run(conn: sqlite3.Connection) -> list[Hl7JournalRecord]:
            where, params = self._ack_filter(ack_codes)
            rows = conn.execute(
                f"SELECT {_HL7_COLUMNS}, NULL FROM hl7_messages{where} ORDER BY id DESC "
                "LIMIT ? OFFSET ?", (*params, limit, offset)).fetchall()
            return [self._hl7_record(r) for r in rows]

        return await self._read(run)

    async def count_hl7_messages(self, ack_codes: Sequence[str] | None = None) -> int:
        def run(conn: sqlite3.Connection) -> int:
            where, params = self._ack_filter(ack_codes)
            return int(conn.execute(f"SELECT COUNT(*) FROM hl7_messages{where}",
                                    params).fetchone()[0])

        return await self._read(run)

    async def get_hl7_message(self, journal_id: int) -> Hl7JournalRecord | None:
        def run(conn: sqlite3.Connection) -> Hl7JournalRecord | None:
            row = conn.execute(f"SELECT {_HL7_COLUMNS}, raw FROM hl7_messages WHERE id = ?",
                               (journal_id,)).fetchone()
            return self._hl7_record(row) if row else None

        return await self._read(run)

    @staticmethod
    def _ack_filter(ack_codes: Sequence[str] | None) -> tuple[str, list[str]]:
        if not ack_codes:
            return "", []
        return f" WHERE ack_code IN ({','.join('?' * len(ack_codes))})", list(ack_codes)

    @staticmethod
    def _hl7_record(row: Sequence[Any]) -> Hl7JournalRecord:
        return Hl7JournalRecord(
            id=int(row[0]),
            entry=Hl7JournalEntry(row[1], row[2], row[3], row[4], row[5], row[6], row[7],
                                  row[8], bytes(row[13]) if row[13] is not None else b""),
            ack_code=row[9], errors_json=row[10], text=row[11],
            worklist_item_ids=tuple(json.loads(row[12])))

    # --- worklist ----------------------------------------------------------------------------
    @staticmethod
    def worklist_sql(constraints: Sequence[Constraint], statuses: Sequence[WorklistStatus],
                     limit: int, offset: int = 0, newest_first: bool = False
                     ) -> tuple[str, list[Any]]:
        """The SELECT behind :meth:`find_worklist` (public for EXPLAIN QUERY PLAN in tests)."""
        where, params = _where(constraints, statuses)
        # No ORDER BY for MWL queries: sorting would tempt the planner into a rowid scan.
        order = " ORDER BY id DESC" if newest_first else ""
        return (f"SELECT id, data FROM worklist_items{where}{order} LIMIT ? OFFSET ?",
                [*params, limit, offset])

    async def find_worklist(self, constraints: Sequence[Constraint],
                            statuses: Sequence[WorklistStatus], limit: int, offset: int = 0,
                            newest_first: bool = False) -> list[StoredWorklistItem]:
        sql, params = self.worklist_sql(constraints, statuses, limit, offset, newest_first)

        def run(conn: sqlite3.Connection) -> list[StoredWorklistItem]:
            return [_row_to_item(r) for r in conn.execute(sql, params).fetchall()]

        return await self._read(run)

    async def explain_worklist(self, constraints: Sequence[Constraint],
                               statuses: Sequence[WorklistStatus]) -> list[str]:
        """SQLite's plan for a worklist query, one line per step (tests and diagnostics)."""
        sql, params = self.worklist_sql(constraints, statuses, 100)

        def run(conn: sqlite3.Connection) -> list[str]:
            return [str(r[3]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]

        return await self._read(run)

    async def count_worklist(self, constraints: Sequence[Constraint],
                             statuses: Sequence[WorklistStatus]) -> int:
        where, params = _where(constraints, statuses)
        return await self._read(lambda c: int(c.execute(
            f"SELECT COUNT(*) FROM worklist_items{where}", params).fetchone()[0]))

    async def get_worklist_item(self, item_id: int) -> StoredWorklistItem | None:
        def run(conn: sqlite3.Connection) -> StoredWorklistItem | None:
            row = conn.execute("SELECT id, data FROM worklist_items WHERE id = ?",
                               (item_id,)).fetchone()
            return _row_to_item(row) if row else None

        return await self._read(run)

    async def add_worklist_items(self, items: Sequence[WorklistItem]) -> list[int]:
        def run(conn: sqlite3.Connection) -> list[int]:
            txn = _WorklistTxn(conn)
            with transaction(conn):
                return [txn.insert_item(item) for item in items]

        try:
            return await self._write(run)
        except sqlite3.Error as exc:
            raise StorageFailure(f"worklist insert failed: {exc}") from exc

    async def update_worklist_item(self, item_id: int,
                                   change: Callable[[WorklistItem], WorklistItem]
                                   ) -> StoredWorklistItem | None:
        def run(conn: sqlite3.Connection) -> StoredWorklistItem | None:
            with transaction(conn):
                row = conn.execute("SELECT id, data FROM worklist_items WHERE id = ?",
                                   (item_id,)).fetchone()
                if row is None:
                    return None
                new = change(_row_to_item(row).item)
                _WorklistTxn(conn).update_item(item_id, new)
            return StoredWorklistItem(item_id, new)

        try:
            return await self._write(run)
        except sqlite3.Error as exc:
            raise StorageFailure(f"worklist update failed: {exc}") from exc

    async def delete_worklist_item(self, item_id: int) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM worklist_items WHERE id = ?",
                                (item_id,)).rowcount > 0

        return await self._write(run)

    async def purge_worklist(self, statuses: Sequence[WorklistStatus], updated_before: str
                             ) -> int:
        if not statuses:
            return 0

        def run(conn: sqlite3.Connection) -> int:
            marks = ",".join("?" * len(statuses))
            return int(conn.execute(
                f"DELETE FROM worklist_items WHERE status IN ({marks}) AND updated_at < ?",
                (*(s.value for s in statuses), updated_before)).rowcount)

        return await self._write(run)

    async def worklist_counts(self) -> dict[WorklistStatus, int]:
        def run(conn: sqlite3.Connection) -> dict[WorklistStatus, int]:
            counts = dict.fromkeys(WorklistStatus, 0)
            for status, n in conn.execute(
                    "SELECT status, COUNT(*) FROM worklist_items GROUP BY status"):
                counts[WorklistStatus(status)] = int(n)
            return counts

        return await self._read(run)

    # --- outbox (D3): thin wrappers; the SQL is in sqlite_outbox.py --------------------------
    async def _outbox_write(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._write(fn)
        except sqlite3.Error as exc:
            raise StorageFailure(f"outbox {what} failed: {exc}") from exc

    async def enqueue_outbox(self, rows: Sequence[NewOutboxRow], now: float) -> list[int]:
        return await self._outbox_write(
            "enqueue", lambda c: sqlite_outbox.enqueue(c, rows, now))

    async def lease_outbox(self, destination: str, owner: str, now: float,
                           lease_seconds: float, limit: int, per_study: bool = False
                           ) -> list[OutboxRow]:
        return await self._outbox_write("lease", lambda c: sqlite_outbox.lease(
            c, destination, owner, now, lease_seconds, limit, per_study))

    async def record_outbox(self, owner: str, results: Sequence[OutboxResult], now: float
                            ) -> int:
        return await self._outbox_write(
            "record", lambda c: sqlite_outbox.record(c, owner, results, now))

    async def release_outbox_leases(self, owner_prefix: str, keep_owner: str) -> int:
        return await self._outbox_write(
            "release", lambda c: sqlite_outbox.release_leases(c, owner_prefix, keep_owner))

    async def outbox_stats(self, destinations: Sequence[str]) -> list[QueueStats]:
        return await self._read(lambda c: sqlite_outbox.stats(c, destinations))

    async def list_dead_letters(self, destination: str | None, limit: int = 100,
                                offset: int = 0) -> list[DeadLetter]:
        return await self._read(
            lambda c: sqlite_outbox.list_dead(c, destination, limit, offset))

    async def count_dead_letters(self, destination: str | None) -> int:
        return await self._read(lambda c: sqlite_outbox.count_dead(c, destination))

    async def retry_dead_letters(self, destination: str, ids: Sequence[int] | None,
                                 now: float) -> int:
        return await self._outbox_write(
            "retry", lambda c: sqlite_outbox.retry_dead(c, destination, ids, now))

    async def purge_dead_letters(self, destination: str, ids: Sequence[int] | None) -> int:
        return await self._outbox_write(
            "purge", lambda c: sqlite_outbox.purge_dead(c, destination, ids))

    async def purge_done_outbox(self, done_before: float, limit: int = 10_000) -> int:
        return await self._outbox_write(
            "purge", lambda c: sqlite_outbox.purge_done(c, done_before, limit))

    async def outbox_rows(self, destination: str | None = None,
                          states: Sequence[OutboxState] = ()) -> list[dict[str, object]]:
        return await self._read(lambda c: sqlite_outbox.rows(c, destination, states))

    # --- routing (SQL in sqlite_routing.py) --------------------------------------------------
    async def commit_routing(self, plans: Sequence[RoutingPlan], now_iso: str, now: float
                             ) -> list[RoutingCommitResult]:
        try:
            return await self._write(
                lambda c: sqlite_routing.commit_routing(c, plans, now_iso, now))
        except sqlite3.Error as exc:
            raise StorageFailure(f"routing commit failed: {exc}") from exc

    async def fire_routing_group(self, group_id: int, reason: str, now: float,
                                 build: BuildGroupRows) -> FiredGroup | None:
        try:
            return await self._write(
                lambda c: sqlite_routing.fire_group(c, group_id, reason, now, build))
        except sqlite3.Error as exc:
            raise StorageFailure(f"routing group commit failed: {exc}") from exc

    async def open_routing_groups(self, study_instance_uid: str | None = None
                                  ) -> list[OpenGroup]:
        return await self._read(lambda c: sqlite_routing.open_groups(c, study_instance_uid))

    async def unrouted_instances(self, after_id: int, limit: int) -> list[StoredInstance]:
        return await self._read(lambda c: sqlite_routing.unrouted_instances(c, after_id, limit))

    async def instances_by_ids(self, ids: Sequence[int]) -> list[StoredInstance]:
        return await self._read(lambda c: sqlite_routing.instances_by_ids(c, ids))

    async def unrouted_hl7_messages(self, after_id: int, limit: int
                                    ) -> list[Hl7JournalRecord]:
        return await self._read(lambda c: sqlite_routing.unrouted_hl7(c, after_id, limit))

    async def unrouted_procedure_step_events(self, after_id: int, limit: int,
                                             ids: Sequence[int] | None = None
                                             ) -> list[ProcedureStepEventRecord]:
        # MPPS events → routing
        return await self._read(lambda c: sqlite_routing.unrouted_procedure_step_events(
            c, after_id, limit, ids))

    async def unmatched_instances(self, limit: int, offset: int
                                  ) -> tuple[int, list[StoredInstance]]:
        return await self._read(
            lambda c: sqlite_routing.unmatched_instances(c, limit, offset))

    async def routing_counts(self) -> dict[str, int]:
        return await self._read(sqlite_routing.routing_counts)

    # --- procedure steps (MPPS): thin wrappers; the SQL is in sqlite_mpps.py -------------------
    async def _mpps_write(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._write(fn)
        except sqlite3.Error as exc:
            raise StorageFailure(f"procedure step {what} failed: {exc}") from exc

    async def create_procedure_step(self, new: NewProcedureStep, decide: sqlite_mpps.LinkDecision
                                    ) -> ProcedureStepCommit:
        return await self._mpps_write(
            "create", lambda c: sqlite_mpps.create_step(c, new, decide))

    async def set_procedure_step(self, sop_instance_uid: str,
                                 change: Callable[[ProcedureStep], StepUpdate],
                                 decide: Callable[[PpsStatus], sqlite_mpps.LinkDecision],
                                 now: str) -> ProcedureStepCommit:
        return await self._mpps_write("set", lambda c: sqlite_mpps.set_step(
            c, sop_instance_uid, change, decide, now))

    async def get_procedure_step(self, sop_instance_uid: str) -> ProcedureStep | None:
        return await self._read(lambda c: sqlite_mpps.get_step(c, sop_instance_uid))

    async def list_procedure_steps(self, status: str | None = None,
                                   unscheduled: bool | None = None, limit: int = 100,
                                   offset: int = 0) -> tuple[int, list[ProcedureStep]]:
        return await self._read(
            lambda c: sqlite_mpps.list_steps(c, status, unscheduled, limit, offset))

    async def procedure_steps_awaiting(self) -> list[tuple[ProcedureStep, tuple[str, ...]]]:
        return await self._read(sqlite_mpps.awaiting)

    async def mark_procedure_step_complete(self, step_id: int, now: str) -> bool:
        return await self._mpps_write(
            "complete", lambda c: sqlite_mpps.mark_complete(c, step_id, now))
