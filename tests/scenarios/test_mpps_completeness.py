"""Completeness from evidence: an order's study is complete the moment the last instance its
COMPLETED MPPS lists is stored, long before the study route's quiet period would end.

HL7 order over MLLP → ``findscu -W`` (DCMTK) finds it → MPPS N-CREATE (pynetdicom SCU) puts
it IN PROGRESS → DCMTK ``storescu`` sends all but one listed instance → N-SET COMPLETED lists
every instance (one still missing: nothing fires) → ``storescu`` sends the last one → the log
says ``mpps.study_complete`` and the study group fired with reason ``study_complete``, while
the route's quiet period is ten minutes.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pydicom
import pytest
from hl7.client import MLLPClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

from engine.reactor import EventDrivenAE
from tests.helpers import dicomgen
from tests.helpers.proc import (
    HOST,
    RadflowFactory,
    RadflowProcess,
    dcmtk,
    store_responses,
    storescu,
)

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(180)]

QUIET_SECONDS = 600  # far beyond the test: only the MPPS evidence can fire the group
ROUTES = f"""\
version: 1
routes:
  - name: ct-study-to-ai
    trigger: {{on: study, quiet_seconds: {QUIET_SECONDS}, max_wait_seconds: 3600}}
    match: {{attr: Modality, equals: CT}}
    destinations: [ai]
