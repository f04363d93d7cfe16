"""The worklist item as a record: its status, its attributes, and how the store keeps it.

Owns :class:`WorklistItem` (one Requested Procedure with its one Scheduled Procedure Step, the
attributes a modality asks for in a Modality Worklist C-FIND, named by their DICOM keywords in
snake case) with its JSON form, :class:`StoredWorklistItem` (an item with its row id),
:class:`WorklistStatus` with the final and active sets, and the PN folding the store indexes
names by. Values are kept as DICOM wants them (DA ``YYYYMMDD``, TM ``HHMMSS``, PN with
``=``-separated component groups), so answering a query never converts anything. The worklist
stage and the store both speak these records, so they live below both. It must not hold the
life-cycle rules, HL7 mapping or C-FIND matching (those are the worklist stage's, in
:mod:`engine.worklist.model` and :mod:`engine.worklist.query`) nor import anything of radflow's.
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


# --- names (the store indexes each component group, folded) --------------------------------------
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


ITEM_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(WorklistItem))
