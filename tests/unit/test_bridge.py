"""``LoopBridge``: the one hand-over from pynetdicom's threads to the event loop, and its guards.

The loop runs in the test; the "association thread" is a worker thread (``asyncio.to_thread``),
which is exactly how pynetdicom calls into radflow.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest

from engine.bridge import BridgeMisuse, LoopBridge
from engine.errors import BridgeTimeout, ShuttingDown


@pytest.fixture
async def bridge() -> AsyncIterator[LoopBridge]:
    b = LoopBridge()
    b.attach(asyncio.get_running_loop())
    yield b
    b.close()


def closed(coro: Coroutine[Any, Any, Any]) -> bool:
    return inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


async def test_a_call_from_another_thread_returns_the_result_computed_on_the_loop(
    bridge: LoopBridge,
) -> None:
    loop_thread = threading.get_ident()
    seen: dict[str, Any] = {}

    async def work(x: int) -> int:
        seen["thread"] = threading.get_ident()
        seen["loop"] = asyncio.get_running_loop()
        await asyncio.sleep(0.01)
        return x * 2

    def association_thread() -> int:
        seen["caller"] = threading.get_ident()
        return bridge.call(work(21), timeout=5)

    assert await asyncio.to_thread(association_thread) == 42
    assert seen["thread"] == loop_thread != seen["caller"]
    assert seen["loop"] is asyncio.get_running_loop()
    assert bridge.inflight() == 0


async def test_an_exception_in_the_coroutine_reaches_the_caller(bridge: LoopBridge) -> None:
    class Boom(Exception):
        pass

    async def work() -> None:
        raise Boom("from the loop")

    with pytest.raises(Boom, match="from the loop"):
        await asyncio.to_thread(bridge.call, work(), 5)
    assert bridge.inflight() == 0


async def test_many_threads_at_once(bridge: LoopBridge) -> None:
    async def work(i: int) -> int:
        await asyncio.sleep(0.001 * (i % 5))
        return i

    results = await asyncio.gather(*(asyncio.to_thread(bridge.call, work(i), 5) for i in range(50)))
    assert results == list(range(50))
    assert bridge.inflight() == 0


async def test_a_call_from_the_loop_thread_is_refused_instead_of_deadlocking(
    bridge: LoopBridge,
) -> None:
    async def work() -> int:
        return 1

    coro = work()
    started = time.monotonic()
    with pytest.raises(BridgeMisuse, match="loop thread"):
        bridge.call(coro, timeout=5)
    assert time.monotonic() - started < 0.1
    assert closed(coro)  # no "coroutine was never awaited" left behind
    assert bridge.inflight() == 0


def test_a_call_before_attach_is_refused() -> None:
    async def work() -> int:
        return 1

    coro = work()
    with pytest.raises(BridgeMisuse, match="not attached"):
        LoopBridge().call(coro, timeout=1)
    assert closed(coro)


def test_a_call_after_the_loop_closed_is_refused() -> None:
    loop = asyncio.new_event_loop()
    bridge = LoopBridge()
    bridge.attach(loop)
    loop.close()

    async def work() -> int:
        return 1

    coro = work()
    with pytest.raises(BridgeMisuse):
        bridge.call(coro, timeout=1)
    assert closed(coro)


async def test_attach_is_allowed_once(bridge: LoopBridge) -> None:
    with pytest.raises(BridgeMisuse, match="already attached"):
        bridge.attach(asyncio.get_running_loop())


async def test_after_close_calls_are_refused_and_the_work_never_runs(bridge: LoopBridge) -> None:
    ran = False

    async def work() -> None:
        nonlocal ran
        ran = True

    bridge.close()
    assert bridge.closing
    coro = work()
    with pytest.raises(ShuttingDown):
        await asyncio.to_thread(bridge.call, coro, 5)
    await asyncio.sleep(0.01)
    assert not ran
    assert closed(coro)


async def test_close_lets_a_call_in_flight_finish(bridge: LoopBridge) -> None:
    release = asyncio.Event()

    async def work() -> str:
        await release.wait()
        return "done"

    pending = asyncio.ensure_future(asyncio.to_thread(bridge.call, work(), 5))
    while bridge.inflight() == 0:
        await asyncio.sleep(0.005)
    bridge.close()
    release.set()
    assert await pending == "done"
    assert bridge.inflight() == 0


async def test_a_slow_coroutine_times_out_and_is_cancelled_on_the_loop(bridge: LoopBridge) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()
    finished = False

    async def slow() -> None:
        nonlocal finished
        started.set()
        try:
            await asyncio.sleep(30)
            finished = True
        except asyncio.CancelledError:
            cancelled.set()
            raise

    t0 = time.monotonic()
    with pytest.raises(BridgeTimeout):
        await asyncio.to_thread(bridge.call, slow(), 0.2)
    elapsed = time.monotonic() - t0
    assert 0.2 <= elapsed < 2.0
    assert started.is_set()
    await asyncio.wait_for(cancelled.wait(), timeout=2)
    assert not finished
    assert bridge.inflight() == 0


async def test_work_cancelled_on_the_loop_is_reported_as_shutting_down(bridge: LoopBridge) -> None:
    async def work() -> None:
        raise asyncio.CancelledError()

    with pytest.raises(ShuttingDown):
        await asyncio.to_thread(bridge.call, work(), 5)


async def test_bridge_timeout_and_shutting_down_are_transient_errors() -> None:
    # Handlers answer them with Out of Resources (0xA700): the SCU keeps the instance.
    from engine.errors import TransientError

    assert issubclass(BridgeTimeout, TransientError)
    assert issubclass(ShuttingDown, TransientError)
