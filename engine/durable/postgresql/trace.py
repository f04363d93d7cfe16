"""PostgreSQL queries of a trace (:mod:`engine.durable.trace`): what the journal, the worklist, the
MPPS tables, the routing groups and the outbox hold for one accession number, Study Instance UID
or patient, read in one REPEATABLE READ snapshot.

The key finds worklist items, MPPS steps and received instances (by their indexed columns); their
Study Instance UIDs widen the search to everything of those studies. HL7 messages are found
through the worklist items they made or changed, deliveries through their source rows. It only
reads.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg

from engine.durable.trace import (
    TRACE_LIMIT,
    TraceBy,
    TraceDelivery,
    TraceGroup,
    TraceHl7Message,
    TraceProcedureStep,
    TraceRecords,
    TraceStepEvent,
    TraceStudy,
    TraceWorklistItem,
)

Conn = psycopg.Connection[Any]

_ITEM = ("id, status, patient_id, accession_number, study_instance_uid, placer_order_number, "
         "filler_order_number, modality, scheduled_station_ae_title, created_at, updated_at")
_STEP = ("id, sop_instance_uid, status, study_instance_uid, accession_number, patient_id, "
         "calling_ae, unscheduled, worklist_item_ids, created_at, complete_at")
_MESSAGE = ("id, received_at, COALESCE(message_type, ''), COALESCE(trigger_event, ''), "
            "COALESCE(control_id, ''), COALESCE(sending_application, ''), ack_code, "
            "worklist_item_ids, routed_at")


def _where_in(conn: Conn, sql: str, values: Iterable[Any], extra: Sequence[Any] = ()
              ) -> list[tuple[Any, ...]]:
    """``sql`` with ``{in}`` matched against every one of ``values`` (one array parameter)."""
    ordered = sorted(set(values))
    if not ordered:
        return []
    return list(conn.execute(sql.replace("IN ({in})", "= ANY(%s)"), (ordered, *extra)))


def _ids(text: str | None) -> tuple[int, ...]:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return ()
    return tuple(int(v) for v in value if isinstance(v, int))


def _csv(text: str | None) -> tuple[str, ...]:
    return tuple(sorted(v for v in (text or "").split(",") if v))


def trace(conn: Conn, by: TraceBy, value: str,
          limit: int = TRACE_LIMIT) -> TraceRecords:
    # One snapshot: a delivery finishing meanwhile is seen whole or not at all.
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return _trace(conn, by, value, limit)


def _trace(conn: Conn, by: TraceBy, value: str, limit: int) -> TraceRecords:
    items: dict[int, tuple[Any, ...]] = {}
    steps: dict[int, tuple[Any, ...]] = {}
    studies: set[str] = set()
    truncated = False

    def take(rows: list[tuple[Any, ...]], into: dict[int, tuple[Any, ...]]) -> None:
        nonlocal truncated
        truncated |= len(rows) >= limit
        into.update((int(r[0]), r) for r in rows)

    if by == "study":
        studies.add(value)
    else:
        column = "accession_number" if by == "accession" else "patient_id"
        take(conn.execute(f"SELECT {_ITEM} FROM worklist_items WHERE {column} = %s "
                          "ORDER BY id DESC LIMIT %s", (value, limit)).fetchall(), items)
        take(conn.execute(f"SELECT {_STEP} FROM procedure_steps WHERE {column} = %s "
                          "ORDER BY id DESC LIMIT %s", (value, limit)).fetchall(), steps)
        found = conn.execute(
            f"SELECT DISTINCT study_instance_uid FROM instances WHERE {column} = %s "
            "AND study_instance_uid IS NOT NULL LIMIT %s", (value, limit)).fetchall()
        truncated |= len(found) >= limit
        studies.update(str(r[0]) for r in found)
    studies.update(str(r[4]) for r in items.values())
    studies.update(str(r[3]) for r in steps.values())
    studies.discard("")
    if len(studies) > limit:
        studies, truncated = set(sorted(studies)[:limit]), True
    take(_where_in(conn, f"SELECT {_ITEM} FROM worklist_items WHERE study_instance_uid IN ({{in}})",
                   studies), items)
    take(_where_in(conn, f"SELECT {_STEP} FROM procedure_steps WHERE study_instance_uid IN "
                   "({in})", studies), steps)

    messages = _messages(conn, items)
    events = _where_in(conn, "SELECT id, step_id, operation, status, received_at, routed_at, "
                       "routing_outcome FROM procedure_step_events WHERE step_id IN ({in}) "
                       "ORDER BY id", steps)
    by_step: dict[int, list[TraceStepEvent]] = {}
    for _id, step_id, operation, status, received_at, routed_at, outcome in sorted(events):
        by_step.setdefault(int(step_id), []).append(
            TraceStepEvent(str(operation), str(status), str(received_at), routed_at, outcome))

    study_rows = _where_in(
        conn, "SELECT study_instance_uid, COUNT(*), COUNT(DISTINCT series_instance_uid), "
        "string_agg(DISTINCT calling_ae, ','), string_agg(DISTINCT modality, ','), "
        "string_agg(DISTINCT accession_number, ','), string_agg(DISTINCT patient_id, ','), "
        "MIN(received_at), MAX(received_at), "
        "SUM(CASE WHEN routed_at IS NULL THEN 1 ELSE 0 END) FROM instances "
        "WHERE study_instance_uid IN ({in}) AND superseded = 0 GROUP BY study_instance_uid",
        studies)
    groups = _where_in(conn, "SELECT route, level, study_instance_uid, state, first_at, "
                       "fired_at, fire_reason FROM routing_groups WHERE study_instance_uid "
                       "IN ({in}) ORDER BY id", studies)
    deliveries = _deliveries(conn, studies, [int(m[0]) for m in messages],
                             [int(e[0]) for e in events])
    return TraceRecords(
        hl7_messages=tuple(TraceHl7Message(int(m[0]), str(m[1]), m[2], m[3], m[4], m[5],
                                           str(m[6]), _ids(m[7]), m[8]) for m in messages),
        worklist_items=tuple(TraceWorklistItem(int(r[0]), *(str(v or "") for v in r[1:]))
                             for _, r in sorted(items.items())),
        procedure_steps=tuple(
            TraceProcedureStep(str(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]),
                               str(r[6]), bool(r[7]), _ids(r[8]), str(r[9]), r[10],
                               tuple(by_step.get(step_id, ())))
            for step_id, r in sorted(steps.items())),
        studies=tuple(TraceStudy(str(s[0]), int(s[1]), int(s[2]), _csv(s[3]), _csv(s[4]),
                                 _csv(s[5]), _csv(s[6]), str(s[7]), str(s[8]), int(s[9] or 0))
                      for s in sorted(study_rows)),
        groups=tuple(TraceGroup(str(g[0]), str(g[1]), str(g[2] or ""), str(g[3]), float(g[4]),
                                g[5], g[6]) for g in groups),
        deliveries=deliveries, truncated=truncated)


def _messages(conn: Conn, items: dict[int, tuple[Any, ...]]
              ) -> list[tuple[Any, ...]]:
    """The HL7 messages that made or changed ``items``: the journal keeps the item ids each
    message touched. Messages received before the oldest item was created cannot have made
    it, so the search starts the day before (the index on ``received_at``)."""
    if not items:
        return []
    oldest = min(str(r[9]) for r in items.values())
    try:
        since = (dt.datetime.fromisoformat(oldest) - dt.timedelta(days=1)).date().isoformat()
    except ValueError:
        since = ""
    out = conn.execute(
        f"SELECT {_MESSAGE} FROM hl7_messages h WHERE received_at >= %s AND EXISTS "
        "(SELECT 1 FROM json_array_elements_text(h.worklist_item_ids::json) j "
        "WHERE j::bigint = ANY(%s)) ORDER BY id", (since, sorted(items))).fetchall()
    return sorted(set(out))


def _deliveries(conn: Conn, studies: set[str], message_ids: list[int],
                event_ids: list[int]) -> tuple[TraceDelivery, ...]:
    select = ("SELECT route, destination, source_table, study_instance_uid, COUNT(*), "
              "SUM(CASE WHEN state = 'done' THEN 1 ELSE 0 END), "
              "SUM(CASE WHEN state IN ('pending', 'leased') THEN 1 ELSE 0 END), "
              "SUM(CASE WHEN state = 'dead' THEN 1 ELSE 0 END), "
              "SUM(attempts), MIN(created_at), MAX(done_at) FROM outbox WHERE ")
    group = " GROUP BY route, destination, source_table, study_instance_uid"
    rows = _where_in(conn, select + "source_table = 'instances' AND source_id IN (SELECT id "
                     "FROM instances WHERE study_instance_uid IN ({in}))" + group, studies)
    rows += _where_in(conn, select + "source_table = 'hl7_messages' AND source_id IN ({in})"
                      + group, message_ids)
    rows += _where_in(conn, select + "source_table = 'procedure_step_events' AND source_id "
                      "IN ({in})" + group, event_ids)
    errors: dict[tuple[str, str, str], str] = {}
    for sql, values in (
            ("source_table = 'instances' AND source_id IN (SELECT id FROM instances WHERE "
             "study_instance_uid IN ({in}))", studies),
            ("source_table = 'hl7_messages' AND source_id IN ({in})", message_ids),
            ("source_table = 'procedure_step_events' AND source_id IN ({in})", event_ids)):
        for route, dest, source, error in _where_in(
                conn, "SELECT route, destination, source_table, last_error FROM outbox WHERE "
                + sql + " AND last_error IS NOT NULL ORDER BY updated_at", values):
            errors[(str(route), str(dest), str(source))] = str(error)
    return tuple(
        TraceDelivery(str(r[0]), str(r[1]), str(r[2]), r[3], int(r[4]), int(r[5] or 0),
                      int(r[6] or 0), int(r[7] or 0), int(r[8] or 0), float(r[9]), r[10],
                      errors.get((str(r[0]), str(r[1]), str(r[2]))))
        for r in sorted(rows, key=lambda r: (float(r[9]), str(r[0]), str(r[1]))))
