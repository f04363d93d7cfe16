"""The one bridge between pynetdicom's association threads and the asyncio event loop.

pynetdicom runs every handler on its own threads; everything durable and shared lives on the
loop. :class:`LoopBridge` is the only call site of ``run_coroutine_threadsafe`` (and of
``call_soon_threadsafe``, for fire-and-forget :meth:`LoopBridge.post`) in radflow. Its guards:
the loop is captured once at start; a call from the loop thread is refused (it would
deadlock); calls after shutdown began are refused; every call has a timeout and a timed-out
call is cancelled on the loop and raised as :class:`BridgeTimeout`, which handlers turn into a
failure status. It must not hold state of its own beyond the loop and the open/closed flag.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from engine.errors import BridgeTimeout, RadflowError, ShuttingDown

T = TypeVar("T")


class BridgeMisuse(RadflowError):
    """The bridge was called from the loop's own thread or before it was started."""

    reason = "bridge_misuse"


class LoopBridge:
    """Runs coroutines on the engine's loop on behalf of foreign threads, with a deadline."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._closing = threading.Event()
        self._inflight = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Capture the running loop; called once, from the loop thread, at engine start."""
        if self._loop is not None:
            raise BridgeMisuse("the bridge is already attached to a loop")
        self._loop = loop
        self._loop_thread = threading.get_ident()

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def close(self) -> None:
        """Refuse new calls from now on; calls in flight run to their own deadline."""
        self._closing.set()

    def inflight(self) -> int:
        with self._lock:
            return self._inflight

    def call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop and wait for its result, at most ``timeout`` seconds.

        Raises :class:`ShuttingDown` after :meth:`close`, :class:`BridgeTimeout` on timeout (the
        coroutine is cancelled), and whatever the coroutine raised otherwise.
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            coro.close()
            raise BridgeMisuse("the bridge is not attached to a running loop")
        if threading.get_ident() == self._loop_thread:
            coro.close()
            raise BridgeMisuse("bridge.call() from the event loop thread would deadlock")
        if self._closing.is_set():
            coro.close()
            raise ShuttingDown("radflow is shutting down")
        with self._lock:
            self._inflight += 1
        try:
            return result_within(asyncio.run_coroutine_threadsafe(coro, loop), timeout)
        finally:
            with self._lock:
                self._inflight -= 1
                if self._inflight == 0:
                    self._idle.notify_all()

    def post(self, fn: Callable[..., object], *args: Any) -> bool:
        """Run ``fn(*args)`` on the loop soon, without waiting: for work whose loss at shutdown
        is recovered at the next start. Allowed while closing; ``False`` once the loop is gone."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # closed between the check and the call
            return False
        return True


def result_within(future: concurrent.futures.Future[T], timeout: float) -> T:
    """``future``'s result within ``timeout`` seconds, with the engine's errors: a timeout
    cancels it and raises :class:`BridgeTimeout`, a cancellation (shutdown) is
    :class:`ShuttingDown`. For the bridge's own calls and for other cross-thread waits of an
    association (the journal's commits)."""
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError as exc:
        future.cancel()
        raise BridgeTimeout(f"no answer from the engine within {timeout:g} s") from exc
    except concurrent.futures.CancelledError as exc:
        raise ShuttingDown("the work was cancelled by shutdown") from exc
