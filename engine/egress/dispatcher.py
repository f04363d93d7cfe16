"""The dispatcher (stage 6): per-destination workers that drain the outbox (D3).

Owns everything about *when* and *whether* a row is tried again: leases (a crashed worker's row
comes back after ``delivery.lease_seconds``; one of an earlier run of this node comes back at
start), attempts, exponential backoff with jitter, give-up after ``max_attempts`` or
``max_age_hours`` (dead letter), and a per-destination circuit breaker. Senders only classify
(``engine.egress.errors``); this module never looks at a protocol.

Each destination gets ``concurrency`` workers. A worker leases a small page (at most its
sender's ``max_batch`` rows) through the store, hands it to its own sender, and records every
row's verdict in one transaction. Nothing else is held in memory, so memory stays flat however
deep a queue grows; one failing row gets its own backoff (or dead letter) and never holds back
the rows behind it - except, by design, the later rows of its own study when
``per_study_order`` is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.crashpoints import crash_point
from engine.dicom.associations import OpenAssociations
from engine.durable.store import OutboxResult, OutboxRow, OutboxVerdict, QueueStats, Store
from engine.egress.delivery import Delivery, Sender, SendOutcome, failed, find_morph
from engine.egress.errors import DeliveryError, NotHereDeliveryError, TransientDeliveryError
from engine.egress.policy import CircuitBreaker, CircuitState, backoff_delay, gives_up
from engine.errors import StorageFailure
from engine.observability.logging import CORRELATION_KEYS, correlation, get_logger
from engine.observability.metrics import (
    DELIVERY_ATTEMPTS,
    DELIVERY_CIRCUIT_STATE,
    DELIVERY_OUTCOMES,
    DELIVERY_SEND_SECONDS,
    INTEGRITY_FAILURES,
    OUTBOX_OLDEST_AGE,
    OUTBOX_ROWS,
)
from engine.settings import (
    AuditFile,
    AuditRepository,
    CommitmentReports,
    DeliverySettings,
    DicomwebDestination,
    DimseDestination,
    FhirDestination,
    Hl7Destination,
    MppsDestination,
    RetryPolicy,
)

log = get_logger("engine.egress.dispatcher")

DestinationConfig = (DimseDestination | DicomwebDestination | Hl7Destination | FhirDestination
                     | MppsDestination | AuditRepository | AuditFile | CommitmentReports)
#: ``(destination, rows)`` just delivered: the audit trail's hook (an observer, never fails)
DeliveredHook = Callable[[str, Sequence[OutboxRow]], None]
SenderFactory = Callable[[str, DestinationConfig], Sender]
Clock = Callable[[], float]

#: how long a worker waits after the store failed before it tries again
_STORE_RETRY = 2.0
#: how often delivered rows past their retention are purged
_PURGE_INTERVAL = 60.0
#: error texts kept in the row (the sender's message is enough to act on)
_MAX_ERROR = 500


def default_sender_factory(spool_root: Path, store: Store | None = None,
                           morph_secret: str | None = None,
                           associations: OpenAssociations | None = None) -> SenderFactory:
    """The sender for each destination type (imported lazily: a site without FHIR
    destinations never imports the FHIR sender)."""
    morph = find_morph(morph_secret)

    async def hl7_raw(journal_id: int) -> bytes | None:
        record = await store.get_hl7_message(journal_id) if store is not None else None
        return record.entry.raw if record is not None else None

    def make(name: str, config: DestinationConfig) -> Sender:
        if isinstance(config, DimseDestination):
            from engine.egress.dimse import DimseSender

            return DimseSender(name, config, spool_root, morph)
        if isinstance(config, DicomwebDestination):
            from engine.egress.dicomweb import StowSender

            return StowSender(name, config, spool_root, morph)
        if isinstance(config, Hl7Destination):
            from engine.egress.hl7 import MllpSender

            return MllpSender(name, config, hl7_raw)
        if isinstance(config, FhirDestination):
            from engine.egress.fhir import FhirSender

            return FhirSender(name, config)
        if isinstance(config, AuditRepository):
            from engine.egress.syslog import SyslogSender

            return SyslogSender(name, config)
        if isinstance(config, CommitmentReports):
            from engine.egress.commitment import CommitmentSender

            return CommitmentSender(name, config, associations)
        if isinstance(config, AuditFile):
            from engine.egress.syslog import AuditFileSender

            return AuditFileSender(name, config)
        from engine.egress.mpps import MppsSender

        return MppsSender(name, config)

    return make


def row_keys(row: OutboxRow, *, from_payload: bool = False) -> dict[str, str]:
    """A row's correlation keys for its log lines: the study from the row itself; with
    ``from_payload`` (failures only: it parses the JSON) the accession and patient the payload
    names (an instance's ``object``, a step's ``procedure_step``)."""
    keys = correlation(study_instance_uid=row.study_instance_uid)
    if from_payload:
        try:
            payload = json.loads(row.payload)
        except ValueError:
            return keys
        for part in (payload.get("object"), payload.get("procedure_step")):
            if isinstance(part, dict):
                keys.update(correlation(**{k: part.get(k) for k in CORRELATION_KEYS}))
    return keys


def node_name() -> str:
    """The prefix of this node's lease owners: leases of an earlier run of the same node
    (a crash) are given back at start instead of after ``lease_seconds``."""
    return f"{socket.gethostname()}/"


@dataclass
class _Slot:
    """One worker's pipeline: the next page being leased, the last verdicts being written."""

    prefetch: asyncio.Task[list[OutboxRow]] | None = None
    record: asyncio.Task[None] | None = None


