"""Following one order end to end: the records the store finds for an accession number, a
Study Instance UID or a patient, and the one timeline made of them.

A backend gathers :class:`TraceRecords` (``Store.trace``): the HL7 messages that made or changed
the order's worklist items, those items, the MPPS steps with their events, the received
instances summed up per study (count, calling AEs, first and last arrival), the routing groups,
and the deliveries summed up per route and destination (rows by state, attempts, last error).
:func:`timeline` orders them into one list a person reads top to bottom. This module is pure:
it must not query anything itself, and it holds no patient names.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

TraceBy = Literal["accession", "study", "patient"]

#: at most this many worklist items, steps, studies and messages per trace (a patient with a
#: long history is cut, newest kept, and the answer says so)
TRACE_LIMIT = 200


@dataclass(frozen=True, slots=True)
class TraceHl7Message:
    id: int
    received_at: str
    message_type: str
    trigger_event: str
    control_id: str
    sending_application: str
    ack_code: str
    worklist_item_ids: tuple[int, ...]
    routed_at: str | None


@dataclass(frozen=True, slots=True)
class TraceWorklistItem:
    id: int
    status: str
    patient_id: str
    accession_number: str
    study_instance_uid: str
    placer_order_number: str
    filler_order_number: str
    modality: str
    scheduled_station_ae_title: str
    created_at: str
    updated_at: str


@dataclass(frozen=True, slots=True)
class TraceStepEvent:
    operation: str  # create | set
    status: str
    received_at: str
    routed_at: str | None
    routing_outcome: str | None


@dataclass(frozen=True, slots=True)
class TraceProcedureStep:
    sop_instance_uid: str
    status: str
    study_instance_uid: str
    accession_number: str
    patient_id: str
    calling_ae: str
    unscheduled: bool
    worklist_item_ids: tuple[int, ...]
    created_at: str
    complete_at: str | None
    events: tuple[TraceStepEvent, ...]


@dataclass(frozen=True, slots=True)
class TraceStudy:
    """The instances received for one study, summed up."""

    study_instance_uid: str
    instances: int
    series: int
    calling_aes: tuple[str, ...]
    modalities: tuple[str, ...]
    accession_numbers: tuple[str, ...]
    patient_ids: tuple[str, ...]
    first_received_at: str
    last_received_at: str
    unrouted: int


@dataclass(frozen=True, slots=True)
class TraceGroup:
    route: str
    level: str
    study_instance_uid: str
    state: str
    first_at: float
    fired_at: float | None
    fire_reason: str | None


@dataclass(frozen=True, slots=True)
class TraceDelivery:
    """The outbox rows of one route to one destination from one kind of source."""

    route: str
    destination: str
    source: str  # instances | hl7_messages | procedure_step_events
    study_instance_uid: str | None
    rows: int
    delivered: int
    pending: int
    dead: int
    attempts: int
    first_created_at: float
    last_done_at: float | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class TraceRecords:
    hl7_messages: tuple[TraceHl7Message, ...] = ()
    worklist_items: tuple[TraceWorklistItem, ...] = ()
    procedure_steps: tuple[TraceProcedureStep, ...] = ()
    studies: tuple[TraceStudy, ...] = ()
    groups: tuple[TraceGroup, ...] = ()
    deliveries: tuple[TraceDelivery, ...] = ()
    truncated: bool = False

    @property
    def empty(self) -> bool:
        return not (self.hl7_messages or self.worklist_items or self.procedure_steps
                    or self.studies or self.deliveries)


@dataclass(frozen=True, slots=True)
class TraceEntry:
    at: str  # ISO 8601, UTC
    kind: str
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


def _iso(value: str | float | None) -> str:
    """Journal times are ISO text, outbox times epoch seconds: one form for the timeline."""
    if value is None or value == "":
        return ""
    if isinstance(value, int | float):
        when = dt.datetime.fromtimestamp(value, dt.UTC)
    else:
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            return value
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
    # One form (UTC, milliseconds, "Z") so the timeline sorts as text.
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def keys(records: TraceRecords) -> dict[str, list[str]]:
    """The correlation keys found: every accession, study, patient and order number."""
    found: dict[str, set[str]] = {"accession_numbers": set(), "study_instance_uids": set(),
                                  "patient_ids": set(), "placer_order_numbers": set(),
                                  "filler_order_numbers": set()}
    for item in records.worklist_items:
        found["accession_numbers"].add(item.accession_number)
        found["study_instance_uids"].add(item.study_instance_uid)
        found["patient_ids"].add(item.patient_id)
        found["placer_order_numbers"].add(item.placer_order_number)
        found["filler_order_numbers"].add(item.filler_order_number)
    for step in records.procedure_steps:
        found["accession_numbers"].add(step.accession_number)
        found["study_instance_uids"].add(step.study_instance_uid)
        found["patient_ids"].add(step.patient_id)
    for study in records.studies:
        found["study_instance_uids"].add(study.study_instance_uid)
        found["accession_numbers"].update(study.accession_numbers)
        found["patient_ids"].update(study.patient_ids)
    return {k: sorted(v - {""}) for k, v in found.items()}


def timeline(records: TraceRecords) -> list[TraceEntry]:
    """Every fact of the records as one list, oldest first."""
    out: list[TraceEntry] = []
    for m in records.hl7_messages:
        out.append(TraceEntry(
            _iso(m.received_at), "hl7_message",
            f"HL7 {m.message_type}^{m.trigger_event} {m.control_id} from "
            f"{m.sending_application or '?'}: {m.ack_code}",
            {"journal_id": m.id, "control_id": m.control_id, "ack_code": m.ack_code,
             "worklist_item_ids": list(m.worklist_item_ids), "routed_at": m.routed_at}))
    for w in records.worklist_items:
        out.append(TraceEntry(
            _iso(w.created_at), "worklist_item",
            f"worklist item {w.id} scheduled: accession {w.accession_number}, "
            f"{w.modality} on {w.scheduled_station_ae_title or 'any station'}; now {w.status}",
            asdict(w)))
    for s in records.procedure_steps:
        for e in s.events:
            verb = "N-CREATE" if e.operation == "create" else "N-SET"
            out.append(TraceEntry(
                _iso(e.received_at), "procedure_step",
                f"MPPS {verb} {e.status} from {s.calling_ae or '?'}"
                f"{' (unscheduled)' if s.unscheduled else ''}",
                {"sop_instance_uid": s.sop_instance_uid, "status": e.status,
                 "routing_outcome": e.routing_outcome,
                 "worklist_item_ids": list(s.worklist_item_ids)}))
        if s.complete_at:
            out.append(TraceEntry(_iso(s.complete_at), "study_complete",
                                  f"study {s.study_instance_uid} complete: every instance the "
                                  "MPPS listed has arrived",
                                  {"sop_instance_uid": s.sop_instance_uid}))
    for st in records.studies:
        out.append(TraceEntry(
            _iso(st.first_received_at), "instances",
            f"{st.instances} instance(s) in {st.series} series received from "
            f"{', '.join(st.calling_aes)} (last at {st.last_received_at})",
            asdict(st)))
    for g in records.groups:
        if g.fired_at is not None:
            out.append(TraceEntry(_iso(g.fired_at), "route_fired",
                                  f"route {g.route} fired for the {g.level} "
                                  f"({g.fire_reason})", asdict(g)))
        else:
            out.append(TraceEntry(_iso(g.first_at), "route_waiting",
                                  f"route {g.route} collects the {g.level} (open)", asdict(g)))
    for d in records.deliveries:
        if d.dead:
            outcome = f"{d.dead} dead letter(s)"
        elif d.pending:
            outcome = f"{d.pending} pending"
        else:
            outcome = "delivered"
        out.append(TraceEntry(
            _iso(d.first_created_at), "delivery",
            f"route {d.route} -> {d.destination}: {d.rows} row(s) from {d.source}, "
            f"{d.delivered} delivered, {outcome}, {d.attempts} attempt(s)"
            + (f"; last error: {d.last_error}" if d.last_error else ""),
            {**asdict(d), "first_created_at": _iso(d.first_created_at),
             "last_done_at": _iso(d.last_done_at) or None}))
    out.sort(key=lambda e: e.at)
    return out


def trace_json(by: TraceBy, value: str, records: TraceRecords) -> dict[str, Any]:
    """The answer of ``GET /api/v1/trace`` and ``radflow trace --json``."""
    return {"by": by, "value": value, "found": not records.empty,
            "truncated": records.truncated, "keys": keys(records),
            "timeline": [asdict(e) for e in timeline(records)]}
