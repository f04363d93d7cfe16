"""What only the PostgreSQL backend has: its settings, waiting for an unreachable server,
migrations taken once under the advisory lock, the session checks, lease fencing between
nodes, ``radflow db status|migrate|copy``. (Every store operation's behaviour is tested on both
backends by the shared store tests.)"""

from __future__ import annotations

import asyncio
import dataclasses
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from journal_samples import record

from engine.cli import main
from engine.durable.migrations import SchemaTooNew
from engine.durable.postgresql import MIGRATIONS, PostgresStore
from engine.durable.postgresql._common import SessionRefused
from engine.durable.sqlite import SqliteStore
from engine.durable.store import (
    DuplicatePolicy,
    Hl7Apply,
    Hl7Disposition,
    Hl7JournalEntry,
    InstanceCommit,
    InstanceOutcome,
    NewOutboxRow,
    OutboxResult,
    OutboxVerdict,
    WorklistTxn,
)
from engine.errors import PartlyCommitted, StorageFailure
from engine.settings import SettingsError, load_settings
from engine.worklist.model import WorklistItem
from tests.helpers import pg
from tests.helpers.proc import free_port


@pytest.fixture
def schema() -> Iterator[str]:
    if (why := pg.unavailable()) is not None:
        pytest.skip(why)
    name = pg.new_schema_name()
    yield name
    pg.drop_schema(name)


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "radflow.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


# --- settings ------------------------------------------------------------------------------
def test_a_password_in_the_dsn_is_refused_with_the_way_to_give_it(tmp_path: Path) -> None:
    path = write_config(tmp_path, """
        storage:
          backend: postgresql
          postgresql:
            dsn: postgresql://radflow:secret@db1/radflow
        """)
    with pytest.raises(SettingsError) as info:
        load_settings(path, {})
    assert "password_env or password_file" in str(info.value.problems[0])
    with pytest.raises(SettingsError) as info:
        load_settings(path, {"RADFLOW_STORAGE__POSTGRESQL__DSN": "host=db1",
                             "RADFLOW_STORAGE__POSTGRESQL__SCHEMA": "Bad-Name"})
    assert "storage.postgresql.schema" in str(info.value.problems[0])


def test_postgresql_settings_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = write_config(tmp_path, """
        storage:
          backend: postgresql
          postgresql: {host: db1, database: rf, user: rf, pool_size: 4, sslmode: require}
        """)
    settings = load_settings(path, {"RADFLOW_STORAGE__POSTGRESQL__SCHEMA": "site_a"})
    cfg = settings.storage.postgresql
    assert (cfg.host, cfg.database, cfg.db_schema, cfg.pool_size, cfg.sslmode) == (
        "db1", "rf", "site_a", 4, "require")


# --- reaching the server -------------------------------------------------------------------
async def test_an_unreachable_server_is_named_with_the_reason() -> None:
    port = free_port()  # nothing listens there
    store = PostgresStore(pg.settings("x", dsn=f"host=127.0.0.1 port={port} dbname=radflow"),
                          connect_attempts=2)
    with pytest.raises(StorageFailure, match=f"127.0.0.1:{port}/radflow is unreachable: "):
        await store.open()
    assert not await store.ping()
    await store.close()


async def test_asynchronous_commit_is_refused_unless_the_site_opts_in(schema: str) -> None:
    with psycopg.connect(pg.DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    dsn = pg.DSN + " options='-c synchronous_commit=off'"
    store = PostgresStore(pg.settings(schema, dsn=dsn), connect_attempts=1)
    with pytest.raises(SessionRefused, match="synchronous_commit = off"):
        await store.open()
    await store.close()
    opted = PostgresStore(pg.settings(schema, dsn=dsn, allow_async_commit=True),
                          connect_attempts=1)
    await opted.open()
    assert await opted.ping()
    await opted.close()


# --- migrations ----------------------------------------------------------------------------
async def test_nodes_starting_together_migrate_once(schema: str) -> None:
    stores = [PostgresStore(pg.settings(schema), connect_attempts=1) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert {await s.schema_version() for s in stores} == {len(MIGRATIONS)}
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    with psycopg.connect(pg.DSN, options=f"-c search_path={schema}") as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations "
                                               "ORDER BY version")]
    assert versions == list(range(1, len(MIGRATIONS) + 1))


