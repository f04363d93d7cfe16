"""Dry runs: which routes an object would match and why, each morph's before/after diff, and
the destinations — without writing or sending anything.

Shared by ``radflow rules test`` and ``POST /api/v1/routes/test``. The object is read from the
bytes given (a Part 10 file); the routing context (calling/called AE, source, time) is what the
caller says. Morph previews run on copies with the site secret, exactly as a sender would.

A procedure step event (:func:`dry_run_step`: the MPPS attributes as DICOM JSON, and the step's
status) goes through the ``procedure_step`` routes the same way, and each decision's messages
are rendered as the router would queue them (the HL7 status update, the FHIR Task, the MPPS
forward), without worklist items: a dry run does not read the store.
It must not touch the store, the spool or the network.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from engine.durable.routing import ProcedureStepEventRecord
from engine.morph import Change, MorphError, MorphKeys, apply_steps, diff
from engine.pipeline import procedure_steps
from engine.procedure.model import scheduled_keys
from engine.records.procedure_step import PpsStatus, ProcedureStep
from engine.rules.ruleset import (
    Decision,
    DicomSubject,
    RouteCommitment,
    RouteTrace,
    RoutingContext,
    Ruleset,
    commitment_of,
)


@dataclass
class MorphPreview:
    route: str
    destinations: tuple[str, ...]
    steps: list[str]
    changes: list[Change] = field(default_factory=list)
    error: str | None = None


@dataclass
class DryRun:
    label: str
    sop_instance_uid: str
    study_instance_uid: str
    decisions: list[Decision]
    traces: list[RouteTrace]
    previews: list[MorphPreview]
    error: str | None = None
    #: a procedure step's messages as they would be queued: route, destination, kind, body
    messages: list[dict[str, Any]] = field(default_factory=list)
    event: str = "dicom"  # or procedure_step

    @property
    def outcome(self) -> str:
        if self.error:
            return "error"
        if not self.decisions:
            return "unmatched"
        if all(d.discard for d in self.decisions):
            return "discarded"
        return "routed"


def dry_run(data: bytes, ruleset: Ruleset, keys: MorphKeys, context: RoutingContext,
            label: str = "object") -> DryRun:
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.get("SOPInstanceUID")  # a broken file fails here, not halfway through the rules
    except Exception as exc:
        return DryRun(label, "", "", [], [], [], error=f"not a readable DICOM file: {exc}")
    decisions, traces = ruleset.explain("dicom", DicomSubject(ds, context))
    previews = []
    for decision in decisions:
        if not decision.morph:
            continue
        preview = MorphPreview(decision.route, decision.destinations,
                               [s.describe() for s in decision.morph])
        before: Dataset = copy.deepcopy(ds)
        after: Dataset = copy.deepcopy(ds)
        try:
            apply_steps(after, decision.morph, keys)
            preview.changes = diff(before, after)
        except MorphError as exc:
            preview.error = str(exc)
        previews.append(preview)
    return DryRun(label, str(ds.get("SOPInstanceUID", "")), str(ds.get("StudyInstanceUID", "")),
                  decisions, traces, previews)


def dry_run_step(data: bytes, ruleset: Ruleset, context: RoutingContext, *,
                 status: str | None = None, label: str = "procedure step") -> DryRun:
    """The ``procedure_step`` routes for an MPPS event: ``data`` is the step's attributes as
    DICOM JSON (PS3.18 F.2), ``status`` the event's (default: the attributes' own)."""
    try:
        text = data.decode("utf-8")
        ds = Dataset.from_json(text)
    except Exception as exc:
        return DryRun(label, "", "", [], [], [], error=f"not DICOM JSON: {exc}")
    raw_status = status or str(ds.get("PerformedProcedureStepStatus", "") or "")
    try:
        pps = PpsStatus(raw_status)
    except ValueError:
        return DryRun(label, "", "", [], [], [], error=(
            f"status {raw_status[:20]!r} is not IN PROGRESS, COMPLETED or DISCONTINUED"))
    keys = scheduled_keys(ds)
    study = keys[0].study_instance_uid if keys else ""
    when = context.now.isoformat()
    uid = str(ds.get("SOPInstanceUID", "") or "")
    step = ProcedureStep(
        id=0, sop_instance_uid=uid, status=pps, study_instance_uid=study,
        accession_number=keys[0].accession_number if keys else "",
        patient_id=str(ds.get("PatientID", "") or ""),
        performed_procedure_step_id=str(ds.get("PerformedProcedureStepID", "") or ""),
        modality=str(ds.get("Modality", "") or ""), calling_ae=context.calling_ae,
        worklist_item_ids=(), unscheduled=False, created_at=when, updated_at=when,
        expected_instances=0, received_instances=0, complete_at=None, dataset_json=text)
    record = ProcedureStepEventRecord(
        id=0, operation="create" if pps is PpsStatus.IN_PROGRESS else "set", status=pps.value,
        received=text, received_at=when, step=step)
    dataset = procedure_steps.event_dataset(record)
    decisions, traces = ruleset.explain(
        "procedure_step", procedure_steps.subject_of(record, dataset))
    messages = []
    for decision in decisions:
        if decision.discard:
            continue
        held = set(procedure_steps.withheld(record, decision, ruleset.destination_types))
        for row in procedure_steps.rows_for(record, decision, dataset, ruleset.version,
                                            ruleset.destination_types,
                                            ruleset.destination_options, withhold=False):
            body = json.loads(row.payload)
            content = body.get("message") or body.get("resource") or body.get("mpps")
            message = {"route": row.route, "destination": row.destination,
                       "kind": row.kind, "content": content}
            if row.destination in held:
                # A dry run knows no worklist: the real step sends this only once it is
                # linked to an order (the order numbers then filled in).
                message["note"] = "sent once the step is linked to an order"
            messages.append(message)
    return DryRun(label, uid, study, decisions, traces, [], messages=messages,
                  event="procedure_step")


def context_for(calling_ae: str = "", called_ae: str = "", source_ip: str = "",
                listener: str = "", when: dt.datetime | None = None) -> RoutingContext:
    return RoutingContext(calling_ae=calling_ae, called_ae=called_ae, source_ip=source_ip,
                          listener=listener, now=when or dt.datetime.now().astimezone())


def commitment_text(commitment: RouteCommitment | None) -> str | None:
    """A route's (or the matched routes') Storage Commitment, as the dry run shows it."""
    if commitment is None:
        return None
    if commitment.policy == "on_receipt":
        return "on_receipt"
    return f"on_archive ({', '.join(commitment.archives)})"


def to_json(run: DryRun) -> dict[str, Any]:
    return {
        "file": run.label, "event": run.event, "outcome": run.outcome, "error": run.error,
        "sop_instance_uid": run.sop_instance_uid, "study_instance_uid": run.study_instance_uid,
        "routes": [{
            "name": t.route.name, "source": t.route.source, "trigger": t.route.trigger.level,
            "considered": t.considered, "matched": t.matched, "note": t.note or None,
            "why": [{"matched": o.matched, "reason": o.reason.strip(),
                     "depth": (len(o.reason) - len(o.reason.lstrip(" "))) // 2}
                    for o in t.reasons],
        } for t in run.traces],
        "decisions": [{
            "route": d.route, "trigger": d.trigger.describe(),
            "destinations": list(d.destinations), "discard": d.discard, "stop": d.stop,
            "fallback": d.fallback, "morph": [s.describe() for s in d.morph],
            "commitment": commitment_text(d.commitment),
        } for d in run.decisions],
        "messages": run.messages,
        "morphs": [{
            "route": p.route, "destinations": list(p.destinations), "steps": p.steps,
            "error": p.error,
            "changes": [{"path": c.path, "kind": c.kind, "before": c.before, "after": c.after}
                        for c in p.changes],
        } for p in run.previews],
    }


def render_text(run: DryRun) -> str:
    """The dry run as a person reads it in a terminal."""
    lines = [f"{run.label}: {run.outcome.upper()}"
             + (f" (SOP Instance UID {run.sop_instance_uid})" if run.sop_instance_uid else "")]
    if run.error:
        lines.append(f"  {run.error}")
        return "\n".join(lines)
    for t in run.traces:
        mark = "MATCH" if t.matched else ("  -  " if not t.considered else "no   ")
        head = f"  [{mark}] {t.route.name} ({t.route.trigger.level}; {t.route.source})"
        if t.note:
            head += f" — {t.note}"
        lines.append(head)
        for o in t.reasons:
            lines.append(f"      {'✓' if o.matched else '✗'} {o.reason}")
    if not run.decisions:
        lines.append("  no route matched: the event would be journalled as unmatched"
                     if run.event == "procedure_step" else
                     "  no route matched: the object would be kept as unmatched "
                     "(GET /api/v1/routes/unmatched)")
    for d in run.decisions:
        if d.discard:
            lines.append(f"  -> {d.route}: discarded (stop, no destinations)")
            continue
        lines.append(f"  -> {d.route}: {', '.join(d.destinations)} "
                     f"[{d.trigger.describe()}]" + (" (fallback)" if d.fallback else ""))
    asked = commitment_text(commitment_of(run.decisions))
    if asked is not None:
        lines.append(f"  Storage Commitment: {asked}, unless the calling AE has its own policy "
                     "under commitment.modalities")
    for message in run.messages:
        note = f" [{message['note']}]" if message.get("note") else ""
        lines.append(f"  {message['kind']} for {message['destination']} "
                     f"(route {message['route']}){note}:")
        content = message["content"]
        shown = content if isinstance(content, str) else json.dumps(
            content, indent=2, ensure_ascii=False)
        lines.extend(f"      {line}" for line in shown.replace("\r", "\n").splitlines())
    for p in run.previews:
        lines.append(f"  morph for {p.route} ({', '.join(p.destinations)}):")
        for step in p.steps:
            lines.append(f"      step: {step}")
        if p.error:
            lines.append(f"      ERROR: {p.error}")
        for change in p.changes:
            lines.append(f"      {change}")
        if not p.changes and not p.error:
            lines.append("      (no attribute changed)")
    return "\n".join(lines)
