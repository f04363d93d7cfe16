"""The intake journal's group-commit writer (D1).

Association threads reach it through the bridge with one instance each; the writer gathers every
instance waiting at that moment into one batch, makes the spool's directory entries durable,
commits the batch in one transaction, and only then resolves each caller. One fsync'd commit thus
serves many concurrent associations. It must not answer a peer itself and must not swallow a
failed commit: every waiting caller gets the exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from engine.durable.spool import Spool
from engine.durable.store import InstanceCommit, InstanceCommitResult, Store
from engine.errors import ShuttingDown
from engine.observability.metrics import JOURNAL_COMMIT_BATCH, JOURNAL_COMMIT_SECONDS

_MAX_BATCH = 256


class JournalWriter:
    """Batches instance commits from many callers into few transactions."""

    def __init__(self, store: Store, spool: Spool) -> None:
        self._store = store
        self._spool = spool
        self._pending: list[tuple[InstanceCommit, tuple[str, ...],
                                  asyncio.Future[InstanceCommitResult]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="journal-writer")

    async def stop(self) -> None:
        """Commit what is already queued, then stop."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def commit(self, item: InstanceCommit, dirs_to_sync: tuple[str, ...]
                     ) -> InstanceCommitResult:
        """Queue one instance and wait until its batch is committed."""
        if self._stopping:
            raise ShuttingDown("the journal is closing")
        future: asyncio.Future[InstanceCommitResult] = asyncio.get_running_loop().create_future()
        self._pending.append((item, dirs_to_sync, future))
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch, self._pending = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
            # A caller that timed out already answered its peer with a failure; its file is
            # committed anyway, which is harmless: a resend is then recognised as identical.
            dirs = {d for _, ds, _ in batch for d in ds}
            started = time.perf_counter()
            try:
                results = await self._store.commit_instances(
                    [item for item, _, _ in batch], sync=lambda: self._spool.sync_dirs(dirs))
            except Exception as exc:
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            JOURNAL_COMMIT_SECONDS.observe(time.perf_counter() - started)
            JOURNAL_COMMIT_BATCH.observe(len(batch))
            for (_, _, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
