"""The admin API's answer models: what the main reading routes answer, as pydantic models.

Each route that declares one (``response=`` in :meth:`engine.admin.api.Api.route`) builds its
answer through it (:func:`answer`), and the OpenAPI description states the same schema, so a
property-based API tester checks real shapes instead of "some object", and the description
cannot drift from what is sent. Models here describe; they hold no logic, read nothing and must
not import the stages (the worklist item's fields come from its record, below the store).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, create_model

from engine.admin.api import model_response
from engine.records.procedure_step import PpsStatus
from engine.records.worklist import WorklistItem


class Answer(BaseModel):
    """Base of every answer model: a field the handler adds but the model lacks is a bug the
    tests catch (``extra="forbid"``), not a silent gap in the description."""

    model_config = ConfigDict(extra="forbid")


def answer(model: type[BaseModel], data: Mapping[str, Any], status: int = 200) -> web.Response:
    """``data`` checked against ``model`` and sent as JSON."""
    return model_response(model.model_validate(data), status)


# --- probes and the console ------------------------------------------------------------------
class Health(Answer):
    status: Literal["alive"]
    version: str


class Check(Answer):
    ok: bool
    detail: str


class Readiness(Answer):
    status: Literal["ready", "not ready"]
    stopping: bool
    checks: dict[str, Check]


class ConsoleSettings(Answer):
    site: str
    time_zone: str | None = Field(description="IANA name; null: the browser's own zone")
    version: str


class Caller(Answer):
    user: str
    role: Literal["viewer", "operator", "admin"]
    via: Literal["session", "token", "legacy-token", "open"]
    csrf: str = Field(description="send as X-CSRF-Token on every change (sessions only)")


# --- instances -------------------------------------------------------------------------------
class Instance(Answer):
    id: int
    version: int
    superseded: bool
    routed_at: str | None
    object_id: str
    spool_path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    patient_id: str | None
    accession_number: str | None
    modality: str | None
    calling_ae: str
    called_ae: str
    peer_host: str
    listener: str
    size_bytes: int
    sha256: str
    received_at: str


class InstancePage(Answer):
    total: int
    items: list[Instance]


class StudyInstances(Answer):
    items: list[Instance]
    next_after: int | None = Field(description="?after= for the next page; null: no more")


# --- worklist and HL7 ------------------------------------------------------------------------
def _worklist_item_model() -> type[Answer]:
    """The worklist item's fields, from its record (so a new field is described at once),
    plus its row id; sequences are lists in JSON."""
    hints = typing.get_type_hints(WorklistItem)
    fields: dict[str, Any] = {"id": (int, ...)}
    for f in dataclasses.fields(WorklistItem):
        hint: Any = hints[f.name]
        if typing.get_origin(hint) is tuple:
            hint = list.__class_getitem__(typing.get_args(hint)[0])
        fields[f.name] = (hint, ...)
    model: type[Answer] = create_model("WorklistItem", __base__=Answer, **fields)
    return model


WorklistItemAnswer = _worklist_item_model()


class WorklistPage(Answer):
    total: int
    items: list[WorklistItemAnswer]  # type: ignore[valid-type]


class AckError(Answer):
    segment: str
    sequence: int
    field: int | None
    component: int | None
    code: int
    text: str
    severity: str


class Hl7Message(Answer):
    """A journal row; the MSH fields are null for a message that could not be parsed."""

    id: int
    sending_application: str | None
    sending_facility: str | None
    control_id: str | None
    message_type: str | None
    trigger_event: str | None
    peer_host: str
    listener: str
    received_at: str
    ack_code: str
    text: str | None
    errors: list[AckError]
    worklist_item_ids: list[int]


class Hl7MessagePage(Answer):
    total: int
    items: list[Hl7Message]


# --- queues and destinations -----------------------------------------------------------------
class Queue(Answer):
    destination: str
    type: str
    pending: int
    leased: int
    dead: int
    oldest_age_seconds: float | None = Field(description="age of the oldest undelivered row")
    circuit: Literal["closed", "open", "half_open"] | None = None
    last_delivered_at: str | None = Field(default=None, description="since radflow started")


class Queues(Answer):
    queues: list[Queue]


class DeadLetter(Answer):
    id: int
    destination: str
    kind: str
    route: str
    source_table: str
    source_id: int
    study_instance_uid: str | None
    attempts: int
    last_error: str | None
    created_at: str
    dead_since: str
    payload: str | None = Field(default=None, description="the frozen payload (JSON text), "
                                                          "with ?payload=true")


class DeadLetterPage(Answer):
    total: int
    items: list[DeadLetter]


class Destination(Answer):
    name: str
    type: str
    target: str
    tls: bool


class Destinations(Answer):
    destinations: list[Destination]


# --- procedure steps -------------------------------------------------------------------------
class ProcedureStep(Answer):
    id: int
    sop_instance_uid: str
    status: PpsStatus
    study_instance_uid: str
    accession_number: str
    patient_id: str
    performed_procedure_step_id: str
    modality: str
    calling_ae: str
    worklist_item_id: int | None
    worklist_item_ids: list[int]
    unscheduled: bool
    created_at: str
    updated_at: str
    expected_instances: int
    received_instances: int
    complete_at: str | None
    dataset: dict[str, Any] | None = Field(default=None,
                                           description="DICOM JSON (one step only)")


class ProcedureStepPage(Answer):
    total: int
    items: list[ProcedureStep]


# --- the trace -------------------------------------------------------------------------------
class TraceEntry(Answer):
    at: str
    kind: str
    summary: str
    details: dict[str, Any]


class Trace(Answer):
    by: Literal["accession", "study", "patient"]
    value: str
    found: bool
    truncated: bool
    keys: dict[str, list[str]]
    timeline: list[TraceEntry]


# --- users, tokens, changes ------------------------------------------------------------------
class User(Answer):
    name: str
    role: Literal["viewer", "operator", "admin"]
    created_at: str
    updated_at: str
    locked: bool
    failed_logins: int


class Users(Answer):
    items: list[User]


class Token(Answer):
    id: int
    user: str
    label: str
    created_at: str
    last_used_at: str | None
    revoked_at: str | None


class Tokens(Answer):
    items: list[Token]


class Change(Answer):
    id: int
    at: str
    user: str
    peer_host: str
    method: str
    path: str
    status: int
    detail: str


class ChangePage(Answer):
    total: int
    items: list[Change]


# --- dry runs --------------------------------------------------------------------------------
class Why(Answer):
    matched: bool
    reason: str
    depth: int = Field(description="nesting of the predicate (all/any/not)")


class RouteOutcome(Answer):
    name: str
    source: str | None
    trigger: str
    considered: bool = Field(description="false: skipped (other trigger, disabled, after a "
                                         "stop, fallback not needed)")
    matched: bool
    note: str | None
    why: list[Why]


class DryRunDecision(Answer):
    route: str
    trigger: str
    destinations: list[str]
    discard: bool
    stop: bool
    fallback: bool
    morph: list[str]
    commitment: str | None = Field(
        default=None, description="the route's Storage Commitment policy: on_receipt, "
                                  "on_archive (its archives); null: the calling AE's or the "
                                  "site's")


class MorphChange(Answer):
    path: str
    kind: Literal["added", "removed", "changed"]
    before: str | None
    after: str | None


class MorphPreview(Answer):
    route: str
    destinations: list[str]
    steps: list[str]
    error: str | None
    changes: list[MorphChange]


class DryRun(Answer):
    file: str = Field(description="the label of what was tried")
    event: str
    outcome: Literal["routed", "unmatched", "discarded", "error"]
    error: str | None
    sop_instance_uid: str
    study_instance_uid: str
    routes: list[RouteOutcome]
    decisions: list[DryRunDecision]
    messages: list[dict[str, Any]] = Field(description="procedure step events: the messages "
                                                       "as they would be queued")
    morphs: list[MorphPreview]
    instance: Instance | None = Field(default=None,
                                      description="the received instance tried (if one was)")
