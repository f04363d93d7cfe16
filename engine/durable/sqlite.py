"""SQLite backend of the store: the embedded default, one file, WAL, ``synchronous=FULL``.

All writes go through one connection on one dedicated thread, so transactions never contend and
group commits are natural; reads use a second connection on another thread (WAL lets them run
beside a write). Schema changes are numbered migrations applied in order at open. This module is
the only place with SQLite SQL; it must not decide policy (see ``store.decide_duplicate``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from engine.durable.store import (
    InstanceCommit,
    InstanceCommitResult,
    InstanceOutcome,
    InstanceRecord,
    StoredInstance,
    decide_duplicate,
)
from engine.errors import StorageFailure

T = TypeVar("T")

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
)

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
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="sqlite-reader")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None

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

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                     " applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)")
        current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
                               ).fetchone()[0]
        for version, script in enumerate(MIGRATIONS, start=1):
            if version <= current:
                continue
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._rconn is not None:
            await loop.run_in_executor(self._reader, self._rconn.close)
            self._rconn = None
        if self._wconn is not None:
            await loop.run_in_executor(self._writer, self._wconn.close)
            self._wconn = None
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)

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
        self, batch: Sequence[InstanceCommit], sync: Callable[[], None] | None = None
    ) -> list[InstanceCommitResult]:
        def run(conn: sqlite3.Connection) -> list[InstanceCommitResult]:
            if sync is not None:
                sync()
            results: list[InstanceCommitResult] = []
            conn.execute("BEGIN IMMEDIATE")
            try:
                for item in batch:
                    results.append(self._commit_one(conn, item))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return results

        try:
            return await self._write(run)
        except sqlite3.Error as exc:
            raise StorageFailure(f"journal commit failed: {exc}") from exc

    @staticmethod
    def _commit_one(conn: sqlite3.Connection, item: InstanceCommit) -> InstanceCommitResult:
        rec = item.record
        existing = conn.execute(
            "SELECT id, version, sha256, size_bytes FROM instances WHERE sop_instance_uid = ? "
            "ORDER BY version DESC LIMIT 1", (rec.sop_instance_uid,)).fetchone()
        outcome = decide_duplicate(existing[2] if existing else None,
                                   existing[3] if existing else None, rec, item.policy)
        if outcome in (InstanceOutcome.IDENTICAL, InstanceOutcome.IGNORED,
                       InstanceOutcome.REJECTED):
            return InstanceCommitResult(outcome, existing[0], existing[1])
        version = 1
        if existing is not None:
            version = existing[1] + 1
            conn.execute("UPDATE instances SET superseded = 1 WHERE id = ?", (existing[0],))
        cur = conn.execute(
            "INSERT INTO instances (object_id, spool_path, sop_class_uid, sop_instance_uid, "
            "version, transfer_syntax_uid, study_instance_uid, series_instance_uid, patient_id, "
            "accession_number, modality, calling_ae, called_ae, peer_host, listener, size_bytes, "
            "sha256, received_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (rec.object_id, rec.spool_path, rec.sop_class_uid, rec.sop_instance_uid, version,
             rec.transfer_syntax_uid, rec.study_instance_uid, rec.series_instance_uid,
             rec.patient_id, rec.accession_number, rec.modality, rec.calling_ae, rec.called_ae,
             rec.peer_host, rec.listener, rec.size_bytes, rec.sha256, rec.received_at))
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
