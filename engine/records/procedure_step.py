"""The performed procedure step as a record: its status and what the store keeps and returns.

Owns :class:`PpsStatus` (Performed Procedure Step Status, PS3.3 C.4.14, and the worklist status
each value moves a linked item to), :class:`ScheduledStepKeys` and :class:`ExpectedInstance`,
the checked N-CREATE (:class:`NewProcedureStep`) and N-SET (:class:`StepUpdate`), the stored
:class:`ProcedureStep`, the :class:`WorklistLink` decided for it and the store's
:class:`ProcedureStepCommit`. The procedure stage and the store both speak these records, so
they live below both. It must not check datasets or decide links (the procedure stage's
:mod:`engine.procedure.model` does) nor touch the store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from engine.records.worklist import StoredWorklistItem, WorklistStatus


class PpsStatus(StrEnum):
    """Performed Procedure Step Status (0040,0252), PS3.3 C.4.14: enumerated values."""

    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"

    @property
    def is_final(self) -> bool:
        return self is not PpsStatus.IN_PROGRESS

    @property
    def worklist_status(self) -> WorklistStatus:
        return {PpsStatus.IN_PROGRESS: WorklistStatus.IN_PROGRESS,
                PpsStatus.COMPLETED: WorklistStatus.COMPLETED,
                PpsStatus.DISCONTINUED: WorklistStatus.DISCONTINUED}[self]


@dataclass(frozen=True, slots=True)
class ScheduledStepKeys:
    """The link keys of one Scheduled Step Attributes Sequence item."""

    study_instance_uid: str = ""
    accession_number: str = ""
    requested_procedure_id: str = ""
    scheduled_procedure_step_id: str = ""

    @property
    def empty(self) -> bool:
        return not (self.study_instance_uid or self.accession_number)


@dataclass(frozen=True, slots=True)
class ExpectedInstance:
    """One instance a COMPLETED step says it produced (Performed Series Sequence)."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str


@dataclass(frozen=True, slots=True)
class NewProcedureStep:
    """A checked N-CREATE, ready to commit."""

    sop_instance_uid: str
    keys: tuple[ScheduledStepKeys, ...]
    study_instance_uid: str
    accession_number: str
    patient_id: str
    performed_procedure_step_id: str
    modality: str
    calling_ae: str
    dataset_json: str  # the Attribute List as DICOM JSON (PS3.18 F.2), as received
    received_at: str  # ISO 8601 UTC


@dataclass(frozen=True, slots=True)
class ProcedureStep:
    """A performed procedure step as the store keeps it (``dataset_json``: as updated)."""

    id: int
    sop_instance_uid: str
    status: PpsStatus
    study_instance_uid: str
    accession_number: str
    patient_id: str
    performed_procedure_step_id: str
    modality: str
    calling_ae: str
    worklist_item_ids: tuple[int, ...]
    unscheduled: bool
    created_at: str
    updated_at: str
    expected_instances: int
    received_instances: int
    complete_at: str | None
    dataset_json: str

    def to_json(self, *, dataset: bool = False) -> dict[str, Any]:
        """The API's view (``dataset``: also the full MPPS attributes as DICOM JSON)."""
        out: dict[str, Any] = {
            "id": self.id, "sop_instance_uid": self.sop_instance_uid,
            "status": self.status.value, "study_instance_uid": self.study_instance_uid,
            "accession_number": self.accession_number, "patient_id": self.patient_id,
            "performed_procedure_step_id": self.performed_procedure_step_id,
            "modality": self.modality, "calling_ae": self.calling_ae,
            "worklist_item_id": self.worklist_item_ids[0] if self.worklist_item_ids else None,
            "worklist_item_ids": list(self.worklist_item_ids),
            "unscheduled": self.unscheduled, "created_at": self.created_at,
            "updated_at": self.updated_at, "expected_instances": self.expected_instances,
            "received_instances": self.received_instances, "complete_at": self.complete_at,
        }
        if dataset:
            out["dataset"] = json.loads(self.dataset_json)
        return out


@dataclass(frozen=True, slots=True)
class StepUpdate:
    """What an accepted N-SET does to a step (decided inside the store's transaction)."""

    status: PpsStatus
    dataset_json: str  # the step's attributes after the modification
    modification_json: str  # the Modification List as received
    expected: tuple[ExpectedInstance, ...]  # listed instances, kept when COMPLETED


@dataclass(frozen=True, slots=True)
class WorklistLink:
    """The worklist items a step links to, and those whose status changes with it."""

    item_ids: tuple[int, ...]
    updates: tuple[StoredWorklistItem, ...]
    refused: tuple[tuple[int, str], ...] = ()  # (item id, its status) that could not move


@dataclass(frozen=True, slots=True)
class ProcedureStepCommit:
    """The store's answer to a committed N-CREATE or N-SET."""

    step: ProcedureStep
    event_id: int | None  # the journal row of a Started/Completed/Discontinued event
    link: WorklistLink
    missing: tuple[str, ...] = ()  # listed instances not in the journal yet (COMPLETED)
