"""The ``on_archive`` Storage Commitment watch: waiting requests in, reports queued.

Every few seconds :class:`ArchiveCommitments` takes the requests still waiting (stored, so a
restart loses none) and asks the store to decide each in one transaction: committed once every
archive destination delivered each instance (its outbox rows ``done``: the C-STORE answered
Success, the STOW-RS response listed it as stored), failed with Processing Failure once the
deadline passed while something was still unconfirmed, never a silent success. A queued report
wakes the ``commitment`` queue. It never talks to peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

from engine.durable.store import Store
from engine.observability.logging import get_logger

log = get_logger("engine.pipeline")

_PAGE = 200


class ArchiveCommitments:
    def __init__(self, store: Store, archive_destinations: Sequence[str],
                 interval: float) -> None:
        self._store = store
        self._destinations = list(archive_destinations)
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        #: the dispatcher's ``wake``
        self.wake: Callable[[str | None], None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="commitment-archive")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:
                log.exception("commitment.archive_check_failed")
            await asyncio.sleep(self._interval)

    async def check_once(self) -> int:
        """Decide what can be decided now; the number of reports queued."""
        queued = 0
        for request_id, request in await self._store.waiting_commitments(_PAGE):
            report = await self._store.resolve_commitment(request_id, request,
                                                          self._destinations, time.time())
            if report is None:
                continue
            queued += 1
            log.info("commitment.archive_decided", calling_ae=request.calling_ae,
                     transaction_uid=request.transaction_uid, committed=len(report.success),
                     failed=len(report.failed))
        if queued and self.wake is not None:
            self.wake("commitment")
        return queued
