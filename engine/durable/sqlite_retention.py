"""SQLite SQL of spool retention: which journal rows' files nothing needs any more, and their
removal.

An instance may go once it is older than the retention, routed, every outbox row naming it is
delivered (``done``) or already purged, and it is in no open routing group. A ``pending``,
``leased`` or ``dead`` row keeps it: a dead letter can still be retried by an operator, so its
file stays until the dead letter is purged. :func:`forget` checks all of this again inside its
write transaction, so a row that became needed since :func:`expired` read it is kept. Every
function takes the connection it runs on; called through ``SqliteStore``'s reader or writer.
This module must not touch files: the caller removes them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from engine.durable.sqlite_txn import transaction
from engine.durable.store import ExpiredInstance

# The conditions, in one place for the read and for the re-check in the delete.
_NOT_NEEDED = """
    i.routed_at IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.source_table = 'instances'
                    AND o.source_id = i.id AND o.state != 'done')
    AND NOT EXISTS (SELECT 1 FROM routing_group_members m
                    JOIN routing_groups g ON g.id = m.group_id
                    WHERE m.instance_id = i.id AND g.state = 'open')
"""


def expired(conn: sqlite3.Connection, received_before: str, limit: int
            ) -> list[ExpiredInstance]:
    rows = conn.execute(
        "SELECT i.id, i.spool_path, i.size_bytes FROM instances i "
        f"WHERE i.received_at < ? AND {_NOT_NEEDED} ORDER BY i.received_at, i.id LIMIT ?",
        (received_before, limit)).fetchall()
    return [ExpiredInstance(int(r[0]), str(r[1]), int(r[2])) for r in rows]


def forget(conn: sqlite3.Connection, ids: Sequence[int]) -> int:
    removed = 0
    with transaction(conn):
        for start in range(0, len(ids), 500):
            chunk = list(ids[start:start + 500])
            marks = ",".join("?" * len(chunk))
            still = [int(r[0]) for r in conn.execute(
                f"SELECT i.id FROM instances i WHERE i.id IN ({marks}) AND {_NOT_NEEDED}",
                chunk)]
            if not still:
                continue
            marks = ",".join("?" * len(still))
            conn.execute(f"DELETE FROM routing_group_members WHERE instance_id IN ({marks})",
                         still)
            removed += conn.execute(f"DELETE FROM instances WHERE id IN ({marks})",
                                    still).rowcount
    return removed
