"""The store's journal: migrations (SQLite's own file), the duplicate SOP Instance UID policies
inside one transaction, all-or-nothing batches, and the read API (on both backends, through the
shared ``store`` fixture)."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest
from journal_samples import UID, record

from engine.durable.migrations import SchemaTooNew
from engine.durable.sqlite import MIGRATIONS, SqliteStore
from engine.durable.store import (
    DuplicatePolicy,
    InstanceCommit,
    InstanceOutcome,
    InstanceRecord,
    decide_duplicate,
)
from engine.errors import StorageFailure


async def commit(
    store: SqliteStore, *records: InstanceRecord, policy: DuplicatePolicy = DuplicatePolicy.VERSION
) -> list[tuple[InstanceOutcome, int | None, int]]:
    results = await store.commit_instances([InstanceCommit(r, policy) for r in records])
    return [(r.outcome, r.journal_id, r.version) for r in results]


# --- life cycle ----------------------------------------------------------------------------------
async def test_migrations_are_applied_once_and_reopening_is_harmless(tmp_path: Path) -> None:
    path = tmp_path / "radflow.db"
    first = SqliteStore(path)
    await first.open()
    assert await first.schema_version() == len(MIGRATIONS)
    await commit(first, record(1))
    await first.close()

    second = SqliteStore(path)
    await second.open()  # must not re-run migration 1 (CREATE TABLE would fail)
    assert await second.schema_version() == len(MIGRATIONS)
    assert await second.count_instances() == 1
    await second.close()

    with sqlite3.connect(path) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
        journal_mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert versions == list(range(1, len(MIGRATIONS) + 1))
    assert journal_mode == "wal"


async def test_a_schema_newer_than_the_code_is_refused_with_a_clear_message(
        tmp_path: Path) -> None:
    path = tmp_path / "radflow.db"
    first = SqliteStore(path)
    await first.open()
    await first.close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_migrations (version) VALUES (?)", (len(MIGRATIONS) + 5,))
    newer = SqliteStore(path)
    with pytest.raises(SchemaTooNew, match=f"version {len(MIGRATIONS) + 5}, newer than"):
        await newer.open()
    await newer.close()


async def test_a_closed_store_refuses_work_and_ping_says_so(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "radflow.db")
    assert not await s.ping()
    with pytest.raises(StorageFailure, match="not open"):
        await s.count_instances()
    with pytest.raises(StorageFailure, match="not open"):
        await commit(s, record(1))
    await s.open()
    assert await s.ping()
    await s.close()
    assert not await s.ping()


# --- duplicate policies --------------------------------------------------------------------------
async def test_a_new_uid_is_stored_as_version_1(store: SqliteStore) -> None:
    [(outcome, journal_id, version)] = await commit(store, record(1))
    assert (outcome, version) == (InstanceOutcome.STORED, 1)
    got = await store.get_instance(f"{UID}.1")
    assert got is not None
    assert (got.id, got.version, got.superseded, got.routed_at) == (journal_id, 1, False, None)
    assert got.record == record(1)


@pytest.mark.parametrize("policy", list(DuplicatePolicy))
async def test_an_identical_resend_is_identical_under_every_policy(
    store: SqliteStore,
    policy: DuplicatePolicy,
) -> None:
    [(_, first_id, _)] = await commit(store, record(1))
    resend = dataclasses.replace(record(1), object_id="obj-resend")

    assert await commit(store, resend, policy=policy) == [(InstanceOutcome.IDENTICAL, first_id, 1)]
    assert await store.count_instances() == 1


async def test_same_sha_but_different_size_is_not_identical(store: SqliteStore) -> None:
    await commit(store, record(1, size=1000))
    other = dataclasses.replace(record(1, size=1001), object_id="obj-2")
    [(outcome, _, version)] = await commit(store, other)
    assert (outcome, version) == (InstanceOutcome.NEW_VERSION, 2)


async def test_version_policy_keeps_both_and_supersedes_the_first(store: SqliteStore) -> None:
    [(_, first_id, _)] = await commit(store, record(1))
    changed = record(2, sop_instance_uid=f"{UID}.1")  # same UID, other bytes

    [(outcome, second_id, version)] = await commit(store, changed, policy=DuplicatePolicy.VERSION)

    assert (outcome, version) == (InstanceOutcome.NEW_VERSION, 2)
    assert second_id != first_id
    latest = await store.get_instance(f"{UID}.1")
    assert latest is not None
    assert (latest.id, latest.version, latest.superseded) == (second_id, 2, False)
    rows = {i.id: i for i in await store.list_instances()}
    assert rows[first_id].superseded and rows[first_id].version == 1
    assert await store.count_instances() == 2

    third = record(3, sop_instance_uid=f"{UID}.1")
    assert (await commit(store, third))[0][::2] == (InstanceOutcome.NEW_VERSION, 3)


async def test_ignore_policy_keeps_the_first(store: SqliteStore) -> None:
    [(_, first_id, _)] = await commit(store, record(1))
    changed = record(2, sop_instance_uid=f"{UID}.1")

    assert await commit(store, changed, policy=DuplicatePolicy.IGNORE) == [
        (InstanceOutcome.IGNORED, first_id, 1)
    ]
    assert await store.count_instances() == 1
    kept = await store.get_instance(f"{UID}.1")
    assert kept is not None and kept.record.sha256 == record(1).sha256 and not kept.superseded


async def test_reject_policy_refuses_and_keeps_the_first(store: SqliteStore) -> None:
    [(_, first_id, _)] = await commit(store, record(1))
    changed = record(2, sop_instance_uid=f"{UID}.1")

    assert await commit(store, changed, policy=DuplicatePolicy.REJECT) == [
        (InstanceOutcome.REJECTED, first_id, 1)
    ]
    assert await store.count_instances() == 1


async def test_duplicates_within_one_batch_see_each_other(store: SqliteStore) -> None:
    a = record(1)
    a_again = dataclasses.replace(a, object_id="obj-a-again")
    a_changed = record(2, sop_instance_uid=a.sop_instance_uid)
    results = await commit(store, a, a_again, a_changed, record(3))
    assert [(o, v) for o, _, v in results] == [
        (InstanceOutcome.STORED, 1),
        (InstanceOutcome.IDENTICAL, 1),
        (InstanceOutcome.NEW_VERSION, 2),
        (InstanceOutcome.STORED, 1),
    ]


def test_decide_duplicate_is_the_policy_table() -> None:
    new = record(1)
    assert decide_duplicate(None, None, new, DuplicatePolicy.REJECT) is InstanceOutcome.STORED
    for policy in DuplicatePolicy:
        assert (
            decide_duplicate(new.sha256, new.size_bytes, new, policy) is InstanceOutcome.IDENTICAL
        )
    other = "f" * 64
    assert (
        decide_duplicate(other, 1000, new, DuplicatePolicy.VERSION) is InstanceOutcome.NEW_VERSION
    )
    assert decide_duplicate(other, 1000, new, DuplicatePolicy.IGNORE) is InstanceOutcome.IGNORED
    assert decide_duplicate(other, 1000, new, DuplicatePolicy.REJECT) is InstanceOutcome.REJECTED


# --- transactions --------------------------------------------------------------------------------
async def test_a_batch_is_rolled_back_as_a_whole(store: SqliteStore) -> None:
    await commit(store, record(1))
    clash = record(3, object_id="obj000001")  # object_id is UNIQUE: the third row fails
    with pytest.raises(StorageFailure, match="journal commit failed"):
        await commit(store, record(2), record(4), clash)
    assert await store.count_instances() == 1
    assert await store.get_instance(f"{UID}.2") is None
    # the writer connection is usable afterwards (no transaction left open)
    assert (await commit(store, record(2)))[0][0] is InstanceOutcome.STORED


async def test_a_superseded_flag_is_rolled_back_with_its_batch(store: SqliteStore) -> None:
    await commit(store, record(1))
    new_version = record(2, sop_instance_uid=f"{UID}.1")
    with pytest.raises(StorageFailure):
        await commit(store, new_version, record(5, object_id="obj000001"))
    only = await store.get_instance(f"{UID}.1")
    assert only is not None and only.version == 1 and not only.superseded


async def test_sync_runs_before_the_transaction_and_its_failure_commits_nothing(
    store: SqliteStore,
) -> None:
    calls: list[int] = []

    def sync() -> None:
        calls.append(1)

    await store.commit_instances([InstanceCommit(record(1), DuplicatePolicy.VERSION)], sync=sync)
    assert calls == [1]

    def failing_sync() -> None:
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError):
        await store.commit_instances(
            [InstanceCommit(record(2), DuplicatePolicy.VERSION)], sync=failing_sync
        )
    assert await store.count_instances() == 1


# --- reads ---------------------------------------------------------------------------------------
async def test_list_count_and_pages_newest_first(store: SqliteStore) -> None:
    await commit(store, *(record(n) for n in range(1, 8)))
    assert await store.count_instances() == 7
    page1 = await store.list_instances(limit=3)
    page2 = await store.list_instances(limit=3, offset=3)
    page3 = await store.list_instances(limit=3, offset=6)
    uids = [i.record.sop_instance_uid for i in page1 + page2 + page3]
    assert uids == [f"{UID}.{n}" for n in range(7, 0, -1)]
    assert await store.list_instances(limit=3, offset=7) == []


async def test_get_an_unknown_instance(store: SqliteStore) -> None:
    assert await store.get_instance("1.2.3.999") is None


async def test_known_object_ids_across_more_than_one_query_chunk(store: SqliteStore) -> None:
    await commit(store, *(record(n) for n in range(1, 1201)))
    asked = [f"obj{n:06d}" for n in range(0, 1500, 7)] + ["never-seen"]
    expected = {f"obj{n:06d}" for n in range(7, 1201, 7)}
    assert await store.known_object_ids(asked) == expected
    assert await store.known_object_ids([]) == set()
