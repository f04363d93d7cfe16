"""Orthanc 1.10 against radflow: as a modality asking radflow for Storage Commitment, and as
a node querying and retrieving from radflow's Query/Retrieve SCP (its REST API drives it); as a
modality whose images take the commitment policy of the routes they match."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.helpers.dicomgen import Instance, write_instance
from tests.helpers.peers import Orthanc, have_orthanc
from tests.helpers.proc import HOST, RadflowProcess, free_port, storescu

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk,
              pytest.mark.skipif(not have_orthanc(), reason="Orthanc not installed")]


class Pair:
    def __init__(self, rf: RadflowProcess, orthanc: Orthanc) -> None:
        self.rf = rf
        self.orthanc = orthanc


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    dicom_port = free_port()
    rf = RadflowProcess(tmp_path / "radflow", {
        "commitment": {"modalities": [{"ae_title": "ORTHANC", "host": HOST,
                                       "port": dicom_port}],
                       "retry": {"initial_delay": 0.2, "max_delay": 1.0, "jitter": 0.0}},
        "query_retrieve": {"move_destinations": [{"ae_title": "ORTHANC", "host": HOST,
                                                  "port": dicom_port}]}})
    orthanc = Orthanc(tmp_path / "orthanc", extra={
        "DicomPort": dicom_port,
        "DicomModalities": {"radflow": ["RADFLOW", HOST, rf.port]}})
    orthanc.dicom_port = dicom_port
    orthanc.start()
    rf.start()
    try:
        yield Pair(rf, orthanc)
    finally:
        rf.close()
        orthanc.stop()


def _wait(predicate: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_orthanc_modality_gets_commitment_from_radflow(pair: Pair, tmp_path: Path) -> None:
    study = generate_uid()
    insts = [write_instance(tmp_path / "f", seed=i, study_instance_uid=study) for i in range(2)]
    ids = [pair.orthanc.post("/instances", i.path.read_bytes())["ID"] for i in insts]
    answer = pair.orthanc.post("/modalities/radflow/store",
                               {"Resources": ids, "StorageCommitment": True})
    transaction = answer["StorageCommitmentTransactionUID"]
    _wait(lambda: pair.orthanc.get(f"/storage-commitment/{transaction}")["Status"]
          != "Pending")
    report = pair.orthanc.get(f"/storage-commitment/{transaction}")
    assert report["Status"] == "Success", report
    assert {s["SOPInstanceUID"] for s in report["Success"]} == {
        i.sop_instance_uid for i in insts}


def _stored_study(pair: Pair, tmp_path: Path, patient: str) -> list[Instance]:
    study, series = generate_uid(), generate_uid()
    insts = [write_instance(tmp_path / "q", seed=i, patient_id=patient, instance_number=i,
                            study_instance_uid=study, series_instance_uid=series)
             for i in range(1, 4)]
    assert storescu(pair.rf, [i.path for i in insts]).returncode == 0
    return insts


def test_orthanc_queries_and_moves_from_radflow(pair: Pair, tmp_path: Path) -> None:
    insts = _stored_study(pair, tmp_path, "P-ORTHANC")
    answers: list[dict[str, object]] = []

    def queried() -> bool:
        query = pair.orthanc.post("/modalities/radflow/query", {
            "Level": "Study", "Query": {"PatientID": "P-ORTHANC", "StudyInstanceUID": "",
                                        "NumberOfStudyRelatedInstances": ""}})
        answers[:] = pair.orthanc.get(f"/queries/{query['ID']}/answers?expand&simplify")
        # The index follows intake within moments: a query in between sees part of the study.
        return bool(answers) and answers[0].get("NumberOfStudyRelatedInstances") == "3"

    _wait(queried)
    assert len(answers) == 1
    assert answers[0]["NumberOfStudyRelatedInstances"] == "3"
    study_instance_uid = str(answers[0]["StudyInstanceUID"])
    pair.orthanc.post("/modalities/radflow/move", {
        "Level": "Study", "Resources": [{"StudyInstanceUID": study_instance_uid}],
        "TargetAet": "ORTHANC"})
    _wait(lambda: {i.sop_instance_uid for i in insts} <= pair.orthanc.received())


def test_on_archive_relays_the_archives_commitment(tmp_path: Path) -> None:
    """radflow delivers to Orthanc (the PACS), asks it for commitment, and relays its answer
    to the modality on the association the modality kept open."""
    from tests.integration.test_storage_commitment import Reports, _action, _modality, _request

    pacs_port = free_port()
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "10-all.yaml").write_text(
        "version: 1\nroutes:\n  - name: everything\n    destinations: [pacs]\n")
    rf = RadflowProcess(tmp_path / "radflow", {
        "routing": {"routes_dir": str(routes), "reload_poll_seconds": 0},
        "destinations": {"pacs": {"type": "dimse", "ae_title": "ORTHANC", "host": HOST,
                                  "port": pacs_port, "storage_commitment": True}},
        "delivery": {"poll_interval": 0.1},
        "commitment": {"policy": "on_archive", "archive_destinations": ["pacs"],
                       "archive_check_seconds": 0.2}})
    orthanc = Orthanc(tmp_path / "orthanc", extra={
        "DicomPort": pacs_port, "DicomModalities": {"radflow": ["RADFLOW", HOST, rf.port]}})
    orthanc.dicom_port = pacs_port
    orthanc.start()
    rf.start()
    try:
        insts = [write_instance(tmp_path / "f", seed=i) for i in range(2)]
        assert storescu(rf, [i.path for i in insts]).returncode == 0
        reports = Reports()
        assoc = _modality(rf, reports)
        try:
            assert _action(assoc, _request(insts)) == 0x0000
            (event_type, info), = reports.wait(timeout=90)
        finally:
            assoc.release()
        assert event_type == 1, info
        assert {str(i.ReferencedSOPInstanceUID) for i in info.ReferencedSOPSequence} == {
            i.sop_instance_uid for i in insts}
        assert rf.events("ingress.dimse.commitment.archive_reported", known=True)
    finally:
        rf.close()
        orthanc.stop()


def test_orthanc_modality_gets_each_routes_policy(tmp_path: Path) -> None:
    """Orthanc as the modality; the routes pick the policy by Modality: CT goes to an archive
    that is switched off with ``on_archive`` (a failure report once the time is up), MR to the
    same archive with ``on_receipt`` (committed at once)."""
    dicom_port = free_port()
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "10.yaml").write_text(
        "version: 1\nroutes:\n"
        "  - name: ct-archived\n    match: {attr: Modality, equals: CT}\n"
        "    destinations: [offline]\n    commitment: on_archive\n"
        "  - name: mr-on-receipt\n    match: {attr: Modality, equals: MR}\n"
        "    destinations: [offline]\n    commitment: on_receipt\n")
    rf = RadflowProcess(tmp_path / "radflow", {
        "routing": {"routes_dir": str(routes), "reload_poll_seconds": 0},
        "destinations": {"offline": {"type": "dimse", "ae_title": "OFFLINE", "host": HOST,
                                     "port": free_port(), "timeout": 2}},
        "commitment": {"modalities": [{"ae_title": "ORTHANC", "host": HOST,
                                       "port": dicom_port}],
                       "archive_check_seconds": 0.2, "archive_timeout_minutes": 0.05,
                       "retry": {"initial_delay": 0.2, "max_delay": 1.0, "jitter": 0.0}}})
    orthanc = Orthanc(tmp_path / "orthanc", extra={
        "DicomPort": dicom_port, "DicomModalities": {"radflow": ["RADFLOW", HOST, rf.port]}})
    orthanc.dicom_port = dicom_port
    orthanc.start()
    rf.start()
    try:
        results = {}
        for modality in ("CT", "MR"):
            insts = [write_instance(tmp_path / modality, modality=modality, seed=i)
                     for i in range(2)]
            ids = [orthanc.post("/instances", i.path.read_bytes())["ID"] for i in insts]
            answer = orthanc.post("/modalities/radflow/store",
                                  {"Resources": ids, "StorageCommitment": True})
            transaction = answer["StorageCommitmentTransactionUID"]
            _wait(lambda t=transaction: orthanc.get(f"/storage-commitment/{t}")["Status"]
                  != "Pending", timeout=90)
            results[modality] = (orthanc.get(f"/storage-commitment/{transaction}"),
                                 {i.sop_instance_uid for i in insts})
    finally:
        rf.close()
        orthanc.stop()
    ct, ct_uids = results["CT"]
    assert ct["Status"] == "Failure", ct
    assert {f["SOPInstanceUID"] for f in ct["Failures"]} == ct_uids
    assert {f["FailureReason"] for f in ct["Failures"]} == {0x0110}
    mr, mr_uids = results["MR"]
    assert mr["Status"] == "Success", mr
    assert {s["SOPInstanceUID"] for s in mr["Success"]} == mr_uids