"""
ORDER = "\r".join([
    "MSH|^~\\&|RIS|HOSP|RADFLOW|RAD|20261125120000||ORM^O01^ORM_O01|MPPS-1|P|2.5.1",
    "PID|1||MRN-42^^^HOSP^MR||Muster^Max||19700101|M",
    "ORC|NW|O-42|F-42||||^^^20261125083000",
    "OBR|1|O-42|F-42|CTCH^CT Chest^L||||||||||||||ACC-42|RP-42|||||CT",
]) + "\r"


def api(rf: RadflowProcess, path: str) -> Any:
    with urllib.request.urlopen(f"http://{HOST}:{rf.http_port}{path}", timeout=10) as resp:
        return json.loads(resp.read())


def mwl(rf: RadflowProcess, out: Path) -> list[Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    result = dcmtk("findscu", "-W", "-aec", rf.ae_title, "-X", "-od", str(out),
                   "-k", "PatientID=MRN-42", "-k", "AccessionNumber", "-k", "StudyInstanceUID",
                   "-k", "RequestedProcedureID",
                   "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
                   "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus",
                   HOST, str(rf.port), timeout=60)
    assert result.returncode == 0, result.stdout
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def n_create(answer: Dataset) -> Dataset:
    sps = answer.ScheduledProcedureStepSequence[0]
    ds = Dataset()
    ssa = Dataset()
    ssa.StudyInstanceUID = answer.StudyInstanceUID
    ssa.ReferencedStudySequence = []
    ssa.AccessionNumber = answer.AccessionNumber
    ssa.RequestedProcedureID = answer.RequestedProcedureID
    ssa.RequestedProcedureDescription = ""
    ssa.ScheduledProcedureStepID = sps.ScheduledProcedureStepID
    ssa.ScheduledProcedureStepDescription = ""
    ssa.ScheduledProtocolCodeSequence = []
    ds.ScheduledStepAttributesSequence = [ssa]
    ds.PatientName = "Muster^Max"
    ds.PatientID = "MRN-42"
    ds.PerformedProcedureStepID = "PPS-42"
    ds.PerformedStationAETitle = "CT01"
    ds.PerformedProcedureStepStartDate = "20261125"
    ds.PerformedProcedureStepStartTime = "0900"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.PerformedSeriesSequence = []
    return ds


def n_set_completed(series_uid: str, instances: list[dicomgen.Instance]) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "COMPLETED"
    ds.PerformedProcedureStepEndDate = "20261125"
    ds.PerformedProcedureStepEndTime = "0930"
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.ProtocolName = "CHEST"
    series.RetrieveAETitle = ""
    refs = []
    for inst in instances:
        ref = Dataset()
        ref.ReferencedSOPClassUID = inst.sop_class_uid
        ref.ReferencedSOPInstanceUID = inst.sop_instance_uid
        refs.append(ref)
    series.ReferencedImageSequence = refs
    series.ReferencedNonImageCompositeSOPInstanceSequence = []
    ds.PerformedSeriesSequence = [series]
    return ds


def test_study_complete_when_last_listed_instance_arrives(radflow: RadflowFactory,
                                                          dicom_dir: Path,
                                                          tmp_path: Path) -> None:
    rf = radflow({"destinations": {"ai": {"type": "dimse", "host": HOST, "ae_title": "AI",
                                          "port": 4243}}}, start=False)
    Path(rf.config["routing"]["routes_dir"], "ai.yaml").write_text(ROUTES)
    rf.start()

    # 1. The order arrives over MLLP and the modality finds it.
    with MLLPClient(HOST, int(rf.config["hl7"]["listeners"][0]["port"])) as client:
        ack = client.send_message(ORDER)
    assert b"MSA|AA" in (ack if isinstance(ack, bytes) else ack.encode())
    (answer,) = mwl(rf, tmp_path / "mwl")
    study_uid = str(answer.StudyInstanceUID)

    # 2. MPPS IN PROGRESS.
    ae = EventDrivenAE(ae_title="CT01")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate(HOST, rf.port, ae_title=rf.ae_title)
    assert assoc.is_established
    mpps_uid = generate_uid()
    try:
        status, _ = assoc.send_n_create(n_create(answer), ModalityPerformedProcedureStep,
                                        mpps_uid)
        assert status.Status == 0x0000
        assert api(rf, "/api/v1/worklist?accession_number=ACC-42")["items"][0]["status"] \
            == "IN_PROGRESS"

        # 3. Images: all but the last listed instance are stored before the N-SET.
        series_uid = generate_uid()
        instances = [dicomgen.write_instance(
            dicom_dir, name=f"ct{i}.dcm", seed=i, study_instance_uid=study_uid,
            series_instance_uid=series_uid, instance_number=i, patient_id="MRN-42",
            accession_number="ACC-42") for i in range(1, 5)]
        first = storescu(rf, [i.path for i in instances[:-1]])
        assert store_responses(first.stdout) == ["Success"] * 3, first.stdout

        # 4. MPPS COMPLETED lists all four: one is missing, so nothing fires yet.
        status, _ = assoc.send_n_set(n_set_completed(series_uid, instances),
                                     ModalityPerformedProcedureStep, mpps_uid)
        assert status.Status == 0x0000
    finally:
        assoc.release()
    waiting = rf.wait_for_event("mpps.completeness.waiting", sop_instance_uid=mpps_uid)
    assert waiting["expected"] == 4 and waiting["missing"] == 1
    step = api(rf, f"/api/v1/procedure-steps/{mpps_uid}")
    assert step["expected_instances"] == 4 and step["received_instances"] == 3
    assert step["complete_at"] is None
    assert not rf.events("mpps.study_complete")

    # 5. The last listed instance: the study is complete at once (quiet period: 10 min).
    stored_at = time.monotonic()
    last = storescu(rf, [instances[-1].path])
    assert store_responses(last.stdout) == ["Success"], last.stdout
    done = rf.wait_for_event("mpps.study_complete", timeout=10, sop_instance_uid=mpps_uid)
    assert time.monotonic() - stored_at < 10 < QUIET_SECONDS
    assert done["study_instance_uid"] == study_uid and done["expected"] == 4
    fired = rf.wait_for_event("routing.group_fired", timeout=10, key=study_uid)
    assert fired["reason"] == "study_complete" and fired["instances"] == 4
    step = api(rf, f"/api/v1/procedure-steps/{mpps_uid}")
    assert step["received_instances"] == 4 and step["complete_at"] is not None
    assert api(rf, "/api/v1/worklist?accession_number=ACC-42")["items"][0]["status"] \
        == "COMPLETED"