@dataclass
class _Queue:
    name: str
    config: DestinationConfig
    policy: RetryPolicy
    breaker: CircuitBreaker
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    #: when this process last delivered to the destination (the dispatcher's clock)
    last_delivered_at: float | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if woken (new rows, shutdown)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(seconds, 0.0)):
                await self.wakeup.wait()
        self.wakeup.clear()


class Dispatcher:
    """All destinations' workers, started after the store and stopped before it."""

    def __init__(self, store: Store, destinations: Mapping[str, DestinationConfig],
                 delivery: DeliverySettings, spool_root: Path, *,
                 sender_factory: SenderFactory | None = None, morph_secret: str | None = None,
                 clock: Clock = time.time,
                 rng: random.Random | None = None, node: str | None = None,
                 release_prefix: str | None = None) -> None:
        self.store = store
        self.delivery = delivery
        self._factory = sender_factory or default_sender_factory(spool_root, store,
                                                                 morph_secret)
        #: how senders are made: the destination check builds its own with it
        self.sender_factory: SenderFactory = self._factory
        self._clock = clock
        self._rng = rng or random.Random()
        self.node = node or node_name()
        #: whose leases are given back at start (default: this node's)
        self.release_prefix = release_prefix or self.node
        self.owner = f"{self.node}{os.getpid()}/{time.time_ns()}"
        self._queues: dict[str, _Queue] = {}
        for name, config in destinations.items():
            policy = config.retry or delivery.retry
            self._queues[name] = _Queue(name, config, policy, CircuitBreaker(
                policy.circuit_failures, policy.circuit_cooldown, policy.max_delay, self._rng))
        self._stopping = False
        self._background: list[asyncio.Task[None]] = []
        self.on_delivered: DeliveredHook | None = None

    @property
    def destinations(self) -> list[str]:
        return list(self._queues)

    def circuit(self, destination: str) -> CircuitBreaker:
        return self._queues[destination].breaker

    def last_delivered(self, destination: str) -> float | None:
        """When this process last delivered something to ``destination`` (None: not yet)."""
        return self._queues[destination].last_delivered_at

    # --- life cycle ------------------------------------------------------------------------
    async def start(self) -> None:
        released = await self.store.release_outbox_leases(self.release_prefix, self.owner)
        if released:
            log.warning("outbox.leases_recovered", rows=released, node=self.node)
        for q in self._queues.values():
            DELIVERY_CIRCUIT_STATE.labels(q.name).set(0)
            for slot in range(q.config.concurrency):
                q.tasks.append(asyncio.create_task(self._worker(q, slot),
                                                   name=f"deliver-{q.name}-{slot}"))
        self._background.append(asyncio.create_task(self._housekeeping(),
                                                    name="outbox-housekeeping"))
        log.info("egress.dispatcher.started", destinations=len(self._queues),
                 workers=sum(len(q.tasks) for q in self._queues.values()), owner=self.owner)

    async def stop(self, deadline: float = 10.0) -> None:
        """Let every worker finish the batch it is sending (up to ``deadline`` seconds), then
        cancel; a cancelled batch's rows stay leased and come back at the next start."""
        self._stopping = True
        for task in self._background:
            task.cancel()
        workers = [t for q in self._queues.values() for t in q.tasks]
        for q in self._queues.values():
            q.wakeup.set()
        if workers:
            _done, late = await asyncio.wait(workers, timeout=deadline)
            for task in late:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        for q in self._queues.values():
            q.tasks.clear()
        log.info("egress.dispatcher.stopped")

    def wake(self, destination: str | None = None) -> None:
        """New rows were routed: idle workers look now instead of at their next poll."""
        for name, q in self._queues.items():
            if destination is None or name == destination:
                q.wakeup.set()

    # --- the worker ------------------------------------------------------------------------
    async def _worker(self, q: _Queue, slot: int) -> None:
        sender = self._factory(q.name, q.config)
        state = _Slot()
        try:
            while not self._stopping:
                try:
                    await self._turn(q, sender, state)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # A bug, not a delivery failure: say so loudly, keep the destination served
                    # (rows of the failed turn stay leased and come back after lease_seconds).
                    log.exception("egress.worker_error", destination=q.name, slot=slot)
                    await q.wait(_STORE_RETRY)
        finally:
            with contextlib.suppress(Exception):
                await self._settle(q, state)
            with contextlib.suppress(Exception):
                await sender.close()

    async def _lease(self, q: _Queue, limit: int) -> list[OutboxRow]:
        return await self.store.lease_outbox(q.name, self.owner, self._clock(),
                                             self.delivery.lease_seconds, limit,
                                             q.config.per_study_order)

    async def _turn(self, q: _Queue, sender: Sender, state: _Slot) -> None:
        """One lease → send → record cycle, or one wait.

        Pipelined: while a full page is being sent, the next page is leased, and a page's
        verdicts are written while the next one is sent, so the store's single writer never
        holds the sender up. A prefetched page is given back (not counted as an attempt) when
        the destination just failed.
        """
        now = self._clock()
        permit = q.breaker.permit(now)
        DELIVERY_CIRCUIT_STATE.labels(q.name).set(int(q.breaker.state))
        if not permit.allowed:
            await self._give_back_prefetch(q, state)
            await sender.idle()
            await q.wait(permit.wait)
            return
        limit = 1 if permit.probe else sender.max_batch
        try:
            if state.prefetch is not None and not permit.probe:
                rows, state.prefetch = await state.prefetch, None
            else:
                await self._give_back_prefetch(q, state)
                rows = await self._lease(q, limit)
        except StorageFailure as exc:
            state.prefetch = None
            if permit.probe:
                q.breaker.release_probe()
            log.error("outbox.lease_failed", destination=q.name, error=str(exc))
            await q.wait(_STORE_RETRY)
            return
        if not rows:
            if permit.probe:
                q.breaker.release_probe()
            await sender.idle()
            await q.wait(max(self.delivery.poll_interval,
                             getattr(q.config, "idle_poll", 0.0)))
            return
        if not permit.probe and len(rows) >= limit:
            state.prefetch = asyncio.create_task(self._lease(q, limit))
        results, failed_batch = await self._deliver(q, sender, rows, probe=permit.probe)
        if state.record is not None:
            await state.record
        state.record = asyncio.create_task(self._write_verdicts(q, results, self._clock()))
        if failed_batch:
            await self._give_back_prefetch(q, state)

    async def _give_back_prefetch(self, q: _Queue, state: _Slot) -> None:
        task, state.prefetch = state.prefetch, None
        if task is None:
            return
        try:
            rows = await task
        except StorageFailure:
            return
        if rows:
            await self._write_verdicts(
                q, [OutboxResult(r.id, OutboxVerdict.RELEASE, attempt=r.attempts)
                    for r in rows], self._clock())

    async def _settle(self, q: _Queue, state: _Slot) -> None:
        """At the end of a worker: the last verdicts written, a prefetched page given back."""
        if state.record is not None:
            await state.record
            state.record = None
        await self._give_back_prefetch(q, state)

    async def _deliver(self, q: _Queue, sender: Sender, rows: Sequence[OutboxRow],
                       probe: bool) -> tuple[list[OutboxResult], bool]:
        """Send ``rows``; their verdicts, and whether the batch counted as a failure."""
        DELIVERY_ATTEMPTS.labels(q.name).inc(len(rows))
        outcomes: dict[int, SendOutcome] = {}
        deliveries: list[Delivery] = []
        for row in rows:
            try:
                deliveries.append(Delivery.from_row(row))
            except DeliveryError as exc:
                outcomes[row.id] = failed(exc)
        released: set[int] = set()
        blocked: set[str] = set()
        for group in self._groups(q, deliveries):
            # Per-study order: a study whose earlier row just failed transiently sends nothing
            # more now (a dead row does not hold its study back).
            todo = [d for d in group if d.study_instance_uid not in blocked]
            released.update(d.row_id for d in group if d.study_instance_uid in blocked)
            if not todo:
                continue
            for d, outcome in zip(todo, await self._send(q, sender, todo), strict=True):
                outcomes[d.row_id] = outcome
                if outcome.error is not None and outcome.error.transient and \
                        d.study_instance_uid and q.config.per_study_order:
                    blocked.add(d.study_instance_uid)
        return self._verdicts(q, rows, outcomes, released, probe)

    def _groups(self, q: _Queue, deliveries: list[Delivery]) -> list[list[Delivery]]:
        if not q.config.per_study_order:
            return [deliveries] if deliveries else []
        # Layers: each holds at most one row per study (rows are in id order), so after a
        # layer the dispatcher can hold back a study whose row failed.
        layers: list[list[Delivery]] = []
        depth: dict[str | None, int] = {}
        for d in deliveries:
            level = depth.get(d.study_instance_uid, 0) if d.study_instance_uid else 0
            if d.study_instance_uid:
                depth[d.study_instance_uid] = level + 1
            while len(layers) <= level:
                layers.append([])
            layers[level].append(d)
        return layers

    async def _send(self, q: _Queue, sender: Sender, batch: list[Delivery]
                    ) -> list[SendOutcome]:
        started = time.perf_counter()
        try:
            crash_point("sent")
            results = await sender.send(batch)
            crash_point("peer_ack")
            if len(results) != len(batch):
                raise RuntimeError(f"sender returned {len(results)} outcomes for "
                                   f"{len(batch)} rows")
        except asyncio.CancelledError:
            raise
        except DeliveryError as exc:
            results = [failed(exc, time.perf_counter() - started) for _ in batch]
        except Exception as exc:
            log.exception("egress.sender_failed", destination=q.name)
            err = TransientDeliveryError(f"internal sender error: {exc}", reason="internal")
            results = [failed(err, time.perf_counter() - started) for _ in batch]
        return results

    def _verdicts(self, q: _Queue, rows: Sequence[OutboxRow],
                  outcomes: Mapping[int, SendOutcome], released: set[int], probe: bool
                  ) -> tuple[list[OutboxResult], bool]:
        """Each row's verdict (done, retry at, dead, released), the breaker updated."""
        now = self._clock()
        results: list[OutboxResult] = []
        delivered = transient = peer_answers = 0
        kind = q.config.type
        for row in rows:
            if row.id in released:
                results.append(OutboxResult(row.id, OutboxVerdict.RELEASE,
                                            attempt=row.attempts))
                DELIVERY_OUTCOMES.labels(q.name, "released").inc()
                continue
            outcome = outcomes[row.id]
            DELIVERY_SEND_SECONDS.labels(q.name).observe(outcome.seconds)
            err = outcome.error
            if isinstance(err, NotHereDeliveryError):
                # Not tried: the attempt is given back, the row offered again a moment later,
                # at a jittered moment: this process polls in step with its own release, so at
                # a fixed delay it would nearly always claim the row again before the process
                # it is meant for (a Storage Commitment report then missed its association).
                retry_at = now + err.retry_in * self._rng.uniform(0.5, 1.5)
                results.append(OutboxResult(row.id, OutboxVerdict.RELEASE, retry_at,
                                            attempt=row.attempts))
                DELIVERY_OUTCOMES.labels(q.name, "released").inc()
                log.debug(f"egress.{kind}.handed_back", destination=q.name, row=row.id,
                          retry_in=err.retry_in, why=str(err))
                continue
            if err is None:
                delivered += 1
                results.append(OutboxResult(row.id, OutboxVerdict.DONE, attempt=row.attempts))
                DELIVERY_OUTCOMES.labels(q.name, "delivered").inc()
                log.debug(f"egress.{kind}.sent", destination=q.name, row=row.id,
                          attempt=row.attempts, seconds=round(outcome.seconds, 4),
                          **outcome.notes, **row_keys(row))
                continue
            text = f"{err.reason}: {err}"[:_MAX_ERROR]
            if err.reached_peer:
                peer_answers += 1
            if err.reason == "integrity_failed":
                INTEGRITY_FAILURES.labels(q.name).inc()
            if err.transient:
                transient += 1
            if not err.transient or gives_up(q.policy, row.attempts, row.created_at, now):
                why = "permanent" if not err.transient else "policy exhausted"
                results.append(OutboxResult(row.id, OutboxVerdict.DEAD, error=text,
                                            attempt=row.attempts))
                DELIVERY_OUTCOMES.labels(q.name, "dead_letter").inc()
                log.warning("outbox.dead_lettered", destination=q.name, row=row.id,
                            route=row.route, attempts=row.attempts, why=why, error=text,
                            **row_keys(row, from_payload=True))
            else:
                delay = backoff_delay(q.policy, row.attempts, self._rng)
                results.append(OutboxResult(row.id, OutboxVerdict.RETRY, now + delay, text,
                                            attempt=row.attempts))
                DELIVERY_OUTCOMES.labels(q.name, "retry").inc()
                log.info(f"egress.{kind}.failed", destination=q.name, row=row.id,
                         attempt=row.attempts, retry_in=round(delay, 2), error=text,
                         **row_keys(row, from_payload=True))
        if delivered and self.on_delivered is not None:
            done = [row for row, result in zip(rows, results, strict=True)
                    if result.verdict is OutboxVerdict.DONE]
            try:
                self.on_delivered(q.name, done)
            except Exception:  # an observer must never fail delivery
                log.exception("egress.delivered_hook_failed", destination=q.name)
        failed_batch = not delivered and transient > 0
        if not delivered and not peer_answers:
            # Only radflow's own faults (a damaged spool file...): nothing was learnt about the
            # destination, so its circuit neither opens nor closes; a probe is handed back.
            if probe:
                q.breaker.release_probe()
        elif not failed_batch:
            if delivered:
                q.last_delivered_at = now
            if q.breaker.state is not CircuitState.CLOSED:
                log.info("egress.circuit_closed", destination=q.name)
            q.breaker.record_success()
        elif q.breaker.record_failure(now):
            log.warning("egress.circuit_opened", destination=q.name,
                        failures=q.breaker.failures, probe=probe,
                        rest_seconds=round(q.breaker.open_until - now, 2))
        DELIVERY_CIRCUIT_STATE.labels(q.name).set(int(q.breaker.state))
        return results, failed_batch

    async def _write_verdicts(self, q: _Queue, results: Sequence[OutboxResult], now: float
                              ) -> None:
        while True:
            try:
                await self.store.record_outbox(self.owner, results, now)
                crash_point("dequeued")
                return
            except StorageFailure as exc:
                # The sends happened; losing the verdicts only means resending later (the
                # leases expire), but try to keep them while we can.
                log.error("outbox.record_failed", destination=q.name, error=str(exc))
                if self._stopping:
                    return
                await asyncio.sleep(_STORE_RETRY)

    # --- figures ---------------------------------------------------------------------------
    async def stats(self) -> list[QueueStats]:
        return await self.store.outbox_stats(list(self._queues))

    async def refresh_metrics(self) -> list[QueueStats]:
        stats = await self.stats()
        now = self._clock()
        for s in stats:
            OUTBOX_ROWS.labels(s.destination, "pending").set(s.pending)
            OUTBOX_ROWS.labels(s.destination, "leased").set(s.leased)
            OUTBOX_ROWS.labels(s.destination, "dead").set(s.dead)
            OUTBOX_OLDEST_AGE.labels(s.destination).set(
                max(0.0, now - s.oldest_created_at) if s.oldest_created_at else 0.0)
        return stats

    async def _housekeeping(self) -> None:
        last_purge = 0.0
        while True:
            try:
                await self.refresh_metrics()
                now = self._clock()
                if now - last_purge >= _PURGE_INTERVAL:
                    last_purge = now
                    horizon = now - self.delivery.done_retention_hours * 3600
                    purged = await self.store.purge_done_outbox(horizon)
                    if purged:
                        log.info("outbox.purged_delivered", rows=purged)
            except StorageFailure as exc:
                log.error("outbox.housekeeping_failed", error=str(exc))
            await asyncio.sleep(self.delivery.stats_interval)
