"""The ``on_archive`` / ``by_route`` Storage Commitment watch: waiting requests in, reports
queued.

Every few seconds :class:`ArchiveCommitments` takes the requests still waiting (stored, so a
restart loses none, and shared: on PostgreSQL any node's watch decides any node's request) and
asks the store to decide each in one transaction: committed once every archive the request's
policy names for an instance (the site's ``archive_destinations``, or those of the routes that
matched it) delivered it (its outbox rows ``done``: the C-STORE answered Success, the STOW-RS
response listed it as stored), failed with Processing Failure once the deadline passed while
something was still unconfirmed, never a silent success. A queued report wakes the
``commitment`` queue. Archives that answer Storage Commitment themselves are asked through
``ask``; the watch itself never talks to peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from pydicom.uid import generate_uid

from engine.durable.commitment import CommitmentPlan, CommitmentRequest, SopRef
from engine.durable.store import Store
from engine.observability.logging import get_logger

log = get_logger("engine.pipeline")

_PAGE = 200
#: an ask claimed by a process that then could not ask is claimable again after this long
_CLAIM_SECONDS = 60.0


#: asks an archive (by destination name) for Storage Commitment: (name, Transaction UID, refs)
AskCommitment = Callable[[str, str, tuple[SopRef, ...]], Awaitable[None]]


class ArchiveCommitments:
    def __init__(self, store: Store, plan: CommitmentPlan, interval: float,
                 ask: AskCommitment | None = None, uid_prefix: str = "2.25.") -> None:
        self._store = store
        self._plan = plan
        self._ask = ask
        self._uid_prefix = uid_prefix
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
            report = await self._store.resolve_commitment(request_id, request, self._plan,
                                                          time.time())
            if report is None:
                await self._ask_archives(request_id, request)
                continue
            queued += 1
            log.info("commitment.archive_decided", calling_ae=request.calling_ae,
                     transaction_uid=request.transaction_uid, committed=len(report.success),
                     failed=len(report.failed))
        if queued and self.wake is not None:
            self.wake("commitment")
        return queued

    async def _ask_archives(self, request_id: int, request: CommitmentRequest) -> None:
        """Ask each committing archive that delivered every instance it must confirm and was
        not asked yet (or whose ask failed: it is asked again at the next check)."""
        if self._ask is None or not self._plan.committing:
            return
        held = await self._store.commitment_holdings([uid for _, uid in request.refs])
        if any(self._plan.archives_for(request.policy, h) is None for h in held.values()):
            return  # by_route: ask once routing said where every instance goes
        for destination in sorted(self._plan.committing):
            if (request.asks.get(destination) or {}).get("sent"):
                continue
            # The instances this archive must confirm (by_route: those whose routes named it).
            refs = tuple(ref for ref in request.refs if ref[1] in held and destination in
                         (self._plan.archives_for(request.policy, held[ref[1]]) or ()))
            uids = [uid for _, uid in refs]
            if not uids or await self._store.commitment_delivered(uids, destination) \
                    != set(uids):
                continue  # still on its way (or never coming: the deadline decides)
            # One UID per request and archive, derived so a repeat names the same request.
            transaction_uid = generate_uid(self._uid_prefix, entropy_srcs=[
                request.calling_ae, request.transaction_uid, destination])
            # A claim: with several workers or nodes watching one database, one of them asks.
            if not await self._store.record_commitment_ask(
                    request_id, destination, transaction_uid, sent=False, now=time.time(),
                    claim_seconds=_CLAIM_SECONDS):
                continue
            try:
                await self._ask(destination, transaction_uid, refs)
            except Exception as exc:
                log.warning("commitment.archive_ask_failed", destination=destination,
                            calling_ae=request.calling_ae,
                            transaction_uid=request.transaction_uid, detail=str(exc))
                # The claim is given back: any process asks again at its next check.
                await self._store.record_commitment_ask(request_id, destination,
                                                        transaction_uid, sent=False)
                continue
            await self._store.record_commitment_ask(request_id, destination, transaction_uid,
                                                    sent=True)
            log.info("commitment.archive_asked", destination=destination,
                     calling_ae=request.calling_ae, transaction_uid=request.transaction_uid,
                     archive_transaction_uid=transaction_uid, instances=len(uids))
