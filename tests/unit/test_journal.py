"""The journal's group-commit writer: many callers, few transactions, every failure delivered."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import hashlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest
from journal_samples import UID, CountingStore, record

from engine.bridge import LoopBridge
from engine.durable.journal import JournalWriter
from engine.durable.spool import Spool
from engine.durable.sqlite import SqliteStore
from engine.durable.store import (
    DuplicatePolicy,
    InstanceCommit,
    InstanceCommitResult,
    InstanceOutcome,
)
from engine.errors import PartlyCommitted, ShuttingDown, StorageFailure
from engine.observability.metrics import REGISTRY


@pytest.fixture
async def spool(tmp_path: Path) -> Spool:
    s = Spool(tmp_path / "spool", min_free_bytes=0)
    await asyncio.to_thread(s.open)
    return s


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    inner = SqliteStore(tmp_path / "radflow.db")
    await inner.open()
    yield CountingStore(inner)
    await inner.close()


@pytest.fixture
async def journal(store: CountingStore, spool: Spool) -> AsyncIterator[JournalWriter]:
    bridge = LoopBridge()
    bridge.attach(asyncio.get_running_loop())
    j = JournalWriter(store, spool, bridge)  # type: ignore[arg-type]
    await j.start()
    yield j
    await j.stop()


def item(n: int, policy: DuplicatePolicy = DuplicatePolicy.VERSION) -> InstanceCommit:
    return InstanceCommit(record(n), policy)


def batch_histogram() -> tuple[float, float]:
    count = REGISTRY.get_sample_value("radflow_journal_commit_batch_size_count") or 0.0
    total = REGISTRY.get_sample_value("radflow_journal_commit_batch_size_sum") or 0.0
    return count, total


async def test_concurrent_commits_share_transactions(
    journal: JournalWriter, store: CountingStore
) -> None:
    store.delay = 0.02  # while one batch commits, the next callers queue up
    count_before, sum_before = batch_histogram()

    async def caller(n: int) -> InstanceCommitResult:
        await asyncio.sleep(0.001 * (n % 10))
        return await journal.commit(item(n), ())

    results = await asyncio.gather(*(caller(n) for n in range(1, 201)))

    assert all(r.outcome is InstanceOutcome.STORED for r in results)
    assert len({r.journal_id for r in results}) == 200
    assert sum(store.batches) == 200
    assert len(store.batches) < 20, store.batches  # far fewer transactions than commits
    count_after, sum_after = batch_histogram()
    assert count_after - count_before == len(store.batches)
    assert sum_after - sum_before == 200
    # every caller got its own row's answer
    for n, result in zip(range(1, 201), results, strict=True):
        row = await store.inner.get_instance(f"{UID}.{n}")
        assert row is not None and row.id == result.journal_id


async def test_a_burst_arriving_while_a_commit_runs_is_one_transaction(
    journal: JournalWriter,
    store: CountingStore,
) -> None:
    # The first instance goes to the writer at once (nobody waits for company); the 49 that
    # arrive while it commits share the next transaction.
    store.delay = 0.1
    results = await asyncio.gather(*(journal.commit(item(n), ()) for n in range(1, 51)))
    assert len(results) == 50
    assert store.batches == [1, 49]


async def test_directories_are_synced_inside_the_commit_before_the_rows(
    journal: JournalWriter,
    store: CountingStore,
    spool: Spool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    synced: list[set[str]] = []
    monkeypatch.setattr(spool, "sync_dirs", lambda dirs: synced.append(set(dirs)))
    store.delay = 0.1  # the first commit is running while the next two arrive
    await asyncio.gather(
        journal.commit(item(1), ()),
        journal.commit(item(2), ("objects/2025/03/07/09", "objects/2025/03/07")),
        journal.commit(item(3), ("objects/2025/03/07/09",)),
    )
    assert synced == [{"objects/2025/03/07/09", "objects/2025/03/07"}]  # once per batch
    assert store.batches == [1, 2]


async def test_a_failing_store_fails_every_waiter_and_the_writer_goes_on(
    journal: JournalWriter,
    store: CountingStore,
) -> None:
    store.fail_with = StorageFailure("disk I/O error")
    store.delay = 0.01
    results = await asyncio.gather(
        *(journal.commit(item(n), ()) for n in range(1, 21)), return_exceptions=True
    )
    assert len(results) == 20
    assert all(isinstance(r, StorageFailure) for r in results)

    store.fail_with = None
    later = await journal.commit(item(99), ())
    assert later.outcome is InstanceOutcome.STORED


async def test_an_unexpected_store_error_reaches_the_waiters_too(
    journal: JournalWriter,
    store: CountingStore,
) -> None:
    store.fail_with = RuntimeError("bug in a backend")
    with pytest.raises(RuntimeError, match="bug in a backend"):
        await journal.commit(item(1), ())


async def test_a_partly_committed_batch_answers_each_caller_by_what_was_kept(
    journal: JournalWriter,
    store: CountingStore,
) -> None:
    # A backend whose second transaction failed: the first item of each batch was committed,
    # the others not. Each caller must hear exactly that (a committed one never a failure:
    # its intake would delete the file its row points at).
    def partly(batch: Sequence[InstanceCommit], sync: Callable[[], None] | None = None,
               durable_ids: Sequence[int] = ()
               ) -> concurrent.futures.Future[list[InstanceCommitResult]]:
        out: concurrent.futures.Future[list[InstanceCommitResult]] = concurrent.futures.Future()

        def run() -> None:
            kept = store.inner.submit_instance_commits(batch[:1], sync, durable_ids).result()
            out.set_exception(PartlyCommitted("judging failed",
                                              [*kept, *([None] * (len(batch) - 1))]))

        threading.Thread(target=run, daemon=True).start()
        return out

    store.submit_instance_commits = partly  # type: ignore[method-assign]
    answers = await asyncio.gather(*(journal.commit(item(n), ()) for n in range(1, 9)),
                                   return_exceptions=True)
    kept = {s.record.sop_instance_uid for s in await store.inner.list_instances(100, 0)}
    for n, answer in zip(range(1, 9), answers, strict=True):
        uid = record(n).sop_instance_uid
        if isinstance(answer, InstanceCommitResult):
            assert answer.outcome is InstanceOutcome.STORED and uid in kept
        else:
            assert isinstance(answer, StorageFailure) and uid not in kept
    assert any(isinstance(a, InstanceCommitResult) for a in answers)


async def test_a_cancelled_waiter_does_not_disturb_its_batch(
    journal: JournalWriter,
    store: CountingStore,
) -> None:
    store.delay = 0.05
    tasks = [asyncio.create_task(journal.commit(item(n), ())) for n in range(1, 6)]
    await asyncio.sleep(0.01)
    tasks[2].cancel()  # e.g. the bridge timed out for that association
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[2], asyncio.CancelledError)
    assert [r.outcome for i, r in enumerate(done) if i != 2] == [InstanceOutcome.STORED] * 4
    # the row of the cancelled caller committed anyway: a resend is then identical
    assert await store.inner.count_instances() == 5


async def test_stop_commits_what_is_queued_then_refuses(store: CountingStore, spool: Spool) -> None:
    journal = JournalWriter(store, spool)  # type: ignore[arg-type]
    await journal.start()
    store.delay = 0.05
    first = asyncio.create_task(journal.commit(item(1), ()))
    await asyncio.sleep(0.01)  # the first batch is now committing
    queued = [asyncio.create_task(journal.commit(item(n), ())) for n in range(2, 12)]
    await asyncio.sleep(0)  # all of them are queued

    await journal.stop()

    assert all(t.done() for t in [first, *queued])
    assert [t.result().outcome for t in [first, *queued]] == [InstanceOutcome.STORED] * 11
    assert await store.inner.count_instances() == 11
    with pytest.raises(ShuttingDown):
        await journal.commit(item(50), ())


async def test_stop_without_start_and_twice_is_harmless(store: CountingStore, spool: Spool) -> None:
    journal = JournalWriter(store, spool)  # type: ignore[arg-type]
    await journal.stop()
    started = JournalWriter(store, spool)  # type: ignore[arg-type]
    await started.start()
    t0 = time.monotonic()
    await started.stop()
    await started.stop()
    assert time.monotonic() - t0 < 1


# --- rows committed beside their file's fsync, after a crash -------------------------------------
async def not_durable_row(store: CountingStore, spool: Spool, n: int, content: bytes | None,
                          *, sop_instance_uid: str | None = None, whole: bool = True) -> int:
    """A row as a crash leaves it: committed "not durable", its file whole, cut short, or
    missing (``content=None``)."""
    data = content if content is not None else b"never written"
    rec = record(n, sop_instance_uid=sop_instance_uid, size=len(data),
                 sha=hashlib.sha256(data).hexdigest())
    if content is not None:
        path = spool.path_of(rec.spool_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if whole else content[: len(content) // 2])
    [result] = await store.inner.commit_instances(
        [InstanceCommit(rec, DuplicatePolicy.VERSION, file_durable=False)])
    assert result.journal_id is not None
    return result.journal_id


async def test_recover_keeps_whole_files_and_withdraws_the_rest(
    store: CountingStore, spool: Spool,
) -> None:
    whole = await not_durable_row(store, spool, 1, b"A" * 4096)
    await not_durable_row(store, spool, 2, b"B" * 4096, whole=False)
    await not_durable_row(store, spool, 3, None)
    journal = JournalWriter(store, spool)  # type: ignore[arg-type]

    assert await journal.recover() == (1, 2)

    assert await store.inner.instances_not_durable() == []
    kept = await store.inner.get_instance(f"{UID}.1")
    assert kept is not None and kept.id == whole
    for n in (2, 3):
        assert await store.inner.get_instance(f"{UID}.{n}") is None
    assert not spool.path_of(record(2).spool_path).exists()  # the cut file went with its row
    # the kept row is routable again; the withdrawn ones are gone for good
    assert [r.id for r in await store.inner.unrouted_instances(0, 10)] == [whole]


async def test_adopt_marks_a_dead_writers_whole_files_and_leaves_the_rest(
    store: CountingStore, spool: Spool,
) -> None:
    """Rows another node answered for and died before marking: any node marks the whole ones
    once they are old enough, so they are routed; young rows and files that are not whole stay
    for their writer (or its start-up)."""
    old_whole = await not_durable_row(store, spool, 1, b"A" * 4096)
    await not_durable_row(store, spool, 2, b"B" * 4096, whole=False)
    await not_durable_row(store, spool, 3, None)
    young = dataclasses.replace(
        record(4, size=10, sha=hashlib.sha256(b"D" * 10).hexdigest()),
        received_at=dt.datetime.now(dt.UTC).isoformat())
    spool.path_of(young.spool_path).write_bytes(b"D" * 10)
    await store.inner.commit_instances(
        [InstanceCommit(young, DuplicatePolicy.VERSION, file_durable=False)])
    journal = JournalWriter(store, spool)  # type: ignore[arg-type]

    assert await journal.adopt(older_than=60) == 1

    assert [r.id for r in await store.inner.unrouted_instances(0, 10)] == [old_whole]
    left = sorted(r.record.sop_instance_uid for r in await store.inner.instances_not_durable())
    assert left == [f"{UID}.{n}" for n in (2, 3, 4)]  # not withdrawn: not this node's to judge
    assert spool.path_of(record(2).spool_path).exists()
    assert await journal.adopt(older_than=60) == 0  # nothing new


async def test_recover_makes_the_superseded_version_current_again(
    store: CountingStore, spool: Spool,
) -> None:
    [first] = await store.inner.commit_instances(
        [InstanceCommit(record(1), DuplicatePolicy.VERSION)])
    await not_durable_row(store, spool, 2, None, sop_instance_uid=f"{UID}.1")
    journal = JournalWriter(store, spool)  # type: ignore[arg-type]

    assert await journal.recover() == (0, 1)

    current = await store.inner.get_instance(f"{UID}.1")
    assert current is not None and current.id == first.journal_id and not current.superseded


async def test_rows_not_yet_durable_are_not_routed_and_routed_rows_are_never_withdrawn(
    store: CountingStore, spool: Spool,
) -> None:
    pending = await not_durable_row(store, spool, 1, b"C" * 100)
    assert await store.inner.unrouted_instances(0, 10) == []
    await store.inner.mark_instances_durable([pending])
    assert [r.id for r in await store.inner.unrouted_instances(0, 10)] == [pending]
    assert not await store.inner.withdraw_instance(pending)  # durable: stays


async def test_durable_marks_ride_on_the_next_commit_and_announce_after_it(
    journal: JournalWriter, store: CountingStore,
) -> None:
    [first] = await store.inner.commit_instances(
        [InstanceCommit(record(1), DuplicatePolicy.VERSION, file_durable=False)])
    assert first.journal_id is not None
    announced: list[int] = []
    journal.mark_durable(first.journal_id, lambda: announced.append(1))
    await journal.commit(item(2))  # carries the mark
    assert announced == [1]
    assert await store.inner.instances_not_durable() == []
