"""Group commit: many concurrent callers, few durable transactions.

A :class:`GroupCommit` queues items from any number of callers on the loop; one task takes every
item waiting at that moment (up to a bound) and hands the batch to a commit function that makes
it durable in one transaction. While that commit runs, new items gather for the next one, so the
cost of an fsync'd commit is shared by everyone who arrived meanwhile. Each caller gets its own
result, or the exception if the batch failed. It owns no storage itself and must not reorder
results: the commit function returns one result per item, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from prometheus_client import Histogram

from engine.errors import ShuttingDown

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Batches items into ``commit_batch`` calls; results go back to each waiting caller."""

    def __init__(self, name: str, commit_batch: Callable[[Sequence[T]], Awaitable[list[R]]],
                 *, max_batch: int = 256, batch_sizes: Histogram | None = None,
                 commit_seconds: Histogram | None = None) -> None:
        self._name = name
        self._commit_batch = commit_batch
        self._max_batch = max_batch
        self._batch_sizes = batch_sizes
        self._commit_seconds = commit_seconds
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"group-commit-{self._name}")

    async def stop(self) -> None:
        """Commit what is already queued, then stop; later submissions are refused."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait until the batch holding it is durable."""
        if self._stopping:
            raise ShuttingDown(f"the {self._name} writer is closing")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
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
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            # A caller whose wait was cancelled (its bridge call timed out) is still committed:
            # its peer got a failure and will resend, which intake recognises as a duplicate.
            started = time.perf_counter()
            try:
                results = await self._commit_batch([item for item, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            if self._commit_seconds is not None:
                self._commit_seconds.observe(time.perf_counter() - started)
            if self._batch_sizes is not None:
                self._batch_sizes.observe(len(batch))
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
