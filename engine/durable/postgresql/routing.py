"""PostgreSQL SQL of routing: the routing transaction, unrouted replay, groups, unmatched listing.

Each function takes the connection it runs on; :class:`~engine.durable.postgresql.
PostgresStore` calls them through thin methods. The rules are the SQLite backend's; what differs
is that several nodes may run them at once: the "routed" mark is a conditional UPDATE (the
second node's finds the entry routed), a group is joined with one upsert, a group is fired under
its row lock, and new outbox rows send a NOTIFY at commit. :func:`commit_routing` is the D3
transaction: for a batch of plans it marks each journal entry routed (only if it was not
already: a replay and a bus event may race), inserts the entry's outbox rows and records the
series/study groups it joined — all or nothing. :func:`fire_group` turns an open group into
outbox rows in one transaction with the group's state change. No routing policy lives here:
plans are built by the pipeline, a fired group's rows by the function it passes in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from engine.durable.postgresql._common import notify_outbox, pipelined, scalar, transaction
from engine.durable.postgresql.worklist import items_by_ids
from engine.durable.routing import (
    TIMED_REASONS,
    BuildGroupRows,
    FiredGroup,
    GroupNotDue,
    OpenGroup,
    ProcedureStepEventRecord,
    RoutingCommitResult,
    RoutingPlan,
)
from engine.durable.rows import (
    GROUP_COLUMNS,
    HL7_COLUMNS,
    INSTANCE_COLUMNS,
    INSTANCE_COLUMNS_I,
    STEP_COLUMNS,
    row_to_group,
    row_to_hl7,
    row_to_instance,
    row_to_step,
)
from engine.durable.store import Hl7JournalRecord, NewOutboxRow, StoredInstance

Conn = psycopg.Connection[Any]

_SOURCE_TABLES = {"instances": "instances", "hl7_messages": "hl7_messages",
                  "procedure_step_events": "procedure_step_events"}


def _insert_rows(conn: Conn, rows: Sequence[NewOutboxRow], now: float) -> None:
    if not rows:
        return
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO outbox (destination, kind, source_table, source_id, route, payload, "
            "study_instance_uid, state, attempts, next_attempt_at, created_at, updated_at) "
            "VALUES (%s,%s,%s,%s,%s,%s,%s, 'pending', 0, %s, %s, %s)",
            [(r.destination, r.kind, r.source_table, r.source_id, r.route, r.payload,
              r.study_instance_uid, now, now, now) for r in rows])



def _commitment(plan: RoutingPlan) -> str:
    """What the matched routes asked of Storage Commitment, kept with the instance's mark."""
    return ", route_commitment = %s" if plan.commitment is not None else ""


def _commitment_value(plan: RoutingPlan) -> tuple[str, ...]:
    return (plan.commitment,) if plan.commitment is not None else ()


def commit_routing(conn: Conn, plans: Sequence[RoutingPlan], now_iso: str,
                   now: float, schema: str) -> list[RoutingCommitResult]:
    results: list[RoutingCommitResult | None] = []
    # A plan with nothing to insert (no route matched, or no routes) needs no answer before
    # the next statement: its mark's row count is read once the transaction committed, so a
    # batch of them costs one round trip (pipelined).
    deferred: list[tuple[int, psycopg.Cursor[Any]]] = []
    woken: set[str] = set()
    # Not fsync'd: an entry whose "routed" mark is lost in a power cut is routed again at start.
    with pipelined(conn, durable=False) as pipe:
        for plan in plans:
            table = _SOURCE_TABLES[plan.source_table]
            cur = conn.execute(
                f"UPDATE {table} SET routed_at = %s, routing_outcome = %s{_commitment(plan)} "
                "WHERE id = %s AND routed_at IS NULL",
                (now_iso, plan.outcome, *_commitment_value(plan), plan.source_id))
            if not plan.rows and not plan.groups:
                deferred.append((len(results), cur))
                results.append(None)
                continue
            pipe.sync()
            if cur.rowcount == 0:
                results.append(RoutingCommitResult(False, 0, ()))
                continue
            _insert_rows(conn, plan.rows, now)
            woken.update(row.destination for row in plan.rows)
            groups = tuple(_join(conn, plan.source_id, join, now) for join in plan.groups)
            results.append(RoutingCommitResult(True, len(plan.rows), groups))
        notify_outbox(conn, schema, woken)
    for index, cur in deferred:
        results[index] = RoutingCommitResult(cur.rowcount > 0, 0, ())
    return [r for r in results if r is not None]


