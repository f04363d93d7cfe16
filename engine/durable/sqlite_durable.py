"""SQLite SQL of the journal's "file durable" mark: rows committed beside their file's fsync.

Intake commits a row while the association thread fsyncs the spool file, so a row can exist
whose file is not on disk yet; such rows carry ``durable = 0`` until intake marks them. Nothing
routes them before that (see ``sqlite_routing.unrouted_instances``), and a start after a crash
lists the rows left unmarked so their files can be checked. :func:`withdraw` removes a row
whose file failed, only while it is still unmarked and unrouted: it never reached a peer as a
success, so deleting it loses nothing anybody was told was kept. Every function takes the
writer's (or reader's) connection; this module must not touch files.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from engine.durable.sqlite_txn import transaction
from engine.durable.store import StoredInstance


def mark(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    """Mark rows durable, inside the caller's transaction."""
    for start in range(0, len(ids), 500):
        chunk = list(ids[start:start + 500])
        conn.execute(f"UPDATE instances SET durable = 1 WHERE id IN ({','.join('?' * len(chunk))})"
                     " AND durable = 0", chunk)


def not_durable(conn: sqlite3.Connection) -> list[StoredInstance]:
    from engine.durable import sqlite  # the journal's own columns and row mapping

    rows = conn.execute(f"SELECT {sqlite._INSTANCE_COLUMNS} FROM instances WHERE durable = 0 "
                        "ORDER BY id").fetchall()
    return [sqlite._row_to_instance(r) for r in rows]


def withdraw(conn: sqlite3.Connection, instance_id: int) -> bool:
    with transaction(conn):
        row = conn.execute("SELECT sop_instance_uid, superseded FROM instances WHERE id = ? "
                           "AND durable = 0 AND routed_at IS NULL", (instance_id,)).fetchone()
        if row is None:
            return False
        uid, superseded = row
        conn.execute("DELETE FROM routing_group_members WHERE instance_id = ?", (instance_id,))
        conn.execute("DELETE FROM instances WHERE id = ?", (instance_id,))
        if not superseded:
            # The version it superseded (if any) is the current one again.
            conn.execute("UPDATE instances SET superseded = 0 WHERE id = (SELECT id FROM "
                         "instances WHERE sop_instance_uid = ? ORDER BY version DESC LIMIT 1)",
                         (uid,))
        return True
