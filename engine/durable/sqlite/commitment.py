"""SQLite SQL of Storage Commitment: outstanding requests and their reports.

A request is one row (unique per calling AE and Transaction UID, so a repeated N-ACTION changes
nothing); its report is an outbox row for the ``commitment`` destination written in the same
transaction as the decision, so a request is never answered twice nor lost across a restart.
Every function takes the writer's (or reader's) connection; this module must not decide which
instances are committed (``engine.durable.commitment``) nor talk to peers.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Sequence

from engine.durable.commitment import (
    COMMITMENT_DESTINATION,
    COMMITMENT_KIND,
    COMMITMENT_SOURCE,
    CommitmentPlan,
    CommitmentReport,
    CommitmentRequest,
    CommitmentResult,
    HeldInstance,
    decide,
    decide_on_receipt,
    decode_route_archives,
    next_ask,
)
from engine.durable.sqlite._common import chunks, marks, transaction

#: (request id, request) of requests waiting for their archive, oldest first
Waiting = tuple[int, CommitmentRequest]


def journal_classes(conn: sqlite3.Connection, uids: Sequence[str]) -> dict[str, str]:
    """SOP Instance UID -> SOP Class UID of the current journal rows among ``uids``."""
    found: dict[str, str] = {}
    for chunk in chunks(list(dict.fromkeys(uids))):
        found.update(conn.execute(
            "SELECT sop_instance_uid, sop_class_uid FROM instances WHERE superseded = 0 AND "
            f"sop_instance_uid IN ({marks(len(chunk))})", chunk).fetchall())
    return found


def _queue_report(conn: sqlite3.Connection, request_id: int, report: CommitmentReport,
                  now: float) -> None:
    conn.execute(
        "INSERT INTO outbox (destination, kind, source_table, source_id, route, payload, "
        "state, attempts, next_attempt_at, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, '', ?, 'pending', 0, ?, ?, ?)",
        (COMMITMENT_DESTINATION, COMMITMENT_KIND, COMMITMENT_SOURCE, request_id,
         report.payload(), now, now, now))
    conn.execute("UPDATE commitment_requests SET state = 'reported', reported_at = ? "
                 "WHERE id = ?", (now, request_id))


def commit_request(conn: sqlite3.Connection, request: CommitmentRequest,
                   plan: CommitmentPlan, now: float) -> CommitmentResult:
    with transaction(conn):
        cur = conn.execute(
            "INSERT OR IGNORE INTO commitment_requests (transaction_uid, calling_ae, policy, "
            "state, refs, received_at, deadline, via) "
            "VALUES (?, ?, ?, 'waiting', ?, ?, ?, ?)",
            (request.transaction_uid, request.calling_ae, request.policy,
             json.dumps([list(r) for r in request.refs]), request.received_at,
             request.deadline, request.via))
        if cur.rowcount == 0:
            row = conn.execute("SELECT id FROM commitment_requests WHERE calling_ae = ? AND "
                               "transaction_uid = ?",
                               (request.calling_ae, request.transaction_uid)).fetchone()
            return CommitmentResult(int(row[0]), True, None)
        assert cur.lastrowid is not None
        request_id = int(cur.lastrowid)
        if request.policy == "on_receipt":
            report: CommitmentReport | None = decide_on_receipt(
                request, journal_classes(conn, [uid for _, uid in request.refs]))
        else:  # decided at once when it can be (routes that said on_receipt, unknown UIDs)
            report = _decide(conn, request, plan, now)
        if report is not None:
            _queue_report(conn, request_id, report, now)
        return CommitmentResult(request_id, False, report)


def waiting(conn: sqlite3.Connection, limit: int) -> list[Waiting]:
    rows = conn.execute(
        "SELECT id, transaction_uid, calling_ae, policy, refs, received_at, deadline, "
        "archive_asks, via FROM commitment_requests WHERE state = 'waiting' ORDER BY id LIMIT ?",
        (limit,)).fetchall()
    return [(int(r[0]), CommitmentRequest(
        r[1], r[2], r[3], tuple((str(c), str(u)) for c, u in json.loads(r[4])), r[5], r[6],
        json.loads(r[7] or "{}"), str(r[8] or ""))) for r in rows]


def delivered(conn: sqlite3.Connection, uids: Sequence[str], destination: str) -> set[str]:
    """Which of ``uids`` (current journal rows) ``destination`` has delivered."""
    journal = held(conn, uids)
    done = _confirmed(conn, [h.journal_id for h in journal.values()], [destination])
    return {uid for uid, h in journal.items() if (h.journal_id, destination) in done}


def record_ask(conn: sqlite3.Connection, request_id: int, destination: str,
               transaction_uid: str, sent: bool, now: float = 0.0,
               claim_seconds: float = 0.0) -> bool:
    with transaction(conn):
        row = conn.execute("SELECT archive_asks FROM commitment_requests WHERE id = ?",
                           (request_id,)).fetchone()
        if row is None:
            return False
        asks = json.loads(row[0] or "{}")
        new = next_ask(asks.get(destination) or {}, transaction_uid, sent, now,
                       claim_seconds)
        if new is None:
            return False
        asks[destination] = new
        conn.execute("UPDATE commitment_requests SET archive_asks = ? WHERE id = ?",
                     (json.dumps(asks), request_id))
        return True


def record_archive_report(conn: sqlite3.Connection, transaction_uid: str,
                          results: dict[str, int]) -> bool:
    """Keep an archive's answer to radflow's own request; False if no waiting request asked
    with ``transaction_uid``."""
    with transaction(conn):
        for request_id, raw in conn.execute(
                "SELECT id, archive_asks FROM commitment_requests WHERE state = 'waiting' "
                "AND instr(archive_asks, ?) > 0", (transaction_uid,)).fetchall():
            asks = json.loads(raw or "{}")
            for ask in asks.values():
                if ask.get("transaction_uid") == transaction_uid:
                    ask["results"] = {**(ask.get("results") or {}), **results}
                    conn.execute("UPDATE commitment_requests SET archive_asks = ? WHERE id = ?",
                                 (json.dumps(asks), request_id))
                    return True
    return False


def held(conn: sqlite3.Connection, uids: Sequence[str]) -> dict[str, HeldInstance]:
    """SOP Instance UID -> the current journal row, routed or not, with what its routes
    asked for."""
    found: dict[str, HeldInstance] = {}
    for chunk in chunks(list(dict.fromkeys(uids))):
        for uid, sop_class, journal_id, routed, route_commitment in conn.execute(
                "SELECT sop_instance_uid, sop_class_uid, id, routed_at IS NOT NULL, "
                "route_commitment FROM instances WHERE superseded = 0 "
                f"AND sop_instance_uid IN ({marks(len(chunk))})", chunk):
            found[uid] = HeldInstance(sop_class, int(journal_id), bool(routed),
                                      decode_route_archives(route_commitment))
    return found


def _confirmed(conn: sqlite3.Connection, journal_ids: Sequence[int],
               destinations: Sequence[str]) -> set[tuple[int, str]]:
    """(journal id, destination) pairs with outbox rows to that destination, all delivered
    (``done``)."""
    confirmed: set[tuple[int, str]] = set()
    wanted = list(dict.fromkeys(destinations))
    if not wanted:
        return confirmed
    for chunk in chunks(list(journal_ids)):
        rows = conn.execute(
            "SELECT source_id, destination FROM outbox "
            "WHERE source_table = 'instances' AND source_id IN "
            f"({marks(len(chunk))}) AND destination IN ({marks(len(wanted))}) "
            "GROUP BY source_id, destination HAVING SUM(state <> 'done') = 0",
            (*chunk, *wanted)).fetchall()
        confirmed.update((int(r[0]), str(r[1])) for r in rows)
    return confirmed


def _decide(conn: sqlite3.Connection, request: CommitmentRequest, plan: CommitmentPlan,
            now: float) -> CommitmentReport | None:
    journal = held(conn, [uid for _, uid in request.refs])
    confirmed = _confirmed(conn, [h.journal_id for h in journal.values()],
                           sorted(plan.needed(request, journal)))
    expired = request.deadline is not None and now >= request.deadline
    return decide(request, journal, confirmed, expired, plan)


def resolve(conn: sqlite3.Connection, request_id: int, request: CommitmentRequest,
            plan: CommitmentPlan, now: float) -> CommitmentReport | None:
    """Queue the report of a waiting request when every instance is confirmed (or its
    deadline passed); None while it waits."""
    with transaction(conn):
        state = conn.execute("SELECT state, archive_asks FROM commitment_requests WHERE id = ?",
                             (request_id,)).fetchone()
        if state is None or state[0] != "waiting":
            return None
        request = dataclasses.replace(request, asks=json.loads(state[1] or "{}"))
        report = _decide(conn, request, plan, now)
        if report is not None:
            _queue_report(conn, request_id, report, now)
        return report


def count(conn: sqlite3.Connection, state: str) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM commitment_requests WHERE state = ?",
                            (state,)).fetchone()[0])
