"""Helpers every module of the PostgreSQL backend shares: connecting (settings → libpq
parameters, password from the environment or a file), the session checks radflow's promise
rests on, the write-transaction helper and the mapping of driver errors.

Connections run in autocommit mode and every write is an explicit ``conn.transaction()``
(psycopg's recommended form), in READ COMMITTED: constraints and row claims, not isolation
levels, keep concurrent nodes apart. ``durable=False`` commits with ``synchronous_commit = off``
for that transaction only: the same rule as the SQLite backend's ``synchronous=NORMAL`` commits
(routing marks, outbox leases and verdicts can be redone from what is durable; the server
flushes them within a few hundred milliseconds, and any later synchronous commit flushes them
first, because the WAL is written in order).

The backend's modules import from here and from :mod:`engine.durable.rows`, never each
other's private names.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
from psycopg import pq, sql
from psycopg.abc import Buffer
from psycopg.adapt import PyFormat
from psycopg.types.string import StrDumperUnknown

from engine.errors import StorageFailure
from engine.observability.logging import get_logger
from engine.settings import PostgresSettings

#: ``synchronous_commit`` values under which COMMIT returns only after the WAL reached the local
#: disk (and, for remote_*, a synchronous standby): anything but ``off``
log = get_logger("engine.durable.postgresql")
T = TypeVar("T")

_SYNC_COMMIT_OK = frozenset({"on", "local", "remote_write", "remote_apply"})


class SessionRefused(StorageFailure):
    """The server is reachable but radflow must not run on it as it is (a setting, a
    read-only standby): retrying will not help until an operator changes something."""

    reason = "storage_refused"


def conninfo(cfg: PostgresSettings) -> dict[str, Any]:
    """libpq keyword parameters for ``psycopg.connect`` (no password in the YAML: it comes
    from ``password_file``, the ``password_env`` variable, or libpq's own PGPASSWORD/.pgpass)."""
    from psycopg.conninfo import conninfo_to_dict

    params: dict[str, Any] = (conninfo_to_dict(cfg.dsn) if cfg.dsn else
                              {"host": cfg.host, "port": cfg.port, "dbname": cfg.database,
                               "user": cfg.user})
    params.setdefault("sslmode", cfg.sslmode)
    if cfg.sslrootcert is not None:
        params.setdefault("sslrootcert", str(cfg.sslrootcert))
    params["connect_timeout"] = max(1, round(cfg.connect_timeout))
    # Operators (and pg_terminate_backend in tests) tell installations apart in
    # pg_stat_activity by it.
    params["application_name"] = f"radflow:{cfg.db_schema}"[:63]
    password = _password(cfg)
    if password is not None:
        params["password"] = password
    options = [f"-c search_path={cfg.db_schema}"]
    if cfg.statement_timeout > 0:
        options.append(f"-c statement_timeout={round(cfg.statement_timeout * 1000)}")
    # The site's own options (in its DSN) come first; radflow's schema and timeout last.
    params["options"] = " ".join([str(params.get("options") or ""), *options]).strip()
    return params


def _password(cfg: PostgresSettings) -> str | None:
    if cfg.password_file is not None:
        try:
            return cfg.password_file.read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise SessionRefused(f"cannot read storage.postgresql.password_file "
                                 f"{cfg.password_file}: {exc}") from exc
    return os.environ.get(cfg.password_env) or None


def where(cfg: PostgresSettings) -> str:
    """The server as an operator knows it (for log lines and errors): host:port/database."""
    from psycopg.conninfo import conninfo_to_dict

    params: dict[str, Any] = (conninfo_to_dict(cfg.dsn) if cfg.dsn else
                              {"host": cfg.host, "port": cfg.port, "dbname": cfg.database})
    return f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/" \
           f"{params.get('dbname', '')}"


def connect(cfg: PostgresSettings, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A checked connection (see :func:`check_session`); OperationalError when unreachable."""
    conn = psycopg.connect(**conninfo(cfg), autocommit=autocommit,
                           prepare_threshold=5 if cfg.prepared_statements else None)
    try:
        check_session(conn, cfg)
    except BaseException:
        conn.close()
        raise
    return conn


def check_session(conn: psycopg.Connection[Any], cfg: PostgresSettings) -> None:
    """Refuse a session that would break "answered means committed": ``synchronous_commit =
    off`` (unless the site opted in) or a read-only server (a standby after a failover)."""
    sync, read_only = conn.execute(
        "SELECT current_setting('synchronous_commit'), "
        "current_setting('transaction_read_only')").fetchone() or ("", "")
    if sync not in _SYNC_COMMIT_OK and not cfg.allow_async_commit:
        raise SessionRefused(
            f"PostgreSQL at {where(cfg)} runs with synchronous_commit = {sync}: a commit could "
            "be lost after radflow answered Success. Set it to on (ALTER ROLE ... SET "
            "synchronous_commit = on, or in postgresql.conf), or accept the risk with "
            "storage.postgresql.allow_async_commit: true")
    if read_only == "on":
        raise SessionRefused(f"PostgreSQL at {where(cfg)} is read-only (a standby?): radflow "
                             "needs the primary")


@contextlib.contextmanager
def transaction(conn: psycopg.Connection[Any], *, durable: bool = True) -> Iterator[None]:
    with conn.transaction():
        if not durable:
            conn.execute("SET LOCAL synchronous_commit = off")
        yield


@contextlib.contextmanager
def pipelined(conn: psycopg.Connection[Any], *, durable: bool = True
              ) -> Iterator[psycopg.Pipeline]:
    """One write transaction sent as a pipeline: BEGIN, the body's statements and COMMIT travel
    together and the whole transaction costs one round trip (plus the WAL flush), where
    :func:`transaction` costs one per statement. Only a result the body reads (``fetchone``,
    ``rowcount`` after ``pipe.sync()``) makes it wait for the server midway; read the others
    after the block, when COMMIT has answered. A failed statement (raised at that read or at
    the end) rolls the whole transaction back, as with :func:`transaction`.

    For the hot paths (the journal commit a peer's answer waits on, the marks, the index) on
    the one writer connection, whose every round trip also waits for the interpreter while
    the event loop and association threads hold it."""
    try:
        with conn.pipeline() as pipe:
            conn.execute("BEGIN")
            if not durable:
                conn.execute("SET LOCAL synchronous_commit = off")
            yield pipe
            conn.execute("COMMIT")
            # Leaving the pipeline sends COMMIT and waits for every result still due.
    except BaseException:
        if not conn.broken and conn.info.transaction_status != pq.TransactionStatus.IDLE:
            # Roll back what ran; a connection that died took it along.
            with contextlib.suppress(psycopg.Error):
                conn.execute("ROLLBACK")
        raise


def advisory_key(*parts: str) -> int:
    """A stable signed 64-bit advisory lock key for ``parts`` (the same on every node)."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def notify_channel(schema: str) -> str:
    """The outbox wake-up channel of one schema (scoped: two installations on one server do
    not wake each other)."""
    return f"radflow_outbox_{schema}"[:63]


def notify_outbox(conn: psycopg.Connection[Any], schema: str, destinations: set[str]) -> None:
    """Queue a wake-up per destination; PostgreSQL delivers it when the transaction commits
    (and drops it when it rolls back), so a listener never looks before the rows exist."""
    channel = notify_channel(schema)
    for dest in sorted(destinations):
        conn.execute("SELECT pg_notify(%s, %s)", (channel, dest))


def identifier(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def is_connection_error(exc: BaseException) -> bool:
    """The connection is gone (server down, restarted, backend terminated): the statement's
    outcome may be unknown, and the connection must be replaced."""
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


class _NulFreeStrDumper(StrDumperUnknown):
    """Text parameters with their NUL characters left out. PostgreSQL's text type cannot hold
    NUL (SQLite can); DICOM and HL7 never allow it inside a value, so what is lost is only the
    invalid character, in the database's copies: spooled objects and raw HL7 stay byte-exact."""

    def dump(self, obj: str) -> Buffer | None:
        return super().dump(obj.replace("\x00", ""))


def _refused_nul(exc: psycopg.Error) -> bool:
    # Raised by psycopg while encoding the parameters, before anything reached the server.
    return isinstance(exc, psycopg.DataError) and "NUL (0x00)" in str(exc)


def tolerating_nul(conn: psycopg.Connection[Any], fn: Callable[[psycopg.Connection[Any]], T]
                   ) -> T:
    """Run ``fn(conn)``; if a text parameter carried a NUL character, run it once more with
    NULs left out of text parameters. Bad input then gets the same answer on both backends
    instead of a storage failure (which intake answers as "try again", for ever). The normal
    path keeps psycopg's compiled text dumper: only the rare bad value pays for the slow one."""
    try:
        return fn(conn)
    except psycopg.Error as exc:
        if not _refused_nul(exc):
            raise
    log.warning("durable.postgresql.nul_in_text",
                action="NUL characters left out of the database's copy of a text value")
    adapters = conn.adapters
    usual = adapters.get_dumper(str, PyFormat.TEXT)
    adapters.register_dumper(str, _NulFreeStrDumper)
    try:
        return fn(conn)
    finally:
        adapters.register_dumper(str, usual)


def scalar(conn: psycopg.Connection[Any], query: str | sql.Composed, params: Any = ()
           ) -> Any:
    """The first column of the first row (None when there is no row)."""
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]