async def test_a_schema_newer_than_the_code_is_refused(schema: str) -> None:
    first = PostgresStore(pg.settings(schema), connect_attempts=1)
    await first.open()
    await first.close()
    with psycopg.connect(pg.DSN, options=f"-c search_path={schema}") as conn:
        conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)",
                     (len(MIGRATIONS) + 1,))
    newer = PostgresStore(pg.settings(schema), connect_attempts=1)
    with pytest.raises(SchemaTooNew, match="newer than this radflow"):
        await newer.open()
    await newer.close()


# --- several nodes on one outbox -----------------------------------------------------------
async def test_two_nodes_never_lease_one_row_and_a_late_verdict_is_fenced(schema: str) -> None:
    a = PostgresStore(pg.settings(schema), connect_attempts=1)
    b = PostgresStore(pg.settings(schema), connect_attempts=1)
    await a.open()
    await b.open()
    try:
        rows = [NewOutboxRow("pacs", "dicom", "{}", source_id=n) for n in range(50)]
        await a.enqueue_outbox(rows, 100.0)
        got_a, got_b = await asyncio.gather(
            *(s.lease_outbox("pacs", name, 100.0, 60, 30) for s, name in ((a, "a"), (b, "b"))))
        ids_a, ids_b = {r.id for r in got_a}, {r.id for r in got_b}
        assert not ids_a & ids_b and len(ids_a | ids_b) == 50
        # a's lease expires; b takes the row again (attempt 2); a's late verdict is ignored.
        row = got_a[0]
        again = await b.lease_outbox("pacs", "b", 200.0, 60, 100)
        assert row.id in {r.id for r in again}
        late = OutboxResult(row.id, OutboxVerdict.DONE, attempt=row.attempts)
        assert await a.record_outbox("a", [late], 201.0) == 0
        [current] = [r for r in again if r.id == row.id]
        assert current.attempts == row.attempts + 1
        done = OutboxResult(row.id, OutboxVerdict.DONE, attempt=current.attempts)
        assert await b.record_outbox("b", [done], 201.0) == 1
    finally:
        await a.close()
        await b.close()


async def test_new_rows_wake_a_listening_node(schema: str) -> None:
    a = PostgresStore(pg.settings(schema), connect_attempts=1)
    b = PostgresStore(pg.settings(schema), connect_attempts=1)
    await a.open()
    await b.open()
    woken: asyncio.Queue[str | None] = asyncio.Queue()
    try:
        b.watch_outbox(woken.put_nowait)
        assert await asyncio.wait_for(woken.get(), 30) is None  # listening: look once
        await a.enqueue_outbox([NewOutboxRow("ris", "hl7", "{}")], 1.0)
        assert await asyncio.wait_for(woken.get(), 30) == "ris"
    finally:
        await a.close()
        await b.close()


async def test_the_node_clock_is_compared_with_the_servers(schema: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    store = PostgresStore(pg.settings(schema), connect_attempts=1)
    await store.open()
    try:
        offset = await store.clock_offset()
        assert offset is not None and abs(offset) < 5  # one machine, one clock
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() - 3600)  # this node an hour slow
        offset = await store.clock_offset()
        assert offset is not None and 3595 < offset < 3605
    finally:
        await store.close()
    assert await store.clock_offset() is None  # closed: nothing to compare
    sqlite = SqliteStore(tmp_path / "radflow.db")
    await sqlite.open()
    try:
        assert await sqlite.clock_offset() is None  # same machine
    finally:
        await sqlite.close()


