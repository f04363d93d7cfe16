"""The worklist domain's vocabulary: item status, the MWL item, and the changes an order makes.

Owns :class:`WorklistItem` (one Requested Procedure with its one Scheduled Procedure Step, the
attributes a modality asks for in a Modality Worklist C-FIND, named by their DICOM keywords in
snake case), :class:`WorklistStatus` and its life-cycle rules, and the change records that
:mod:`engine.worklist.mapping` plans from an HL7 message. Values are stored as DICOM wants them
(DA ``YYYYMMDD``, TM ``HHMMSS``, PN with ``=``-separated component groups), so answering a query
never converts anything. It must not import the store, pydicom's network side or HL7 parsing:
everything here is plain, frozen data and pure functions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class WorklistStatus(StrEnum):
    """Where an item is in its life: scheduled → in progress → completed / discontinued.

    CANCELLED comes from the order placer (ORC-1 CA) before the step started; DISCONTINUED from
    ORC-1 DC or an MPPS that stopped the step. The three final states are never shown to a
    modality and never change again.
    """

    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"
    CANCELLED = "CANCELLED"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES: frozenset[WorklistStatus] = frozenset(
    {WorklistStatus.COMPLETED, WorklistStatus.DISCONTINUED, WorklistStatus.CANCELLED})
#: what a Modality Worklist query may return
ACTIVE_STATUSES: tuple[WorklistStatus, ...] = (WorklistStatus.SCHEDULED,
                                               WorklistStatus.IN_PROGRESS)

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


@dataclass(frozen=True, slots=True)
class CodeItem:
    """One item of a code sequence (PS3.3 8.8): CodeValue, CodingSchemeDesignator, CodeMeaning."""

    value: str
    scheme: str = ""
    meaning: str = ""


@dataclass(frozen=True, slots=True)
class WorklistItem:
    """One worklist entry: a Requested Procedure with its Scheduled Procedure Step."""

    patient_id: str
    status: WorklistStatus = WorklistStatus.SCHEDULED
    issuer_of_patient_id: str = ""
    #: DICOM PN: ``family^given^middle^prefix^suffix``, groups ``alphabetic=ideographic=phonetic``
    patient_name: str = ""
    patient_birth_date: str = ""  # DA
    patient_sex: str = ""  # CS: M, F, O
    accession_number: str = ""
    requested_procedure_id: str = ""
    requested_procedure_description: str = ""
    requested_procedure_code: tuple[CodeItem, ...] = ()
    study_instance_uid: str = ""
    referring_physician_name: str = ""  # PN
    placer_order_number: str = ""  # PlacerOrderNumberImagingServiceRequest
    filler_order_number: str = ""  # FillerOrderNumberImagingServiceRequest
    # --- the Scheduled Procedure Step (one per item) ---
    scheduled_procedure_step_id: str = ""
    modality: str = ""
    scheduled_station_ae_title: str = ""
    scheduled_station_name: str = ""
    scheduled_procedure_step_start_date: str = ""  # DA
    scheduled_procedure_step_start_time: str = ""  # TM, HHMMSS[.FFFFFF]
    scheduled_performing_physician_name: str = ""  # PN
    scheduled_procedure_step_description: str = ""
    scheduled_protocol_code: tuple[CodeItem, ...] = ()
    #: DICOM Specific Character Set defined terms the names need ("" = default repertoire);
    #: several values for ISO 2022 code extensions, e.g. ``("", "ISO 2022 IR 87")``
    specific_character_set: tuple[str, ...] = ()
    #: MSH-4 of the order that created the item: order numbers are only unique per placer
    source: str = ""
    #: MSH-3 of that order: where status messages about the item are addressed by default
    source_application: str = ""
    #: the HL7 character set (table 0211 name) that order was read in: status messages
    #: answering it are written in the same one unless the destination names another
    source_charset: str = ""
    created_at: str = ""  # ISO 8601 UTC
    updated_at: str = ""

    def replace(self, **changes: Any) -> WorklistItem:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the store's ``data`` column and the HTTP API use it)."""
        out = dataclasses.asdict(self)
        out["status"] = self.status.value
        out["specific_character_set"] = list(self.specific_character_set)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorklistItem:
        """The inverse of :meth:`to_json`; unknown keys are a ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown worklist item keys: {', '.join(unknown)}")
        values = dict(data)
        if "status" in values:
            values["status"] = WorklistStatus(values["status"])
        for key in ("requested_procedure_code", "scheduled_protocol_code"):
            if key in values:
                values[key] = tuple(
                    c if isinstance(c, CodeItem) else CodeItem(**c) for c in values[key] or ())
        if "specific_character_set" in values:
            raw = values["specific_character_set"]
            values["specific_character_set"] = (
                tuple(raw.split("\\")) if isinstance(raw, str) else tuple(raw or ()))
        return cls(**values)


@dataclass(frozen=True, slots=True)
class StoredWorklistItem:
    """A worklist item as read back from the store, with its row id."""

    id: int
    item: WorklistItem


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


# --- names ---------------------------------------------------------------------------------
def fold_case(value: str) -> str:
    """Upper-case one character at a time, keeping the length (``ß`` stays ``ß``).

    Used for case-insensitive PN matching on both the stored column and the query pattern: a
    folding that changed lengths (``ß`` → ``SS``) would break ``?`` wildcards.
    """
    if value.isascii():
        return value.upper()
    return "".join(u if len(u := c.upper()) == 1 else c for c in value)


def name_groups(pn: str) -> tuple[str, str, str]:
    """The alphabetic, ideographic and phonetic component groups of a PN value."""
    parts = pn.split("=")
    parts += [""] * (3 - len(parts))
    return parts[0], parts[1], parts[2]


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


ITEM_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(WorklistItem))
__all__ = [
    "ACTIVE_STATUSES", "DEMOGRAPHIC_KEYWORDS", "FINAL_STATUSES", "ITEM_FIELDS", "KEYWORDS",
    "SPS_KEYWORDS", "CodeItem", "Demographics",
    "OrderChange", "OrderChanges", "OrderControl", "PatientMerge", "PatientUpdate",
    "StoredWorklistItem", "WorklistChange", "WorklistItem", "WorklistStatus", "can_transition",
    "demographics_apply", "fold_case", "name_groups",
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
