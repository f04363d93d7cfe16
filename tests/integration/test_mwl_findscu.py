"""Modality Worklist end to end: HL7 orders into a running radflow, DCMTK findscu -W out.

Orders are posted to ``/api/v1/worklist`` as HL7 v2 messages (the same path as MLLP intake:
``WorklistService.accept_hl7_batch``); the answers are the files ``findscu --extract`` writes,
decoded by pydicom, so character sets are checked as a modality would see them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.helpers.proc import HOST, RadflowProcess, dcmtk

pytestmark = pytest.mark.dcmtk

DAY = "20261125"


def order(control_id: str, patient_id: str, name: str, *, charset: str = "",
          codec: str = "ascii", modality: str = "CT", day: str = DAY, time: str = "0830",
          control: str = "NW", placer: str | None = None, status: str = "") -> bytes:
    placer = placer or f"O-{patient_id}"
    segments = [
        f"MSH|^~\\&|RIS|HOSP|RADFLOW|RAD|{DAY}120000||ORM^O01^ORM_O01|{control_id}|P|2.5.1"
        f"||||||{charset}",
        f"PID|1||{patient_id}^^^HOSP^MR||{name}||19700101|F",
        f"ORC|{control}|{placer}|F-{patient_id}||{status}||^^^{day}{time}00",
        f"OBR|1|{placer}|F-{patient_id}|PROC^Procedure {patient_id}^L||||||||||||||"
        f"ACC-{patient_id}|RP-{patient_id}|||||{modality}",
    ]
    return ("\r".join(segments) + "\r").encode(codec)


def post_hl7(rf: RadflowProcess, body: bytes) -> dict[str, object]:
    req = urllib.request.Request(
        f"http://{HOST}:{rf.http_port}/api/v1/worklist", data=body, method="POST",
        headers={"Content-Type": "x-application/hl7-v2+er7"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        result: dict[str, object] = json.loads(resp.read())
    assert result["ack_code"] == "AA", result
    return result


def findscu(rf: RadflowProcess, out: Path, *keys: str) -> list[Dataset]:
    """Run ``findscu -W`` with ``keys`` and return the extracted answers, in order."""
    out.mkdir(parents=True, exist_ok=True)
    args: list[str] = ["-W", "-aec", rf.ae_title, "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    result = dcmtk("findscu", *args, HOST, str(rf.port), timeout=60)
    assert result.returncode == 0, result.stdout
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadflowProcess]:
    # One engine for the module (the conftest ``radflow`` factory is per test): seeding once
    # keeps the file at a few seconds.
    rf = RadflowProcess(tmp_path_factory.mktemp("mwl"),
                        {"worklist": {"pn_case_insensitive": True}})
    rf.start()
    try:
        post_hl7(rf, order("M1", "P-LATIN", "Müller^Jürgen", charset="8859/1", codec="latin-1"))
        post_hl7(rf, order("M2", "P-UTF8", "Παπαδόπουλος^Νίκος", charset="UNICODE UTF-8",
                           codec="utf-8", time="0900"))
        post_hl7(rf, order("M3", "P-JP", "ヤマダ^タロウ=山田^太郎", charset="ISO IR87",
                           codec="iso2022_jp", time="1000"))
        post_hl7(rf, order("M4", "P-MR", "Roe^Richard", modality="MR", day="20261126"))
        post_hl7(rf, order("M5", "P-OLD", "Old^Otto", day="20261124"))
        post_hl7(rf, order("M6", "P-CANC", "Cancel^Carl"))
        post_hl7(rf, order("M7", "P-CANC", "Cancel^Carl", control="CA"))
        post_hl7(rf, order("M8", "P-DONE", "Done^Dora"))
        post_hl7(rf, order("M9", "P-DONE", "Done^Dora", control="SC", status="CM"))
    except BaseException:
        rf.close()
        raise
    yield rf
    rf.stop()


def test_patient_id_query(seeded: RadflowProcess, tmp_path: Path) -> None:
    (rsp,) = findscu(seeded, tmp_path, "PatientID=P-LATIN", "PatientName", "AccessionNumber",
                     "ScheduledProcedureStepSequence[0].Modality",
                     "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
                     "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
                     "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime")
    assert rsp.PatientID == "P-LATIN"
    assert rsp.AccessionNumber == "ACC-P-LATIN"
    sps = rsp.ScheduledProcedureStepSequence[0]
    assert (sps.Modality, sps.ScheduledStationAETitle) == ("CT", "CT_SCANNER_1")
    assert (sps.ScheduledProcedureStepStartDate, sps.ScheduledProcedureStepStartTime) == (
        DAY, "083000")


def test_modality_and_date_range(seeded: RadflowProcess, tmp_path: Path) -> None:
    answers = findscu(seeded, tmp_path, "PatientID",
                      "ScheduledProcedureStepSequence[0].Modality=CT",
                      f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate="
                      f"{DAY}-{DAY}")
    # Cancelled (P-CANC), completed (P-DONE), yesterday's and the MR item are not there.
    assert [a.PatientID for a in answers] == ["P-LATIN", "P-UTF8", "P-JP"]


def test_combined_date_time_range(seeded: RadflowProcess, tmp_path: Path) -> None:
    answers = findscu(seeded, tmp_path, "PatientID",
                      f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate={DAY}",
                      "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime="
                      "0845-0930")
    assert [a.PatientID for a in answers] == ["P-UTF8"]


@pytest.mark.parametrize(("keys", "expected"), [
    (["PatientName=m?ller*"], ["P-LATIN"]),  # case-insensitive, ASCII wildcard
    (["SpecificCharacterSet=ISO_IR 192", "PatientName=MÜLLER*"], ["P-LATIN"]),
    (["SpecificCharacterSet=ISO_IR 192", "PatientName=山田*"], ["P-JP"]),  # any group
    (["PatientName=Cancel*"], []),  # cancelled: hidden
    (["PatientName=Done*"], []),  # completed: hidden
])
def test_wildcard_names(seeded: RadflowProcess, tmp_path: Path, keys: list[str],
                        expected: list[str]) -> None:
    answers = findscu(seeded, tmp_path, *keys, "PatientID")
    assert [a.PatientID for a in answers] == expected


def test_station_ae(seeded: RadflowProcess, tmp_path: Path) -> None:
    answers = findscu(seeded, tmp_path, "PatientID",
                      "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=MR_SCANNER_1")
    assert [a.PatientID for a in answers] == ["P-MR"]


def test_final_items_absent(seeded: RadflowProcess, tmp_path: Path) -> None:
    assert findscu(seeded, tmp_path / "c", "PatientID=P-CANC") == []
    assert findscu(seeded, tmp_path / "d", "PatientID=P-DONE") == []


def test_only_requested_keys_are_returned(seeded: RadflowProcess, tmp_path: Path) -> None:
    (rsp,) = findscu(seeded, tmp_path, "PatientID=P-MR",
                     "ScheduledProcedureStepSequence[0].Modality")
    assert {e.keyword for e in rsp} == {"SpecificCharacterSet", "PatientID",
                                        "ScheduledProcedureStepSequence"}
    (sps,) = rsp.ScheduledProcedureStepSequence
    assert [e.keyword for e in sps] == ["Modality"]
    assert sps.Modality == "MR"


@pytest.mark.parametrize(("patient_id", "name", "charset"), [
    ("P-LATIN", "Müller^Jürgen", ["ISO_IR 100"]),
    ("P-UTF8", "Παπαδόπουλος^Νίκος", ["ISO_IR 192"]),
    ("P-JP", "ヤマダ^タロウ=山田^太郎", ["", "ISO 2022 IR 87"]),
])
def test_names_round_trip_in_their_character_set(seeded: RadflowProcess, tmp_path: Path,
                                                 patient_id: str, name: str,
                                                 charset: list[str]) -> None:
    (rsp,) = findscu(seeded, tmp_path, f"PatientID={patient_id}", "PatientName")
    raw = rsp.get_item("PatientName").value  # the bytes on the wire, before decoding
    declared = rsp.SpecificCharacterSet
    assert (list(declared) if isinstance(declared, pydicom.multival.MultiValue)
            else [declared]) == charset
    assert str(rsp.PatientName) == name
    if charset == ["ISO_IR 100"]:
        assert raw.rstrip(b" ") == name.encode("latin-1")  # padded to even length
    if "ISO 2022 IR 87" in charset:
        assert b"\x1b$B" in raw  # really JIS X 0208 with escape sequences on the wire


def test_metrics_count_c_find(seeded: RadflowProcess, tmp_path: Path) -> None:
    before = seeded.metric("radflow_mwl_find_requests_total")
    findscu(seeded, tmp_path, "PatientID=P-MR")
    assert seeded.metric("radflow_mwl_find_requests_total") == before + 1
    assert seeded.metric("radflow_mwl_find_seconds_count") >= 1
    assert seeded.metric("radflow_worklist_items", status="CANCELLED") in (0.0, 1.0)


def test_rejected_messages_can_be_listed(seeded: RadflowProcess) -> None:
    req = urllib.request.Request(
        f"http://{HOST}:{seeded.http_port}/api/v1/worklist",
        data=order("BAD1", "", "No^Id"), method="POST",
        headers={"Content-Type": "x-application/hl7-v2+er7"})
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("an order without a patient id was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 422
        body = json.loads(exc.read())
    assert body["ack_code"] == "AE"
    assert body["errors"][0]["segment"] == "PID" and body["errors"][0]["field"] == 3
    status, listing = seeded.http_get("/api/v1/hl7/messages?ack=AE,AR")
    assert status == 200
    assert any(m["control_id"] == "BAD1" for m in json.loads(listing)["items"])


def test_cli_lists_the_worklist(seeded: RadflowProcess) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "engine", "worklist", "list", "--config",
         str(seeded.config_path), "--status", "SCHEDULED", "--modality", "CT"],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    assert "ACC-P-LATIN" in result.stdout and "ACC-P-CANC" not in result.stdout


#: what common modality software asks for beyond the basics (a node.js DICOM stack's default
#: worklist query among them): return keys of PS3.4 Table K.6-1 that radflow keeps no value for,
#: some sent with a value, as such software does
STANDARD_RETURN_KEYS = (
    "PregnancyStatus=4", "PatientWeight", "PatientSize", "MedicalAlerts", "Allergies",
    "AdditionalPatientHistory", "PatientState", "SpecialNeeds", "LastMenstrualDate",
    "PatientAge", "PatientComments", "OtherPatientIDsSequence", "AdmissionID",
    "CurrentPatientLocation", "InstitutionName", "RequestingPhysician", "RequestingService",
    "RequestedProcedurePriority", "PatientTransportArrangements", "ReferencedStudySequence",
    "ReferencedPatientSequence", "ImagingServiceRequestComments", "ConfidentialityCode",
    "ReasonForTheRequestedProcedure", "StudyDate", "IssuerOfAccessionNumberSequence",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepLocation",
    "ScheduledProcedureStepSequence[0].PreMedication",
    "ScheduledProcedureStepSequence[0].RequestedContrastAgent",
    "ScheduledProcedureStepSequence[0].CommentsOnTheScheduledProcedureStep",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus",
    "ScheduledProcedureStepSequence[0].Modality=CT",
)


def find_statuses(rf: RadflowProcess, *keys: str) -> list[str]:
    args: list[str] = ["-W", "-v", "-aec", rf.ae_title]
    for key in keys:
        args += ["-k", key]
    result = dcmtk("findscu", *args, HOST, str(rf.port), timeout=60)
    assert result.returncode == 0, result.stdout
    return [line.split("Find Response:", 1)[1].strip() for line in result.stdout.splitlines()
            if "Find Response:" in line]


def test_standard_return_keys_are_supported_by_findscu(seeded: RadflowProcess,
                                                       tmp_path: Path) -> None:
    statuses = find_statuses(seeded, "PatientID=P-LATIN", *STANDARD_RETURN_KEYS)
    assert statuses and not any("Warning" in s for s in statuses), statuses
    (rsp,) = findscu(seeded, tmp_path, "PatientID=P-LATIN", "PatientName",
                     *STANDARD_RETURN_KEYS)
    assert rsp.PatientName == "Müller^Jürgen"
    assert "PregnancyStatus" in rsp and rsp.get_item("PregnancyStatus").value in (b"", None)
    assert "PatientWeight" in rsp and "AdmissionID" in rsp
    sps = rsp.ScheduledProcedureStepSequence[0]
    assert sps.Modality == "CT" and sps.ScheduledProcedureStepStatus == "SCHEDULED"
    assert "ScheduledProcedureStepLocation" in sps


def test_pynetdicom_query_with_standard_return_keys_gets_plain_pending(
        seeded: RadflowProcess) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

    query = Dataset()
    query.PatientID = "P-UTF8"
    query.PatientName = ""
    query.PregnancyStatus = 4
    query.PatientWeight = None
    query.MedicalAlerts = ""
    query.Allergies = ""
    query.RequestedProcedurePriority = ""
    sps = Dataset()
    sps.Modality = "CT"
    sps.ScheduledProcedureStepLocation = ""
    sps.PreMedication = ""
    query.ScheduledProcedureStepSequence = [sps]
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate(HOST, seeded.port, ae_title=seeded.ae_title)
    assert assoc.is_established
    try:
        answers = list(assoc.send_c_find(query, ModalityWorklistInformationFind))
    finally:
        assoc.release()
    statuses = [int(status.Status) for status, _ in answers]
    assert statuses == [0xFF00, 0x0000]
    assert str(answers[0][1].PatientName) == "Παπαδόπουλος^Νίκος"
