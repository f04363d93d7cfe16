"""The intake journal's writer for DICOM instances (D1), a group commit over the store.

Association threads reach it through the bridge with one instance each; every instance waiting
at that moment is committed in one transaction. Only then is each caller resolved. An instance
whose spool file is fsync'd beside its commit (``InstanceCommit.file_durable=False``) gets a
row marked "not durable" and an entry in :class:`FileSyncWatch` before its caller hears of it;
intake settles the entry when its fsync ends, and the "durable" marks ride on the next commit.
:meth:`JournalWriter.recover` checks, at start, the files of rows a crash left unmarked. It
must not answer a peer itself and must not swallow a failed commit: every waiting caller gets
the exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from collections.abc import Callable, Sequence

from engine.durable.group_commit import GroupCommit
from engine.durable.spool import Spool
from engine.durable.store import (
    InstanceCommit,
    InstanceCommitResult,
    InstanceOutcome,
    Store,
)
from engine.errors import StorageFailure
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
    """Batches instance commits from many callers into few transactions."""

    def __init__(self, store: Store, spool: Spool) -> None:
        self._store = store
        self._spool = spool
        self.watch = FileSyncWatch()
        self._marks: list[tuple[int, Callable[[], object] | None]] = []
        self._marked = asyncio.Event()
        self._mark_task: asyncio.Task[None] | None = None
        self._withdrawals: set[asyncio.Task[None]] = set()
        self._group: GroupCommit[_Item, InstanceCommitResult] = GroupCommit(
            "journal", self._commit_batch, batch_sizes=JOURNAL_COMMIT_BATCH,
            commit_seconds=JOURNAL_COMMIT_SECONDS)

    async def start(self) -> None:
        await self._group.start()
        self._mark_task = asyncio.create_task(self._flush_marks_loop(), name="journal-marks")

    async def stop(self) -> None:
        """Commit what is already queued, then stop."""
        await self._group.stop()
        if self._mark_task is not None:
            self._mark_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._mark_task
            self._mark_task = None
        if self._withdrawals:
            await asyncio.gather(*self._withdrawals, return_exceptions=True)
        await self.flush_marks()

    async def commit(self, item: InstanceCommit, dirs_to_sync: tuple[str, ...] = ()
                     ) -> InstanceCommitResult:
        """Queue one instance and wait until its batch is committed. ``dirs_to_sync`` (spool
        directories) are fsync'd once per batch before its rows commit."""
        return await self._group.submit((item, dirs_to_sync))

    async def withdraw(self, journal_id: int) -> bool:
        """Delete a row whose file failed its fsync (see ``Store.withdraw_instance``)."""
        return await self._store.withdraw_instance(journal_id)

    def mark_durable(self, journal_id: int, then: Callable[[], object] | None = None) -> None:
        """On the loop: this row's file is fsync'd; record it with the next commit, then call
        ``then`` (so whoever hears of the row finds it marked: the router routes only marked
        rows)."""
        self._marks.append((journal_id, then))
        self._marked.set()

    async def _commit_batch(self, batch: Sequence[_Item]) -> list[InstanceCommitResult]:
        dirs = {d for _, ds in batch for d in ds}
        marks, self._marks = self._marks, []
        try:
            results = await self._store.commit_instances(
                [item for item, _ in batch],
                sync=(lambda: self._spool.sync_dirs(dirs)) if dirs else None,
                durable_ids=[journal_id for journal_id, _ in marks])
        except BaseException:
            self._marks[:0] = marks
            raise
        _run_thens(marks)
        # Before any caller hears of its result, so a duplicate matching one of these rows
        # always finds it watched.
        for (item, _), result in zip(batch, results, strict=True):
            if not item.file_durable and result.journal_id is not None and result.outcome in (
                    InstanceOutcome.STORED, InstanceOutcome.NEW_VERSION):
                late = self.watch.expect(result.journal_id, item.record.object_id)
                if late is not None:
                    self.settle_abandoned(result.journal_id, late, item.record.spool_path)
        return results

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
            if await self._store.withdraw_instance(journal_id):
                await asyncio.to_thread(self._spool.remove, spool_path)
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
        if not self._marks:
            return True
        marks, self._marks = self._marks, []
        try:
            await self._store.mark_instances_durable([journal_id for journal_id, _ in marks])
        except Exception as exc:  # kept for the next try; a crash leaves them to recover()
            self._marks[:0] = marks
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
            whole = await asyncio.to_thread(self._verify, rec.spool_path, rec.size_bytes,
                                            rec.sha256)
            if whole:
                kept.append(row.id)
                continue
            if await self._store.withdraw_instance(row.id):
                withdrawn += 1
                await asyncio.to_thread(self._spool.remove, rec.spool_path)
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

    def _verify(self, rel_path: str, size: int, sha256: str) -> bool:
        path = self._spool.path_of(rel_path)
        try:
            digest = hashlib.sha256()
            got = 0
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
                    got += len(block)
            if got != size or digest.hexdigest() != sha256:
                return False
            self._spool.resync(rel_path)
            return True
        except (OSError, StorageFailure):
            return False


def _run_thens(marks: Sequence[tuple[int, Callable[[], object] | None]]) -> None:
    for journal_id, then in marks:
        if then is None:
            continue
        try:
            then()
        except Exception:  # one subscriber's failure must not cost the others their call
            log.exception("durable.journal.after_mark_failed", journal_id=journal_id)