def _join(conn: Conn, instance_id: int, join: Any, now: float) -> OpenGroup:
    # One atomic upsert on the "one open group per route and key" index: two nodes joining
    # the same series at once end up in one group.
    group_id = int(scalar(
        conn, "INSERT INTO routing_groups (route, level, group_key, study_instance_uid, "
        "decision, quiet_seconds, max_wait_seconds, first_at, last_at) "
        "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) "
        "ON CONFLICT (route, level, group_key) WHERE state = 'open' DO UPDATE SET "
        "last_at = EXCLUDED.last_at, decision = EXCLUDED.decision, "
        "quiet_seconds = EXCLUDED.quiet_seconds, max_wait_seconds = EXCLUDED.max_wait_seconds "
        "RETURNING id",
        (join.route, join.level, join.key, join.study_instance_uid, join.decision,
         join.quiet_seconds, join.max_wait_seconds, now, now)))
    conn.execute("INSERT INTO routing_group_members (group_id, instance_id) "
                 "VALUES (%s, %s) ON CONFLICT DO NOTHING", (group_id, instance_id))
    found = conn.execute(f"SELECT {GROUP_COLUMNS} FROM routing_groups g WHERE id = %s",
                         (group_id,)).fetchone()
    assert found is not None
    return row_to_group(found)


def open_groups(conn: Conn, study_instance_uid: str | None = None
                ) -> list[OpenGroup]:
    if study_instance_uid is None:
        rows = conn.execute(f"SELECT {GROUP_COLUMNS} FROM routing_groups g "
                            "WHERE state = 'open' ORDER BY id").fetchall()
    else:
        rows = conn.execute(f"SELECT {GROUP_COLUMNS} FROM routing_groups g "
                            "WHERE state = 'open' AND study_instance_uid = %s ORDER BY id",
                            (study_instance_uid,)).fetchall()
    return [row_to_group(r) for r in rows]


def fire_group(conn: Conn, group_id: int, reason: str, now: float,
               build: BuildGroupRows, schema: str) -> FiredGroup | None:
    """Fire one open group: its outbox rows and its state, in one transaction; None when the
    group is no longer open (fired meanwhile)."""
    with transaction(conn):
        row = conn.execute(f"SELECT {GROUP_COLUMNS}, decision FROM routing_groups g "
                           "WHERE id = %s AND state = 'open' FOR UPDATE", (group_id,)).fetchone()
        if row is None:
            return None
        group = row_to_group(row)
        if reason in TIMED_REASONS and group.deadline > now:
            # Several nodes keep timers for one group: the row's timestamps, which every
            # node's joins update under this row lock, decide, so a study that kept arriving
            # on another node is not fired early (and then fired again with the rest).
            raise GroupNotDue(group)
        members = [row_to_instance(r) for r in conn.execute(
            f"SELECT {INSTANCE_COLUMNS_I} "
            "FROM routing_group_members m JOIN instances i ON i.id = m.instance_id "
            "WHERE m.group_id = %s AND i.superseded = 0 ORDER BY i.id", (group_id,))]

        def study_instances(uid: str) -> list[StoredInstance]:
            return [row_to_instance(r) for r in conn.execute(
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE study_instance_uid = %s "
                "AND superseded = 0 AND durable = 1 ORDER BY id", (uid,))]

        rows = build(str(row[10]), members, reason, group, study_instances)
        _insert_rows(conn, rows, now)
        conn.execute("UPDATE routing_groups SET state = 'fired', fired_at = %s, "
                     "fire_reason = %s WHERE id = %s", (now, reason, group_id))
        notify_outbox(conn, schema, {r.destination for r in rows})
    return FiredGroup(group, reason, len(rows), len(members))


