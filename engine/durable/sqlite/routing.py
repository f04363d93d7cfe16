"""SQLite SQL of routing: the routing transaction, unrouted replay, groups, unmatched listing.

Each function takes the connection of the store's writer (or reader) thread; :class:`~engine.
durable.sqlite.SqliteStore` calls them through thin methods. :func:`commit_routing` is the D3
transaction: for a batch of plans it marks each journal entry routed (only if it was not
already: a replay and a bus event may race), inserts the entry's outbox rows and records the
series/study groups it joined — all or nothing. :func:`fire_group` turns an open group into
outbox rows in one transaction with the group's state change. No routing policy lives here:
plans are built by the pipeline, a fired group's rows by the function it passes in.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from engine.durable.routing import (
    BuildGroupRows,
    FiredGroup,
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
from engine.durable.sqlite._common import chunks, marks, transaction
from engine.durable.sqlite.worklist import items_by_ids
from engine.durable.store import Hl7JournalRecord, NewOutboxRow, StoredInstance

_SOURCE_TABLES = {"instances": "instances", "hl7_messages": "hl7_messages",
                  "procedure_step_events": "procedure_step_events"}


def _insert_rows(conn: sqlite3.Connection, rows: Sequence[NewOutboxRow], now: float) -> None:
    conn.executemany(
        "INSERT INTO outbox (destination, kind, source_table, source_id, route, payload, "
        "study_instance_uid, state, attempts, next_attempt_at, created_at, updated_at) "
        "VALUES (?,?,?,?,?,?,?, 'pending', 0, ?, ?, ?)",
        [(r.destination, r.kind, r.source_table, r.source_id, r.route, r.payload,
          r.study_instance_uid, now, now, now) for r in rows])



def _commitment(plan: RoutingPlan) -> str:
    """What the matched routes asked of Storage Commitment, kept with the instance's mark."""
    return ", route_commitment = ?" if plan.commitment is not None else ""


def _commitment_value(plan: RoutingPlan) -> tuple[str, ...]:
    return (plan.commitment,) if plan.commitment is not None else ()


def commit_routing(conn: sqlite3.Connection, plans: Sequence[RoutingPlan], now_iso: str,
                   now: float) -> list[RoutingCommitResult]:
    results: list[RoutingCommitResult] = []
    # Not fsync'd: an entry whose "routed" mark is lost in a power cut is routed again at start.
    with transaction(conn, durable=False):
        for plan in plans:
            table = _SOURCE_TABLES[plan.source_table]
            marked = conn.execute(
                f"UPDATE {table} SET routed_at = ?, routing_outcome = ?{_commitment(plan)} "
                "WHERE id = ? AND routed_at IS NULL",
                (now_iso, plan.outcome, *_commitment_value(plan), plan.source_id)).rowcount
            if marked == 0:
                results.append(RoutingCommitResult(False, 0, ()))
                continue
            _insert_rows(conn, plan.rows, now)
            groups = tuple(_join(conn, plan.source_id, join, now) for join in plan.groups)
            results.append(RoutingCommitResult(True, len(plan.rows), groups))
    return results


def _join(conn: sqlite3.Connection, instance_id: int, join: Any, now: float) -> OpenGroup:
    row = conn.execute(
        "SELECT id FROM routing_groups WHERE route = ? AND level = ? AND group_key = ? "
        "AND state = 'open'", (join.route, join.level, join.key)).fetchone()
    if row is None:
        cur = conn.execute(
            "INSERT INTO routing_groups (route, level, group_key, study_instance_uid, decision, "
            "quiet_seconds, max_wait_seconds, first_at, last_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (join.route, join.level, join.key, join.study_instance_uid, join.decision,
             join.quiet_seconds, join.max_wait_seconds, now, now))
        group_id = int(cur.lastrowid or 0)
    else:
        group_id = int(row[0])
        conn.execute(
            "UPDATE routing_groups SET last_at = ?, decision = ?, quiet_seconds = ?, "
            "max_wait_seconds = ? WHERE id = ?",
            (now, join.decision, join.quiet_seconds, join.max_wait_seconds, group_id))
    conn.execute("INSERT OR IGNORE INTO routing_group_members (group_id, instance_id) "
                 "VALUES (?, ?)", (group_id, instance_id))
    found = conn.execute(f"SELECT {GROUP_COLUMNS} FROM routing_groups g WHERE id = ?",
                         (group_id,)).fetchone()
    return row_to_group(found)


def open_groups(conn: sqlite3.Connection, study_instance_uid: str | None = None
                ) -> list[OpenGroup]:
    if study_instance_uid is None:
        rows = conn.execute(f"SELECT {GROUP_COLUMNS} FROM routing_groups g "
                            "WHERE state = 'open' ORDER BY id").fetchall()
    else:
        rows = conn.execute(f"SELECT {GROUP_COLUMNS} FROM routing_groups g "
                            "WHERE state = 'open' AND study_instance_uid = ? ORDER BY id",
                            (study_instance_uid,)).fetchall()
    return [row_to_group(r) for r in rows]


