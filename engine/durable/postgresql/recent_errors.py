"""PostgreSQL SQL of the most recent errors: ``recent_errors``.

Functions over a connection, called on the store's writer or reader thread. What counts as an
error and how notes are merged in memory is :mod:`engine.observability.recent_errors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from engine.durable.postgresql._common import transaction
from engine.observability.recent_errors import ErrorNote

Conn = psycopg.Connection[Any]

_COLUMNS = "id, kind, subject, reason, peer_host, event, node, first_at, last_at, count"


def record(conn: Conn, notes: Sequence[ErrorNote], merge_after: float, keep: int) -> None:
    """Add ``notes``: one seen again since ``merge_after`` (same kind, subject and reason,
    from any node) adds to that row's count; then only the newest ``keep`` rows stay."""
    with transaction(conn, durable=False):  # a lost note costs a line on a page, no data
        for n in notes:
            cur = conn.execute(
                "UPDATE recent_errors SET count = count + %s, "
                "last_at = CASE WHEN last_at < %s THEN %s ELSE last_at END, "
                "peer_host = %s, node = %s, event = %s "
                "WHERE kind = %s AND subject = %s AND reason = %s AND last_at >= %s",
                (n.count, n.last_at, n.last_at, n.peer_host, n.node, n.event, n.kind,
                 n.subject, n.reason, merge_after))
            if cur.rowcount == 0:
                conn.execute(
                    "INSERT INTO recent_errors (kind, subject, reason, peer_host, event, node, "
                    "first_at, last_at, count) VALUES (%s, %s, %s, %s, %s, %s, "
                    "%s, %s, %s)",
                    (n.kind, n.subject, n.reason, n.peer_host, n.event, n.node, n.first_at,
                     n.last_at, n.count))
        conn.execute("DELETE FROM recent_errors WHERE id NOT IN (SELECT id FROM recent_errors "
                     "ORDER BY last_at DESC, id DESC LIMIT %s)", (keep,))


def recent(conn: Conn, limit: int, kinds: Sequence[str] | None) -> list[ErrorNote]:
    """Newest first (by the last time seen)."""
    if kinds:
        marks = ", ".join("%s" for _ in kinds)
        rows = conn.execute(f"SELECT {_COLUMNS} FROM recent_errors WHERE kind IN ({marks}) "
                            "ORDER BY last_at DESC, id DESC LIMIT %s", (*kinds, limit))
    else:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM recent_errors "
                            "ORDER BY last_at DESC, id DESC LIMIT %s", (limit,))
    return [ErrorNote(id=int(r[0]), kind=str(r[1]), subject=str(r[2]), reason=str(r[3]),
                      peer_host=str(r[4]), event=str(r[5]), node=str(r[6]),
                      first_at=float(r[7]), last_at=float(r[8]), count=int(r[9]))
            for r in rows]
