"""The intake journal's writer for DICOM instances (D1), a group commit over the store.

Association threads hand it one instance each, straight to the store's writer thread (no event
loop on a C-STORE's critical path); every instance waiting at that moment is committed in one
transaction. Only then is each caller resolved. An instance whose spool file is fsync'd beside
its commit (``InstanceCommit.file_durable=False``) gets a row marked "not durable" and an entry
in :class:`FileSyncWatch` before its caller hears of it; intake settles the entry when its fsync
ends, and the "durable" marks ride on the next commit. :meth:`JournalWriter.recover` checks, at
start, the files of rows a crash left unmarked, and :meth:`JournalWriter.adopt` takes over,
on a shared database, the rows another node or worker left unmarked when it died. It must not
answer a peer itself and must not swallow a failed commit: every waiting caller gets the
exception.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import threading
import time
from collections.abc import Callable, Sequence

from engine.bridge import LoopBridge
from engine.durable.spool import Spool
from engine.durable.store import (
    InstanceCommit,
    InstanceCommitResult,
    InstanceOutcome,
    Store,
)
from engine.errors import PartlyCommitted, ShuttingDown, StorageFailure
from engine.observability.logging import get_logger
from engine.observability.metrics import JOURNAL_COMMIT_BATCH, JOURNAL_COMMIT_SECONDS

log = get_logger("engine.durable.journal")

_Item = tuple[InstanceCommit, tuple[str, ...]]
#: How long "durable" marks wait for a commit to ride on before they get their own: about the
#: time a modality takes to send its next instance on the same association.
_MARK_FLUSH_SECONDS = 0.005


class FileSyncWatch:
    """Rows whose file fsync is still running, for duplicates that match them.

    A copy of an instance that matches a row committed a moment ago must not be answered
    "success" before that row's file is on disk: if the file then failed, the row is withdrawn
    and the copy would have been acknowledged for nothing. Thread-safe: the loop adds entries,
    association threads settle and wait on them. An intake whose commit timed out settles by
    object id (:meth:`abandon`), before or after its row turns up. Failed rows are remembered
    for good (they are rare, and a late waiter must still learn of the failure)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running: dict[int, str] = {}  # journal id -> object id
        self._by_object: dict[str, int] = {}
        self._abandoned: dict[str, bool] = {}  # object id -> its file is durable
        self._failed: set[int] = set()

    def expect(self, journal_id: int, object_id: str) -> bool | None:
        """Watch a new row. If its intake already gave up waiting, that intake's fsync result
        instead (the row is then settled, and the caller must act on it)."""
        with self._cond:
            late = self._abandoned.pop(object_id, None)
            if late is None:
                self._running[journal_id] = object_id
                self._by_object[object_id] = journal_id
            elif not late:
                self._failed.add(journal_id)
            return late

    def settle(self, journal_id: int, ok: bool) -> None:
        with self._cond:
            object_id = self._running.pop(journal_id, None)
            if object_id is not None:
                self._by_object.pop(object_id, None)
            if not ok:
                self._failed.add(journal_id)
            self._cond.notify_all()

    def abandon(self, object_id: str, ok: bool) -> int | None:
        """Settle the row of ``object_id`` whose commit outlived its caller's wait: its
        journal id if the row is already committed, else ``None`` (settled on arrival)."""
        with self._cond:
            journal_id = self._by_object.get(object_id)
            if journal_id is None:
                self._abandoned[object_id] = ok
                return None
        self.settle(journal_id, ok)
        return journal_id

    def wait(self, journal_id: int, timeout: float) -> bool | None:
        """``True`` once the row's file is durable (or was never watched), ``False`` if it
        failed, ``None`` if still running after ``timeout`` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: journal_id not in self._running, timeout):
                return None
            return journal_id not in self._failed


class JournalWriter:
    """Batches instance commits from many callers into few transactions.

    The batching runs without the event loop: :meth:`submit` is called on association threads,
    the batch goes to the store's writer thread (:meth:`Store.submit_instance_commits`), and
    the writer's completion resolves each caller and starts the next batch. While one batch
    commits, new instances gather for the next, as in ``GroupCommit``. Follow-ups that belong
    to the loop (announcements, withdrawals) are posted to it through the bridge."""

    def __init__(self, store: Store, spool: Spool, bridge: LoopBridge | None = None,
                 *, max_batch: int = 256) -> None:
        self._store = store
        self._spool = spool
        self._bridge = bridge
        self._max_batch = max_batch
        self.watch = FileSyncWatch()
        self._lock = threading.Condition()
        self._pending: list[tuple[_Item, concurrent.futures.Future[InstanceCommitResult]]] = []
        self._busy = False  # a batch is with the writer
        self._stopping = False
        # Touched by the loop (mark_durable, flush) and by whichever thread starts a batch.
        self._marks: list[tuple[int, Callable[[], object] | None]] = []
        self._marked = asyncio.Event()
        self._mark_task: asyncio.Task[None] | None = None
        self._withdrawals: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._mark_task = asyncio.create_task(self._flush_marks_loop(), name="journal-marks")

    async def stop(self) -> None:
        """Commit what is already queued, then stop; later submissions are refused."""
        with self._lock:
            self._stopping = True
        await asyncio.to_thread(self._wait_idle)
        if self._mark_task is not None:
            self._mark_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._mark_task
            self._mark_task = None
        if self._withdrawals:
            await asyncio.gather(*self._withdrawals, return_exceptions=True)
        await self.flush_marks()

    def _wait_idle(self) -> None:
        with self._lock:
            self._lock.wait_for(lambda: not self._busy and not self._pending)

    def submit(self, item: InstanceCommit, dirs_to_sync: tuple[str, ...] = ()
               ) -> concurrent.futures.Future[InstanceCommitResult]:
        """Queue one instance from any thread; the future resolves once its batch committed.
        ``dirs_to_sync`` (spool directories) are fsync'd once per batch before its rows."""
        future: concurrent.futures.Future[InstanceCommitResult] = concurrent.futures.Future()
        with self._lock:
            if self._stopping:
                raise ShuttingDown("the journal writer is closing")
            self._pending.append(((item, dirs_to_sync), future))
            if self._busy:
                return future  # the running batch's completion starts the next one
            self._busy = True
        self._next_batch()
        return future

    async def commit(self, item: InstanceCommit, dirs_to_sync: tuple[str, ...] = ()
                     ) -> InstanceCommitResult:
        """:meth:`submit` for callers on the loop."""
        return await asyncio.wrap_future(self.submit(item, dirs_to_sync))

    async def withdraw(self, journal_id: int, spool_path: str) -> bool:
        """Delete a row whose file failed (see ``Store.withdraw_instance``), then its file."""
        if not await self._store.withdraw_instance(journal_id):
            return False
        await asyncio.to_thread(self._spool.remove, spool_path)
        return True

    def mark_durable(self, journal_id: int, then: Callable[[], object] | None = None) -> None:
        """On the loop: this row's file is fsync'd; record it with the next commit, then call
        ``then`` on the loop (so whoever hears of the row finds it marked: the router routes
        only marked rows)."""
        with self._lock:
            self._marks.append((journal_id, then))
        self._marked.set()

    def _take_marks(self) -> list[tuple[int, Callable[[], object] | None]]:
        with self._lock:
            marks, self._marks = self._marks, []
        return marks

    def _restore_marks(self, marks: list[tuple[int, Callable[[], object] | None]]) -> None:
        with self._lock:
            self._marks[:0] = marks

    def _next_batch(self) -> None:
        """Hand every waiting instance (up to the bound) to the writer, or go idle."""
        with self._lock:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            if not batch:
                self._busy = False
                self._lock.notify_all()
                return
        marks = self._take_marks()
        dirs = {d for (_, ds), _ in batch for d in ds}
        started = time.perf_counter()
        try:
            done = self._store.submit_instance_commits(
                [item for (item, _), _ in batch],
                sync=(lambda: self._spool.sync_dirs(dirs)) if dirs else None,
                durable_ids=[journal_id for journal_id, _ in marks])
        except BaseException as exc:
            self._finish(batch, marks, started, None, exc)
            return
        done.add_done_callback(lambda f: self._finish(batch, marks, started, f, None))

    def _finish(self, batch: list[tuple[_Item, concurrent.futures.Future[InstanceCommitResult]]],
                marks: list[tuple[int, Callable[[], object] | None]], started: float,
                done: concurrent.futures.Future[list[InstanceCommitResult]] | None,
                error: BaseException | None) -> None:
        """On the writer's thread (or the submitter's): resolve the batch, start the next."""
        try:
            if error is None and done is not None:
                error = done.exception()
            results: list[InstanceCommitResult | None]
            if isinstance(error, PartlyCommitted):
                # The marks and the new rows are committed: those callers are answered as
                # committed (their files must stay), the others get the failure.
                results = list(error.results)
            elif error is not None:
                self._restore_marks(marks)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                return
            else:
                assert done is not None
                results = list(done.result())
            JOURNAL_COMMIT_SECONDS.observe(time.perf_counter() - started)
            JOURNAL_COMMIT_BATCH.observe(len(batch))
            if marks:
                self._post(_run_thens, marks)
            # Before any caller hears of its result, so a duplicate matching one of these rows
            # always finds it watched. A caller whose wait timed out is still committed: its
            # peer got a failure and will resend, which intake recognises as a duplicate.
            for ((item, _), future), result in zip(batch, results, strict=True):
                if result is None:
                    if not future.done():
                        future.set_exception(error or StorageFailure("not committed"))
                    continue
                if not item.file_durable and result.journal_id is not None and (
                        result.outcome in (InstanceOutcome.STORED, InstanceOutcome.NEW_VERSION)):
                    late = self.watch.expect(result.journal_id, item.record.object_id)
                    if late is not None:
                        self._post(self.settle_abandoned, result.journal_id, late,
                                   item.record.spool_path)
                if not future.done():
                    future.set_result(result)
        finally:
            self._next_batch()

    def _post(self, fn: Callable[..., object], *args: object) -> None:
        if self._bridge is None or not self._bridge.post(fn, *args):
            # No loop (any more): a mark that is not written is checked at the next start.
            log.warning("durable.journal.follow_up_dropped", what=getattr(fn, "__name__", "?"))

    def settle_abandoned(self, journal_id: int, ok: bool, spool_path: str) -> None:
        """On the loop: a row whose intake stopped waiting for it (see ``FileSyncWatch.
        abandon``). A durable one is marked (the router's sweep takes it from there); one whose
        file failed is withdrawn, so a resend of the instance is not matched against it."""
        if ok:
            self.mark_durable(journal_id)
            return
        task = asyncio.create_task(self._withdraw_failed(journal_id, spool_path),
                                   name=f"journal-withdraw-{journal_id}")
        self._withdrawals.add(task)
        task.add_done_callback(self._withdrawals.discard)

    async def _withdraw_failed(self, journal_id: int, spool_path: str) -> None:
        try:
            await self.withdraw(journal_id, spool_path)
        except Exception:  # the row stays "not durable": the next start checks its file
            log.exception("durable.journal.withdraw_failed", journal_id=journal_id)

    async def _flush_marks_loop(self) -> None:
        while True:
            await self._marked.wait()
            await asyncio.sleep(_MARK_FLUSH_SECONDS)
            self._marked.clear()
            if not await self.flush_marks():
                await asyncio.sleep(1.0)  # the store is failing: do not spin on it

    async def flush_marks(self) -> bool:
        """Commit the pending "durable" marks now (and run their follow-ups); ``False`` if the
        store failed (they stay pending)."""
        marks = self._take_marks()
        if not marks:
            return True
        try:
            await self._store.mark_instances_durable([journal_id for journal_id, _ in marks])
        except Exception as exc:  # kept for the next try; a crash leaves them to recover()
            self._restore_marks(marks)
            self._marked.set()
            log.warning("durable.journal.mark_failed", rows=len(marks), detail=str(exc))
            return False
        _run_thens(marks)
        return True

    # --- start-up ----------------------------------------------------------------------------
    async def recover(self) -> tuple[int, int]:
        """Settle the rows a crash left "not durable": a row whose file is whole (size and
        SHA-256 as recorded) has the file fsync'd again and is marked; any other is withdrawn
        (it was never acknowledged) and its file removed. Returns (kept, withdrawn)."""
        kept, withdrawn = [], 0
        for row in await self._store.instances_not_durable():
            rec = row.record
            if not self._spool.owns(rec.object_id):
                continue  # another node's, maybe being written right now: its own to judge
            whole = await asyncio.to_thread(self._whole_and_synced, rec.spool_path,
                                            rec.size_bytes, rec.sha256)
            if whole:
                kept.append(row.id)
                continue
            if await self.withdraw(row.id, rec.spool_path):
                withdrawn += 1
                log.warning("durable.journal.withdrawn", journal_id=row.id,
                            sop_instance_uid=rec.sop_instance_uid, calling_ae=rec.calling_ae,
                            reason="spool file missing or incomplete after a crash; the "
                                   "instance was never acknowledged")
            else:  # routed or marked in the meantime: nothing to withdraw, nothing lost
                log.info("durable.journal.not_withdrawn", journal_id=row.id,
                         sop_instance_uid=rec.sop_instance_uid)
        if kept:
            await self._store.mark_instances_durable(kept)
        return len(kept), withdrawn

    async def adopt(self, older_than: float) -> int:
        """Mark the rows left "not durable" for more than ``older_than`` seconds, whichever
        node or worker wrote them, once their file is found whole and is fsync'd again here.

        A node (or worker) killed between its answer to the sender and its "durable" mark
        leaves such a row: acknowledged, but not routed (the router takes marked rows only)
        until that node's own start-up settles it, which may be never. A whole file fsync'd
        again is durable whoever does it, so taking it over is safe even when its writer is
        alive and only slow. A file that is not whole is left to its own node's start-up: it
        may still be being written, and a row whose file never became whole was never
        acknowledged. Returns the number marked."""
        horizon = time.time() - older_than
        kept = []
        for row in await self._store.instances_not_durable():
            rec = row.record
            if _epoch(rec.received_at) > horizon:
                continue  # its writer is most likely still on it
            if await asyncio.to_thread(self._whole_and_synced, rec.spool_path,
                                       rec.size_bytes, rec.sha256):
                kept.append(row.id)
        if kept:
            await self._store.mark_instances_durable(kept)
            log.warning("durable.journal.adopted", rows=len(kept), journal_ids=kept[:20],
                        reason=f"not marked durable within {older_than:g} s by the node that "
                               "received them (stopped or killed); files whole, synced here")
        return len(kept)

    async def adopt_forever(self, older_than: float, every: float) -> None:
        """:meth:`adopt` every ``every`` seconds (a task on a shared database)."""
        while True:
            await asyncio.sleep(every)
            try:
                await self.adopt(older_than)
            except Exception:  # the database is away: the next round tries again
                log.exception("durable.journal.adopt_failed")

    def _whole_and_synced(self, rel_path: str, size: int, sha256: str) -> bool:
        if not self._spool.is_whole(rel_path, size, sha256):
            return False
        try:
            self._spool.resync(rel_path)
        except StorageFailure:
            return False
        return True


def _epoch(iso: str) -> float:
    """Seconds since the epoch of a journal timestamp (ISO 8601; UTC when it names no zone)."""
    try:
        moment = dt.datetime.fromisoformat(iso)
    except ValueError:
        return 0.0  # unreadable: treat as old, the file check still decides
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def _run_thens(marks: Sequence[tuple[int, Callable[[], object] | None]]) -> None:
    for journal_id, then in marks:
        if then is None:
            continue
        try:
            then()
        except Exception:  # one subscriber's failure must not cost the others their call
            log.exception("durable.journal.after_mark_failed", journal_id=journal_id)