async def test_one_message_sent_to_two_nodes_at_once_is_journalled_and_applied_once(
        schema: str) -> None:
    """Node a journals the message and is still applying it when the copy reaches node b:
    b waits at its own journal insert until a commits, then answers with a's disposition and
    leaves no worklist trace of its own."""
    a = PostgresStore(pg.settings(schema), connect_attempts=1)
    b = PostgresStore(pg.settings(schema), connect_attempts=1)
    await a.open()
    await b.open()
    applying, release_a = threading.Event(), threading.Event()

    def apply_on(node: str) -> Hl7Apply:
        def apply(txn: WorklistTxn, index: int) -> Hl7Disposition:
            if node == "a":
                applying.set()
                assert release_a.wait(30)
            item_id = txn.insert_item(WorklistItem(patient_id=f"P-{node}"))
            return Hl7Disposition("AA", "[]", node, (item_id,), applied=True)
        return apply

    def b_waits_for_a() -> bool:
        with psycopg.connect(pg.DSN, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE "
                               "application_name = %s AND wait_event_type = 'Lock'",
                               (f"radflow:{schema}",)).fetchone()
            return bool(row and row[0])

    try:
        on_a = asyncio.create_task(a.commit_hl7_batch([_hl7(1)], apply_on("a")))
        assert await asyncio.to_thread(applying.wait, 30)
        on_b = asyncio.create_task(b.commit_hl7_batch([_hl7(1)], apply_on("b")))
        for _ in range(300):
            if await asyncio.to_thread(b_waits_for_a):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("node b never waited for node a's journal row")
        release_a.set()
        [first], [second] = await on_a, await on_b
        assert not first.duplicate and second.duplicate
        assert second.journal_id == first.journal_id
        assert second.disposition.text == "a"
        assert second.disposition.worklist_item_ids == first.disposition.worklist_item_ids
        assert await a.count_hl7_messages() == 1
        assert [s.item.patient_id for s in await a.find_worklist([], [], 10)] == ["P-a"]
    finally:
        release_a.set()
        await a.close()
        await b.close()


async def test_one_instance_committed_by_two_nodes_at_once_is_kept_once(schema: str) -> None:
    a = PostgresStore(pg.settings(schema), connect_attempts=1)
    b = PostgresStore(pg.settings(schema), connect_attempts=1)
    await a.open()
    await b.open()
    try:
        # Each node spools its own copy under its own object id, as real nodes do.
        got_a, got_b = await asyncio.gather(*(
            s.commit_instances([
                InstanceCommit(record(n, object_id=f"{node}-obj{n:06d}"),
                               DuplicatePolicy.VERSION) for n in range(1, 41)])
            for node, s in (("a", a), ("b", b))))
        for one, two in zip(got_a, got_b, strict=True):
            assert sorted((one.outcome, two.outcome)) == ["identical", "stored"]
            assert one.journal_id == two.journal_id
        assert await a.count_instances() == 40
    finally:
        await a.close()
        await b.close()


async def test_new_instances_stay_committed_when_judging_a_known_one_fails(schema: str) -> None:
    # The new instances of a batch commit in its first transaction, known UIDs are judged in a
    # second: when that one fails, the new ones must still be answered as committed (their rows
    # exist), and nothing of the judged one is kept.
    store = PostgresStore(pg.settings(schema), connect_attempts=1)
    await store.open()
    try:
        [first] = await store.commit_instances(
            [InstanceCommit(record(1), DuplicatePolicy.VERSION)])
        # New bytes for instance 1 (a new version) under an object id already taken: the
        # second transaction's insert fails on the object id constraint.
        again = record(1, sha="f" * 64, object_id="obj000001")
        with pytest.raises(PartlyCommitted) as failed:
            await store.commit_instances([InstanceCommit(record(2), DuplicatePolicy.VERSION),
                                          InstanceCommit(again, DuplicatePolicy.VERSION)])
        new, judged = failed.value.results
        assert judged is None
        assert new is not None and new.outcome is InstanceOutcome.STORED
        kept = {(r.record.sop_instance_uid, r.version, r.superseded)
                for r in await store.list_instances(10, 0)}
        assert kept == {(record(1).sop_instance_uid, 1, False),
                        (record(2).sop_instance_uid, 1, False)}
        assert first.journal_id != new.journal_id
    finally:
        await store.close()


async def test_a_duty_is_led_by_one_node_and_passes_on_when_it_goes(schema: str) -> None:
    a = PostgresStore(pg.settings(schema), connect_attempts=1)
    b = PostgresStore(pg.settings(schema), connect_attempts=1)
    await a.open()
    await b.open()
    try:
        assert await a.hold_lead("qr-index")
        assert not await b.hold_lead("qr-index")
        assert await b.hold_lead("another duty")
        assert await a.hold_lead("qr-index")  # still a's
        await a.close()  # its connection ends: the server frees the lead
        # ... once its backend has gone, a moment after the client closed; the duty loop
        # asks again every few seconds, so the test asks for up to five.
        for _ in range(50):
            if await b.hold_lead("qr-index"):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the lead did not pass on within 5 s")
        assert not await a.hold_lead("qr-index")  # closed: leads nothing
    finally:
        await a.close()
        await b.close()


# --- radflow db ... ------------------------------------------------------------------------
def pg_config(tmp_path: Path, schema: str) -> Path:
    return write_config(tmp_path, f"""
        storage:
          backend: postgresql
          spool_dir: {tmp_path / 'spool'}
          postgresql: {{dsn: "{pg.DSN}", schema: {schema}}}
        """)


