"""Modality Performed Procedure Step (PS3.4 Annex F, PS3.3 C.4.13-C.4.16): the pure rules.

Owns the checks PS3.4 asks of an SCP, over the step records of :mod:`engine.records.procedure_step`
(which the store keeps and returns): :func:`check_create` for an N-CREATE Attribute List,
:func:`apply_set` for an N-SET Modification List against the stored step, :func:`worklist_link` for
the Scheduled Step Attributes Sequence → worklist items (using the worklist's own transition rules)
and :func:`expected_instances` for the evidence a COMPLETED step lists. Everything here is pure
(datasets in, records or errors out): it must not touch the store, the bus or the network.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from engine.dicom.vr import is_valid_uid
from engine.errors import (
    InvalidAttributeValue,
    MissingAttribute,
    MissingAttributeValue,
    ProcedureStepFinal,
)
from engine.records.procedure_step import (
    ExpectedInstance,
    NewProcedureStep,
    PpsStatus,
    ProcedureStep,
    ScheduledStepKeys,
    StepUpdate,
    WorklistLink,
)
from engine.records.worklist import StoredWorklistItem
from engine.worklist.model import can_transition

#: PS3.4 Table F.7.2-1, N-CREATE type 1 (SCU must send a value) at the top level
CREATE_TYPE1: tuple[str, ...] = (
    "ScheduledStepAttributesSequence", "PerformedProcedureStepID", "PerformedStationAETitle",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "PerformedProcedureStepStatus", "Modality")
#: N-SET "Not allowed" (Table F.7.2-1): identity and scheduling facts fixed at N-CREATE. An
#: N-SET that repeats them unchanged is accepted (many modalities resend the whole dataset).
SET_NOT_ALLOWED: frozenset[str] = frozenset({
    "SOPClassUID", "SOPInstanceUID", "ScheduledStepAttributesSequence", "PatientName",
    "PatientID", "PatientBirthDate", "PatientSex", "PerformedProcedureStepID",
    "PerformedStationAETitle", "PerformedStationName", "PerformedLocation",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "Modality",
    "StudyID"})
#: required with a value once the step is final (Table F.7.2-1, "Final State" column)
FINAL_TYPE1: tuple[str, ...] = ("PerformedProcedureStepEndDate",
                                "PerformedProcedureStepEndTime")


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return int(tag)


# --- helpers ---------------------------------------------------------------------------------
def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def _has_value(ds: Dataset, keyword: str) -> bool:
    elem = ds.get(keyword)
    if elem is None:
        return False
    value = ds[keyword].value
    return value not in (None, "", b"") and not (isinstance(value, list) and not value)


def dataset_json(ds: Dataset) -> str:
    return json.dumps(ds.to_json_dict(), ensure_ascii=False, separators=(",", ":"))


def dataset_from_json(text: str) -> Dataset:
    return Dataset.from_json(text)


def parse_status(ds: Dataset) -> PpsStatus:
    raw = _text(ds, "PerformedProcedureStepStatus")
    try:
        return PpsStatus(raw)
    except ValueError:
        raise InvalidAttributeValue(
            f"PerformedProcedureStepStatus {raw[:20]!r} is not IN PROGRESS, COMPLETED or "
            "DISCONTINUED", (_tag("PerformedProcedureStepStatus"),)) from None


def scheduled_keys(ds: Dataset) -> tuple[ScheduledStepKeys, ...]:
    return tuple(ScheduledStepKeys(
        study_instance_uid=_text(item, "StudyInstanceUID"),
        accession_number=_text(item, "AccessionNumber"),
        requested_procedure_id=_text(item, "RequestedProcedureID"),
        scheduled_procedure_step_id=_text(item, "ScheduledProcedureStepID"),
    ) for item in ds.get("ScheduledStepAttributesSequence") or ())


# --- N-CREATE ---------------------------------------------------------------------------------
def check_create(sop_instance_uid: str, ds: Dataset, *, calling_ae: str, received_at: str
                 ) -> NewProcedureStep:
    """A checked N-CREATE (PS3.4 F.7.2.1): type 1 attributes present with a value, the status
    IN PROGRESS, the SSA items with their Study Instance UID. Raises a ProcedureStepError."""
    if not is_valid_uid(sop_instance_uid):
        raise InvalidAttributeValue("Affected SOP Instance UID is not a valid UID")
    absent = [k for k in CREATE_TYPE1 if k not in ds]
    if absent:
        raise MissingAttribute(f"missing {', '.join(absent)}"[:64],
                               tuple(_tag(k) for k in absent))
    empty = [k for k in CREATE_TYPE1 if not _has_value(ds, k)]
    if empty:
        raise MissingAttributeValue(f"no value for {', '.join(empty)}"[:64],
                                    tuple(_tag(k) for k in empty))
    status = parse_status(ds)
    if status is not PpsStatus.IN_PROGRESS:
        raise InvalidAttributeValue("N-CREATE must set PerformedProcedureStepStatus "
                                    "IN PROGRESS", (_tag("PerformedProcedureStepStatus"),))
    for item in ds.ScheduledStepAttributesSequence:
        # Type 1 inside the item even for an unscheduled step (the modality generates a UID).
        if not _has_value(item, "StudyInstanceUID"):
            raise MissingAttributeValue("no Study Instance UID in a Scheduled Step item",
                                        (_tag("StudyInstanceUID"),))
        if not is_valid_uid(_text(item, "StudyInstanceUID")):
            raise InvalidAttributeValue("Study Instance UID is not a valid UID",
                                        (_tag("StudyInstanceUID"),))
    keys = scheduled_keys(ds)
    first = keys[0] if keys else ScheduledStepKeys()
    return NewProcedureStep(
        sop_instance_uid=sop_instance_uid, keys=keys,
        study_instance_uid=first.study_instance_uid, accession_number=first.accession_number,
        patient_id=_text(ds, "PatientID"),
        performed_procedure_step_id=_text(ds, "PerformedProcedureStepID"),
        modality=_text(ds, "Modality"), calling_ae=calling_ae,
        dataset_json=dataset_json(ds), received_at=received_at)


# --- N-SET ------------------------------------------------------------------------------------
def apply_set(step: ProcedureStep, modification: Dataset) -> StepUpdate:
    """The step after ``modification`` (PS3.4 F.7.2.2): only an IN PROGRESS step may change;
    a new status must be one of the enumerated values; fixed attributes may be repeated but
    not changed; a final status needs the final-state attributes. Raises a ProcedureStepError.
    Elements replace the stored ones whole (sequences included), as N-SET defines."""
    if step.status.is_final:
        raise ProcedureStepFinal(f"the step is {step.status.value}")
    current = dataset_from_json(step.dataset_json)
    status = parse_status(modification) if "PerformedProcedureStepStatus" in modification \
        else step.status
    changed = [e.keyword for e in modification
               if e.keyword in SET_NOT_ALLOWED and (e.keyword not in current
                                                    or current[e.tag] != e)]
    if changed:
        raise InvalidAttributeValue(f"N-SET may not change {', '.join(changed)}"[:64],
                                    tuple(_tag(k) for k in changed))
    merged = Dataset()
    merged.update(current)
    for elem in modification:
        merged[elem.tag] = elem
    expected: tuple[ExpectedInstance, ...] = ()
    if status.is_final:
        absent = [k for k in FINAL_TYPE1 if not _has_value(merged, k)]
        if absent:
            raise MissingAttributeValue(f"a final step needs {', '.join(absent)}"[:64],
                                        tuple(_tag(k) for k in absent))
        series = merged.get("PerformedSeriesSequence") or []
        if status is PpsStatus.COMPLETED and not series:
            # Table F.7.2-1 note: a completed step has at least one series item.
            raise MissingAttributeValue("a COMPLETED step needs a Performed Series Sequence",
                                        (_tag("PerformedSeriesSequence"),))
        expected = expected_instances(merged)
    return StepUpdate(status=status, dataset_json=dataset_json(merged),
                      modification_json=dataset_json(modification), expected=expected)


def expected_instances(ds: Dataset) -> tuple[ExpectedInstance, ...]:
    """Every instance the Performed Series Sequence references (image and non-image)."""
    out: dict[str, ExpectedInstance] = {}
    for series in ds.get("PerformedSeriesSequence") or ():
        series_uid = _text(series, "SeriesInstanceUID")
        for key in ("ReferencedImageSequence",
                    "ReferencedNonImageCompositeSOPInstanceSequence"):
            for ref in series.get(key) or ():
                uid = _text(ref, "ReferencedSOPInstanceUID")
                if uid and uid not in out:
                    out[uid] = ExpectedInstance(uid, _text(ref, "ReferencedSOPClassUID"),
                                                series_uid)
    return tuple(out.values())


# --- worklist link ----------------------------------------------------------------------------
def links_to(item: StoredWorklistItem, keys: ScheduledStepKeys) -> bool:
    """Whether a worklist item is the one a Scheduled Step item names: at least one of the
    Study Instance UID and Accession Number is equal, and every key both sides carry agrees
    (a modality may leave Requested Procedure ID or SPS ID empty)."""
    wl = item.item
    pairs = ((keys.study_instance_uid, wl.study_instance_uid),
             (keys.accession_number, wl.accession_number),
             (keys.requested_procedure_id, wl.requested_procedure_id),
             (keys.scheduled_procedure_step_id, wl.scheduled_procedure_step_id))
    if not any(a and a == b for a, b in pairs[:2]):
        return False
    return all(a == b for a, b in pairs if a and b)


def worklist_link(candidates: Sequence[StoredWorklistItem], keys: Sequence[ScheduledStepKeys],
                  status: PpsStatus, now: str) -> WorklistLink:
    """The items ``keys`` name among ``candidates`` and their moves to ``status``'s worklist
    status. A move the worklist's rules forbid (e.g. a CANCELLED order) is reported, not
    forced: the MPPS is what was performed and is kept either way."""
    target = status.worklist_status
    linked: list[int] = []
    updates: list[StoredWorklistItem] = []
    refused: list[tuple[int, str]] = []
    for stored in candidates:
        if keys and not any(links_to(stored, k) for k in keys):
            continue
        linked.append(stored.id)
        current = stored.item.status
        if current == target:
            continue
        if can_transition(current, target):
            updates.append(StoredWorklistItem(
                stored.id, stored.item.replace(status=target, updated_at=now)))
        else:
            refused.append((stored.id, current.value))
    return WorklistLink(tuple(linked), tuple(updates), tuple(refused))
