"""Fixtures for the unit tests, and the loop-blocking guard every ``async def`` test runs under.

Loop-blocking guard
-------------------
radflow's loop serves every association, MLLP connection and HTTP probe at once, so one callback
that holds it (a synchronous fsync, a SQLite call, a pydicom parse on the loop thread) stalls all
of them. :func:`loop_blocking_guard` is autouse: for each coroutine test it puts the test's event
loop in debug mode with ``slow_callback_duration = BLOCKING_LIMIT`` (0.5 s), the mechanism
aiohttp's own test-suite relies on. asyncio then logs ``Executing <Handle ...> took N seconds``
for every single callback or task step that kept the loop busy longer than that; the guard
collects those records from the ``asyncio`` logger and fails the test at teardown, quoting the
culprit. Waiting (``await``-ing a thread, an executor or a sleep) is not blocking and is never
flagged. Debug mode also makes asyncio raise on non-thread-safe calls into the loop from other
threads, the class of bug ``engine.bridge`` exists to prevent.

Synchronous tests are not affected. A test that blocks on purpose (to prove the guard works) asks
for the ``loop_blocking_guard`` fixture and takes the records with :meth:`LoopBlockingGuard.drain`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# The unit tests share small helper modules (``dicom_samples``) kept next to them.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

#: a single callback may hold the event loop at most this long (seconds)
BLOCKING_LIMIT = 0.5


class LoopBlockingGuard(logging.Handler):
    """Collects asyncio's debug-mode reports of callbacks slower than the limit."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.WARNING)
        self.loop = loop
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing ") and " took " in message:
            self.records.append(message)

    def drain(self) -> list[str]:
        """Return the reports collected so far and forget them."""
        records, self.records = self.records, []
        return records


@pytest.fixture
async def _asyncio_loop_guard() -> AsyncIterator[LoopBlockingGuard]:
    loop = asyncio.get_running_loop()
    saved_debug, saved_slow = loop.get_debug(), loop.slow_callback_duration
    loop.set_debug(True)
    loop.slow_callback_duration = BLOCKING_LIMIT
    guard = LoopBlockingGuard(loop)
    logger = logging.getLogger("asyncio")
    saved_level = logger.level
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    logger.addHandler(guard)
    try:
        yield guard
    finally:
        logger.removeHandler(guard)
        logger.setLevel(saved_level)
        loop.slow_callback_duration = saved_slow
        loop.set_debug(saved_debug)
    if guard.records:
        pytest.fail(
            f"the event loop was blocked for more than {BLOCKING_LIMIT} s:\n  "
            + "\n  ".join(guard.records),
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def loop_blocking_guard(request: pytest.FixtureRequest) -> LoopBlockingGuard | None:
    """Fail any coroutine test that blocks its event loop for more than ``BLOCKING_LIMIT``."""
    function = getattr(request.node, "obj", None)
    if not inspect.iscoroutinefunction(function):
        return None
    guard: LoopBlockingGuard = request.getfixturevalue("_asyncio_loop_guard")
    return guard
