"""PostgreSQL SQL of the outbox's delivery side (D3): lease, verdicts, dead letters, queue figures.

Several nodes lease from one table. A claim is one short statement: the inner ``SELECT`` walks
``outbox_ready`` in ``(next_attempt_at, id)`` order, stops after ``limit`` rows and skips rows
another node is claiming at that instant (``FOR UPDATE SKIP LOCKED``); the ``UPDATE`` records
the claim in columns (state, owner, ``lease_until``, attempt + 1) and commits. No transaction
stays open across a send: the lease, not a row lock, holds the row, and an expired lease makes
it claimable again (the attempt stays counted). A verdict is applied only while the row is
still leased by the same owner for the same attempt (a fencing token): a node that was cut off
and comes back late cannot overwrite a newer attempt's outcome. Lease times come from the
callers' clocks, so nodes must keep their clocks synchronised (NTP) well within the lease.

New rows and operator retries send a NOTIFY at commit (``_common.notify_outbox``). This module
must not decide policy (backoff, give-up, classification): the dispatcher passes verdicts in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from engine.durable.postgresql._common import notify_outbox, scalar, transaction
from engine.durable.queue_order import per_study_claims
from engine.durable.rows import DEAD_COLUMNS, OUTBOX_COLUMNS, row_to_dead, row_to_outbox
from engine.durable.store import (
    DeadLetter,
    NewOutboxRow,
    OutboxResult,
    OutboxRow,
    OutboxState,
    OutboxVerdict,
    QueueStats,
)

Conn = psycopg.Connection[Any]

# A row whose lease ran out (its worker died or hung) comes back as pending, ready at once and
# in its old place in the queue (not behind the rows that came while it was leased: a dead
# node's rows would wait for a whole backlog); the attempt it used stays counted, so a row that
# crashes the process cannot loop forever.
# SKIP LOCKED: a row another node is reclaiming or claiming right now is left to it.
_RECLAIM = (
    "UPDATE outbox SET state = 'pending', lease_owner = NULL, lease_until = NULL, "
    "next_attempt_at = LEAST(next_attempt_at, %(now)s), updated_at = %(now)s "
    "WHERE id IN (SELECT id FROM outbox WHERE destination = %(dest)s AND state = 'leased' "
    "AND lease_until < %(now)s FOR UPDATE SKIP LOCKED)")

# The claim: one statement.
LEASE = (
    "UPDATE outbox SET state = 'leased', lease_owner = %(owner)s, lease_until = %(until)s, "
    "attempts = attempts + 1, updated_at = %(now)s "
    "WHERE id IN (SELECT id FROM outbox WHERE destination = %(dest)s AND state = 'pending' "
    "AND next_attempt_at <= %(now)s ORDER BY next_attempt_at, id LIMIT %(limit)s "
    "FOR UPDATE SKIP LOCKED) "
    f"RETURNING {OUTBOX_COLUMNS}")

# Per-study order (optional, rule in engine.durable.queue_order): the oldest ready rows are read
# in the lease order; each "next row of its study" check is one probe of the partial index
# outbox_study. The claim re-checks "still pending": a row another node took meanwhile is not
# taken twice (READ COMMITTED re-evaluates the condition after waiting for its lock).
_CANDIDATES = (
    "SELECT id, study_instance_uid FROM outbox WHERE destination = %(dest)s "
    "AND state = 'pending' AND next_attempt_at <= %(now)s ORDER BY next_attempt_at, id "
    "LIMIT %(window)s")
_NEXT_OF_STUDY = (
    "SELECT MIN(id) FROM outbox WHERE destination = %(dest)s "
    "AND study_instance_uid = %(study)s AND state IN ('pending', 'leased') AND id > %(after)s")
_CLAIM = (
    "UPDATE outbox SET state = 'leased', lease_owner = %(owner)s, lease_until = %(until)s, "
    "attempts = attempts + 1, updated_at = %(now)s WHERE id = ANY(%(ids)s) "
    f"AND state = 'pending' RETURNING {OUTBOX_COLUMNS}")

_INSERT = (
    "INSERT INTO outbox (destination, kind, source_table, source_id, route, payload, "
    "study_instance_uid, state, attempts, next_attempt_at, created_at, updated_at) "
    "VALUES (%s,%s,%s,%s,%s,%s,%s, 'pending', 0, %s, %s, %s) RETURNING id")


def enqueue(conn: Conn, rows: Sequence[NewOutboxRow], now: float, schema: str) -> list[int]:
    ids: list[int] = []
    with transaction(conn):
        for r in rows:
            ids.append(int(scalar(conn, _INSERT, (
                r.destination, r.kind, r.source_table, r.source_id, r.route, r.payload,
                r.study_instance_uid, now, now, now))))
        notify_outbox(conn, schema, {r.destination for r in rows})
    return ids


def lease(conn: Conn, destination: str, owner: str, now: float,
          lease_seconds: float, limit: int, per_study: bool = False) -> list[OutboxRow]:
    params: dict[str, Any] = {"dest": destination, "owner": owner, "now": now,
                              "until": now + lease_seconds, "limit": limit}
    with transaction(conn, durable=False):
        conn.execute(_RECLAIM, params)
        if per_study:
            ids = _ordered_candidates(conn, params)
            rows = (conn.execute(_CLAIM, {**params, "ids": ids}).fetchall() if ids else [])
        else:
            rows = conn.execute(LEASE, params).fetchall()
    # RETURNING gives rows in no promised order; senders get them oldest first.
    return sorted((row_to_outbox(r) for r in rows), key=lambda row: row.id)


def _ordered_candidates(conn: Conn, params: dict[str, Any]) -> list[int]:
    limit = int(params["limit"])
    # A window a few times the page: a study's rows may be spread across it when they have
    # different backoffs.
    window = conn.execute(_CANDIDATES, {**params, "window": limit * 4}).fetchall()

    def next_of_study(study: str, after: int) -> int | None:
        got = scalar(conn, _NEXT_OF_STUDY, {"dest": params["dest"], "study": study,
                                            "after": after})
        return None if got is None else int(got)

    return per_study_claims([(int(i), s) for i, s in window], limit, next_of_study)


def record(conn: Conn, owner: str, results: Sequence[OutboxResult], now: float) -> int:
    """Apply verdicts; each statement checks the lease is still ours (and, when the verdict
    names it, for the same attempt)."""
    changed = 0
    with transaction(conn, durable=False):
        for res in results:
            owned = "WHERE id = %s AND state = 'leased' AND lease_owner = %s"
            fence: tuple[Any, ...] = (res.id, owner)
            if res.attempt is not None:
                owned += " AND attempts = %s"
                fence += (res.attempt,)
            if res.verdict is OutboxVerdict.DONE:
                cur = conn.execute(
                    "UPDATE outbox SET state = 'done', done_at = %s, updated_at = %s, "
                    f"lease_owner = NULL, lease_until = NULL {owned}", (now, now, *fence))
            elif res.verdict is OutboxVerdict.RETRY:
                cur = conn.execute(
                    "UPDATE outbox SET state = 'pending', next_attempt_at = %s, "
                    "last_error = %s, updated_at = %s, lease_owner = NULL, lease_until = NULL "
                    f"{owned}", (res.next_attempt_at if res.next_attempt_at is not None
                                 else now, res.error, now, *fence))
            elif res.verdict is OutboxVerdict.DEAD:
                cur = conn.execute(
                    "UPDATE outbox SET state = 'dead', last_error = %s, updated_at = %s, "
                    f"lease_owner = NULL, lease_until = NULL {owned}", (res.error, now, *fence))
            else:  # RELEASE: never tried, so the attempt the lease counted is given back
                cur = conn.execute(
                    "UPDATE outbox SET state = 'pending', attempts = GREATEST(attempts - 1, 0), "
                    "next_attempt_at = COALESCE(%s, next_attempt_at), updated_at = %s, "
                    f"lease_owner = NULL, lease_until = NULL {owned}",
                    (res.next_attempt_at, now, *fence))
            changed += cur.rowcount
    return changed


def release_leases(conn: Conn, owner_prefix: str, keep_owner: str) -> int:
    """Leases of an earlier run of this node: that process is gone, so they come back now
    instead of after ``lease_seconds`` (the attempt stays counted: it may have crashed us)."""
    with transaction(conn):
        cur = conn.execute(
            "UPDATE outbox SET state = 'pending', lease_owner = NULL, lease_until = NULL "
            "WHERE state = 'leased' AND lease_owner LIKE %s ESCAPE '\\' "
            "AND lease_owner != %s",
            (_like_prefix(owner_prefix), keep_owner))
        return int(cur.rowcount)


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def stats(conn: Conn, destinations: Sequence[str]) -> list[QueueStats]:
    """Per destination: index range counts and the oldest undelivered row's age (delivered
    rows, which may be many, are never scanned)."""
    out: list[QueueStats] = []
    for dest in destinations:
        counts = dict.fromkeys(("pending", "leased"), 0)
        oldest: float | None = None
        for state, n, first in conn.execute(
                "SELECT state, COUNT(*), MIN(created_at) FROM outbox WHERE destination = %s "
                "AND state IN ('pending', 'leased') GROUP BY state", (dest,)):
            counts[state] = int(n)
            oldest = first if oldest is None else min(oldest, first)
        dead = scalar(conn, "SELECT COUNT(*) FROM outbox WHERE state = 'dead' "
                      "AND destination = %s", (dest,))
        out.append(QueueStats(dest, counts["pending"], counts["leased"], int(dead),
                              float(oldest) if oldest is not None else None))
    return out


def _dead_filter(destination: str | None, ids: Sequence[int] | None = None
                 ) -> tuple[str, list[Any]]:
    where = "WHERE state = 'dead'"
    params: list[Any] = []
    if destination is not None:
        where += " AND destination = %s"
        params.append(destination)
    if ids is not None:
        where += " AND id = ANY(%s)"
        params.append(list(dict.fromkeys(ids)))
    return where, params


def list_dead(conn: Conn, destination: str | None, limit: int, offset: int
              ) -> list[DeadLetter]:
    where, params = _dead_filter(destination)
    rows = conn.execute(f"SELECT {DEAD_COLUMNS} FROM outbox {where} ORDER BY id "
                        "LIMIT %s OFFSET %s", (*params, limit, offset)).fetchall()
    return [row_to_dead(r) for r in rows]


def count_dead(conn: Conn, destination: str | None) -> int:
    where, params = _dead_filter(destination)
    return int(scalar(conn, f"SELECT COUNT(*) FROM outbox {where}", params))


def retry_dead(conn: Conn, destination: str, ids: Sequence[int] | None, now: float,
               schema: str) -> int:
    """Back to pending with a fresh attempt count (the give-up clock restarts from the
    operator's decision; ``created_at`` is kept, so the age shown stays honest)."""
    with transaction(conn):
        where, params = _dead_filter(destination, ids)
        changed = conn.execute(
            "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = %s, "
            f"updated_at = %s {where}", (now, now, *params)).rowcount
        if changed:
            notify_outbox(conn, schema, {destination})
    return int(changed)


def purge_dead(conn: Conn, destination: str, ids: Sequence[int] | None) -> int:
    with transaction(conn):
        where, params = _dead_filter(destination, ids)
        return int(conn.execute(f"DELETE FROM outbox {where}", params).rowcount)


def purge_done(conn: Conn, done_before: float, limit: int) -> int:
    with transaction(conn):
        return int(conn.execute(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE state = 'done' "
            "AND done_at < %s LIMIT %s)", (done_before, limit)).rowcount)


def rows(conn: Conn, destination: str | None, states: Sequence[OutboxState]
         ) -> list[dict[str, object]]:
    where: list[str] = []
    params: list[Any] = []
    if destination is not None:
        where.append("destination = %s")
        params.append(destination)
    if states:
        where.append("state = ANY(%s)")
        params.append([s.value for s in states])
    sql = "SELECT * FROM outbox" + (" WHERE " + " AND ".join(where) if where else "")
    cur = conn.execute(sql + " ORDER BY id", params)
    names = [d[0] for d in cur.description or ()]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
