"""The audit trail: gathers what happened, builds DICOM audit messages and queues them, durably,
in the outbox (destinations ``audit`` and ``audit-file``) where the dispatcher sends them.

An observer: nothing here can fail or slow intake. :meth:`AuditTrail.record` may be called from
any thread (pynetdicom's association threads, the loop) and only appends to a bounded buffer;
bus observers only note the fact. A flush task, every ``audit.flush_seconds``, looks up what a
record needs from the store (patient IDs, an order's control code), groups a peer's instances
of a study into one record once the study went quiet, and writes the batch to the outbox in one
transaction - so per-instance store writes stay off the C-STORE path. Records still in memory
when the process dies (at most one flush interval) are lost; everything in the outbox survives
restarts and waits for a repository that is down. It must not talk to the repository itself
(that is ``engine.egress.syslog``) and must not decide retries (the dispatcher does).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from engine.audit import records
from engine.dicom import audit as m
from engine.dicom.audit import AuditMessage, AuditSource, Participant
from engine.durable.store import NewOutboxRow, OutboxRow, Store
from engine.errors import StorageFailure
from engine.events import (
    InstanceStored,
    OrderReceived,
    ProcedureStepCompleted,
    ProcedureStepDiscontinued,
    ProcedureStepEvent,
)
from engine.hl7.message import Hl7Message
from engine.observability.logging import get_logger
from engine.observability.metrics import AUDIT_FAILURES, AUDIT_RECORDS
from engine.settings import (
    DicomwebDestination,
    DimseDestination,
    Settings,
)

log = get_logger("engine.audit")

#: outbox ``kind`` of audit rows
AUDIT_KIND = "audit"
#: ORC-1 (HL7 table 0119) → EventActionCode
_ORDER_ACTIONS = {"NW": "C", "XO": "U", "SC": "U", "CA": "D", "DC": "D", "OC": "D"}
#: outbox rows written per transaction
_ROWS_PER_FLUSH = 500
#: a study still receiving instances gets a record at least this often (seconds)
_STUDY_MAX_WAIT = 300.0


def now_utc() -> datetime:
    return datetime.now(UTC)


@dataclass
class _StudyTally:
    """One peer's instances of one study, until the study goes quiet."""

    first_sop_instance_uid: str
    first: datetime
    last_seen: float
    started: float
    sop_classes: dict[str, int] = field(default_factory=dict)


_StudyKey = tuple[str, str, str, str, str]  # listener, calling, called, peer host, study


