"""The worklist's own rules over its items: the status life cycle and the changes an order makes.

Owns :func:`can_transition` (the moves a :class:`~engine.records.worklist.WorklistStatus` may
make), the change records that :mod:`engine.worklist.mapping` plans from an HL7 message and
:func:`demographics_apply`, and the DICOM keyword → item attribute tables the mapping and the
query use. The item itself is a record shared with the store (:mod:`engine.records.worklist`).
It must not import the store, pydicom's network side or HL7 parsing: everything here is plain,
frozen data and pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from engine.records.worklist import WorklistItem, WorklistStatus

# Allowed moves; a final state has none. SCHEDULED → COMPLETED is allowed because some RIS
# report completion (ORC-5 CM) without ever saying the step started.
_TRANSITIONS: dict[WorklistStatus, frozenset[WorklistStatus]] = {
    WorklistStatus.SCHEDULED: frozenset({WorklistStatus.IN_PROGRESS, WorklistStatus.COMPLETED,
                                         WorklistStatus.DISCONTINUED, WorklistStatus.CANCELLED}),
    WorklistStatus.IN_PROGRESS: frozenset({WorklistStatus.COMPLETED,
                                           WorklistStatus.DISCONTINUED}),
}


def can_transition(current: WorklistStatus, new: WorklistStatus) -> bool:
    """Whether an item in ``current`` may move to ``new`` (staying put is always allowed)."""
    return new == current or new in _TRANSITIONS.get(current, frozenset())


# --- planned changes -----------------------------------------------------------------------
class OrderControl(StrEnum):
    """ORC-1 values radflow acts on (HL7 table 0119)."""

    NEW = "NW"
    CHANGE = "XO"
    CANCEL = "CA"
    DISCONTINUE = "DC"
    STATUS_CHANGE = "SC"


@dataclass(frozen=True, slots=True)
class OrderChange:
    """What one ORC group of an order message asks for.

    ``item`` is the full mapped item for NW / XO; for CA / DC / SC only the order keys are read
    (such messages often carry nothing else), and ``new_status`` says where the item goes.
    ``study_uid_generated`` tells an XO not to replace a UID the modality may already use.
    """

    control: OrderControl
    placer_order_number: str
    filler_order_number: str
    item: WorklistItem | None = None
    new_status: WorklistStatus | None = None
    study_uid_generated: bool = False
    #: the HL7 path that identified the order, for error messages (``ORC-2``)
    order_path: str = "ORC-2"
    group: int = 1
    #: MSH-4 of the message: order numbers are unique per placer, not across hospitals
    source: str = ""


@dataclass(frozen=True, slots=True)
class OrderChanges:
    """An ORM^O01 / OMI^O23: one change per ORC group, applied in order."""

    orders: tuple[OrderChange, ...]


@dataclass(frozen=True, slots=True)
class Demographics:
    """Patient attributes an ADT message carries onto the items of that patient."""

    patient_id: str
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    specific_character_set: tuple[str, ...] = ()
    #: keywords present in the message (an absent field must not blank the item's value)
    present: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class PatientUpdate:
    """ADT^A08: new demographics for every non-final item of the patient."""

    patient: Demographics


@dataclass(frozen=True, slots=True)
class PatientMerge:
    """ADT^A40: the items of ``prior_patient_id`` now belong to ``patient``."""

    prior_patient_id: str
    prior_issuer: str
    patient: Demographics


WorklistChange = OrderChanges | PatientUpdate | PatientMerge


def demographics_apply(item: WorklistItem, patient: Demographics) -> WorklistItem:
    """``item`` with the demographics the ADT message carried (absent fields left alone)."""
    changes: dict[str, Any] = {"patient_id": patient.patient_id}
    for name in ("issuer_of_patient_id", "patient_name", "patient_birth_date", "patient_sex"):
        if name in patient.present:
            changes[name] = getattr(patient, name)
    if "patient_name" in patient.present and patient.specific_character_set:
        changes["specific_character_set"] = _wider_charset(item.specific_character_set,
                                                           patient.specific_character_set)
    return item.replace(**changes)


def _wider_charset(old: tuple[str, ...], new: tuple[str, ...]) -> tuple[str, ...]:
    # The item's other names were decoded under ``old``; UTF-8 holds both when they differ.
    if old == new or not old:
        return new
    if not new:
        return old
    return ("ISO_IR 192",)


__all__ = [
    "DEMOGRAPHIC_KEYWORDS", "KEYWORDS", "SPS_KEYWORDS", "Demographics", "OrderChange",
    "OrderChanges", "OrderControl", "PatientMerge", "PatientUpdate", "WorklistChange",
    "can_transition", "demographics_apply",
]

#: DICOM keyword → :class:`WorklistItem` attribute, for every attribute a mapping may set
KEYWORDS: dict[str, str] = {
    "PatientID": "patient_id",
    "IssuerOfPatientID": "issuer_of_patient_id",
    "PatientName": "patient_name",
    "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex",
    "AccessionNumber": "accession_number",
    "RequestedProcedureID": "requested_procedure_id",
    "RequestedProcedureDescription": "requested_procedure_description",
    "RequestedProcedureCodeSequence": "requested_procedure_code",
    "StudyInstanceUID": "study_instance_uid",
    "ReferringPhysicianName": "referring_physician_name",
    "PlacerOrderNumberImagingServiceRequest": "placer_order_number",
    "FillerOrderNumberImagingServiceRequest": "filler_order_number",
    "ScheduledProcedureStepID": "scheduled_procedure_step_id",
    "Modality": "modality",
    "ScheduledStationAETitle": "scheduled_station_ae_title",
    "ScheduledStationName": "scheduled_station_name",
    "ScheduledProcedureStepStartDate": "scheduled_procedure_step_start_date",
    "ScheduledProcedureStepStartTime": "scheduled_procedure_step_start_time",
    "ScheduledPerformingPhysicianName": "scheduled_performing_physician_name",
    "ScheduledProcedureStepDescription": "scheduled_procedure_step_description",
    "ScheduledProtocolCodeSequence": "scheduled_protocol_code",
}
#: keywords inside the Scheduled Procedure Step Sequence item
SPS_KEYWORDS: frozenset[str] = frozenset({
    "ScheduledProcedureStepID", "Modality", "ScheduledStationAETitle", "ScheduledStationName",
    "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime",
    "ScheduledPerformingPhysicianName", "ScheduledProcedureStepDescription",
    "ScheduledProtocolCodeSequence",
})
#: the patient-level keywords an ADT message may carry
DEMOGRAPHIC_KEYWORDS: tuple[str, ...] = ("PatientID", "IssuerOfPatientID", "PatientName",
                                         "PatientBirthDate", "PatientSex")
