"""The loop-blocking guard of ``tests/unit/conftest.py`` catches blocking, and only blocking."""

from __future__ import annotations

import asyncio
import time
from typing import Any

#: the guard's limit (``BLOCKING_LIMIT`` in conftest.py)
BLOCKING_LIMIT = 0.5


async def test_blocking_the_loop_is_reported_with_the_culprit(loop_blocking_guard: Any) -> None:
    assert loop_blocking_guard is not None
    time.sleep(BLOCKING_LIMIT + 0.2)  # holds the loop: the heartbeat cannot run
    records = loop_blocking_guard.drain()  # taken, so this test itself passes
    assert len(records) == 1
    assert "no progress for" in records[0]
    # the report shows where the loop thread was stuck
    assert "test_blocking_the_loop_is_reported_with_the_culprit" in records[0]
    assert "time.sleep(BLOCKING_LIMIT + 0.2)" in records[0]


async def test_a_short_block_is_tolerated(loop_blocking_guard: Any) -> None:
    time.sleep(BLOCKING_LIMIT / 3)
    await asyncio.sleep(0.1)
    assert loop_blocking_guard.records == []


async def test_waiting_for_a_thread_is_not_blocking(loop_blocking_guard: Any) -> None:
    assert loop_blocking_guard is not None
    await asyncio.to_thread(time.sleep, BLOCKING_LIMIT + 0.2)
    await asyncio.sleep(0.1)
    assert loop_blocking_guard.records == []


def test_synchronous_tests_are_not_guarded(loop_blocking_guard: Any) -> None:
    assert loop_blocking_guard is None