class AuditTrail:
    """One process's audit trail (a no-op when neither repository nor file is configured)."""

    def __init__(self, store: Store, settings: Settings, node: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        audit = settings.audit
        self.store = store
        self.settings = audit
        self.node = node
        self.source = AuditSource(audit.source_id or settings.site.name,
                                  audit.enterprise_site_id)
        self.targets = list(audit.destinations())
        self.enabled = bool(self.targets)
        self._clock = clock
        self._destinations = settings.destinations
        if audit.export_destinations is not None:
            self._exports = set(audit.export_destinations)
        else:
            self._exports = {n for n, d in settings.destinations.items()
                             if isinstance(d, DicomwebDestination)}
        self._lock = threading.Lock()
        self._buffer: deque[AuditMessage] = deque()
        self._studies: dict[_StudyKey, _StudyTally] = {}
        self._orders: list[OrderReceived] = []
        self._steps: list[ProcedureStepEvent] = []
        self._sent: list[tuple[str, list[OutboxRow], datetime]] = []
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()
        self._stop_recorded = False
        #: called with a destination name after rows were queued (the dispatcher's ``wake``)
        self.on_rows: Callable[[str], None] | None = None

    # --- any thread ------------------------------------------------------------------------
    def record(self, message: AuditMessage) -> None:
        """Queue ``message`` for the next flush. Thread-safe; never raises."""
        if not self.enabled:
            return
        with self._lock:
            if len(self._buffer) >= self.settings.max_buffered:
                dropped = self._buffer.popleft()
                AUDIT_FAILURES.labels(dropped.name).inc()
                log.error("audit.buffer_full", dropped_event=dropped.name,
                          buffered=len(self._buffer))
            self._buffer.append(message)

    def association(self, *, calling_ae: str, called_ae: str, peer_host: str, accepted: bool,
                    reason: str = "", user_identity: str | None = None) -> None:
        """An association accepted or refused (a refusal is a Security Alert as well)."""
        if not self.enabled:
            return
        when = now_utc()
        self.record(records.association(
            self.source, when, calling_ae=calling_ae, called_ae=called_ae, peer_host=peer_host,
            node=self.node, accepted=accepted, reason=reason, user_identity=user_identity))
        if not accepted:
            self.security_alert(m.NODE_AUTHENTICATION, f"association refused: {reason}",
                                who=records.peer(calling_ae, peer_host, None),
                                subject=f"dicom:{called_ae}")

    def login(self, *, user: str, peer_host: str, ok: bool, reason: str = "") -> None:
        """A login to the admin API or console, accepted or refused (a refusal is a Security
        Alert as well)."""
        if not self.enabled:
            return
        who = Participant(user_id=user or "anonymous", requestor=True,
                          network_access_point=peer_host or None)
        self.record(AuditMessage(
            m.USER_AUTHENTICATION, "E", m.SUCCESS if ok else m.MINOR_FAILURE, now_utc(),
            [who, records.radflow_participant(self.source, None, self.node, None)],
            event_types=[m.LOGIN], outcome_description=reason or None, source=self.source))
        if not ok:
            self.security_alert(m.USE_OF_RESTRICTED_FUNCTION, f"login refused: {reason}", who=who,
                                subject="http:admin")

    def security_alert(self, kind: m.Code, description: str, *, who: Participant | None = None,
                       peer_host: str = "", subject: str | None = None,
                       failure: bool = True) -> None:
        if not self.enabled:
            return
        actor = who or Participant(user_id=peer_host or "unknown", requestor=True,
                                   network_access_point=peer_host or None)
        self.record(records.security_alert(self.source, now_utc(), kind,
                                           description=description, who=actor,
                                           node=self.node, subject=subject, failure=failure))

    def query(self, *, calling_ae: str, called_ae: str, peer_host: str, sop_class_uid: str,
              identifier: bytes, transfer_syntax_uid: str, ok: bool) -> None:
        if not self.enabled:
            return
        self.record(records.query(
            self.source, now_utc(), calling_ae=calling_ae, called_ae=called_ae,
            peer_host=peer_host, node=self.node, sop_class_uid=sop_class_uid,
            identifier=identifier, transfer_syntax_uid=transfer_syntax_uid,
            outcome=m.SUCCESS if ok else m.MINOR_FAILURE))

    def retrieve(self, *, begin: bool, move: bool, calling_ae: str, called_ae: str,
                 peer_host: str, destination_ae: str, destination_host: str,
                 studies: Mapping[str, tuple[str, Mapping[str, int]]], ok: bool,
                 detail: str = "") -> None:
        """A C-MOVE or C-GET's sub-operations began (``begin``) or ended: one record per
        study. ``studies``: Study Instance UID -> (Patient ID, SOP Class UID -> instances)."""
        if not self.enabled:
            return
        when = now_utc()
        for study_uid, (patient_id, sop_classes) in studies.items():
            self.record(records.retrieve(
                self.source, when, begin=begin, move=move, calling_ae=calling_ae,
                called_ae=called_ae, peer_host=peer_host, node=self.node,
                destination_ae=destination_ae, destination_host=destination_host,
                study_uid=study_uid or "unknown", sop_classes=sop_classes,
                patient_id=patient_id or None, outcome=m.SUCCESS if ok else m.MINOR_FAILURE,
                outcome_description=detail or None))

    def api_change(self, *, user: str, peer_host: str, method: str, path: str,
                   status: int) -> None:
        if not self.enabled:
            return
        self.record(records.api_change(self.source, now_utc(), user=user, peer_host=peer_host,
                                       node=self.node, method=method, path=path,
                                       status=status))

    # --- bus observers and the dispatcher's hook (on the loop; they only take note) --------
    def on_instance_stored(self, event: InstanceStored) -> None:
        if not self.enabled:
            return
        key = (event.listener, event.calling_ae, event.called_ae, event.peer_host,
               event.study_instance_uid or "")
        now = self._clock()
        tally = self._studies.get(key)
        if tally is None:
            tally = self._studies[key] = _StudyTally(event.sop_instance_uid, event.occurred_at,
                                                     now, now)
        tally.last_seen = now
        tally.sop_classes[event.sop_class_uid] = tally.sop_classes.get(event.sop_class_uid,
                                                                       0) + 1

    def on_order_received(self, event: OrderReceived) -> None:
        if self.enabled:
            self._orders.append(event)

    def on_procedure_step(self, event: ProcedureStepEvent) -> None:
        if self.enabled:
            self._steps.append(event)

    def on_delivered(self, destination: str, rows: Sequence[OutboxRow]) -> None:
        """The dispatcher delivered ``rows`` (instances are audited; other kinds are not)."""
        if not self.enabled:
            return
        config = self._destinations.get(destination)
        if isinstance(config, DimseDestination | DicomwebDestination):
            self._sent.append((destination, list(rows), now_utc()))

    # --- life cycle ------------------------------------------------------------------------
    async def start(self) -> None:
        if not self.enabled:
            return
        self.record(records.application_activity(self.source, now_utc(), True, self.node,
                                                 _os_user()))
        await self.flush()
        self._task = asyncio.create_task(self._run(), name="audit-trail")
        log.info("audit.started", targets=self.targets, source_id=self.source.source_id)

    async def stopping(self) -> None:
        """Shutdown began (listeners closed, delivery still running): record the stop and
        write it out, so the dispatcher can still send it."""
        if not self.enabled or self._stop_recorded:
            return
        self._stop_recorded = True
        self.record(records.application_activity(self.source, now_utc(), False, self.node,
                                                 _os_user()))
        await self.flush(final=True)

    async def stop(self) -> None:
        """Write everything still in memory (records made after the dispatcher stopped are
        sent at the next start)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if not self.enabled:
            return
        if not self._stop_recorded:
            self._stop_recorded = True
            self.record(records.application_activity(self.source, now_utc(), False, self.node,
                                                     _os_user()))
        await self.flush(final=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_seconds)
            try:
                await self.flush()
            except Exception:
                log.exception("audit.flush_failed")

    # --- flush -----------------------------------------------------------------------------
    async def flush(self, final: bool = False) -> int:
        """Turn noted facts into records and write every buffered record; rows written."""
        async with self._flushing:
            await self._quiet_studies(final)
            await self._resolve_orders()
            await self._resolve_steps()
            await self._resolve_sent()
            written = 0
            while True:
                with self._lock:
                    batch = [self._buffer.popleft()
                             for _ in range(min(len(self._buffer), _ROWS_PER_FLUSH))]
                if not batch:
                    return written
                try:
                    await self._write(batch)
                except StorageFailure as exc:
                    with self._lock:
                        self._buffer.extendleft(reversed(batch))
                    log.error("audit.write_failed", records=len(batch), error=str(exc))
                    return written
                written += len(batch)

    async def _write(self, batch: Sequence[AuditMessage]) -> None:
        rows = []
        for message in batch:
            payload = json.dumps({"event": message.name, "time": message.time.isoformat(),
                                  "xml": message.xml()})
            rows += [NewOutboxRow(destination=target, kind=AUDIT_KIND, payload=payload,
                                  source_table="audit") for target in self.targets]
        await self.store.enqueue_outbox(rows, time.time())
        for message in batch:
            AUDIT_RECORDS.labels(message.name).inc()
        if self.on_rows is not None:
            for target in self.targets:
                self.on_rows(target)

    async def _quiet_studies(self, final: bool) -> None:
        now = self._clock()
        quiet = self.settings.study_quiet_seconds
        due = [k for k, t in self._studies.items()
               if final or now - t.last_seen >= quiet or now - t.started >= _STUDY_MAX_WAIT]
        for key in due:
            tally = self._studies.pop(key)
            _listener, calling, called, host, study_uid = key
            patient_id = None
            with contextlib.suppress(StorageFailure):
                stored = await self.store.get_instance(tally.first_sop_instance_uid)
                patient_id = stored.record.patient_id if stored is not None else None
            self.record(records.instances_received(
                self.source, tally.first, calling_ae=calling, called_ae=called, peer_host=host,
                node=self.node, study_uid=study_uid or "unknown", sop_classes=tally.sop_classes,
                patient_id=patient_id))

    async def _resolve_orders(self) -> None:
        orders, self._orders = self._orders, []
        for event in orders:
            action, sending, patient_id, accession = "U", "", None, None
            with contextlib.suppress(Exception):  # an unreadable message still gets a record
                stored = await self.store.get_hl7_message(event.journal_id)
                if stored is not None:
                    msg = Hl7Message.parse(stored.entry.raw)
                    orc = msg.segment("ORC")
                    if orc is not None:
                        action = _ORDER_ACTIONS.get(orc.field(1).strip().upper(), "U")
                    pid = msg.segment("PID")
                    patient_id = pid.component(3, 1) if pid is not None else None
                    sending = stored.entry.sending_application or ""
                    for item_id in stored.worklist_item_ids[:1]:
                        item = await self.store.get_worklist_item(item_id)
                        accession = item.item.accession_number if item is not None else None
            self.record(records.order_record(
                self.source, event.occurred_at, action=action, sending_application=sending,
                peer_host=event.peer_host, node=self.node, patient_id=patient_id or None,
                accession=accession or None, message_type=event.message_type,
                control_id=event.control_id))

    async def _resolve_steps(self) -> None:
        steps, self._steps = self._steps, []
        for event in steps:
            patient_id = None
            with contextlib.suppress(StorageFailure):
                step = await self.store.get_procedure_step(event.sop_instance_uid)
                patient_id = step.patient_id if step is not None else None
            if isinstance(event, ProcedureStepCompleted):
                action, status = "U", "COMPLETED"
            elif isinstance(event, ProcedureStepDiscontinued):
                action, status = "U", "DISCONTINUED"
            else:
                action, status = "C", "IN PROGRESS"
            self.record(records.procedure_record(
                self.source, event.occurred_at, action=action, calling_ae=event.calling_ae,
                node=self.node, study_uid=event.study_instance_uid,
                accession=event.accession_number or None, patient_id=patient_id or None,
                step_uid=event.sop_instance_uid, status=status))

    async def _resolve_sent(self) -> None:
        sent, self._sent = self._sent, []
        for destination, rows, when in sent:
            config = self._destinations[destination]
            by_study: dict[str, dict[str, int]] = {}
            first_source: dict[str, int] = {}
            for row in rows:
                sop_class = _sop_class_of(row.payload)
                study_uid = row.study_instance_uid or "unknown"
                classes = by_study.setdefault(study_uid, {})
                classes[sop_class] = classes.get(sop_class, 0) + 1
                if row.source_table == "instances" and row.source_id:
                    first_source.setdefault(study_uid, row.source_id)
            patients: dict[int, str | None] = {}
            with contextlib.suppress(StorageFailure):
                for stored in await self.store.instances_by_ids(list(first_source.values())):
                    patients[stored.id] = stored.record.patient_id
            if isinstance(config, DimseDestination):
                address = f"{config.host}:{config.port}"
                local_ae: str | None = config.calling_ae_title
                name = config.ae_title
            else:
                assert isinstance(config, DicomwebDestination)
                address, local_ae, name = config.url, None, destination
            for study_uid, classes in by_study.items():
                self.record(records.instances_sent(
                    self.source, when, export=destination in self._exports, destination=name,
                    address=address, local_ae=local_ae, node=self.node, study_uid=study_uid,
                    sop_classes=classes,
                    patient_id=patients.get(first_source.get(study_uid, 0)),
                    outcome=m.SUCCESS))


def _sop_class_of(payload: str) -> str:
    try:
        data = json.loads(payload)
    except ValueError:
        return "unknown"
    if not isinstance(data, dict):
        return "unknown"
    nested = data.get("object")
    fields: Mapping[str, object] = nested if isinstance(nested, dict) else data
    value = fields.get("sop_class_uid")
    return value if isinstance(value, str) and value else "unknown"


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return "radflow"
