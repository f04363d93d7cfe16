"""PostgreSQL for tests: the shared server (127.0.0.1:5432, trust, database ``test``), one
fresh schema per test, dropped after; and a private server a test may stop and restart.

``RADFLOW_TEST_PG_DSN`` points the tests at another server. When none answers, PostgreSQL tests
are skipped with the reason (``scripts/test.sh`` installs and starts one).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from engine.settings import PostgresSettings

DSN = os.environ.get("RADFLOW_TEST_PG_DSN",
                     "host=127.0.0.1 port=5432 dbname=test user=postgres")


def _pg_bin() -> Path:
    """Debian's newest server binaries (initdb, pg_ctl)."""
    if "RADFLOW_TEST_PG_BIN" in os.environ:
        return Path(os.environ["RADFLOW_TEST_PG_BIN"])
    versions = sorted((p for p in Path("/usr/lib/postgresql").glob("*/bin")),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return versions[-1] if versions else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()


@functools.cache
def unavailable() -> str | None:
    """Why the shared server cannot be used (None when it can)."""
    try:
        with psycopg.connect(DSN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL at {DSN!r} is not reachable: {str(exc).strip()}"
    return None


def settings(schema: str, dsn: str = DSN, **overrides: Any) -> PostgresSettings:
    return PostgresSettings.model_validate(
        {"dsn": dsn, "schema": schema, "pool_size": 2, "connect_timeout": 3, **overrides})


def new_schema_name() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "w")
    return f"t_{worker}_{uuid.uuid4().hex[:10]}"


def drop_schema(schema: str, dsn: str = DSN) -> None:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        # Sessions still attached (a killed radflow's) would block the drop.
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> "
                     "pg_backend_pid() AND query LIKE %s", (f"%{schema}%",))
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextlib.contextmanager
def schema(dsn: str = DSN) -> Iterator[str]:
    """A schema name for one test (created by the store's migrations), dropped after."""
    name = new_schema_name()
    try:
        yield name
    finally:
        drop_schema(name, dsn)


def radflow_storage(schema_name: str, dsn: str = DSN) -> dict[str, Any]:
    """``storage`` overrides that put a radflow process on PostgreSQL in ``schema_name``."""
    return {"backend": "postgresql",
            "postgresql": {"dsn": dsn, "schema": schema_name, "pool_size": 4,
                           "connect_timeout": 3}}


class PrivateServer:
    """A PostgreSQL instance of the test's own (initdb in ``base``, a free port), so a test can
    stop and restart it without disturbing the shared one. Runs as the ``postgres`` user when
    the tests run as root (PostgreSQL refuses to run as root)."""

    def __init__(self, base: Path, port: int) -> None:
        self.base = base
        self.data = base / "pgdata"
        self.port = port
        self.dsn = f"host=127.0.0.1 port={port} dbname=postgres user=postgres"

    @staticmethod
    def missing() -> str | None:
        if not (PG_BIN / "initdb").exists():
            return f"{PG_BIN}/initdb not installed"
        if os.geteuid() == 0 and shutil.which("runuser") is None:
            return "runuser not available to run PostgreSQL as a non-root user"
        return None

    def _run(self, *args: str) -> None:
        cmd = [str(a) for a in args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, timeout=120, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr or done.stdout}")

    def init(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
            self.base.chmod(0o700)
        self._run(PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.base / "pg.log", "-w",
                  "-o", f"-p {self.port} -k {self.base} -h 127.0.0.1 -c fsync=on", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


class _PgCursor:
    def __init__(self, cur: psycopg.Cursor[Any], lastrowid: int | None) -> None:
        self._cur = cur
        self.lastrowid = lastrowid
        self.rowcount = cur.rowcount

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cur)


class _PgRaw:
    """Just enough of ``sqlite3.Connection`` for tests that seed or inspect rows with raw SQL
    (``?`` placeholders, ``lastrowid`` after an INSERT)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, query: str, params: Any = ()) -> _PgCursor:
        query = query.replace("?", "%s")
        insert = query.lstrip().upper().startswith("INSERT")
        if insert and "RETURNING" not in query.upper():
            query += " RETURNING *"  # the first column: id, where the table has one
        cur = self._conn.execute(query, params)
        lastrowid = None
        if insert and cur.description:
            row = cur.fetchone()
            lastrowid = int(row[0]) if row else None
        return _PgCursor(cur, lastrowid)


@contextlib.contextmanager
def raw_connection(store: Any) -> Iterator[Any]:
    """A connection to ``store``'s database for raw SQL in tests (committed at the end)."""
    cfg = getattr(store, "cfg", None)
    if cfg is None:
        import sqlite3

        with sqlite3.connect(store.path) as conn:
            yield conn
        conn.close()
        return
    with psycopg.connect(cfg.dsn, options=f"-c search_path={cfg.db_schema}") as pconn:
        yield _PgRaw(pconn)
