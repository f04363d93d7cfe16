"""One writer thread with two lanes: journal commits first, everything else after.

The SQLite store does every write on one thread (one connection, no lock contention). A
C-STORE's journal commit is on the peer's critical path (its Success waits for it), while
routing, delivery and operator writes are not; in a plain FIFO executor the commit waits behind
whichever of those were queued first (a milliseconds-long wait per instance while forwarding).
:class:`LaneWriter` is an ``Executor`` (so ``run_in_executor`` keeps working) whose
:meth:`~LaneWriter.submit_urgent` jumps the normal queue. A job that is already running is never
interrupted. Written by hand because ``concurrent.futures`` has no priority executor. It knows
nothing of SQL.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_Job = tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class LaneWriter(concurrent.futures.Executor):
    """A single worker thread serving an urgent lane before a normal one, each in FIFO order."""

    def __init__(self, name: str) -> None:
        self._cond = threading.Condition()
        self._urgent: collections.deque[_Job] = collections.deque()
        self._normal: collections.deque[_Job] = collections.deque()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
               ) -> concurrent.futures.Future[T]:
        return self._put(self._normal, fn, args, kwargs)

    def submit_urgent(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
                      ) -> concurrent.futures.Future[T]:
        """Run ``fn`` before every job of the normal lane that has not started yet."""
        return self._put(self._urgent, fn, args, kwargs)

    def _put(self, lane: collections.deque[_Job], fn: Callable[..., T], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("cannot schedule new work after shutdown")
            lane.append((future, fn, args, kwargs))
            self._cond.notify()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._cond:
            self._closed = True
            if cancel_futures:
                for lane in (self._urgent, self._normal):
                    while lane:
                        lane.popleft()[0].cancel()
            self._cond.notify()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._urgent or self._normal or self._closed):
                    self._cond.wait()
                if self._urgent:
                    job = self._urgent.popleft()
                elif self._normal:
                    job = self._normal.popleft()
                else:
                    return  # closed and drained
            future, fn, args, kwargs = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
