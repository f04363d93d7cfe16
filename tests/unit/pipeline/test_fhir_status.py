"""FHIR Task rendering for procedure step events (engine.pipeline.fhir_status)."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from engine.pipeline.fhir_status import fhir_datetime, render_task
from engine.records.worklist import WorklistItem


@pytest.mark.parametrize(("date", "time", "expected"), [
    ("20261125", "0930", "2026-11-25T09:30:00"),
    ("20261125", "093015.123", "2026-11-25T09:30:15"),
    ("20261125", "", "2026-11-25"),
    ("", "0930", ""),
    ("2026112", "0930", ""),
])
def test_dicom_date_and_time_become_a_fhir_datetime(date: str, time: str, expected: str) -> None:
    assert fhir_datetime(date, time) == expected


def test_a_discontinued_step_is_a_cancelled_task_with_its_reason() -> None:
    ds = Dataset()
    reason = Dataset()
    reason.CodeValue = "110514"
    reason.CodingSchemeDesignator = "DCM"
    reason.CodeMeaning = "Incorrect worklist entry selected"
    ds.PerformedProcedureStepDiscontinuationReasonCodeSequence = [reason]
    ds.PerformedStationAETitle = "CT01"
    item = WorklistItem(patient_id="P9", issuer_of_patient_id="HOSP", accession_number="A9")
    task = render_task(status="DISCONTINUED", received_at="2026-11-25T10:00:00+00:00",
                       dataset=ds, sop_instance_uid="1.2.3.9", study_instance_uid="",
                       accession_number="", patient_id="", items=[item])
    assert task["status"] == "cancelled"
    assert task["statusReason"] == {"text": "Incorrect worklist entry selected"}
    assert task["focus"]["identifier"]["value"] == "A9"  # from the worklist item
    assert task["for"]["identifier"] == {
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                             "code": "MR"}]},
        "value": "P9", "assigner": {"display": "HOSP"}}
    assert task["owner"] == {"display": "CT01"}
    assert "input" not in task and "basedOn" not in task and "executionPeriod" not in task


def test_an_unscheduled_step_still_names_itself() -> None:
    task = render_task(status="IN PROGRESS", received_at="2026-11-25T10:00:00+00:00",
                       dataset=Dataset(), sop_instance_uid="1.2.3.10",
                       study_instance_uid="1.2.3.11", accession_number="", patient_id="P1",
                       items=[])
    assert task["identifier"] == [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.10"}]
    assert task["status"] == "in-progress" and "focus" not in task
    assert task["input"] == [{"type": {"text": "Study Instance UID"},
                              "valueOid": "urn:oid:1.2.3.11"}]
