"""SQLite SQL of the outbox's delivery side (D3): lease, verdicts, dead letters, queue figures.

Every function takes the connection it runs on and is called through ``SqliteStore``'s writer
(or reader) thread, so a function is one transaction on the single writer connection: no two
leases can ever interleave, which is what makes a plain ``UPDATE … RETURNING`` a safe claim.
The PostgreSQL form of :func:`lease` is the same statement with the inner ``SELECT`` ending in
``FOR UPDATE SKIP LOCKED``, so several stateless nodes claim disjoint rows without waiting on
each other; nothing here relies on SQLite beyond that.

The router inserts rows in its own transaction together with the journal's "routed"
mark; :func:`enqueue` exists for operators, tests, the demo and benchmarks. This module must not
decide policy (backoff, give-up, classification): the dispatcher passes verdicts in.

Rows are never loaded wholesale: a lease takes at most ``limit`` rows through the
``outbox_ready`` index (``destination, state, next_attempt_at`` - its rowid tail gives the
``ORDER BY next_attempt_at, id`` for free), so the cost of a lease does not grow with the queue.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from engine.durable.queue_order import per_study_claims
from engine.durable.rows import DEAD_COLUMNS, OUTBOX_COLUMNS, row_to_dead, row_to_outbox
from engine.durable.sqlite._common import CHUNK, marks, transaction
from engine.durable.store import (
    DeadLetter,
    NewOutboxRow,
    OutboxResult,
    OutboxRow,
    OutboxState,
    OutboxVerdict,
    QueueStats,
)

# A row whose lease ran out (its worker died or hung) comes back as pending, ready at once and
# in its old place in the queue (not behind the rows that came while it was leased: a dead
# node's rows would wait for a whole backlog); the attempt it used stays counted, so a row that
# crashes the process cannot loop forever.
_RECLAIM = (
    "UPDATE outbox SET state = 'pending', lease_owner = NULL, lease_until = NULL, "
    "next_attempt_at = MIN(next_attempt_at, :now), updated_at = :now "
    "WHERE destination = :dest AND state = 'leased' AND lease_until < :now")

# The claim: one statement. The inner SELECT walks outbox_ready in (next_attempt_at, id) order
# and stops after :limit rows. PostgreSQL: "... LIMIT :limit FOR UPDATE SKIP LOCKED".
LEASE = (
    "UPDATE outbox SET state = 'leased', lease_owner = :owner, lease_until = :until, "
    "attempts = attempts + 1, updated_at = :now "
    "WHERE id IN (SELECT id FROM outbox WHERE destination = :dest AND state = 'pending' "
    "AND next_attempt_at <= :now ORDER BY next_attempt_at, id LIMIT :limit) "
    f"RETURNING {OUTBOX_COLUMNS}")

# Per-study order (optional, rule in engine.durable.queue_order): the oldest ready rows are read
# in the lease order; each "next row of its study" check is one probe of the partial index
# outbox_study.
_CANDIDATES = (
    "SELECT id, study_instance_uid FROM outbox WHERE destination = :dest AND state = 'pending' "
    "AND next_attempt_at <= :now ORDER BY next_attempt_at, id LIMIT :window")
_NEXT_OF_STUDY = (
    "SELECT MIN(id) FROM outbox WHERE destination = :dest AND study_instance_uid = :study "
    "AND state IN ('pending', 'leased') AND id > :after")
_CLAIM = (
    "UPDATE outbox SET state = 'leased', lease_owner = :owner, lease_until = :until, "
    "attempts = attempts + 1, updated_at = :now WHERE id IN ({ids}) "
    f"RETURNING {OUTBOX_COLUMNS}")


def enqueue(conn: sqlite3.Connection, rows: Sequence[NewOutboxRow], now: float) -> list[int]:
    ids: list[int] = []
    with transaction(conn):
        for r in rows:
            cur = conn.execute(
                "INSERT INTO outbox (destination, kind, source_table, source_id, route, "
                "payload, study_instance_uid, state, attempts, next_attempt_at, created_at, "
                "updated_at) VALUES (?,?,?,?,?,?,?, 'pending', 0, ?, ?, ?)",
                (r.destination, r.kind, r.source_table, r.source_id, r.route, r.payload,
                 r.study_instance_uid, now, now, now))
            assert cur.lastrowid is not None
            ids.append(int(cur.lastrowid))
    return ids


def lease(conn: sqlite3.Connection, destination: str, owner: str, now: float,
          lease_seconds: float, limit: int, per_study: bool = False) -> list[OutboxRow]:
    params: dict[str, Any] = {"dest": destination, "owner": owner, "now": now,
                              "until": now + lease_seconds, "limit": limit}
    with transaction(conn, durable=False):
        conn.execute(_RECLAIM, params)
        if per_study:
            ids = _ordered_candidates(conn, params)
            marks = ",".join(f":i{n}" for n in range(len(ids)))
            claim = {**params, **{f"i{n}": row_id for n, row_id in enumerate(ids)}}
            rows = conn.execute(_CLAIM.format(ids=marks), claim).fetchall() if ids else []
        else:
            rows = conn.execute(LEASE, params).fetchall()
    # RETURNING gives rows in no promised order; senders get them oldest first.
    return sorted((row_to_outbox(r) for r in rows), key=lambda row: row.id)


def _ordered_candidates(conn: sqlite3.Connection, params: dict[str, Any]) -> list[int]:
    limit = int(params["limit"])
    # A window a few times the page: a study's rows may be spread across it when they have
    # different backoffs.
    window = conn.execute(_CANDIDATES, {**params, "window": limit * 4}).fetchall()

    def next_of_study(study: str, after: int) -> int | None:
        row = conn.execute(_NEXT_OF_STUDY, {"dest": params["dest"], "study": study,
                                            "after": after}).fetchone()
        return None if row[0] is None else int(row[0])

    return per_study_claims([(int(i), s) for i, s in window], limit, next_of_study)


def record(conn: sqlite3.Connection, owner: str, results: Sequence[OutboxResult],
           now: float) -> int:
    """Apply verdicts; each statement checks the lease is still ours."""
    changed = 0
    owned = "WHERE id = ? AND state = 'leased' AND lease_owner = ?"
    with transaction(conn, durable=False):
        for res in results:
            if res.verdict is OutboxVerdict.DONE:
                cur = conn.execute(
                    "UPDATE outbox SET state = 'done', done_at = ?, updated_at = ?, "
                    f"lease_owner = NULL, lease_until = NULL {owned}",
                    (now, now, res.id, owner))
            elif res.verdict is OutboxVerdict.RETRY:
                cur = conn.execute(
                    "UPDATE outbox SET state = 'pending', next_attempt_at = ?, last_error = ?, "
                    f"updated_at = ?, lease_owner = NULL, lease_until = NULL {owned}",
                    (res.next_attempt_at if res.next_attempt_at is not None else now,
                     res.error, now, res.id, owner))
            elif res.verdict is OutboxVerdict.DEAD:
                cur = conn.execute(
                    "UPDATE outbox SET state = 'dead', last_error = ?, updated_at = ?, "
                    f"lease_owner = NULL, lease_until = NULL {owned}",
                    (res.error, now, res.id, owner))
            else:  # RELEASE: never tried, so the attempt the lease counted is given back
                cur = conn.execute(
                    "UPDATE outbox SET state = 'pending', attempts = MAX(attempts - 1, 0), "
                    "next_attempt_at = COALESCE(?, next_attempt_at), updated_at = ?, "
                    f"lease_owner = NULL, lease_until = NULL {owned}",
                    (res.next_attempt_at, now, res.id, owner))
            changed += cur.rowcount
    return changed


def release_leases(conn: sqlite3.Connection, owner_prefix: str, keep_owner: str) -> int:
    """Leases of an earlier run of this node: that process is gone, so they come back now
    instead of after ``lease_seconds`` (the attempt stays counted: it may have crashed us)."""
    with transaction(conn):
        cur = conn.execute(
            "UPDATE outbox SET state = 'pending', lease_owner = NULL, lease_until = NULL "
            "WHERE state = 'leased' AND lease_owner LIKE ? ESCAPE '\\' AND lease_owner != ?",
            (_like_prefix(owner_prefix), keep_owner))
        return int(cur.rowcount)


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def stats(conn: sqlite3.Connection, destinations: Sequence[str]) -> list[QueueStats]:
    """Per destination: three index range counts and the oldest undelivered row's age.

    Asked per destination (not GROUP BY over the table) so delivered rows, which may be many,
    are never scanned.
    """
    out: list[QueueStats] = []
    for dest in destinations:
        counts = dict.fromkeys(("pending", "leased"), 0)
        oldest: float | None = None
        for state, n, first in conn.execute(
                "SELECT state, COUNT(*), MIN(created_at) FROM outbox WHERE destination = ? "
                "AND state IN ('pending', 'leased') GROUP BY state", (dest,)):
            counts[state] = int(n)
            oldest = first if oldest is None else min(oldest, first)
        dead = conn.execute("SELECT COUNT(*) FROM outbox WHERE state = 'dead' "
                            "AND destination = ?", (dest,)).fetchone()[0]
        out.append(QueueStats(dest, counts["pending"], counts["leased"], int(dead),
                              float(oldest) if oldest is not None else None))
    return out


def _dead_filter(destination: str | None, ids: Sequence[int] | None = None
                 ) -> tuple[str, list[Any]]:
    where = "WHERE state = 'dead'"
    params: list[Any] = []
    if destination is not None:
        where += " AND destination = ?"
        params.append(destination)
    if ids is not None:
        where += f" AND id IN ({marks(len(ids))})"
        params.extend(ids)
    return where, params


def list_dead(conn: sqlite3.Connection, destination: str | None, limit: int, offset: int
              ) -> list[DeadLetter]:
    where, params = _dead_filter(destination)
    rows = conn.execute(f"SELECT {DEAD_COLUMNS} FROM outbox {where} ORDER BY id "
                        "LIMIT ? OFFSET ?", (*params, limit, offset)).fetchall()
    return [row_to_dead(r) for r in rows]


def count_dead(conn: sqlite3.Connection, destination: str | None) -> int:
    where, params = _dead_filter(destination)
    return int(conn.execute(f"SELECT COUNT(*) FROM outbox {where}", params).fetchone()[0])


def _chunks(ids: Sequence[int] | None) -> list[Sequence[int] | None]:
    if ids is None:
        return [None]
    items = list(dict.fromkeys(ids))
    return [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]


def retry_dead(conn: sqlite3.Connection, destination: str, ids: Sequence[int] | None,
               now: float) -> int:
    """Back to pending with a fresh attempt count (the give-up clock restarts from the
    operator's decision; ``created_at`` is kept, so the age shown stays honest)."""
    changed = 0
    with transaction(conn):
        for chunk in _chunks(ids):
            where, params = _dead_filter(destination, chunk)
            changed += conn.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?, "
                f"updated_at = ? {where}", (now, now, *params)).rowcount
    return changed


def purge_dead(conn: sqlite3.Connection, destination: str, ids: Sequence[int] | None) -> int:
    changed = 0
    with transaction(conn):
        for chunk in _chunks(ids):
            where, params = _dead_filter(destination, chunk)
            changed += conn.execute(f"DELETE FROM outbox {where}", params).rowcount
    return changed


def purge_done(conn: sqlite3.Connection, done_before: float, limit: int) -> int:
    with transaction(conn):
        return int(conn.execute(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE state = 'done' "
            "AND done_at < ? LIMIT ?)", (done_before, limit)).rowcount)


def rows(conn: sqlite3.Connection, destination: str | None, states: Sequence[OutboxState]
         ) -> list[dict[str, object]]:
    where: list[str] = []
    params: list[Any] = []
    if destination is not None:
        where.append("destination = ?")
        params.append(destination)
    if states:
        where.append(f"state IN ({marks(len(states))})")
        params.extend(s.value for s in states)
    sql = "SELECT * FROM outbox" + (" WHERE " + " AND ".join(where) if where else "")
    cur = conn.execute(sql + " ORDER BY id", params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