def test_db_status_and_migrate(tmp_path: Path, schema: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    config = pg_config(tmp_path, schema)
    assert main(["db", "status", "--config", str(config)]) == 0
    assert f"schema version 0, this radflow knows {len(MIGRATIONS)}" in capsys.readouterr().out
    assert main(["db", "migrate", "--config", str(config)]) == 0
    assert "applied migration(s) 1, 2" in capsys.readouterr().out
    assert main(["db", "migrate", "--config", str(config)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(["db", "status", "--config", str(config)]) == 0
    assert "up to date" in capsys.readouterr().out


def _hl7(n: int) -> Hl7JournalEntry:
    return Hl7JournalEntry("RIS", "HOSP", f"C{n}", "ORM", "O01", "127.0.0.1", "mllp",
                           "2026-11-25T10:00:00+00:00", b"MSH|^~\\&|RIS")


async def _seed_sqlite(path: Path) -> None:
    store = SqliteStore(path)
    await store.open()
    try:
        recs = [dataclasses.replace(record(n)) for n in range(1, 4)]
        await store.commit_instances([InstanceCommit(r, DuplicatePolicy.VERSION)
                                      for r in recs])
        await store.commit_hl7_batch([_hl7(1), _hl7(2)], lambda txn, i: Hl7Disposition(
            "AA", "[]", None, (), applied=True))
        await store.enqueue_outbox([NewOutboxRow("pacs", "dicom", "{}", source_id=2)], 1.0)
    finally:
        await store.close()


def test_db_copy_fills_an_empty_database_once(tmp_path: Path, schema: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "old" / "radflow.db"
    asyncio.run(_seed_sqlite(source))
    config = pg_config(tmp_path, schema)
    assert main(["db", "copy", "--from", str(source), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "instances" in out and "copied 6 rows" in out

    async def check() -> None:
        store = PostgresStore(pg.settings(schema), connect_attempts=1)
        await store.open()
        try:
            assert await store.count_instances() == 3
            assert await store.count_hl7_messages() == 2
            [row] = await store.outbox_rows("pacs")
            assert row["source_id"] == 2
            # ids continue after the copied ones
            ids = await store.enqueue_outbox([NewOutboxRow("pacs", "dicom", "{}")], 2.0)
            assert ids[0] > int(str(row["id"]))
        finally:
            await store.close()

    asyncio.run(check())
    assert main(["db", "copy", "--from", str(source), "--config", str(config)]) == 1
    assert "fills an empty database only" in capsys.readouterr().err


async def test_a_study_group_fires_once_when_the_database_says_it_is_due(schema: str) -> None:
    """Node a's timer runs out while node b's instance just joined the group: a waits for
    the database's deadline; both fire it at once: one does."""
    from engine.durable.routing import GroupJoin, GroupNotDue, RoutingPlan
    from engine.durable.store import DuplicatePolicy, InstanceCommit

    a = PostgresStore(pg.settings(schema), connect_attempts=1)
    b = PostgresStore(pg.settings(schema), connect_attempts=1)
    await a.open()
    await b.open()
    try:
        recs = [record(1), record(2)]
        committed = await a.commit_instances(
            [InstanceCommit(r, DuplicatePolicy.VERSION) for r in recs])
        join = GroupJoin(route="study", level="study", key="S1", study_instance_uid="S1",
                         quiet_seconds=10, max_wait_seconds=3600, decision="{}")
        [first] = await a.commit_routing(
            [RoutingPlan("instances", committed[0].journal_id, "grouped", groups=(join,))],
            "2026-11-25T12:00:00+00:00", 100.0)
        group = first.groups[0]
        await b.commit_routing(
            [RoutingPlan("instances", committed[1].journal_id, "grouped", groups=(join,))],
            "2026-11-25T12:00:05+00:00", 105.0)
        with pytest.raises(GroupNotDue) as later:  # a's own view: due at 110
            await a.fire_routing_group(group.id, "quiet", 111.0, lambda *_: [])
        assert later.value.group.deadline == 115.0
        fired = await asyncio.gather(
            *(s.fire_routing_group(group.id, "quiet", 116.0, lambda *_: []) for s in (a, b)))
        assert sorted(f is not None for f in fired) == [False, True]
    finally:
        await a.close()
        await b.close()
