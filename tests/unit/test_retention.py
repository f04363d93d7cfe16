"""Spool retention (engine.durable.retention and sqlite/retention.py): only instances that nothing
needs any more leave the spool and the journal, files first; everything else stays."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from journal_samples import record

from engine.durable.retention import Retention
from engine.durable.routing import GroupJoin, RoutingPlan
from engine.durable.spool import Spool
from engine.durable.sqlite import SqliteStore
from engine.durable.store import DuplicatePolicy, InstanceCommit, NewOutboxRow
from tests.helpers.pg import raw_connection

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
OLD = "2026-10-01T09:00:00+00:00"  # 55 days before NOW
RECENT = "2026-11-24T09:00:00+00:00"


def _row(source_id: int) -> NewOutboxRow:
    return NewOutboxRow(destination="pacs", kind="dicom", source_table="instances",
                        source_id=source_id, route="r", payload="{}",
                        study_instance_uid="1.2.3")


def _join(key: str) -> GroupJoin:
    return GroupJoin(route="study-route", level="study", key=key, study_instance_uid=key,
                     quiet_seconds=60, max_wait_seconds=3600, decision="{}")


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool(tmp_path / "spool", 0)
    s.open()
    return s


async def test_only_what_nothing_needs_is_purged(store: SqliteStore, spool: Spool) -> None:
    names = ["delivered", "pending", "dead", "unrouted", "unmatched", "open-group",
             "fired-group", "recent"]
    records = []
    for n, name in enumerate(names, start=1):
        rec = dataclasses.replace(record(n), received_at=RECENT if name == "recent" else OLD)
        path = spool.root / rec.spool_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"DICM" + name.encode())
        records.append(rec)
    results = await store.commit_instances(
        [InstanceCommit(r, DuplicatePolicy.VERSION) for r in records])
    ids = dict(zip(names, [r.journal_id for r in results], strict=True))
    plans = [RoutingPlan("instances", ids[n], "routed", (_row(ids[n]),))
             for n in ("delivered", "pending", "dead")]
    plans += [RoutingPlan("instances", ids["unmatched"], "unmatched"),
              RoutingPlan("instances", ids["recent"], "unmatched"),
              RoutingPlan("instances", ids["open-group"], "grouped",
                          groups=(_join("study-open"),)),
              RoutingPlan("instances", ids["fired-group"], "grouped",
                          groups=(_join("study-fired"),))]
    results_routing = await store.commit_routing(plans, OLD, 1.0)
    fired_group = results_routing[-1].groups[0].id
    assert await store.fire_routing_group(fired_group, "quiet", 62.0,
                                          lambda *_: []) is not None
    with raw_connection(store) as conn:  # the dispatcher's verdicts, in short
        conn.execute("UPDATE outbox SET state = 'done' WHERE source_id = ?",
                     (ids["delivered"],))
        conn.execute("UPDATE outbox SET state = 'dead' WHERE source_id = ?", (ids["dead"],))

    retention = Retention(store, spool, retention_days=30)
    assert await retention.purge(NOW) == 3
    gone = {"delivered", "unmatched", "fired-group"}
    for name, rec in zip(names, records, strict=True):
        assert (spool.root / rec.spool_path).exists() == (name not in gone), name
    left = {s.record.object_id for s in await store.list_instances(limit=100)}
    assert left == {r.object_id for n, r in zip(names, records, strict=True)
                    if n not in gone}
    assert await retention.purge(NOW) == 0  # nothing more, and idempotent


async def test_zero_keeps_everything(store: SqliteStore, spool: Spool) -> None:
    rec = dataclasses.replace(record(1), received_at=OLD)
    await store.commit_instances([InstanceCommit(rec, DuplicatePolicy.VERSION)])
    await store.commit_routing([RoutingPlan("instances", 1, "unmatched")], OLD, 1.0)
    assert await Retention(store, spool, retention_days=0).purge(NOW) == 0
    assert await store.count_instances() == 1


# --- HL7 and MPPS journal retention --------------------------------------------------------
def _hl7(conn: Any, control_id: str, *, ack: str = "AA", routed: bool = True,
         received_at: str = OLD) -> int:
    cur = conn.execute(
        "INSERT INTO hl7_messages (sending_application, sending_facility, control_id, "
        "peer_host, listener, received_at, raw, ack_code, routed_at) "
        "VALUES ('RIS', 'HOSP', ?, '127.0.0.1', 'mllp', ?, ?, ?, ?)",
        (control_id, received_at, b"MSH|^~\\&|RIS", ack, OLD if routed else None))
    return int(cur.lastrowid or 0)


def _step(conn: Any, uid: str, status: str, *, updated_at: str = OLD,
          complete: bool = False, listed: bool = False, events_routed: bool = True) -> int:
    cur = conn.execute(
        "INSERT INTO procedure_steps (sop_instance_uid, status, created_at, updated_at, "
        "complete_at, dataset) VALUES (?, ?, ?, ?, ?, '{}')",
        (uid, status, updated_at, updated_at, OLD if complete else None))
    step_id = int(cur.lastrowid or 0)
    for operation, event_status in (("create", "IN PROGRESS"), ("set", status)):
        conn.execute(
            "INSERT INTO procedure_step_events (step_id, operation, status, received, "
            "received_at, routed_at) VALUES (?, ?, ?, '{}', ?, ?)",
            (step_id, operation, event_status, updated_at, OLD if events_routed else None))
    if listed:
        conn.execute("INSERT INTO procedure_step_instances (step_id, sop_instance_uid) "
                     "VALUES (?, ?)", (step_id, uid + ".1"))
    return step_id


def _outbox(conn: Any, table: str, source_id: int, state: str) -> None:
    conn.execute(
        "INSERT INTO outbox (destination, kind, source_table, source_id, route, payload, "
        "state, next_attempt_at, created_at, updated_at) "
        "VALUES ('ris', 'hl7', ?, ?, 'r', '{}', ?, 0, 0, 0)", (table, source_id, state))


async def test_journal_retention_keeps_what_is_still_needed(store: SqliteStore,
                                                            spool: Spool) -> None:
    with raw_connection(store) as conn:
        hl7 = {name: _hl7(conn, name, **kw) for name, kw in {
            "delivered": {}, "no-routes": {}, "rejected": {"ack": "AE", "routed": False},
            "unrouted": {"routed": False}, "pending": {}, "dead": {},
            "recent": {"received_at": RECENT}}.items()}
        _outbox(conn, "hl7_messages", hl7["delivered"], "done")
        _outbox(conn, "hl7_messages", hl7["pending"], "pending")
        _outbox(conn, "hl7_messages", hl7["dead"], "dead")
        steps = {name: _step(conn, f"1.2.{n}", status, **kw) for n, (name, status, kw) in
                 enumerate([("completed", "COMPLETED", {"complete": True, "listed": True}),
                            ("nothing-listed", "COMPLETED", {}),
                            ("discontinued", "DISCONTINUED", {}),
                            ("awaiting", "COMPLETED", {"listed": True}),
                            ("in-progress", "IN PROGRESS", {}),
                            ("events-unrouted", "DISCONTINUED", {"events_routed": False}),
                            ("event-dead", "DISCONTINUED", {}),
                            ("recent", "COMPLETED", {"updated_at": RECENT})])}
        event = conn.execute("SELECT id FROM procedure_step_events WHERE step_id = ?",
                             (steps["event-dead"],)).fetchone()[0]
        _outbox(conn, "procedure_step_events", event, "dead")

    retention = Retention(store, spool, retention_days=0, journal_retention_days=30)
    purged = await retention.purge_journal(NOW)
    assert (purged.hl7_messages, purged.procedure_steps) == (3, 3)

    with raw_connection(store) as conn:
        left_hl7 = {r[0] for r in conn.execute("SELECT control_id FROM hl7_messages")}
        left_steps = {int(r[0]) for r in conn.execute("SELECT id FROM procedure_steps")}
        orphans = conn.execute(
            "SELECT (SELECT COUNT(*) FROM procedure_step_events WHERE step_id NOT IN "
            "(SELECT id FROM procedure_steps)) + (SELECT COUNT(*) FROM "
            "procedure_step_instances WHERE step_id NOT IN (SELECT id FROM procedure_steps))"
        ).fetchone()[0]
    assert left_hl7 == {"unrouted", "pending", "dead", "recent"}
    assert left_steps == {steps[n] for n in ("awaiting", "in-progress", "events-unrouted",
                                             "event-dead", "recent")}
    assert orphans == 0  # a step's events and instance list go with it
    again = await retention.purge_journal(NOW)
    assert (again.hl7_messages, again.procedure_steps) == (0, 0)


async def test_journal_retention_zero_keeps_everything(store: SqliteStore,
                                                       spool: Spool) -> None:
    with raw_connection(store) as conn:
        _hl7(conn, "old")
        _step(conn, "1.2.3", "DISCONTINUED")
    purged = await Retention(store, spool, retention_days=30).purge_journal(NOW)
    assert (purged.hl7_messages, purged.procedure_steps) == (0, 0)
    assert await store.count_hl7_messages() == 1
