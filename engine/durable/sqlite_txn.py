"""The one write-transaction helper of the SQLite backend modules.

BEGIN IMMEDIATE takes the write lock up front (no deferred-to-write upgrade that could fail with
SQLITE_BUSY halfway through), COMMIT on success, ROLLBACK on any exception.

``durable=False`` commits without an fsync (``synchronous=NORMAL`` for this transaction only).
It is for work that can be redone from what is already durable: routing decisions (the journal
entry stays unrouted and is replayed at start), outbox leases and delivery verdicts (a row goes
out again: delivery is at least once). Such commits share the one writer with the intake
journal, whose every commit must reach the disk before a peer hears "yes", and an fsync each
would compete with it. WAL keeps commits in order, so the next durable commit makes every
earlier one durable too; only a power cut can lose them, never a process crash.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator


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
