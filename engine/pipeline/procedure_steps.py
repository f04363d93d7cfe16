"""Routing of performed procedure step events (MPPS): a journal row in, a routing plan out.

:func:`plan_procedure_step` evaluates the routes with ``trigger: procedure_step`` against a
subject built from the step's MPPS attributes as of the event (the N-CREATE Attribute List for
a start, the step's attributes after the N-SET for a completion or discontinuation), with the
context ``calling_ae`` (the modality), ``state`` (``IN PROGRESS``, ``COMPLETED``,
``DISCONTINUED``), ``event`` (``procedure_step``) and the event's receive time. Each decision
becomes outbox rows by destination type:

* ``mpps`` — the forward the egress MPPS sender reads::

      {"v": 1, "kind": "mpps", "route", "ruleset", "trigger": {"level": "procedure_step",
       "operation": "create"|"set", "status": "..."}, "destination": {"name", "type"},
       "procedure_step": {"journal_id", "sop_instance_uid", "study_instance_uid",
                          "accession_number", "status", "worklist_item_ids"},
       "mpps": {"operation": "create"|"set", "sop_instance_uid": "...",
                "dataset": {...DICOM JSON: the Attribute / Modification List as received}}}

* ``hl7`` — an ORM^O01 status update rendered now (:mod:`engine.pipeline.hl7_status`), in
  ``message`` as text (the egress HL7 sender encodes it in the character set its MSH-18
  names), with ``message_type`` and ``control_id``; the other keys as above with
  ``"kind": "hl7"``. The destination's ``charset``, ``receiving_application`` and
  ``receiving_facility`` (``Ruleset.destination_options``) shape it. A step linked to no
  worklist item gets none (a RIS rejects a status without order numbers): it is logged
  (``routing.procedure_step.no_order``) and counted, and sent by the ``link`` event written
  when an order for the step arrives later.

A ``link`` event (an unscheduled step linked to a late order) carries the step's current
status; it makes ``hl7`` and ``fhir`` rows but no ``mpps`` forward (no DIMSE operation
happened).

* ``fhir`` — a FHIR R4 ``Task`` for the step, rendered now (:mod:`engine.pipeline.fhir_status`),
  in ``resource``, which the egress FHIR sender writes with a conditional update on its
  identifier (the MPPS SOP Instance UID): the start creates the Task, the end updates it.

Rows carry the step's Study Instance UID so that ``per_study_order`` keeps a step's create
before its set. Pure (no store, no clock); runs in the router's worker thread.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any, Final

from pydicom.dataset import Dataset

from engine.durable.routing import ProcedureStepEventRecord, RoutingOutcome, RoutingPlan
from engine.durable.store import NewOutboxRow
from engine.observability.logging import get_logger
from engine.observability.metrics import STATUS_MESSAGES_WITHHELD
from engine.pipeline.fhir_status import render_task
from engine.pipeline.hl7_status import MESSAGE_TYPE, render_status_update
from engine.pipeline.payload import PAYLOAD_VERSION
from engine.rules.ruleset import Decision, DicomSubject, RoutingContext, Ruleset

log = get_logger("engine.pipeline")

SOURCE_TABLE: Final = "procedure_step_events"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _local(received_at: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(received_at).astimezone()
    except ValueError:
        return dt.datetime.now().astimezone()


def _dataset(text: str) -> Dataset:
    try:
        return Dataset.from_json(text)
    except Exception:
        return Dataset()  # context-only routes still work; attribute predicates see nothing


def event_dataset(record: ProcedureStepEventRecord) -> Dataset:
    """The step's attributes as of the event: the N-CREATE Attribute List for a create, the
    step's (final, no longer changing) attributes for a set."""
    return _dataset(record.received if record.operation == "create"
                    else record.step.dataset_json)


def subject_of(record: ProcedureStepEventRecord, dataset: Dataset) -> DicomSubject:
    context = RoutingContext(calling_ae=record.step.calling_ae, state=record.status,
                             now=_local(record.received_at))
    return DicomSubject(dataset, context, event="procedure_step")


def _received_json(record: ProcedureStepEventRecord) -> dict[str, Any]:
    try:
        value = json.loads(record.received)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def withheld(record: ProcedureStepEventRecord, decision: Decision,
             destination_types: Mapping[str, str]) -> list[str]:
    """The ``hl7`` destinations of ``decision`` that get no status for this event: the step is
    linked to no order, and a status without order numbers is one a RIS rejects."""
    if record.worklist_items:
        return []
    return [n for n in decision.destinations if destination_types.get(n) == "hl7"]


