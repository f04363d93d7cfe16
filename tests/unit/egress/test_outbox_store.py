"""The outbox's delivery-side SQL (engine.durable.sqlite.outbox) through SqliteStore."""

from __future__ import annotations

import json

import pytest

from engine.durable.sqlite import SqliteStore
from engine.durable.store import NewOutboxRow, OutboxResult, OutboxState, OutboxVerdict

T0 = 1_800_000_000.0


def rows(n: int, dest: str = "pacs", study: str | None = None) -> list[NewOutboxRow]:
    return [NewOutboxRow(dest, "dicom", json.dumps({"n": i}), study_instance_uid=study)
            for i in range(n)]


async def test_lease_takes_a_page_oldest_first_and_counts_the_attempt(store: SqliteStore
                                                                     ) -> None:
    ids = await store.enqueue_outbox(rows(10), T0)
    got = await store.lease_outbox("pacs", "w1", T0, 60, 4)
    assert [r.id for r in got] == ids[:4]
    assert all(r.attempts == 1 for r in got)
    more = await store.lease_outbox("pacs", "w2", T0, 60, 100)
    assert [r.id for r in more] == ids[4:]
    assert await store.lease_outbox("pacs", "w3", T0, 60, 100) == []


async def test_rows_wait_for_their_next_attempt_and_other_destinations(store: SqliteStore
                                                                      ) -> None:
    await store.enqueue_outbox(rows(2, "ai"), T0)
    assert await store.lease_outbox("pacs", "w", T0, 60, 10) == []
    (first, _second) = await store.lease_outbox("ai", "w", T0, 60, 10)
    await store.record_outbox("w", [OutboxResult(first.id, OutboxVerdict.RETRY, T0 + 30, "x")],
                              T0)
    assert await store.lease_outbox("ai", "w", T0 + 29, 60, 10) == []
    again = await store.lease_outbox("ai", "w", T0 + 30, 60, 10)
    assert [(r.id, r.attempts, r.last_error) for r in again] == [(first.id, 2, "x")]


async def test_an_expired_lease_comes_back_and_the_old_owner_cannot_record(store: SqliteStore
                                                                          ) -> None:
    (row_id,) = await store.enqueue_outbox(rows(1), T0)
    await store.lease_outbox("pacs", "crashed", T0, 60, 10)
    assert await store.lease_outbox("pacs", "other", T0 + 59, 60, 10) == []
    (back,) = await store.lease_outbox("pacs", "other", T0 + 61, 60, 10)
    assert back.id == row_id and back.attempts == 2  # the crashed attempt stays counted
    # the first owner wakes up late: its verdict no longer applies
    assert await store.record_outbox("crashed", [OutboxResult(row_id, OutboxVerdict.DONE)],
                                     T0 + 62) == 0
    assert await store.record_outbox("other", [OutboxResult(row_id, OutboxVerdict.DONE)],
                                     T0 + 62) == 1
    (done,) = await store.outbox_rows("pacs")
    assert done["state"] == "done" and done["done_at"] == T0 + 62


async def test_an_expired_lease_comes_back_in_its_old_place_in_the_queue(store: SqliteStore
                                                                          ) -> None:
    """A dead node's rows are sent before the backlog that came in while they were leased."""
    first = await store.enqueue_outbox(rows(10), T0)
    held = await store.lease_outbox("pacs", "crashed", T0, 60, 4)
    await store.enqueue_outbox(rows(20), T0 + 30)
    back = await store.lease_outbox("pacs", "other", T0 + 61, 60, 4)
    assert [r.id for r in back] == [r.id for r in held] == first[:4]
    rest = await store.lease_outbox("pacs", "other", T0 + 61, 60, 6)
    assert [r.id for r in rest] == first[4:]


async def test_leases_of_an_earlier_run_of_this_node_come_back_at_start(store: SqliteStore
                                                                       ) -> None:
    await store.enqueue_outbox(rows(3), T0)
    await store.lease_outbox("pacs", "host-a/11/1", T0, 3600, 1)
    await store.lease_outbox("pacs", "host-b/12/1", T0, 3600, 1)
    await store.lease_outbox("pacs", "host-a/13/2", T0, 3600, 1)
    assert await store.release_outbox_leases("host-a/", keep_owner="host-a/13/2") == 1
    states = {r["lease_owner"]: r["state"] for r in await store.outbox_rows("pacs")}
    assert states == {None: "pending", "host-b/12/1": "leased", "host-a/13/2": "leased"}


async def test_release_gives_the_attempt_back(store: SqliteStore) -> None:
    await store.enqueue_outbox(rows(1), T0)
    (r,) = await store.lease_outbox("pacs", "w", T0, 60, 1)
    await store.record_outbox("w", [OutboxResult(r.id, OutboxVerdict.RELEASE)], T0)
    (again,) = await store.lease_outbox("pacs", "w", T0, 60, 1)
    assert again.attempts == 1


