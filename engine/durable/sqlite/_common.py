"""Helpers every module of the SQLite backend shares: the connection settings, the one
write-transaction helper, and placeholder lists for ``IN (...)`` within SQLite's variable limit.

BEGIN IMMEDIATE takes the write lock up front (no deferred-to-write upgrade that could fail with
SQLITE_BUSY halfway through), COMMIT on success, ROLLBACK on any exception.

``durable=False`` commits without an fsync (``synchronous=NORMAL`` for this transaction only).
It is for work that can be redone from what is already durable: routing decisions (the journal
entry stays unrouted and is replayed at start), outbox leases and delivery verdicts (a row goes
out again: delivery is at least once). Such commits share the one writer with the intake
journal, whose every commit must reach the disk before a peer hears "yes", and an fsync each
would compete with it. WAL keeps commits in order, so the next durable commit makes every
earlier one durable too; only a power cut can lose them, never a process crash.

The backend's modules import from here and from :mod:`engine.durable.rows`, never each
other's private names.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: SQLite's default limit on variables per statement is 999 (older builds); stay well below.
CHUNK = 500


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: the WAL is fsync'd at every commit, so a committed row survives power loss.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, *, durable: bool = True) -> Iterator[None]:
    if not durable:
        conn.execute("PRAGMA synchronous=NORMAL")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        if not durable:
            conn.execute("PRAGMA synchronous=FULL")  # the store's setting


def marks(n: int) -> str:
    """``?,?,...`` for ``n`` values."""
    return ",".join("?" * n)


def chunks(values: Sequence[T]) -> Iterator[list[T]]:
    """``values`` in lists of at most :data:`CHUNK` (one statement each)."""
    items = list(values)
    for start in range(0, len(items), CHUNK):
        yield items[start:start + CHUNK]