def rows_for(record: ProcedureStepEventRecord, decision: Decision, dataset: Dataset,
             ruleset: str, destination_types: Mapping[str, str],
             destination_options: Mapping[str, Mapping[str, str]] | None = None,
             *, withhold: bool = True) -> list[NewOutboxRow]:
    """One decision's outbox rows (one per supported destination). ``withhold=False`` (dry
    runs, which know no worklist) renders the statuses :func:`withheld` would hold back."""
    options = destination_options or {}
    skipped = set(withheld(record, decision, destination_types)) if withhold else set()
    step = record.step
    common: dict[str, Any] = {
        "v": PAYLOAD_VERSION, "route": decision.route, "ruleset": ruleset,
        "trigger": {"level": "procedure_step", "operation": record.operation,
                    "status": record.status},
        "procedure_step": {"journal_id": record.id, "sop_instance_uid": step.sop_instance_uid,
                           "study_instance_uid": step.study_instance_uid,
                           "accession_number": step.accession_number, "status": record.status,
                           "worklist_item_ids": list(step.worklist_item_ids)},
    }
    rows: list[NewOutboxRow] = []
    for name in decision.destinations:
        kind = str(destination_types.get(name, ""))
        dest = {"name": name, "type": kind}
        if name in skipped or (kind == "mpps" and record.operation == "link"):
            continue
        if kind == "mpps":
            body = {**common, "kind": "mpps", "destination": dest,
                    "mpps": {"operation": record.operation,
                             "sop_instance_uid": step.sop_instance_uid,
                             "dataset": _received_json(record)}}
        elif kind == "hl7":
            dest_options = options.get(name, {})
            update = render_status_update(
                event_id=record.id, status=record.status, received_at=record.received_at,
                dataset=dataset, items=[s.item for s in record.worklist_items],
                accession_number=step.accession_number,
                charset=dest_options.get("charset", ""),
                receiving_application=dest_options.get("receiving_application", ""),
                receiving_facility=dest_options.get("receiving_facility", ""))
            body = {**common, "kind": "hl7", "destination": dest, "message": update.text,
                    "message_type": MESSAGE_TYPE, "control_id": update.control_id}
        elif kind == "fhir":
            task = render_task(
                status=record.status, received_at=record.received_at, dataset=dataset,
                sop_instance_uid=step.sop_instance_uid,
                study_instance_uid=step.study_instance_uid,
                accession_number=step.accession_number, patient_id=step.patient_id,
                items=[s.item for s in record.worklist_items])
            body = {**common, "kind": "fhir", "destination": dest, "resource": task}
        else:
            log.warning("routing.procedure_step.unsupported_destination", route=decision.route,
                        destination=name, type=kind, journal_id=record.id)
            continue
        rows.append(NewOutboxRow(destination=name, kind=body["kind"], source_table=SOURCE_TABLE,
                                 source_id=record.id, route=decision.route,
                                 payload=_dumps(body),
                                 study_instance_uid=step.study_instance_uid or None))
    return rows


def plan_procedure_step(ruleset: Ruleset, record: ProcedureStepEventRecord
                        ) -> tuple[RoutingPlan, list[Decision]]:
    """The routing plan of one procedure step event, and the decisions that made it."""
    dataset = event_dataset(record)
    decisions = ruleset.evaluate("procedure_step", subject_of(record, dataset))
    rows: list[NewOutboxRow] = []
    for decision in decisions:
        if not decision.discard:
            for name in withheld(record, decision, ruleset.destination_types):
                STATUS_MESSAGES_WITHHELD.labels("no_order").inc()
                log.warning("routing.procedure_step.no_order", route=decision.route,
                            destination=name, journal_id=record.id,
                            sop_instance_uid=record.step.sop_instance_uid,
                            accession_number=record.step.accession_number,
                            study_instance_uid=record.step.study_instance_uid)
            rows.extend(rows_for(record, decision, dataset, ruleset.version,
                                 ruleset.destination_types, ruleset.destination_options))
    outcome: RoutingOutcome = ("routed" if rows else "discarded" if decisions
                               else "unmatched")
    return RoutingPlan(SOURCE_TABLE, record.id, outcome, tuple(rows)), decisions
