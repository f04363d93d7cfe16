"""Spool retention (engine.durable.retention and sqlite_retention): only instances that nothing
needs any more leave the spool and the journal, files first; everything else stays."""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
from pathlib import Path

import pytest
from journal_samples import record

from engine.durable.retention import SpoolRetention
from engine.durable.routing import GroupJoin, RoutingPlan
from engine.durable.spool import Spool
from engine.durable.sqlite import SqliteStore
from engine.durable.store import DuplicatePolicy, InstanceCommit, NewOutboxRow

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
    assert await store.fire_routing_group(fired_group, "quiet", 2.0,
                                          lambda *_: []) is not None
    with sqlite3.connect(store.path) as conn:  # the dispatcher's verdicts, in short
        conn.execute("UPDATE outbox SET state = 'done' WHERE source_id = ?",
                     (ids["delivered"],))
        conn.execute("UPDATE outbox SET state = 'dead' WHERE source_id = ?", (ids["dead"],))

    retention = SpoolRetention(store, spool, retention_days=30)
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
    assert await SpoolRetention(store, spool, retention_days=0).purge(NOW) == 0
    assert await store.count_instances() == 1
