"""The one write-transaction helper of the SQLite backend modules.

BEGIN IMMEDIATE takes the write lock up front (no deferred-to-write upgrade that could fail with
SQLITE_BUSY halfway through), COMMIT on success, ROLLBACK on any exception. The outbox keeps
its own variant, which also relaxes fsync for its bookkeeping transactions.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
