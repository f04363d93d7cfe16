"""MPPS end to end: pynetdicom as the modality's MPPS SCU against a running radflow.

Orders go in as HL7 (``POST /api/v1/worklist``, the MLLP intake path); after each N-CREATE /
N-SET the worklist is checked through the API and as a modality sees it, with DCMTK
``findscu -W`` (final items are hidden from MWL answers). Statuses are PS3.4 Annex F's:
0x0111 duplicate, 0x0112 unknown instance, 0x0110 + Error ID A710 for a final step,
0x0106 invalid value, 0x0120 missing attribute.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.association import Association
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

from engine.reactor import EventDrivenAE
from tests.helpers.proc import HOST, RadflowProcess, dcmtk

pytestmark = pytest.mark.dcmtk

DAY = "20261125"


def order(control_id: str, patient_id: str) -> bytes:
    segments = [
        f"MSH|^~\\&|RIS|HOSP|RADFLOW|RAD|{DAY}120000||ORM^O01^ORM_O01|{control_id}|P|2.5.1",
        f"PID|1||{patient_id}^^^HOSP^MR||Doe^{patient_id}||19700101|F",
        f"ORC|NW|O-{patient_id}|F-{patient_id}||||^^^{DAY}083000",
        f"OBR|1|O-{patient_id}|F-{patient_id}|PROC^Procedure^L||||||||||||||"
        f"ACC-{patient_id}|RP-{patient_id}|||||CT",
    ]
    return ("\r".join(segments) + "\r").encode("ascii")


def http(rf: RadflowProcess, path: str, body: bytes | None = None,
         content_type: str = "x-application/hl7-v2+er7") -> Any:
    req = urllib.request.Request(f"http://{HOST}:{rf.http_port}{path}", data=body,
                                 method="POST" if body is not None else "GET",
                                 headers={"Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def seed(rf: RadflowProcess, patient_id: str) -> dict[str, Any]:
    """Order one procedure; the worklist item as the API shows it."""
    result = http(rf, "/api/v1/worklist", order(f"C-{patient_id}", patient_id))
    assert result["ack_code"] == "AA", result
    return item(rf, patient_id)


def item(rf: RadflowProcess, patient_id: str) -> dict[str, Any]:
    found = http(rf, f"/api/v1/worklist?patient_id={patient_id}")["items"]
    assert len(found) == 1, found
    return dict(found[0])


def mwl(rf: RadflowProcess, out: Path, patient_id: str) -> list[Dataset]:
    """What a modality sees: ``findscu -W`` for the patient."""
    out.mkdir(parents=True, exist_ok=True)
    result = dcmtk("findscu", "-W", "-aec", rf.ae_title, "-X", "-od", str(out),
                   "-k", f"PatientID={patient_id}", "-k", "AccessionNumber",
                   "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus",
                   HOST, str(rf.port), timeout=60)
    assert result.returncode == 0, result.stdout
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def create_attrs(wl: dict[str, Any] | None, *, study_uid: str | None = None,
                 status: str = "IN PROGRESS", drop: str | None = None) -> Dataset:
    """An N-CREATE Attribute List as a modality sends it (PS3.4 Table F.7.2-1)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ssa = Dataset()
    ssa.StudyInstanceUID = study_uid or (wl["study_instance_uid"] if wl else generate_uid())
    ssa.ReferencedStudySequence = []
    ssa.AccessionNumber = wl["accession_number"] if wl else ""
    ssa.RequestedProcedureID = wl["requested_procedure_id"] if wl else ""
    ssa.RequestedProcedureDescription = ""
    ssa.ScheduledProcedureStepID = wl["scheduled_procedure_step_id"] if wl else ""
    ssa.ScheduledProcedureStepDescription = ""
    ssa.ScheduledProtocolCodeSequence = []
    ds.ScheduledStepAttributesSequence = [ssa]
    ds.PatientName = "Doe^X"
    ds.PatientID = wl["patient_id"] if wl else "UNSCHEDULED"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.ReferencedPatientSequence = []
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "CT01"
    ds.PerformedStationName = ""
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = DAY
    ds.PerformedProcedureStepStartTime = "0900"
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepDescription = ""
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = []
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.StudyID = ""
    ds.PerformedProtocolCodeSequence = []
    ds.PerformedSeriesSequence = []
    if drop:
        delattr(ds, drop)
    return ds


