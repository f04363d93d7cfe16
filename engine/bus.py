"""The in-memory event bus: bounded, typed, fire-and-forget after the durable commit.

Observers (metrics, audit) are called for every event and can never fail intake: their exceptions
are logged and swallowed. Deciders (worklist, rules) subscribe the same way but own their outcome
through the journal: because every event is published only after its fact is committed, a full
queue drops the event (counted in a metric) and the decider catches up from the journal's
unrouted entries. The bus must never block a protocol answer and never grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prometheus_client import Counter

from engine.events import Event
from engine.observability.logging import get_logger
from engine.observability.metrics import REGISTRY

log = get_logger("engine.bus")

BUS_DROPPED = Counter(
    "radflow_bus_dropped_total",
    "Events dropped because the bus queue was full (recovered from the journal).",
    registry=REGISTRY,
)

E = TypeVar("E", bound=Event)
Handler = Callable[[Event], Awaitable[None] | None]


class EventBus:
    """A bounded queue and a dispatcher task that calls subscribers in subscription order."""

    def __init__(self, maxsize: int = 10_000) -> None:
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self._subscribers: list[tuple[type[Event], Handler]] = []
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, event_type: type[E],
                  handler: Callable[[E], Awaitable[None] | None]) -> None:
        self._subscribers.append((event_type, handler))  # type: ignore[arg-type]

    def publish(self, event: Event) -> bool:
        """Queue ``event`` without waiting; ``False`` if the bus was full and it was dropped."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            BUS_DROPPED.inc()
            log.warning("bus.event_dropped", event_type=type(event).__name__)
            return False
        return True

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-bus")

    async def stop(self, deadline: float = 5.0) -> None:
        """Deliver what is queued (up to ``deadline`` seconds), then stop the dispatcher."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline):
                await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                for event_type, handler in self._subscribers:
                    if isinstance(event, event_type):
                        try:
                            result = handler(event)
                            if result is not None:
                                await result
                        except Exception:
                            log.exception("bus.subscriber_failed", event_type=type(event).__name__)
            finally:
                self._queue.task_done()
