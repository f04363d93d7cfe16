"""The router: journal entries in, outbox rows out, one transaction per batch (D3).

:class:`Router` subscribes to ``InstanceStored`` and ``OrderReceived`` and queues their journal
ids (bounded; a full queue drops the id, counted, and the sweep finds the entry later: the
journal is the truth, the bus may drop). A worker takes every id waiting, reads the journal
rows, and in a worker thread reads each object's header from the spool, evaluates the current
ruleset and builds a plan: outbox rows for instance/order routes, group joins for series/study
routes, and the outcome (routed, grouped, discarded, unmatched). The store applies the batch in
ONE transaction that also marks each entry routed; an entry routed meanwhile (replay racing the
bus) is skipped inside that transaction, so no entry is ever routed twice.

Series/study routes wait in durable groups; a timer fires each group after its quiet period
(or maximum wait) and :meth:`study_complete` fires a study's groups at once (the MPPS work calls
it). Groups and unrouted entries are rebuilt from the store at start. The router never sends
and never morphs: senders apply the frozen morph steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import time
from collections.abc import Callable, Sequence
from typing import Final

from prometheus_client import Counter
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from engine.crashpoints import crash_point
from engine.durable.commitment import encode_route_archives
from engine.durable.routing import (
    GroupJoin,
    GroupNotDue,
    OpenGroup,
    ProcedureStepEventRecord,
    RoutingOutcome,
    RoutingPlan,
    SourceTable,
)
from engine.durable.spool import Spool
from engine.durable.store import Hl7JournalRecord, Store, StoredInstance
from engine.events import InstanceStored, OrderReceived, ProcedureStepEvent
from engine.hl7.message import Hl7Message, Hl7ParseError
from engine.morph import MorphKeys
from engine.observability.logging import about, correlation, get_logger
from engine.observability.metrics import (
    ROUTING_BATCH,
    ROUTING_ENTRIES,
    ROUTING_FAILURES,
    ROUTING_GROUPS_FIRED,
    ROUTING_GROUPS_OPEN,
    ROUTING_OUTBOX_ROWS,
    ROUTING_QUEUE_DROPPED,
    ROUTING_ROUTE_MATCHES,
    ROUTING_SECONDS,
)
from engine.pipeline import fhir_resources, payload
from engine.pipeline.header import read_header
from engine.pipeline.procedure_steps import plan_procedure_step
from engine.pipeline.rulesets import RulesManager
from engine.rules.ruleset import (
    Decision,
    DicomSubject,
    Hl7Subject,
    RoutingContext,
    Ruleset,
    commitment_of,
)

log = get_logger("engine.pipeline")

_BATCH_MAX: Final = 256
_REPLAY_PAGE: Final = 500
_FHIR_TAGS: Final = frozenset(int(tag_for_keyword(k) or 0)
                              for k in fhir_resources.HEADER_KEYWORDS)
_GATHER_SECONDS: Final = 0.025
_COUNTERS: dict[tuple[Counter, tuple[str, ...]], Counter] = {}


def _count(metric: Counter, *labels: str) -> None:
    # labels() costs more than the increment (several per instance), and a child never changes.
    key = (metric, labels)
    child = _COUNTERS.get(key)
    if child is None:
        child = _COUNTERS[key] = metric.labels(*labels)
    child.inc()


def _local(received_at: str) -> dt.datetime:
    """Time windows use the local time the object arrived (stable across replays)."""
    try:
        return dt.datetime.fromisoformat(received_at).astimezone()
    except ValueError:
        return dt.datetime.now().astimezone()


class Router:
    """Routes the journal through the current ruleset into the outbox."""

    def __init__(self, store: Store, spool: Spool, rules: RulesManager, *,
                 default_charset: str = "8859/1", sweep_seconds: float = 30.0,
                 queue_size: int = 50_000) -> None:
        self._store = store
        self._spool = spool
        self._rules = rules
        self._default_charset = default_charset
        self._sweep_seconds = sweep_seconds
        self._queue: asyncio.Queue[tuple[SourceTable, int]] = asyncio.Queue(queue_size)
        self._groups: dict[int, OpenGroup] = {}
        self._groups_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._routing = asyncio.Lock()  # one batch at a time: the worker, a sweep, a replay
        self._payloads: tuple[Ruleset, MorphKeys, payload.PayloadCache] | None = None
        self.running = False
        #: told the destinations that just got outbox rows (the dispatcher's ``wake``), so an
        #: idle sender starts now instead of at its next poll
        self.on_rows: Callable[[str | None], None] | None = None

    # --- life cycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        for group in await self._store.open_routing_groups():
            self._groups[group.id] = group
        ROUTING_GROUPS_OPEN.set(len(self._groups))
        self.running = True
        self._tasks = [asyncio.create_task(self._recover(), name="router-replay"),
                       asyncio.create_task(self._work(), name="router"),
                       asyncio.create_task(self._sweep(), name="router-sweep"),
                       asyncio.create_task(self._timers(), name="router-groups")]

    async def _recover(self) -> None:
        # In the background: a backlog of unrouted entries (a crash, a long outage) must not
        # hold the listeners closed; new arrivals are routed meanwhile (each entry once).
        try:
            replayed = await self.replay()
        except Exception:
            log.exception("routing.replay_failed")
            return
        if replayed or self._groups:
            log.info("routing.recovered", replayed=replayed, open_groups=len(self._groups))

    async def stop(self) -> None:
        """Stop taking work; an entry still queued is unrouted and replayed at the next start."""
        self.running = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    # --- bus subscribers (never block, never raise) ---------------------------------------------
    def on_instance_stored(self, event: InstanceStored) -> None:
        self._enqueue("instances", event.journal_id)

    def on_order_received(self, event: OrderReceived) -> None:
        self._enqueue("hl7_messages", event.journal_id)

    def on_procedure_step(self, event: ProcedureStepEvent) -> None:
        """ProcedureStepStarted / Completed / Discontinued (MPPS → routing)."""
        self._enqueue("procedure_step_events", event.journal_id)

    def _enqueue(self, table: SourceTable, journal_id: int) -> None:
        if not self.running:
            return  # routed from the journal at the next start
        try:
            self._queue.put_nowait((table, journal_id))
        except asyncio.QueueFull:
            ROUTING_QUEUE_DROPPED.inc()

    # --- the worker ----------------------------------------------------------------------------
    async def _work(self) -> None:
        while True:
            first = await self._queue.get()
            # Routing is off the acknowledgement path: waiting a moment lets one fsync'd
            # transaction carry many entries instead of one each.
            await asyncio.sleep(_GATHER_SECONDS)
            batch = [first]
            while len(batch) < _BATCH_MAX and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._route_ids(batch)
            except Exception:
                # The entries stay unrouted in the journal; the sweep takes them again.
                ROUTING_FAILURES.labels("batch").inc()
                log.exception("routing.batch_failed", entries=len(batch))

    async def _route_ids(self, batch: Sequence[tuple[SourceTable, int]]) -> None:
        instance_ids = [i for t, i in batch if t == "instances"]
        hl7_ids = {i for t, i in batch if t == "hl7_messages"}
        instances = [s for s in await self._store.instances_by_ids(instance_ids)
                     if s.routed_at is None] if instance_ids else []
        messages: list[Hl7JournalRecord] = []
        if hl7_ids:
            # Unrouted AA messages from the lowest queued id on: usually exactly the batch.
            page = await self._store.unrouted_hl7_messages(min(hl7_ids) - 1, len(hl7_ids) + 50)
            messages = [m for m in page if m.id in hl7_ids]
        step_ids = sorted({i for t, i in batch if t == "procedure_step_events"})
        steps = await self._store.unrouted_procedure_step_events(
            0, len(step_ids), ids=step_ids) if step_ids else []
        await self.route(instances, messages, steps)

    async def route(self, instances: Sequence[StoredInstance],
                    messages: Sequence[Hl7JournalRecord] = (),
                    steps: Sequence[ProcedureStepEventRecord] = ()) -> int:
        """Route these journal entries in one transaction; the number newly routed."""
        if not instances and not messages and not steps:
            return 0
        async with self._routing:
            started = time.perf_counter()
            ruleset = self._rules.current
            plans = await asyncio.to_thread(self._plan_all, ruleset, instances, messages, steps)
            if not plans:
                return 0
            now = time.time()
            crash_point("routed")
            results = await self._store.commit_routing(
                plans, dt.datetime.fromtimestamp(now, dt.UTC).isoformat(), now)
            crash_point("enqueued")
            applied = 0
            destinations: set[str] = set()
            for plan, result in zip(plans, results, strict=True):
                if not result.applied:
                    continue
                applied += 1
                _count(ROUTING_ENTRIES, plan.source_table, plan.outcome)
                for row in plan.rows:
                    _count(ROUTING_OUTBOX_ROWS, row.destination)
                    destinations.add(row.destination)
                for group in result.groups:
                    self._groups[group.id] = group
                if plan.outcome == "unmatched":
                    log.info("routing.unmatched", source=plan.source_table,
                             journal_id=plan.source_id)
            if any(r.groups for r in results):
                ROUTING_GROUPS_OPEN.set(len(self._groups))
                self._groups_changed.set()
            self._announce(destinations)
            ROUTING_BATCH.observe(len(plans))
            ROUTING_SECONDS.observe(time.perf_counter() - started)
            return applied

    # --- planning (worker thread: file reads and pure evaluation) ----------------------------
    def _plan_all(self, ruleset: Ruleset, instances: Sequence[StoredInstance],
                  messages: Sequence[Hl7JournalRecord],
                  steps: Sequence[ProcedureStepEventRecord] = ()) -> list[RoutingPlan]:
        plans: list[RoutingPlan] = []
        for stored in instances:
            try:
                plans.append(self.plan_instance(ruleset, stored))
            except Exception as exc:
                ROUTING_FAILURES.labels("unreadable_object").inc()
                log.error("routing.instance_failed", journal_id=stored.id,
                          sop_instance_uid=stored.record.sop_instance_uid, error=str(exc),
                          **correlation(study_instance_uid=stored.record.study_instance_uid,
                                        accession_number=stored.record.accession_number))
        for record in messages:
            plans.append(self.plan_message(ruleset, record))
        for step in steps:
            try:
                plan, decisions = plan_procedure_step(ruleset, step)
            except Exception as exc:
                ROUTING_FAILURES.labels("procedure_step").inc()
                log.error("routing.procedure_step_failed", journal_id=step.id,
                          sop_instance_uid=step.step.sop_instance_uid, error=str(exc))
                continue
            for decision in decisions:
                _count(ROUTING_ROUTE_MATCHES, decision.route)
            plans.append(plan)
        return plans

    def _payload_cache(self, ruleset: Ruleset) -> payload.PayloadCache:
        # Made afresh when a reload swaps the ruleset (or the keys): a payload freezes both.
        keys = self._rules.keys
        if self._payloads is None or self._payloads[0] is not ruleset \
                or self._payloads[1] is not keys:
            self._payloads = (ruleset, keys, payload.PayloadCache(
                ruleset.version, ruleset.destination_types, keys.fingerprint))
        return self._payloads[2]

    def plan_instance(self, ruleset: Ruleset, stored: StoredInstance) -> RoutingPlan:
        rec = stored.record
        with about(journal_id=stored.id, sop_instance_uid=rec.sop_instance_uid,
                   calling_ae=rec.calling_ae):
            return self._plan_instance(ruleset, stored)

    def _plan_instance(self, ruleset: Ruleset, stored: StoredInstance) -> RoutingPlan:
        rec = stored.record
        context = RoutingContext(calling_ae=rec.calling_ae, called_ae=rec.called_ae,
                                 source_ip=rec.peer_host, listener=rec.listener,
                                 now=_local(rec.received_at))
        path = str(self._spool.path_of(rec.spool_path))
        tags = ruleset.header_tags
        subject = DicomSubject(lambda: read_header(path, tags), context)
        decisions = ruleset.evaluate("dicom", subject)
        payloads = self._payload_cache(ruleset)
        obj: str | None = None  # the instance's part of every row, serialized once
        rows = []
        joins = []
        for decision in decisions:
            _count(ROUTING_ROUTE_MATCHES, decision.route)
            if decision.discard:
                continue
            level = decision.trigger.level
            key = rec.series_instance_uid if level == "series" else rec.study_instance_uid
            if decision.trigger.is_group and key:
                joins.append(GroupJoin(
                    route=decision.route, level=level,  # type: ignore[arg-type]
                    key=key, study_instance_uid=rec.study_instance_uid,
                    quiet_seconds=decision.trigger.quiet_seconds or 60.0,
                    max_wait_seconds=decision.trigger.max_wait_seconds or 3600.0,
                    decision=payloads.decision_json(decision)))
            else:
                # No Study/Series UID to group by: deliver it on its own rather than never.
                obj = payload.object_text(stored) if obj is None else obj
                rows.extend(payloads.rows(decision).rows(stored, obj))
        asked = commitment_of(decisions)
        return RoutingPlan("instances", stored.id, _outcome(decisions, bool(rows), bool(joins)),
                           tuple(rows), tuple(joins),
                           None if asked is None else encode_route_archives(asked.archives))

    def plan_message(self, ruleset: Ruleset, record: Hl7JournalRecord) -> RoutingPlan:
        e = record.entry
        context = RoutingContext(source_ip=e.peer_host, listener=e.listener,
                                 now=_local(e.received_at))
        try:
            message = Hl7Message.parse(e.raw, self._default_charset)
        except Hl7ParseError:
            return RoutingPlan("hl7_messages", record.id, "unmatched")
        decisions = ruleset.evaluate("order", Hl7Subject(message, context))
        rows = []
        for decision in decisions:
            _count(ROUTING_ROUTE_MATCHES, decision.route)
            made = payload.hl7_rows(record, decision, ruleset.version,
                                    ruleset.destination_types, message.charset, message)
            for name in decision.destinations:
                if ruleset.destination_types.get(name) == "fhir" and \
                        not any(r.destination == name for r in made):
                    # No order group (an ADT), or one without any order number.
                    log.warning("routing.order.no_resource", route=decision.route,
                                destination=name, journal_id=record.id,
                                message_type=f"{e.message_type}^{e.trigger_event}",
                                control_id=e.control_id)
            rows.extend(made)
        return RoutingPlan("hl7_messages", record.id, _outcome(decisions, bool(rows), False),
                           tuple(rows))

    # --- replay and sweep ----------------------------------------------------------------------
    async def replay(self) -> int:
        """Route every unrouted journal entry (start, sweep); the number routed."""
        total = 0
        after = 0
        while True:
            page = await self._store.unrouted_instances(after, _REPLAY_PAGE)
            if not page:
                break
            total += await self.route(page)
            after = page[-1].id
        after = 0
        while True:
            messages = await self._store.unrouted_hl7_messages(after, _REPLAY_PAGE)
            if not messages:
                break
            total += await self.route((), messages)
            after = messages[-1].id
        after = 0
        while True:
            steps = await self._store.unrouted_procedure_step_events(after, _REPLAY_PAGE)
            if not steps:
                break
            total += await self.route((), (), steps)
            after = steps[-1].id
        return total

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_seconds)
            if not self._queue.empty():
                continue  # the worker is busy with exactly these entries
            try:
                routed = await self.replay()
                if routed:
                    log.warning("routing.swept", entries=routed)
                await self._adopt_groups()
            except Exception:
                log.exception("routing.sweep_failed")

    async def _adopt_groups(self) -> None:
        """Take in the database's open groups: those other nodes opened or joined (a node that
        died leaves its groups to the others). Only added or refreshed, never dropped here: a
        group fired meanwhile is found fired when its timer comes."""
        for group in await self._store.open_routing_groups():
            known = self._groups.get(group.id)
            if known is None or known.last_at < group.last_at:
                self._groups[group.id] = group
                self._groups_changed.set()
        ROUTING_GROUPS_OPEN.set(len(self._groups))

    # --- series / study groups -----------------------------------------------------------------
    async def _timers(self) -> None:
        while True:
            self._groups_changed.clear()
            now = time.time()
            due = [g for g in self._groups.values() if g.deadline <= now]
            for group in due:
                await self._fire(group, group.reason_at(now))
            if due:
                continue
            wait = min((g.deadline for g in self._groups.values()), default=now + 3600) - now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.05)):
                    await self._groups_changed.wait()

    async def _fire(self, group: OpenGroup, reason: str) -> None:
        try:
            fired = await self._store.fire_routing_group(
                group.id, reason, time.time(),
                functools.partial(payload.group_rows, header_of=self._fhir_header))
        except GroupNotDue as later:
            # Another node added to the group: wait for the database's deadline.
            self._groups[group.id] = later.group
            return
        except Exception:
            log.exception("routing.group_fire_failed", group_id=group.id, route=group.route)
            # Try again after a quiet period rather than spinning on a failing store.
            now = time.time()
            self._groups[group.id] = dataclasses.replace(group, first_at=now, last_at=now)
            return
        self._groups.pop(group.id, None)
        ROUTING_GROUPS_OPEN.set(len(self._groups))
        if fired is None:
            return
        ROUTING_GROUPS_FIRED.labels(group.level, reason).inc()
        self._announce(None)
        log.info("routing.group_fired", route=group.route, level=group.level,
                 key=group.key, reason=reason, instances=fired.instances,
                 outbox_rows=fired.outbox_rows,
                 **correlation(study_instance_uid=group.study_instance_uid))

    def _fhir_header(self, stored: StoredInstance) -> Dataset | None:
        """The few attributes an ImagingStudy needs beyond the journal (Study Date/Time...),
        from one spooled file: read only when a group fires to a ``fhir`` destination."""
        try:
            return read_header(str(self._spool.path_of(stored.record.spool_path)),
                               _FHIR_TAGS)
        except Exception:
            log.warning("routing.fhir_header_unreadable", journal_id=stored.id,
                        study_instance_uid=stored.record.study_instance_uid)
            return None

    def _announce(self, destinations: set[str] | None) -> None:
        """Wake the senders of ``destinations`` (None: every destination)."""
        if self.on_rows is None:
            return
        for name in destinations if destinations is not None else (None,):
            self.on_rows(name)

    async def study_complete(self, study_instance_uid: str) -> int:
        """Fire the study's open series/study groups now (MPPS evidence that the study is
        complete); the number of groups fired. Entries not routed yet are routed first, so
        every stored instance of the study is in its groups."""
        await self.replay()
        fired = 0
        for group in await self._store.open_routing_groups(study_instance_uid):
            await self._fire(group, "study_complete")
            fired += 1
        return fired

    @property
    def open_groups(self) -> list[OpenGroup]:
        return sorted(self._groups.values(), key=lambda g: g.deadline)


def _outcome(decisions: Sequence[Decision], rows: bool, joins: bool) -> RoutingOutcome:
    if rows:
        return "routed"
    if joins:
        return "grouped"
    if decisions:
        return "discarded"
    return "unmatched"
