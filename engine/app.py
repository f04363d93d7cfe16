"""The engine's life cycle: ordered start, reverse stop, graceful drain on a signal.

:class:`Engine` builds every part from validated settings and starts them in dependency order
(stores, then workers, then listeners); :meth:`Engine.stop` runs the stop steps in reverse,
collecting every clean-up error instead of stopping at the first. Crash recovery (spool temp
files, orphan files) runs before any listener opens. This module wires parts together and
must not hold protocol or SQL logic of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version

import pydicom.config
import pynetdicom._config

from engine.admin.server import AdminServer
from engine.audit.trail import AuditTrail
from engine.bridge import LoopBridge
from engine.bus import EventBus
from engine.dicom.associations import OpenAssociations
from engine.durable.commitment import CommitmentPlan, SopRef
from engine.durable.journal import JournalWriter
from engine.durable.retention import Retention
from engine.durable.spool import Spool
from engine.durable.store import DuplicatePolicy, Store, open_store
from engine.egress.check import DestinationChecker
from engine.egress.commitment import ask_commitment
from engine.egress.dispatcher import Dispatcher, default_sender_factory
from engine.egress.queues import QueueAdmin
from engine.events import (
    InstanceStored,
    OrderReceived,
    ProcedureStepCompleted,
    ProcedureStepDiscontinued,
    ProcedureStepStarted,
)
from engine.ingress.dimse.commitment import CommitmentProvider
from engine.ingress.dimse.intake import StoreIntake
from engine.ingress.dimse.mpps import MppsProvider
from engine.ingress.dimse.mwl import MwlProvider
from engine.ingress.dimse.qr import QrProvider
from engine.ingress.dimse.server import DimseListeners
from engine.ingress.dimse.spill import SpillPolicy
from engine.ingress.hl7.intake import Hl7Intake
from engine.ingress.hl7.listener import MllpListener, SourceFilter
from engine.observability import audit_sink, recent_errors
from engine.observability.certs import refresh_certificate_metrics
from engine.observability.logging import get_logger
from engine.observability.metrics import NODE_INFO, NODE_ROLE, STORE_CLOCK_OFFSET, STORE_UP
from engine.pipeline.commitment import ArchiveCommitments
from engine.pipeline.qr_index import QrIndexer
from engine.pipeline.router import Router
from engine.pipeline.rulesets import RulesManager
from engine.procedure.service import ProcedureStepService
from engine.settings import DimseDestination, Settings
from engine.workers import STATUS_INTERVAL, WorkerContext, read_status, write_status
from engine.worklist.mapping import load_mapping
from engine.worklist.service import WorklistService

log = get_logger("engine.app")

StopStep = tuple[str, Callable[[], Awaitable[None]]]


def _version() -> str:
    try:
        return version("radflow")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def configure_libraries(debug: bool = False) -> None:
    """Library-wide settings, set once before any association thread exists."""
    # Never let pydicom "fix" or re-encode what a modality sent; intake reads, never rewrites.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
    # pynetdicom decodes and logs every C-FIND identifier otherwise: CPU on each query, and
    # patient names in the log.
    pynetdicom._config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom._config.LOG_RESPONSE_IDENTIFIERS = False
    # Egress: send_c_store(path) streams the spooled file's dataset bytes in PDU-sized chunks
    # instead of decoding and re-encoding it (the bytes leave as they were received).
    pynetdicom._config.STORE_SEND_CHUNKED_DATASET = True
    # pynetdicom's "standard" handlers decode and format every PDU and DIMSE message for its
    # debug log: ~0.2 ms of CPU per message even when nothing is logged. radflow logs
    # associations itself; the PDU-level dump is there when the site asks for debug.
    pynetdicom._config.LOG_HANDLER_LEVEL = "standard" if debug else "none"


class Engine:
    """One radflow process."""

    def __init__(self, settings: Settings, worker: WorkerContext | None = None) -> None:
        self.settings = settings
        #: this process's place among the workers of its machine (one process: the only one)
        self.worker = worker or WorkerContext()
        roles = settings.engine
        self.store: Store = open_store(settings.storage)
        self.spool = Spool(settings.storage.spool_dir, settings.storage.min_free_mb * 1024 * 1024,
                           settings.engine.node_id)
        self.retention = Retention(self.store, self.spool, settings.storage.retention_days,
                                   settings.storage.journal_retention_days)
        self.bridge = LoopBridge()
        self.bus = EventBus()
        self.journal = JournalWriter(self.store, self.spool, self.bridge)
        self.intake = StoreIntake(self.spool, self.journal, self.bus, self.bridge,
                                  DuplicatePolicy(settings.dicom.duplicate_policy),
                                  settings.dicom.store_timeout,
                                  SpillPolicy(settings.dicom.spill_threshold_mb * 1024 * 1024,
                                              settings.dicom.spill_dir or self.spool.tmp_dir))
        # --- worklist (D2): HL7 orders in, MWL C-FIND out ---
        wl = settings.worklist
        mapping = load_mapping(wl.mapping_file)
        if wl.station_ae_by_modality:
            mapping = mapping.with_tables({"station_ae_by_modality": wl.station_ae_by_modality})
        self.worklist = WorklistService(
            self.store, mapping, retention_days=wl.retention_days,
            pn_case_insensitive=wl.pn_case_insensitive, find_limit=wl.find_limit,
            default_charset=settings.hl7.default_charset)
        mwl: MwlProvider | None = MwlProvider(self.bridge, self.worklist, wl.find_timeout) \
            if roles.has("worklist") else None
        # --- end worklist ---
        # --- procedure steps (MPPS): N-CREATE / N-SET -> worklist status, events, completeness
        self.procedure_steps = ProcedureStepService(self.store, self.bus)
        mpps: MppsProvider | None = MppsProvider(
            self.bridge, self.procedure_steps, settings.dicom.store_timeout) \
            if roles.has("mpps") else None
        # --- end procedure steps ---
        # --- Query/Retrieve over the spool: an index kept beside the journal, off intake ---
        qrs = settings.query_retrieve
        self.qr_indexer: QrIndexer | None = None
        qr: QrProvider | None = None
        if qrs.enabled:
            self.qr_indexer = QrIndexer(self.store, self.spool)
            self.bus.subscribe(InstanceStored, self.qr_indexer.on_instance_stored)
            qr = QrProvider(self.bridge, self.store, settings.storage.spool_dir,
                            qrs.destinations(settings.destinations), qrs.find_limit, qrs.timeout)
        # --- end Query/Retrieve ---
        # --- Storage Commitment: requests stored, reports through the outbox ---
        self.associations = OpenAssociations(owner=self.worker.lease_prefix(roles.node_id))
        commitment: CommitmentProvider | None = None
        self.archive_commitments: ArchiveCommitments | None = None
        if settings.commitment.enabled:
            cs = settings.commitment
            committing = {name: d for name, d in settings.destinations.items()
                          if isinstance(d, DimseDestination) and d.storage_commitment}
            plan = CommitmentPlan(cs.policy, tuple(cs.archive_destinations),
                                  frozenset(committing))
            commitment = CommitmentProvider(self.bridge, self.store, cs, self.associations,
                                            settings.dicom.store_timeout, plan=plan)

            async def ask(name: str, transaction_uid: str, refs: tuple[SopRef, ...]) -> None:
                await asyncio.to_thread(ask_commitment, committing[name], transaction_uid, refs)

            self.archive_commitments = ArchiveCommitments(
                self.store, plan, cs.archive_check_seconds, ask=ask,
                uid_prefix=settings.routing.uid_prefix)
        # --- end Storage Commitment ---
        #: a node without intake, worklist and MPPS roles opens no DICOM port
        self.dimse_enabled = any(roles.has(r) for r in ("intake", "worklist", "mpps"))
        self.dimse = DimseListeners(settings.dicom.listeners, self.intake,
                                    lambda: self.bridge.closing, mwl, mpps, qr, commitment,
                                    reuse_port=self.worker.shared, storage=roles.has("intake"))
        self.hl7_intake = Hl7Intake(self.worklist, settings.hl7, lambda: self.spool.has_room,
                                    self.bus)
        # --- routing (D3): journal -> rules -> outbox; invalid routes raise SettingsError ---
        self.rules = RulesManager(settings)
        if commitment is not None:
            # Read at each N-ACTION: a reload that adds or drops a route's commitment: counts.
            commitment.routes_say = lambda: self.rules.current.has_commitment
        self.router = Router(self.store, self.spool, self.rules,
                             default_charset=settings.hl7.default_charset,
                             sweep_seconds=settings.routing.sweep_seconds)
        self.bus.subscribe(InstanceStored, self.router.on_instance_stored)
        self.bus.subscribe(OrderReceived, self.router.on_order_received)
        # MPPS events → routing (trigger: procedure_step)
        for step_event in (ProcedureStepStarted, ProcedureStepCompleted,
                           ProcedureStepDiscontinued):
            self.bus.subscribe(step_event, self.router.on_procedure_step)
        # --- end routing ---
        # MPPS completeness: fire study-level routes as soon as a COMPLETED step's instances
        # are all here (the quiet-period timer stays the fallback).
        self.procedure_steps.study_complete = self.router.study_complete
        self.bus.subscribe(InstanceStored, self.procedure_steps.on_instance_stored)
        # An order placed after its modality started links the waiting unscheduled step.
        self.bus.subscribe(OrderReceived, self.procedure_steps.on_order_received)
        # --- delivery (D3): outbox -> per-destination workers -> senders ---
        secret = settings.routing.secret
        morph_secret = secret.get_secret_value() if secret else None
        self.dispatcher = Dispatcher(
            self.store, {**settings.destinations, **settings.audit.destinations(),
                         **settings.commitment.destinations()},
            settings.delivery, settings.storage.spool_dir, morph_secret=morph_secret,
            node=self.worker.lease_prefix(roles.node_id),
            release_prefix=self.worker.release_prefix(roles.node_id),
            sender_factory=default_sender_factory(settings.storage.spool_dir, self.store,
                                                  morph_secret, self.associations))
        self.router.on_rows = self.dispatcher.wake
        if commitment is not None and self.archive_commitments is not None:
            commitment.wake = self.dispatcher.wake
            self.archive_commitments.wake = self.dispatcher.wake
        # --- end delivery ---
        # --- audit trail (IHE ATNA): an observer; its records go out through the outbox ---
        self.audit = AuditTrail(self.store, settings, socket.gethostname())
        if self.audit.enabled:
            self.bus.subscribe(InstanceStored, self.audit.on_instance_stored)
            self.bus.subscribe(OrderReceived, self.audit.on_order_received)
            for step_event in (ProcedureStepStarted, ProcedureStepCompleted,
                               ProcedureStepDiscontinued):
                self.bus.subscribe(step_event, self.audit.on_procedure_step)
            self.dispatcher.on_delivered = self.audit.on_delivered
            self.audit.on_rows = self.dispatcher.wake
        # --- end audit trail ---
        sources = SourceFilter.of(settings.hl7)
        self.mllp = [MllpListener(cfg, self.hl7_intake, sources, reuse_port=self.worker.shared)
                     for cfg in settings.hl7.listeners] if roles.has("hl7") else []
        self.admin: AdminServer | None = None
        self._stop_steps: list[StopStep] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()

    # --- start -------------------------------------------------------------------------------
    async def start(self) -> None:
        configure_libraries(debug=self.settings.logging.level == "debug")
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self.bridge.attach(loop)

        await self.store.open()
        self._stop_steps.append(("store", self.store.close))
        # Right before the store closes: the last notes of this run reach the shared list.
        self._stop_steps.append(("recent-errors", self._flush_errors))
        self._tasks.append(asyncio.create_task(self._keep_recent_errors(), name="recent-errors"))
        await asyncio.to_thread(self.spool.open)
        if self.worker.recover:
            await self._recover_spool()
        else:
            # A restarted worker: its siblings are writing; their files in flight and their
            # leases must not be taken for a crash's leftovers.
            log.info("durable.recovery.skipped", reason="other workers of this node are running")
        # Started right after the store and stopped right before it: it sees everything the
        # other parts report, and its last records reach the outbox.
        await self.audit.start()
        audit_sink.install(self.audit)
        self._stop_steps.append(("audit", self._stop_audit))

        await self.bus.start()
        self._stop_steps.append(("bus", self.bus.stop))
        await self.journal.start()
        self._stop_steps.append(("journal", self.journal.stop))
        await self.hl7_intake.start()
        self._stop_steps.append(("hl7-intake", self.hl7_intake.stop))
        await self.rules.start()
        self._stop_steps.append(("rules", self.rules.stop))
        if self.settings.engine.has("routing"):
            await self.router.start()  # replays unrouted journal entries, rebuilds group timers
            self._stop_steps.append(("router", self.router.stop))
        await self.procedure_steps.start()  # rebuilds the MPPS completeness watch
        self._stop_steps.append(("procedure-steps", self.procedure_steps.stop))
        if self.qr_indexer is not None:
            await self.qr_indexer.start()  # catches up from its watermark in the background
            self._stop_steps.append(("qr-indexer", self.qr_indexer.stop))
        if self.archive_commitments is not None:
            await self.archive_commitments.start()
            self._stop_steps.append(("commitment-archive", self.archive_commitments.stop))
        # Delivery workers: after the stores, stopped before them (in-flight batches finish).
        if self.settings.engine.has("delivery"):
            await self.dispatcher.start()
            self._stop_steps.append(
                ("dispatcher", lambda: self.dispatcher.stop(self.settings.engine.shutdown_grace)))
        # Runs before the dispatcher stops: the Application Stop record still reaches the
        # repository when it is up.
        self._stop_steps.append(("audit-drain", self._drain_audit))
        # Other nodes' new rows (PostgreSQL NOTIFY) wake the workers too; polling stays.
        self.store.watch_outbox(self.dispatcher.wake)
        if self.settings.storage.backend == "postgresql":
            # Rows another node or worker answered for but died before marking "durable":
            # taken over within seconds (safe even while the writer lives, see adopt), so a
            # dead node's acknowledged instances are routed without waiting for its return.
            # One process on SQLite settles its own at start.
            after = min(self.settings.delivery.lease_seconds,
                        self.settings.engine.takeover_seconds)
            self._tasks.append(asyncio.create_task(
                self.journal.adopt_forever(after, max(1.0, after / 4)), name="journal-adopt"))
        self._tasks.append(asyncio.create_task(self._watch_spool_space(), name="spool-space"))
        self._tasks.append(asyncio.create_task(self._watch_health(), name="health-metrics"))
        self._tasks.append(asyncio.create_task(self.worklist.run_maintenance(),
                                               name="worklist-maintenance"))
        if self.retention.enabled:
            self._tasks.append(asyncio.create_task(self.retention.run(), name="retention"))

        http = self.settings.http
        if http.enabled and self.worker.serves_admin and self.settings.engine.has("admin"):
            self.admin = AdminServer(
                http.host, http.port, self.store,
                {"store": self._probe_store, "spool": self._probe_spool,
                 "listeners": self._probe_listeners, "rules": self.rules.probe,
                 **({"audit": self._probe_audit} if self.audit.enabled else {}),
                 **self._worker_probes()},
                http.token.get_secret_value() if http.token else None,
                worklist=self.worklist, rules=self.rules,
                queues=QueueAdmin(self.store, {**self.settings.destinations,
                                               **self.settings.audit.destinations(),
                                               **self.settings.commitment.destinations()},
                                  self.dispatcher),
                procedure_steps=self.procedure_steps,
                destinations=DestinationChecker(self.settings.destinations,
                                                self.dispatcher.sender_factory),
                http=http, site=self.settings.site, spool=self.spool)
            await self.admin.start()
            self._stop_steps.append(("admin", self.admin.stop))

        self._stop_steps.append(("bridge", self._close_bridge))
        if self.dimse_enabled:
            await self.dimse.start()
            self._stop_steps.append(
                ("dimse", lambda: self.dimse.stop(self.settings.engine.shutdown_grace)))
        grace = self.settings.engine.shutdown_grace
        for listener in self.mllp:
            await listener.start()
            self._stop_steps.append((f"mllp:{listener.config.name}",
                                     functools.partial(listener.stop, grace)))
        if self.worker.status_path() is not None:
            self._tasks.append(asyncio.create_task(self._report_status(), name="worker-status"))
        log.info("engine.started", site=self.settings.site.name,
                 roles=list(self.settings.engine.roles), worker=self.worker.index,
                 workers=self.worker.count)

    async def _recover_spool(self) -> None:
        # Rows first: a withdrawn row's file is removed with it, before the orphan sweep.
        checked, withdrawn = await self.journal.recover()
        if checked or withdrawn:
            log.warning("durable.journal.recovered", rows_checked=checked,
                        rows_withdrawn=withdrawn)
        removed = await asyncio.to_thread(self.spool.clean_temp)
        window = self.settings.storage.orphan_window_hours * 3600
        candidates = await asyncio.to_thread(lambda: list(self.spool.recent_objects(window)))
        orphans = 0
        for start in range(0, len(candidates), 1000):
            chunk = candidates[start:start + 1000]
            known = await self.store.known_object_ids([oid for oid, _ in chunk])
            for object_id, rel_path in chunk:
                if object_id not in known:
                    # Written but never committed: its sender got no success status.
                    await asyncio.to_thread(self.spool.remove, rel_path)
                    orphans += 1
        if removed or orphans:
            log.warning("durable.spool.recovered", temp_files_removed=removed,
                        orphans_removed=orphans)

    async def _keep_recent_errors(self) -> None:
        while True:
            await asyncio.sleep(recent_errors.FLUSH_SECONDS)
            await self._flush_errors()

    async def _flush_errors(self) -> None:
        """Write the failures this process noted (from its log lines) to the store's shared
        list of recent errors; kept for the next try while the store is down."""
        notes = recent_errors.RECENT.take()
        if not notes:
            return
        try:
            await self.store.record_errors(notes, time.time() - recent_errors.MERGE_SECONDS,
                                           recent_errors.KEEP)
        except Exception as exc:
            recent_errors.RECENT.put_back(notes)
            # A warning, not an error: an error line would become a note itself.
            log.warning("observability.recent_errors_unwritten", notes=len(notes),
                        error=str(exc))

    async def _watch_spool_space(self) -> None:
        was_ok = True
        while True:
            ok = await asyncio.to_thread(self.spool.refresh_free_space)
            if ok != was_ok:
                log.warning("durable.spool.space_changed", has_room=ok)
                was_ok = ok
            await asyncio.sleep(2.0)

    async def _watch_health(self) -> None:
        """Metrics the alert rules need: database reachability every few seconds, node identity
        once, configured certificates' expiry at start and hourly."""
        node_id = self.settings.engine.node_id
        NODE_INFO.labels(node_id, _version()).set(1)
        for role in self.settings.engine.roles:
            NODE_ROLE.labels(node_id, role).set(1)
        last_certs = last_clock = -3600.0
        clock_ok = True
        while True:
            STORE_UP.set(1 if await self.store.ping() else 0)
            if time.monotonic() - last_clock >= 60.0:
                clock_ok = await self._check_clock(clock_ok)
                last_clock = time.monotonic()
            if time.monotonic() - last_certs >= 3600.0:
                await asyncio.to_thread(refresh_certificate_metrics, self.settings)
                last_certs = time.monotonic()
            await asyncio.sleep(5.0)

    async def _check_clock(self, was_ok: bool) -> bool:
        """Compare this node's clock with the database server's. Another node judges this
        node's outbox leases expired by its own clock: a clock off by a good part of the lease
        lets two nodes send one row at once (a duplicate the receiver dedupes, never a loss),
        so a large offset is logged once and shown as a metric for the alert rules."""
        offset = await self.store.clock_offset()
        if offset is None:
            return was_ok
        STORE_CLOCK_OFFSET.set(abs(offset))
        limit = max(1.0, self.settings.delivery.lease_seconds / 10)
        ok = abs(offset) <= limit
        if not ok and was_ok:
            log.warning("durable.clock_offset", offset_s=round(offset, 3), limit_s=limit,
                        advice="synchronise this node's clock with the database server's (NTP)")
        elif ok and not was_ok:
            log.info("durable.clock_offset_ok", offset_s=round(offset, 3))
        return ok

    # --- probes ------------------------------------------------------------------------------
    async def _probe_store(self) -> tuple[bool, str]:
        ok = await self.store.ping()
        return ok, "reachable" if ok else "unreachable"

    async def _probe_spool(self) -> tuple[bool, str]:
        # The verdict intake uses; a refusal since the last reading also counts (has_room), so
        # /readyz never says ready while C-STORE or HL7 intake would refuse.
        verdict = await asyncio.to_thread(self.spool.verdict)
        if verdict.ok and not self.spool.has_room:
            return False, f"{verdict.describe()}; the last write was refused for lack of space"
        return verdict.ok, verdict.describe()

    async def _probe_audit(self) -> tuple[bool, str]:
        """The audit queue's state; once a record waited longer than
        ``audit.max_queue_age_minutes`` it says so, and with ``audit.readiness: fail`` radflow
        is not ready (the record itself is kept and sent later either way)."""
        limit = self.settings.audit.max_queue_age_minutes * 60
        stats = await self.store.outbox_stats(self.audit.targets)
        now = time.time()
        ages = {s.destination: now - s.oldest_created_at for s in stats
                if s.oldest_created_at is not None}
        dead = sum(s.dead for s in stats)
        oldest = max(ages.values(), default=0.0)
        detail = (f"oldest unsent audit record {oldest:.0f} s old" if ages
                  else "every audit record delivered")
        if dead:
            detail += f"; {dead} dead-lettered"
        if oldest <= limit:
            return True, detail
        # Reported, not failed, by default: an audit repository outage must not stop intake.
        return (self.settings.audit.readiness != "fail",
                f"{detail} (limit {limit:.0f} s): audit repository down?")

    async def _drain_audit(self) -> None:
        await self.audit.stopping()
        deadline = time.monotonic() + min(5.0, self.settings.engine.shutdown_grace)
        while self.audit.enabled and time.monotonic() < deadline:
            stats = await self.store.outbox_stats(self.audit.targets)
            if not any(s.pending or s.leased for s in stats):
                return
            await asyncio.sleep(0.1)

    async def _stop_audit(self) -> None:
        audit_sink.install(None)
        await self.audit.stop()

    def _worker_probes(self) -> dict[str, Callable[[], Awaitable[tuple[bool, str]]]]:
        """One readiness check per sibling worker, read from the status it reports."""
        probes: dict[str, Callable[[], Awaitable[tuple[bool, str]]]] = {}
        for index in range(1, self.worker.count):
            path = self.worker.status_path(index)
            if path is not None:
                probes[f"worker:{index}"] = functools.partial(
                    asyncio.to_thread, read_status, path)
        return probes

    async def _ready(self) -> tuple[bool, str]:
        details, ready = [], True
        for probe in (self._probe_store, self._probe_spool, self._probe_listeners):
            ok, detail = await probe()
            ready = ready and ok
            if not ok:
                details.append(detail)
        return ready, "; ".join(details) or "store, spool and listeners fine"

    async def _report_status(self) -> None:
        """This worker's readiness, for the worker that serves /readyz."""
        path = self.worker.status_path()
        assert path is not None
        while True:
            ready, detail = await self._ready()
            ruleset = self.rules.current.version
            await asyncio.to_thread(write_status, path, index=self.worker.index,
                                    node_id=self.settings.engine.node_id, ready=ready,
                                    detail=detail, ruleset=ruleset)
            await asyncio.sleep(STATUS_INTERVAL)

    async def _probe_listeners(self) -> tuple[bool, str]:
        down = [] if self.dimse.running or not self.dimse_enabled else ["dicom"]
        down += [f"mllp:{lst.config.name}" for lst in self.mllp if not lst.running]
        return not down, "listening" if not down else f"not listening: {', '.join(down)}"

    # --- stop --------------------------------------------------------------------------------
    async def _close_bridge(self) -> None:
        self.bridge.close()

    async def stop(self) -> None:
        """Stop everything started so far, in reverse order; raise all clean-up errors."""
        if self.admin is not None:
            self.admin.stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        errors: list[Exception] = []
        while self._stop_steps:
            name, step = self._stop_steps.pop()
            started = time.monotonic()
            try:
                await step()
            except Exception as exc:
                log.exception("engine.stop_step_failed", step=name)
                errors.append(exc)
            log.debug("engine.stopped_step", step=name, seconds=time.monotonic() - started)
        self._stopped.set()
        log.info("engine.stopped")
        if errors:
            raise ExceptionGroup("errors while stopping radflow", errors)

    def _on_sighup(self) -> None:
        # One signal re-reads what an operator may have replaced on disk: the routes folder
        # and the admin server's HTTPS certificate.
        self.rules.request_reload()
        if self.admin is not None:
            self.admin.reload_tls()

    async def run_until_signal(self) -> None:
        """Start, wait for SIGTERM or SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        # A start may wait a long time (a database that does not answer yet): a signal during
        # it ends the wait instead of being held until the engine is up.
        starting = asyncio.create_task(self.start(), name="engine-start")
        signalled = asyncio.create_task(stop_requested.wait(), name="engine-signal")
        await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            log.info("engine.start_abandoned")
            starting.cancel()  # start() stops what it had started before it re-raises
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            return
        signalled.cancel()
        starting.result()  # a failed start raises here
        await stop_requested.wait()
        log.info("engine.stopping", grace_seconds=self.settings.engine.shutdown_grace)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await self.stop()
