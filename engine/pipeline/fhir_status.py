"""FHIR R4 Task resources for performed procedure steps, rendered at routing time.

A procedure step event (N-CREATE IN PROGRESS, N-SET COMPLETED / DISCONTINUED) becomes one
``Task`` that tells an EHR how the ordered imaging procedure is going: ``status``
``in-progress`` / ``completed`` / ``cancelled`` (a discontinued step was stopped, not failed;
its reason goes in ``statusReason``), ``focus`` the ServiceRequest by its accession number
(identifier type ACSN, as FHIR's imaging examples do) and, when the worklist item has them, by
the placer and filler order numbers; ``for`` the patient by identifier; ``executionPeriod``
from the MPPS start and end; ``owner`` the performing station; the Study Instance UID as an
``input``. Its identifier is the MPPS SOP Instance UID (``urn:dicom:uid`` system), so the FHIR
sender's conditional update creates the Task with the start and updates the same Task at the
end. Deterministic: the same event row gives the same resource on every replay (``lastModified``
is the event's receive time). Pure: no store, no clock, no network.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, Final

from pydicom.dataset import Dataset

from engine.records.worklist import WorklistItem

#: MPPS status → FHIR Task.status (R4 value set task-status)
TASK_STATUS: Final[dict[str, str]] = {
    "IN PROGRESS": "in-progress", "COMPLETED": "completed", "DISCONTINUED": "cancelled"}
_V2_0203: Final = "http://terminology.hl7.org/CodeSystem/v2-0203"
_DICOM_UID: Final = "urn:dicom:uid"


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return str(value).strip() if value not in (None, "") else ""


def fhir_datetime(date: str, time: str) -> str:
    """DICOM DA + TM → FHIR dateTime (local time, no zone: MPPS carries none); '' if no date."""
    if len(date) != 8 or not date.isdigit():
        return ""
    out = f"{date[:4]}-{date[4:6]}-{date[6:8]}"
    digits = time.split(".")[0]
    if len(digits) >= 4 and digits[:4].isdigit():
        seconds = digits[4:6] if len(digits) >= 6 and digits[4:6].isdigit() else "00"
        out += f"T{digits[:2]}:{digits[2:4]}:{seconds}"
    return out


def with_zone(when: str, offset: str = "") -> str:
    """A FHIR dateTime with a time gets a zone, as FHIR requires: DICOM's Timezone Offset
    From UTC (``+0100``) when the images carry it, else this host's zone at that moment
    (modalities keep the site's local time)."""
    if "T" not in when:
        return when
    if len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit():
        return f"{when}{offset[:3]}:{offset[3:]}"
    local = dt.datetime.fromisoformat(when).astimezone().strftime("%z")
    return f"{when}{local[:3]}:{local[3:]}"


def _typed_identifier(code: str, value: str) -> dict[str, Any]:
    return {"type": {"coding": [{"system": _V2_0203, "code": code}]}, "value": value}


def render_task(*, status: str, received_at: str, dataset: Dataset, sop_instance_uid: str,
                study_instance_uid: str, accession_number: str, patient_id: str,
                items: Sequence[WorklistItem]) -> dict[str, Any]:
    """The Task for one procedure step event (see the module docstring)."""
    item = items[0] if items else None
    accession = accession_number or (item.accession_number if item else "")
    task: dict[str, Any] = {
        "resourceType": "Task",
        "identifier": [{"system": _DICOM_UID, "value": f"urn:oid:{sop_instance_uid}"}],
        "status": TASK_STATUS.get(status, "in-progress"),
        "intent": "order",
        "code": {"text": "Performed Procedure Step"},
        "lastModified": received_at,
    }
    if status == "DISCONTINUED":
        reason = dataset.get("PerformedProcedureStepDiscontinuationReasonCodeSequence")
        meaning = _text(reason[0], "CodeMeaning") if reason else ""
        task["statusReason"] = {"text": meaning or "Procedure step discontinued"}
    description = _text(dataset, "PerformedProcedureStepDescription")
    if description:
        task["description"] = description
    if accession:
        task["focus"] = {"type": "ServiceRequest",
                         "identifier": _typed_identifier("ACSN", accession)}
    orders = []
    if item is not None and item.placer_order_number:
        orders.append({"type": "ServiceRequest",
                       "identifier": _typed_identifier("PLAC", item.placer_order_number)})
    if item is not None and item.filler_order_number:
        orders.append({"type": "ServiceRequest",
                       "identifier": _typed_identifier("FILL", item.filler_order_number)})
    if orders:
        task["basedOn"] = orders
    pid = patient_id or (item.patient_id if item else "")
    if pid:
        ident: dict[str, Any] = _typed_identifier("MR", pid)
        issuer = item.issuer_of_patient_id if item else ""
        if issuer:
            ident["assigner"] = {"display": issuer}
        task["for"] = {"type": "Patient", "identifier": ident}
    period = {k: v for k, v in (
        # FHIR requires a zone on a dateTime with a time; MPPS carries none.
        ("start", with_zone(fhir_datetime(_text(dataset, "PerformedProcedureStepStartDate"),
                                          _text(dataset, "PerformedProcedureStepStartTime")),
                            _text(dataset, "TimezoneOffsetFromUTC"))),
        ("end", with_zone(fhir_datetime(_text(dataset, "PerformedProcedureStepEndDate"),
                                        _text(dataset, "PerformedProcedureStepEndTime")),
                          _text(dataset, "TimezoneOffsetFromUTC")))) if v}
    if period:
        task["executionPeriod"] = period
    station = _text(dataset, "PerformedStationAETitle")
    if station:
        task["owner"] = {"display": station}
    if study_instance_uid:
        task["input"] = [{"type": {"text": "Study Instance UID"},
                          "valueOid": f"urn:oid:{study_instance_uid}"}]
    return task
