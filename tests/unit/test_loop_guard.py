"""The loop-blocking guard of ``tests/unit/conftest.py`` catches blocking and only blocking."""

from __future__ import annotations

import asyncio
import time
from typing import Any

#: the guard's limit (``BLOCKING_LIMIT`` in conftest.py)
BLOCKING_LIMIT = 0.5


async def test_a_blocking_step_is_reported(loop_blocking_guard: Any) -> None:
    assert loop_blocking_guard is not None
    assert asyncio.get_running_loop().get_debug()
    time.sleep(BLOCKING_LIMIT + 0.05)  # holds the loop: this task step runs too long
    await asyncio.sleep(0)  # end the step, so asyncio measures and reports it
    records = loop_blocking_guard.drain()  # taken, so this test itself passes
    assert len(records) == 1
    assert "took" in records[0] and "test_a_blocking_step_is_reported" in records[0]


async def test_waiting_for_a_thread_is_not_blocking(
    loop_blocking_guard: Any,
) -> None:
    assert loop_blocking_guard is not None
    await asyncio.to_thread(time.sleep, BLOCKING_LIMIT + 0.05)
    await asyncio.sleep(0)
    assert loop_blocking_guard.records == []


def test_synchronous_tests_are_not_guarded(loop_blocking_guard: Any) -> None:
    assert loop_blocking_guard is None
