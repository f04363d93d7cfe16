"""Past-tense facts that flow on the event bus, as frozen dataclasses.

An event is published only after what it describes is durable (D1), so a lost event can always be
rebuilt from the journal. Events carry identifiers and routing context, never pixel data and never
anything a subscriber could mutate. This module must not import engine subsystems.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of every bus event."""

    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class InstanceStored(Event):
    """A DICOM instance was written to the spool and committed to the journal."""

    journal_id: int
    object_id: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    transfer_syntax_uid: str
    calling_ae: str
    called_ae: str
    peer_host: str
    listener: str
    size_bytes: int
    version: int
    # correlation keys (engine.observability.logging.CORRELATION_KEYS) where the object has them
    accession_number: str | None = None
    patient_id: str | None = None


@dataclass(frozen=True, slots=True)
class AssociationRejected(Event):
    """An association request was refused before any data was exchanged."""

    listener: str
    calling_ae: str
    called_ae: str
    peer_host: str
    reason: str


@dataclass(frozen=True, slots=True)
class OrderReceived(Event):
    """An HL7 message (order or ADT update) was accepted (AA) and committed to the journal."""

    journal_id: int
    message_type: str  # MSH-9.1^MSH-9.2, e.g. "ORM^O01"
    control_id: str
    peer_host: str
    listener: str
    # correlation keys of the order(s) it carries, as the worklist mapping read them ("" when
    # unknown; comma-separated when one message holds several orders)
    accession_number: str = ""
    study_instance_uid: str = ""
    placer_order_number: str = ""
    filler_order_number: str = ""
    patient_id: str = ""
    #: the worklist items the message created or changed
    worklist_item_ids: tuple[int, ...] = ()


# --- Modality Performed Procedure Step (engine.procedure) ------------------------------------
@dataclass(frozen=True, slots=True)
class ProcedureStepEvent(Event):
    """A committed MPPS fact; ``journal_id`` is its ``procedure_step_events`` row."""

    journal_id: int
    sop_instance_uid: str
    study_instance_uid: str
    accession_number: str
    worklist_item_ids: tuple[int, ...]
    unscheduled: bool
    calling_ae: str


@dataclass(frozen=True, slots=True)
class ProcedureStepStarted(ProcedureStepEvent):
    """An N-CREATE (IN PROGRESS) was committed."""


@dataclass(frozen=True, slots=True)
class ProcedureStepCompleted(ProcedureStepEvent):
    """An N-SET to COMPLETED was committed, with the instances the step lists."""

    expected_instances: int = 0


@dataclass(frozen=True, slots=True)
class ProcedureStepDiscontinued(ProcedureStepEvent):
    """An N-SET to DISCONTINUED was committed."""