async def test_dead_letters_list_retry_purge(store: SqliteStore) -> None:
    await store.enqueue_outbox(rows(5), T0)
    leased = await store.lease_outbox("pacs", "w", T0, 60, 5)
    await store.record_outbox("w", [OutboxResult(r.id, OutboxVerdict.DEAD, error=f"bad {r.id}")
                                    for r in leased[:3]]
                              + [OutboxResult(r.id, OutboxVerdict.DONE) for r in leased[3:]],
                              T0)
    assert await store.count_dead_letters("pacs") == 3
    assert await store.count_dead_letters(None) == 3
    dead = await store.list_dead_letters("pacs", 2, 0)
    assert [d.id for d in dead] == [r.id for r in leased[:2]]
    assert dead[0].last_error == f"bad {leased[0].id}" and dead[0].attempts == 1
    assert await store.retry_dead_letters("pacs", [leased[0].id], T0 + 5) == 1
    (back,) = await store.lease_outbox("pacs", "w", T0 + 5, 60, 10)
    assert back.id == leased[0].id and back.attempts == 1  # a fresh count
    assert await store.purge_dead_letters("pacs", None) == 2
    assert await store.count_dead_letters("pacs") == 0
    stats = {s.destination: s for s in await store.outbox_stats(["pacs", "none"])}
    assert (stats["pacs"].pending, stats["pacs"].leased, stats["pacs"].dead) == (0, 1, 0)
    assert stats["none"].oldest_created_at is None


async def test_stats_and_purge_of_delivered_rows(store: SqliteStore) -> None:
    await store.enqueue_outbox(rows(3), T0)
    await store.enqueue_outbox(rows(1), T0 + 100)
    (first,) = await store.lease_outbox("pacs", "w", T0 + 200, 60, 1)
    (stats,) = await store.outbox_stats(["pacs"])
    assert (stats.pending, stats.leased, stats.oldest_created_at) == (3, 1, T0)
    await store.record_outbox("w", [OutboxResult(first.id, OutboxVerdict.DONE)], T0 + 200)
    assert await store.purge_done_outbox(T0 + 199) == 0
    assert await store.purge_done_outbox(T0 + 201) == 1
    assert len(await store.outbox_rows("pacs", [OutboxState.DONE])) == 0


async def test_per_study_order_holds_later_rows_behind_an_unfinished_one(store: SqliteStore
                                                                        ) -> None:
    a = await store.enqueue_outbox(rows(3, study="1.1"), T0)
    b = await store.enqueue_outbox(rows(2, study="1.2"), T0)
    got = await store.lease_outbox("pacs", "w", T0, 60, 10, per_study=True)
    assert [r.id for r in got] == a + b  # whole runs, in order
    # the first row of study 1.1 fails; the rest of that study is given back
    await store.record_outbox("w", [OutboxResult(a[0], OutboxVerdict.RETRY, T0 + 50, "x")]
                              + [OutboxResult(i, OutboxVerdict.RELEASE) for i in a[1:]]
                              + [OutboxResult(i, OutboxVerdict.DONE) for i in b], T0)
    newer = await store.enqueue_outbox(rows(1, study="1.2"), T0 + 1)
    got = await store.lease_outbox("pacs", "w", T0 + 1, 60, 10, per_study=True)
    assert [r.id for r in got] == newer  # study 1.1 waits for its first row
    got = await store.lease_outbox("pacs", "w", T0 + 50, 60, 10, per_study=True)
    assert [r.id for r in got] == a


async def test_per_study_order_a_dead_row_does_not_block_its_study(store: SqliteStore) -> None:
    a = await store.enqueue_outbox(rows(2, study="1.1"), T0)
    (first,) = await store.lease_outbox("pacs", "w", T0, 60, 1, per_study=True)
    await store.record_outbox("w", [OutboxResult(first.id, OutboxVerdict.DEAD, error="no")], T0)
    got = await store.lease_outbox("pacs", "w", T0, 60, 10, per_study=True)
    assert [r.id for r in got] == a[1:]


@pytest.mark.sqlite_only
async def test_lease_cost_does_not_grow_with_the_queue(store: SqliteStore) -> None:
    """The claim walks the index and stops after the page (EXPLAIN: no full scan, no sort)."""
    from engine.durable.sqlite import outbox

    def plan(conn: object) -> list[str]:
        cur = conn.execute("EXPLAIN QUERY PLAN " + outbox.LEASE,  # type: ignore[attr-defined]
                           {"dest": "p", "owner": "o", "now": 0, "until": 1, "limit": 5})
        return [str(r[3]) for r in cur]

    steps = await store._write(plan)  # type: ignore[arg-type]
    assert any("outbox_ready" in s for s in steps), steps
    assert not any("TEMP B-TREE" in s or s.startswith("SCAN outbox") for s in steps), steps