def unrouted_instances(conn: Conn, after_id: int, limit: int
                       ) -> list[StoredInstance]:
    # A row whose file is still being fsync'd (``durable = 0``) is routed once it is marked:
    # its file might yet fail, and then the row is withdrawn.
    rows = conn.execute(f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE routed_at IS NULL "
                        "AND id > %s AND durable = 1 ORDER BY id LIMIT %s",
                        (after_id, limit)).fetchall()
    return [row_to_instance(r) for r in rows]


def instances_by_ids(conn: Conn, ids: Sequence[int]) -> list[StoredInstance]:
    if not ids:
        return []
    return [row_to_instance(r) for r in conn.execute(
        f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = ANY(%s) ORDER BY id",
        (list(ids),))]


def unrouted_hl7(conn: Conn, after_id: int, limit: int
                 ) -> list[Hl7JournalRecord]:
    """Accepted (AA) messages not routed yet, raw bytes included; AE/AR messages changed
    nothing and are never routed."""
    rows = conn.execute(
        f"SELECT {HL7_COLUMNS}, raw FROM hl7_messages WHERE routed_at IS NULL AND id > %s "
        "AND ack_code = 'AA' ORDER BY id LIMIT %s", (after_id, limit)).fetchall()
    return [row_to_hl7(r) for r in rows]


def unrouted_procedure_step_events(conn: Conn, after_id: int, limit: int,
                                   ids: Sequence[int] | None = None
                                   ) -> list[ProcedureStepEventRecord]:
    """MPPS event journal rows not routed yet (all after ``after_id``, or only ``ids``), each
    with its step and the step's linked worklist items."""
    sql = (f"SELECT e.id, e.operation, e.status, e.received, e.received_at, "
           f"{STEP_COLUMNS} FROM procedure_step_events e "
           "JOIN procedure_steps s ON s.id = e.step_id WHERE e.routed_at IS NULL ")
    if ids is None:
        rows = conn.execute(sql + "AND e.id > %s ORDER BY e.id LIMIT %s",
                            (after_id, limit)).fetchall()
    else:
        wanted = list(ids)[:limit]
        if not wanted:
            return []
        rows = conn.execute(sql + "AND e.id = ANY(%s) ORDER BY e.id", (wanted,)).fetchall()
    out: list[ProcedureStepEventRecord] = []
    for r in rows:
        step = row_to_step(r[5:])
        items = items_by_ids(conn, step.worklist_item_ids)
        out.append(ProcedureStepEventRecord(
            id=int(r[0]), operation=r[1], status=r[2], received=r[3], received_at=r[4],
            step=step, worklist_items=tuple(items)))
    return out


def unmatched_instances(conn: Conn, limit: int, offset: int
                        ) -> tuple[int, list[StoredInstance]]:
    total = int(scalar(conn, "SELECT COUNT(*) FROM instances WHERE routing_outcome = "
                       "'unmatched'"))
    rows = conn.execute(f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE routing_outcome = "
                        "'unmatched' ORDER BY id DESC LIMIT %s OFFSET %s",
                        (limit, offset)).fetchall()
    return total, [row_to_instance(r) for r in rows]


def routing_counts(conn: Conn) -> dict[str, int]:
    """Journal entries by routing outcome (``unrouted`` for those not routed yet)."""
    counts: dict[str, int] = {}
    for table, where in (("instances", ""), ("hl7_messages", " WHERE ack_code = 'AA'"),
                         ("procedure_step_events", "")):
        for outcome, n in conn.execute(
                f"SELECT COALESCE(routing_outcome, CASE WHEN routed_at IS NULL THEN 'unrouted' "
                f"ELSE 'routed' END), COUNT(*) FROM {table}{where} GROUP BY 1"):
            counts[f"{table}.{outcome}"] = int(n)
    counts["groups.open"] = int(scalar(
        conn, "SELECT COUNT(*) FROM routing_groups WHERE state = 'open'"))
    counts["outbox.rows"] = int(scalar(conn, "SELECT COUNT(*) FROM outbox"))
    return counts