def final_attrs(status: str, instances: list[tuple[str, str]] = (),  # type: ignore[assignment]
                series_uid: str | None = None) -> Dataset:
    """An N-SET Modification List for COMPLETED / DISCONTINUED with one performed series."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = DAY
    ds.PerformedProcedureStepEndTime = "0930"
    series = Dataset()
    series.PerformingPhysicianName = ""
    series.ProtocolName = "CHEST"
    series.OperatorsName = ""
    series.SeriesInstanceUID = series_uid or generate_uid()
    series.SeriesDescription = ""
    series.RetrieveAETitle = ""
    refs = []
    for sop_class, sop_uid in instances:
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class
        ref.ReferencedSOPInstanceUID = sop_uid
        refs.append(ref)
    series.ReferencedImageSequence = refs
    series.ReferencedNonImageCompositeSOPInstanceSequence = []
    ds.PerformedSeriesSequence = [series]
    return ds


class Modality:
    """One MPPS SCU association (pynetdicom as the client)."""

    def __init__(self, rf: RadflowProcess) -> None:
        ae = EventDrivenAE(ae_title="CT01")
        ae.add_requested_context(ModalityPerformedProcedureStep)
        self.assoc: Association = ae.associate(HOST, rf.port, ae_title=rf.ae_title)
        assert self.assoc.is_established
        assert self.assoc.accepted_contexts, "MPPS context not accepted"

    def create(self, ds: Dataset, uid: str | None) -> tuple[int, Dataset | None, Dataset]:
        status, attrs = self.assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
        return int(status.Status), attrs, status

    def set(self, ds: Dataset, uid: str) -> tuple[int, Dataset | None, Dataset]:
        status, attrs = self.assoc.send_n_set(ds, ModalityPerformedProcedureStep, uid)
        return int(status.Status), attrs, status

    def close(self) -> None:
        self.assoc.release()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadflowProcess]:
    rf = RadflowProcess(tmp_path_factory.mktemp("mpps"))
    rf.start()
    try:
        yield rf
    finally:
        rf.close()


@pytest.fixture
def modality(engine: RadflowProcess) -> Iterator[Modality]:
    scu = Modality(engine)
    yield scu
    scu.close()


def test_create_complete_and_set_again(engine: RadflowProcess, modality: Modality,
                                       tmp_path: Path) -> None:
    wl = seed(engine, "P-DONE")
    assert wl["status"] == "SCHEDULED"
    uid = generate_uid()
    code, attrs, _ = modality.create(create_attrs(wl), uid)
    assert code == 0x0000
    assert attrs is not None and attrs.PerformedProcedureStepStatus == "IN PROGRESS"
    assert item(engine, "P-DONE")["status"] == "IN_PROGRESS"
    seen = mwl(engine, tmp_path / "a", "P-DONE")
    assert len(seen) == 1
    # Still offered while in progress, now as STARTED.
    assert seen[0].ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "STARTED"
    step = http(engine, f"/api/v1/procedure-steps/{uid}")
    assert step["status"] == "IN PROGRESS" and step["worklist_item_id"] == wl["id"]
    assert step["unscheduled"] is False

    code, attrs, _ = modality.set(final_attrs("COMPLETED"), uid)
    assert code == 0x0000
    assert attrs is not None and attrs.PerformedProcedureStepStatus == "COMPLETED"
    assert item(engine, "P-DONE")["status"] == "COMPLETED"
    assert mwl(engine, tmp_path / "b", "P-DONE") == []  # final items are not offered
    engine.wait_for_event("mpps.set", sop_instance_uid=uid, status="COMPLETED")

    # A final step may no longer be updated: PS3.4 F.7.2.2.3 / Table F.7.2-2.
    code, _, status = modality.set(final_attrs("DISCONTINUED"), uid)
    assert code == 0x0110
    assert status.ErrorComment == "Performed Procedure Step Object may no longer be updated"
    assert status.ErrorID == 0xA710
    assert http(engine, f"/api/v1/procedure-steps/{uid}")["status"] == "COMPLETED"


def test_discontinued(engine: RadflowProcess, modality: Modality, tmp_path: Path) -> None:
    wl = seed(engine, "P-DISC")
    uid = generate_uid()
    assert modality.create(create_attrs(wl), uid)[0] == 0x0000
    assert item(engine, "P-DISC")["status"] == "IN_PROGRESS"
    assert modality.set(final_attrs("DISCONTINUED"), uid)[0] == 0x0000
    assert item(engine, "P-DISC")["status"] == "DISCONTINUED"
    assert mwl(engine, tmp_path, "P-DISC") == []
    engine.wait_for_event("mpps.set", sop_instance_uid=uid, status="DISCONTINUED")


def test_set_on_unknown_uid(modality: Modality) -> None:
    code, _, _ = modality.set(final_attrs("COMPLETED"), generate_uid())
    assert code == 0x0112


def test_duplicate_create(engine: RadflowProcess, modality: Modality) -> None:
    wl = seed(engine, "P-DUP")
    uid = generate_uid()
    assert modality.create(create_attrs(wl), uid)[0] == 0x0000
    assert modality.create(create_attrs(wl), uid)[0] == 0x0111


def test_unscheduled_is_kept_and_reported(engine: RadflowProcess, modality: Modality) -> None:
    uid = generate_uid()
    code, _, _ = modality.create(create_attrs(None), uid)
    assert code == 0x0000
    step = http(engine, f"/api/v1/procedure-steps/{uid}")
    assert step["unscheduled"] is True and step["worklist_item_id"] is None
    listed = http(engine, "/api/v1/procedure-steps?unscheduled=true")["items"]
    assert uid in {s["sop_instance_uid"] for s in listed}
    engine.wait_for_event("mpps.unscheduled", sop_instance_uid=uid)
    assert modality.set(final_attrs("COMPLETED"), uid)[0] == 0x0000


def test_missing_and_invalid_attributes(engine: RadflowProcess, modality: Modality) -> None:
    wl = seed(engine, "P-BAD")
    assert modality.create(create_attrs(wl, drop="PerformedProcedureStepID"),
                           generate_uid())[0] == 0x0120
    assert modality.create(create_attrs(wl, status="COMPLETED"), generate_uid())[0] == 0x0106
    assert item(engine, "P-BAD")["status"] == "SCHEDULED"  # nothing was committed
    uid = generate_uid()
    assert modality.create(create_attrs(wl), uid)[0] == 0x0000
    bad = Dataset()
    bad.PerformedProcedureStepStatus = "FINISHED"
    assert modality.set(bad, uid)[0] == 0x0106
    no_end = Dataset()
    no_end.PerformedProcedureStepStatus = "DISCONTINUED"
    assert modality.set(no_end, uid)[0] == 0x0121  # final state needs End Date / Time
    assert item(engine, "P-BAD")["status"] == "IN_PROGRESS"


def test_scp_assigns_uid_when_none_given(engine: RadflowProcess, modality: Modality) -> None:
    # PS3.7 10.1.5.1.4: the SCP assigns the UID (pynetdicom's SCU does not surface the
    # response's Affected SOP Instance UID, so the new step is found through the API).
    before = http(engine, "/api/v1/procedure-steps")["total"]
    code, _, _ = modality.create(create_attrs(None), None)
    assert code == 0x0000
    listed = http(engine, "/api/v1/procedure-steps?limit=1")
    assert listed["total"] == before + 1
    uid = listed["items"][0]["sop_instance_uid"]
    assert uid.startswith("1.2.826.0.1.3680043.8.498.")  # pydicom's generate_uid() root


def test_metrics_and_openapi(engine: RadflowProcess, modality: Modality) -> None:
    code, _, _ = modality.create(create_attrs(None), None)  # counted whatever ran before
    assert code == 0x0000
    assert engine.metric("radflow_mpps_requests_total", operation="create",
                         outcome="IN PROGRESS") >= 1
    paths = http(engine, "/api/v1/openapi.json")["paths"]
    assert "/api/v1/procedure-steps" in paths
    assert "/api/v1/procedure-steps/{sop_instance_uid}" in paths