def fire_group(conn: sqlite3.Connection, group_id: int, reason: str, now: float,
               build: BuildGroupRows) -> FiredGroup | None:
    """Fire one open group: its outbox rows and its state, in one transaction; None when the
    group is no longer open (fired meanwhile)."""
    with transaction(conn):
        row = conn.execute(f"SELECT {GROUP_COLUMNS}, decision FROM routing_groups g "
                           "WHERE id = ? AND state = 'open'", (group_id,)).fetchone()
        if row is None:
            return None
        group = row_to_group(row)
        members = [row_to_instance(r) for r in conn.execute(
            f"SELECT {INSTANCE_COLUMNS_I} "
            "FROM routing_group_members m JOIN instances i ON i.id = m.instance_id "
            "WHERE m.group_id = ? AND i.superseded = 0 ORDER BY i.id", (group_id,))]
        def study_instances(uid: str) -> list[StoredInstance]:
            return [row_to_instance(r) for r in conn.execute(
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE study_instance_uid = ? "
                "AND superseded = 0 AND durable = 1 ORDER BY id", (uid,))]

        rows = build(str(row[10]), members, reason, group, study_instances)
        _insert_rows(conn, rows, now)
        conn.execute("UPDATE routing_groups SET state = 'fired', fired_at = ?, fire_reason = ? "
                     "WHERE id = ?", (now, reason, group_id))
    return FiredGroup(group, reason, len(rows), len(members))


def unrouted_instances(conn: sqlite3.Connection, after_id: int, limit: int
                       ) -> list[StoredInstance]:
    # A row whose file is still being fsync'd (``durable = 0``) is routed once it is marked:
    # its file might yet fail, and then the row is withdrawn.
    rows = conn.execute(f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE routed_at IS NULL "
                        "AND id > ? AND durable = 1 ORDER BY id LIMIT ?",
                        (after_id, limit)).fetchall()
    return [row_to_instance(r) for r in rows]


def instances_by_ids(conn: sqlite3.Connection, ids: Sequence[int]) -> list[StoredInstance]:
    out: list[StoredInstance] = []
    for chunk in chunks(ids):
        out.extend(row_to_instance(r) for r in conn.execute(
            f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE id IN ({marks(len(chunk))}) "
            "ORDER BY id", chunk))
    return out


def unrouted_hl7(conn: sqlite3.Connection, after_id: int, limit: int
                 ) -> list[Hl7JournalRecord]:
    """Accepted (AA) messages not routed yet, raw bytes included; AE/AR messages changed
    nothing and are never routed."""
    rows = conn.execute(
        f"SELECT {HL7_COLUMNS}, raw FROM hl7_messages WHERE routed_at IS NULL AND id > ? "
        "AND ack_code = 'AA' ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
    return [row_to_hl7(r) for r in rows]


def unrouted_procedure_step_events(conn: sqlite3.Connection, after_id: int, limit: int,
                                   ids: Sequence[int] | None = None
                                   ) -> list[ProcedureStepEventRecord]:
    """MPPS event journal rows not routed yet (all after ``after_id``, or only ``ids``), each
    with its step and the step's linked worklist items."""
    sql = (f"SELECT e.id, e.operation, e.status, e.received, e.received_at, "
           f"{STEP_COLUMNS} FROM procedure_step_events e "
           "JOIN procedure_steps s ON s.id = e.step_id WHERE e.routed_at IS NULL ")
    if ids is None:
        rows = conn.execute(sql + "AND e.id > ? ORDER BY e.id LIMIT ?",
                            (after_id, limit)).fetchall()
    else:
        wanted = list(ids)[:limit]
        if not wanted:
            return []
        rows = conn.execute(sql + f"AND e.id IN ({marks(len(wanted))}) ORDER BY e.id",
                            wanted).fetchall()
    out: list[ProcedureStepEventRecord] = []
    for r in rows:
        step = row_to_step(r[5:])
        items = items_by_ids(conn, step.worklist_item_ids)
        out.append(ProcedureStepEventRecord(
            id=int(r[0]), operation=r[1], status=r[2], received=r[3], received_at=r[4],
            step=step, worklist_items=tuple(items)))
    return out


def unmatched_instances(conn: sqlite3.Connection, limit: int, offset: int
                        ) -> tuple[int, list[StoredInstance]]:
    total = int(conn.execute("SELECT COUNT(*) FROM instances WHERE routing_outcome = "
                             "'unmatched'").fetchone()[0])
    rows = conn.execute(f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE routing_outcome = "
                        "'unmatched' ORDER BY id DESC LIMIT ? OFFSET ?",
                        (limit, offset)).fetchall()
    return total, [row_to_instance(r) for r in rows]


def routing_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Journal entries by routing outcome (``unrouted`` for those not routed yet)."""
    counts: dict[str, int] = {}
    for table, where in (("instances", ""), ("hl7_messages", " WHERE ack_code = 'AA'"),
                         ("procedure_step_events", "")):
        for outcome, n in conn.execute(
                f"SELECT COALESCE(routing_outcome, CASE WHEN routed_at IS NULL THEN 'unrouted' "
                f"ELSE 'routed' END), COUNT(*) FROM {table}{where} GROUP BY 1"):
            counts[f"{table}.{outcome}"] = int(n)
    counts["groups.open"] = int(conn.execute(
        "SELECT COUNT(*) FROM routing_groups WHERE state = 'open'").fetchone()[0])
    counts["outbox.rows"] = int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    return counts
