"""Fixtures for the unit tests, and the loop-blocking guard every ``async def`` test runs under.

Loop-blocking guard
-------------------
radflow's loop serves every association, MLLP connection and HTTP probe at once, so one callback
that holds it (a synchronous fsync, a SQLite call, a pydicom parse on the loop thread) stalls all
of them. :func:`loop_blocking_guard` is autouse: for each coroutine test it starts a heartbeat
task on the test's event loop (it notes the time every ``BLOCKING_LIMIT / 10`` seconds) and a
watchdog thread that checks the heartbeat. When the loop is running but the heartbeat is older
than ``BLOCKING_LIMIT`` (0.5 s), something is holding the loop: the watchdog records how long and
the loop thread's stack at that moment (the culprit), and the test fails at teardown with that
report. Waiting (``await``-ing a thread, an executor, a sleep) is not blocking and is never
flagged; time while the loop is not running at all (pytest's own work between fixture steps) is
not counted. The guard covers the test and every async fixture set up after it.

A heartbeat is used rather than asyncio's debug mode (``slow_callback_duration``) because debug
mode captures a traceback for every handle, future and task, which makes a step that starts a few
hundred tasks ten times slower: under machine load the guard would then flag the guard's own cost.

Synchronous tests are not affected. A test that blocks on purpose (to prove the guard works) asks
for the ``loop_blocking_guard`` fixture and takes the records with :meth:`LoopBlockingGuard.drain`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# The unit tests share small helper modules (``dicom_samples``) kept next to them.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

#: the event loop may make no progress for at most this long (seconds)
BLOCKING_LIMIT = 0.5


class LoopBlockingGuard:
    """A heartbeat on the loop and a watchdog thread that reports when the heartbeat stalls."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: float = BLOCKING_LIMIT) -> None:
        self.loop = loop
        self.limit = limit
        self.records: list[str] = []
        self._period = limit / 10
        self._beat = time.monotonic()
        self._reported_beat: float | None = None
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)
        self._heartbeat: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._beat = time.monotonic()
        self._heartbeat = self.loop.create_task(self._beat_forever(), name="loop-heartbeat")
        self._watchdog.start()

    async def stop(self) -> None:
        self._stop.set()
        self._watchdog.join()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat

    def drain(self) -> list[str]:
        """Return the reports collected so far and forget them."""
        records, self.records = self.records, []
        return records

    async def _beat_forever(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(self._period)

    def _watch(self) -> None:
        while not self._stop.wait(self._period):
            if not self.loop.is_running():  # pytest between fixture steps: nothing to judge
                self._beat = time.monotonic()
                continue
            beat = self._beat
            stalled = time.monotonic() - beat
            if stalled <= self.limit or beat == self._reported_beat:
                continue
            self._reported_beat = beat
            frame = sys._current_frames().get(self._loop_thread)
            stack = "".join(traceback.format_stack(frame)[-8:]) if frame else "(unknown)\n"
            self.records.append(
                f"the event loop made no progress for {stalled:.2f} s; its thread was in:\n" + stack
            )


@pytest.fixture
async def _asyncio_loop_guard() -> AsyncIterator[LoopBlockingGuard]:
    guard = LoopBlockingGuard(asyncio.get_running_loop())
    guard.start()
    try:
        yield guard
    finally:
        await guard.stop()
    if guard.records:
        pytest.fail(
            f"the event loop was blocked for more than {BLOCKING_LIMIT} s:\n"
            + "\n".join(guard.records),
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
