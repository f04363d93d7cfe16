"""``radflow db copy``: fill an empty PostgreSQL database from a stopped SQLite installation.

Both schemas are brought to the current version first (the SQLite file by its own migrations),
so every table has the same columns on both sides. The copy runs in ONE PostgreSQL transaction
with ``COPY``: a failure leaves the target empty, and it refuses a target that already holds
rows (copying twice would duplicate the journal). Row ids are kept, so outbox rows, group
members and MPPS links still point at the right rows, and the id sequences continue after the
highest copied id. The spool files are not copied: both installations read them from the same
``storage.spool_dir``. This module reads the SQLite file and must not change it beyond its own
migrations.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from engine.durable.postgresql._common import connect, scalar, transaction
from engine.durable.postgresql.schema import migrate
from engine.errors import StorageFailure
from engine.settings import PostgresSettings

#: every table with rows, parents before children (foreign keys); console sessions are not
#: copied (operators log in again after the move)
TABLES: tuple[str, ...] = (
    "instances", "hl7_messages", "worklist_items", "outbox", "routing_groups",
    "routing_group_members", "procedure_steps", "procedure_step_events",
    "procedure_step_instances", "qr_instances", "qr_index_state", "commitment_requests",
    "users", "api_tokens", "changes")
_WITH_ID = frozenset(TABLES) - {"routing_group_members", "procedure_step_instances",
                                "qr_instances", "qr_index_state", "users"}


class TargetNotEmpty(StorageFailure):
    reason = "target_not_empty"


@dataclass(frozen=True, slots=True)
class CopyReport:
    rows: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def _sqlite_columns(src: sqlite3.Connection, table: str) -> list[str]:
    return [str(r[1]) for r in src.execute(f"PRAGMA table_info({table})")]


def _pg_columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    return [str(r[0]) for r in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND table_name = %s ORDER BY ordinal_position", (table,))]


def copy(sqlite_path: Path, cfg: PostgresSettings,
         progress: Callable[[str, int], None] = lambda table, n: None) -> CopyReport:
    if not sqlite_path.exists():
        raise StorageFailure(f"{sqlite_path} does not exist")
    # Bring the source to the current schema with the SQLite backend's own runner.
    from engine.durable.sqlite._common import connect as connect_sqlite
    from engine.durable.sqlite.schema import migrate as migrate_sqlite

    src = connect_sqlite(sqlite_path)
    try:
        migrate_sqlite(src)
        conn = connect(cfg)
        try:
            migrate(conn, cfg.db_schema)
            return _copy(src, conn, progress)
        finally:
            conn.close()
    finally:
        src.close()


def _copy(src: sqlite3.Connection, conn: psycopg.Connection[Any],
          progress: Callable[[str, int], None]) -> CopyReport:
    busy = [t for t in TABLES if scalar(conn, sql.SQL("SELECT EXISTS (SELECT 1 FROM {})")
                                        .format(sql.Identifier(t)))]
    if busy:
        raise TargetNotEmpty(f"the PostgreSQL schema already holds rows ({', '.join(busy)}): "
                             "radflow db copy fills an empty database only")
    counts: dict[str, int] = {}
    with transaction(conn):
        for table in TABLES:
            wanted = _pg_columns(conn, table)
            have = set(_sqlite_columns(src, table))
            columns = [c for c in wanted if c in have]
            query = sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)))
            n = 0
            with conn.cursor().copy(query) as cp:
                for row in src.execute(f"SELECT {', '.join(columns)} FROM {table}"):
                    cp.write_row(row)
                    n += 1
            counts[table] = n
            progress(table, n)
            if table in _WITH_ID:
                conn.execute(sql.SQL(
                    "SELECT setval(pg_get_serial_sequence(%s, 'id'), "
                    "COALESCE((SELECT MAX(id) FROM {}), 0) + 1, false)").format(
                        sql.Identifier(table)), (table,))
    return CopyReport(counts)
