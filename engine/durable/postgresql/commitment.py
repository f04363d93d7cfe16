"""PostgreSQL SQL of Storage Commitment: outstanding requests and their reports.

The SQLite backend's rules (see its ``commitment.py``): a request is one row, unique per calling
AE and Transaction UID, and its report is an outbox row written in the same transaction as the
decision. Two nodes receiving the same N-ACTION at once meet on the unique constraint; two nodes
resolving the same waiting request take its row lock in turn, and the second finds it reported.
This module must not decide which instances are committed nor talk to peers.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import psycopg

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
from engine.durable.postgresql._common import notify_outbox, scalar, transaction

Conn = psycopg.Connection[Any]
#: (request id, request) of requests waiting for their archive, oldest first
Waiting = tuple[int, CommitmentRequest]


def journal_classes(conn: Conn, uids: Sequence[str]) -> dict[str, str]:
    """SOP Instance UID -> SOP Class UID of the current journal rows among ``uids``."""
    return {str(u): str(c) for u, c in conn.execute(
        "SELECT sop_instance_uid, sop_class_uid FROM instances WHERE superseded = 0 AND "
        "sop_instance_uid = ANY(%s)", (list(dict.fromkeys(uids)),))}


def _queue_report(conn: Conn, request_id: int, report: CommitmentReport, now: float,
                  schema: str) -> None:
    conn.execute(
        "INSERT INTO outbox (destination, kind, source_table, source_id, route, payload, "
        "state, attempts, next_attempt_at, created_at, updated_at) "
        "VALUES (%s, %s, %s, %s, '', %s, 'pending', 0, %s, %s, %s)",
        (COMMITMENT_DESTINATION, COMMITMENT_KIND, COMMITMENT_SOURCE, request_id,
         report.payload(), now, now, now))
    conn.execute("UPDATE commitment_requests SET state = 'reported', reported_at = %s "
                 "WHERE id = %s", (now, request_id))
    notify_outbox(conn, schema, {COMMITMENT_DESTINATION})


def commit_request(conn: Conn, request: CommitmentRequest, plan: CommitmentPlan, now: float,
                   schema: str) -> CommitmentResult:
    with transaction(conn):
        request_id = scalar(
            conn, "INSERT INTO commitment_requests (transaction_uid, calling_ae, policy, "
            "state, refs, received_at, deadline, via) "
            "VALUES (%s, %s, %s, 'waiting', %s, %s, %s, %s) "
            "ON CONFLICT (calling_ae, transaction_uid) DO NOTHING RETURNING id",
            (request.transaction_uid, request.calling_ae, request.policy,
             json.dumps([list(r) for r in request.refs]), request.received_at,
             request.deadline, request.via))
        if request_id is None:
            known = scalar(conn, "SELECT id FROM commitment_requests WHERE calling_ae = %s "
                           "AND transaction_uid = %s",
                           (request.calling_ae, request.transaction_uid))
            return CommitmentResult(int(known), True, None)
        request_id = int(request_id)
        if request.policy == "on_receipt":
            report: CommitmentReport | None = decide_on_receipt(
                request, journal_classes(conn, [uid for _, uid in request.refs]))
        else:  # decided at once when it can be (routes that said on_receipt, unknown UIDs)
            report = _decide(conn, request, plan, now)
        if report is not None:
            _queue_report(conn, request_id, report, now, schema)
        return CommitmentResult(request_id, False, report)


def waiting(conn: Conn, limit: int) -> list[Waiting]:
    rows = conn.execute(
        "SELECT id, transaction_uid, calling_ae, policy, refs, received_at, deadline, "
        "archive_asks, via FROM commitment_requests WHERE state = 'waiting' ORDER BY id LIMIT %s",
        (limit,)).fetchall()
    return [(int(r[0]), CommitmentRequest(
        r[1], r[2], r[3], tuple((str(c), str(u)) for c, u in json.loads(r[4])), r[5], r[6],
        json.loads(r[7] or "{}"), str(r[8] or ""))) for r in rows]


def delivered(conn: Conn, uids: Sequence[str], destination: str) -> set[str]:
    """Which of ``uids`` (current journal rows) ``destination`` has delivered."""
    journal = held(conn, uids)
    done = _confirmed(conn, [h.journal_id for h in journal.values()], [destination])
    return {uid for uid, h in journal.items() if (h.journal_id, destination) in done}


def record_ask(conn: Conn, request_id: int, destination: str, transaction_uid: str,
               sent: bool, now: float = 0.0, claim_seconds: float = 0.0) -> bool:
    with transaction(conn):
        raw = scalar(conn, "SELECT archive_asks FROM commitment_requests WHERE id = %s "
                     "FOR UPDATE", (request_id,))
        if raw is None:
            return False
        asks = json.loads(raw or "{}")
        new = next_ask(asks.get(destination) or {}, transaction_uid, sent, now,
                       claim_seconds)
        if new is None:
            return False
        asks[destination] = new
        conn.execute("UPDATE commitment_requests SET archive_asks = %s WHERE id = %s",
                     (json.dumps(asks), request_id))
        return True


def record_archive_report(conn: Conn, transaction_uid: str, results: dict[str, int]) -> bool:
    """Keep an archive's answer to radflow's own request; False if no waiting request asked
    with ``transaction_uid``."""
    with transaction(conn):
        for request_id, raw in conn.execute(
                "SELECT id, archive_asks FROM commitment_requests WHERE state = 'waiting' "
                "AND strpos(archive_asks, %s) > 0 FOR UPDATE", (transaction_uid,)).fetchall():
            asks = json.loads(raw or "{}")
            for ask in asks.values():
                if ask.get("transaction_uid") == transaction_uid:
                    ask["results"] = {**(ask.get("results") or {}), **results}
                    conn.execute("UPDATE commitment_requests SET archive_asks = %s "
                                 "WHERE id = %s", (json.dumps(asks), request_id))
                    return True
    return False


def held(conn: Conn, uids: Sequence[str]) -> dict[str, HeldInstance]:
    """SOP Instance UID -> the current journal row, routed or not, with what its routes
    asked for."""
    return {str(uid): HeldInstance(str(sop_class), int(journal_id), bool(routed),
                                   decode_route_archives(route_commitment))
            for uid, sop_class, journal_id, routed, route_commitment in conn.execute(
                "SELECT sop_instance_uid, sop_class_uid, id, routed_at IS NOT NULL, "
                "route_commitment FROM instances WHERE superseded = 0 "
                "AND sop_instance_uid = ANY(%s)", (list(dict.fromkeys(uids)),))}


def _confirmed(conn: Conn, journal_ids: Sequence[int], destinations: Sequence[str]
               ) -> set[tuple[int, str]]:
    """(journal id, destination) pairs with outbox rows to that destination, all delivered."""
    if not destinations:
        return set()
    rows = conn.execute(
        "SELECT source_id, destination FROM outbox "
        "WHERE source_table = 'instances' AND source_id = ANY(%s) AND destination = ANY(%s) "
        "GROUP BY source_id, destination HAVING bool_and(state = 'done')",
        (list(journal_ids), list(dict.fromkeys(destinations)))).fetchall()
    return {(int(r[0]), str(r[1])) for r in rows}


def _decide(conn: Conn, request: CommitmentRequest, plan: CommitmentPlan, now: float
            ) -> CommitmentReport | None:
    journal = held(conn, [uid for _, uid in request.refs])
    confirmed = _confirmed(conn, [h.journal_id for h in journal.values()],
                           sorted(plan.needed(request, journal)))
    expired = request.deadline is not None and now >= request.deadline
    return decide(request, journal, confirmed, expired, plan)


def resolve(conn: Conn, request_id: int, request: CommitmentRequest, plan: CommitmentPlan,
            now: float, schema: str) -> CommitmentReport | None:
    with transaction(conn):
        row = conn.execute("SELECT state, archive_asks FROM commitment_requests WHERE id = %s "
                           "FOR UPDATE", (request_id,)).fetchone()
        if row is None or row[0] != "waiting":
            return None
        request = dataclasses.replace(request, asks=json.loads(row[1] or "{}"))
        report = _decide(conn, request, plan, now)
        if report is not None:
            _queue_report(conn, request_id, report, now, schema)
        return report


def count(conn: Conn, state: str) -> int:
    return int(scalar(conn, "SELECT COUNT(*) FROM commitment_requests WHERE state = %s",
                      (state,)))
