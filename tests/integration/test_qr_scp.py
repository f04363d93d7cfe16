"""Query/Retrieve over the spool: DCMTK findscu, movescu and getscu against a running radflow.

Two studies of two patients are stored with storescu; the answers are what the DCMTK tools
extract (files decoded by pydicom), and what a DCMTK storescp (the Move Destination) received.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from tests.helpers.dicomgen import Instance, write_instance
from tests.helpers.peers import Storescp
from tests.helpers.proc import HOST, RadflowProcess, dcmtk, storescu

pytestmark = pytest.mark.dcmtk

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"


class Site:
    def __init__(self, rf: RadflowProcess, sink: Storescp, studies: dict[str, list[Instance]]
                 ) -> None:
        self.rf = rf
        self.sink = sink
        self.studies = studies  # study UID -> instances


def _c_find(rf: RadflowProcess, identifier: Dataset) -> list[tuple[int, Dataset | None]]:
    ae = AE(ae_title="QRTEST")
    ae.add_requested_context(STUDY_ROOT_FIND)
    assoc = ae.associate(HOST, rf.port, ae_title=rf.ae_title)
    assert assoc.is_established
    try:
        return [(int(status.Status), ds) for status, ds in
                assoc.send_c_find(identifier, STUDY_ROOT_FIND)]
    finally:
        assoc.release()


def _wait_indexed(rf: RadflowProcess, count: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        done = sum(int(e.get("indexed", 0)) for e in rf.events("qr.indexed"))
        if done >= count:
            return
        assert time.monotonic() < deadline, rf.diagnostics()
        time.sleep(0.1)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("qr")
    sink = Storescp(base / "sink", ae_title="SINK").start()
    rf = RadflowProcess(base / "radflow", {"query_retrieve": {"move_destinations": [
        {"ae_title": "SINK", "host": HOST, "port": sink.port}]}})
    rf.start()
    try:
        files = base / "files"
        studies: dict[str, list[Instance]] = {}
        for patient, modality, count, date in (("P-ONE", "CT", 3, "20250101"),
                                               ("P-TWO", "MR", 2, "20250301")):
            study, series = generate_uid(), generate_uid()
            studies[study] = [
                write_instance(files, modality=modality, patient_id=patient,
                               study_instance_uid=study, series_instance_uid=series,
                               instance_number=i, seed=i, accession_number=f"ACC-{patient}")
                for i in range(1, count + 1)]
            for inst in studies[study]:
                ds = pydicom.dcmread(inst.path)
                ds.StudyDate = date
                ds.PatientName = f"Doe^{patient}"
                ds.save_as(inst.path)
        result = storescu(rf, [i.path for s in studies.values() for i in s])
        assert result.returncode == 0, result.stdout
        _wait_indexed(rf, 5)
        yield Site(rf, sink, studies)
    finally:
        rf.close()
        sink.stop()


def _findscu(site: Site, out: Path, model: str, *keys: str) -> list[Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    args = [model, "-aec", site.rf.ae_title, "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    result = dcmtk("findscu", *args, HOST, str(site.rf.port), timeout=60)
    assert result.returncode == 0, result.stdout
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_findscu_study_root_study_level(site: Site, tmp_path: Path) -> None:
    answers = _findscu(site, tmp_path, "-S", "QueryRetrieveLevel=STUDY", "PatientID=P-ONE",
                       "StudyInstanceUID", "PatientName", "StudyDate", "ModalitiesInStudy",
                       "NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries",
                       "AccessionNumber")
    assert len(answers) == 1
    study = next(uid for uid, insts in site.studies.items() if len(insts) == 3)
    a = answers[0]
    assert a.StudyInstanceUID == study
    assert str(a.PatientName) == "Doe^P-ONE"
    assert a.StudyDate == "20250101"
    assert a.ModalitiesInStudy == "CT"
    assert int(a.NumberOfStudyRelatedInstances) == 3
    assert int(a.NumberOfStudyRelatedSeries) == 1
    assert a.AccessionNumber == "ACC-P-ONE"


def test_findscu_matching_kinds(site: Site, tmp_path: Path) -> None:
    # Person names ignore case with wildcards; dates match as ranges; ModalitiesInStudy lists
    by_name = _findscu(site, tmp_path / "a", "-S", "QueryRetrieveLevel=STUDY",
                       "PatientName=doe^p-t*", "PatientID")
    assert [a.PatientID for a in by_name] == ["P-TWO"]
    by_date = _findscu(site, tmp_path / "b", "-S", "QueryRetrieveLevel=STUDY",
                       "StudyDate=20250201-", "PatientID")
    assert [a.PatientID for a in by_date] == ["P-TWO"]
    by_modality = _findscu(site, tmp_path / "c", "-S", "QueryRetrieveLevel=STUDY",
                           "ModalitiesInStudy=CT\\US", "PatientID")
    assert [a.PatientID for a in by_modality] == ["P-ONE"]
    none = _findscu(site, tmp_path / "d", "-S", "QueryRetrieveLevel=STUDY",
                    "PatientID=NOBODY")
    assert none == []


def test_findscu_patient_root_every_level(site: Site, tmp_path: Path) -> None:
    patients = _findscu(site, tmp_path / "p", "-P", "QueryRetrieveLevel=PATIENT", "PatientID",
                        "NumberOfPatientRelatedInstances")
    assert {(a.PatientID, int(a.NumberOfPatientRelatedInstances)) for a in patients} == {
        ("P-ONE", 3), ("P-TWO", 2)}
    study = next(uid for uid, insts in site.studies.items() if len(insts) == 2)
    series = _findscu(site, tmp_path / "s", "-P", "QueryRetrieveLevel=SERIES",
                      "PatientID=P-TWO", f"StudyInstanceUID={study}", "SeriesInstanceUID",
                      "Modality", "NumberOfSeriesRelatedInstances")
    assert len(series) == 1 and series[0].Modality == "MR"
    assert int(series[0].NumberOfSeriesRelatedInstances) == 2
    images = _findscu(site, tmp_path / "i", "-P", "QueryRetrieveLevel=IMAGE",
                      "PatientID=P-TWO", f"StudyInstanceUID={study}",
                      f"SeriesInstanceUID={series[0].SeriesInstanceUID}", "SOPInstanceUID",
                      "InstanceNumber")
    assert [a.SOPInstanceUID for a in images] == [
        i.sop_instance_uid for i in site.studies[study]]


def test_movescu_study_to_configured_destination(site: Site) -> None:
    study = next(uid for uid, insts in site.studies.items() if len(insts) == 3)
    result = dcmtk("movescu", "-v", "-S", "-aec", site.rf.ae_title, "-aem", "SINK",
                   "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                   HOST, str(site.rf.port), timeout=60)
    assert result.returncode == 0, result.stdout
    uids = {i.sop_instance_uid for i in site.studies[study]}
    assert site.sink.wait_for(uids) == set()
    received = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p)
                for p in site.sink.received_files()}
    original = pydicom.dcmread(site.studies[study][0].path)
    assert received[original.SOPInstanceUID].PixelData == original.PixelData


def test_movescu_unknown_destination_is_refused(site: Site) -> None:
    study = next(iter(site.studies))
    result = dcmtk("movescu", "-v", "-S", "-aec", site.rf.ae_title, "-aem", "NOWHERE",
                   "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                   HOST, str(site.rf.port), timeout=60)
    assert "Refused: MoveDestinationUnknown" in result.stdout, result.stdout
    assert site.rf.events("ingress.dimse.c_move.destination_unknown",
                          move_destination="NOWHERE")


def test_getscu_series(site: Site, tmp_path: Path) -> None:
    study = next(uid for uid, insts in site.studies.items() if len(insts) == 2)
    result = dcmtk("getscu", "-v", "-S", "-aec", site.rf.ae_title, "-od", str(tmp_path),
                   "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                   HOST, str(site.rf.port), timeout=60)
    assert result.returncode == 0, result.stdout
    got = {pydicom.dcmread(p).SOPInstanceUID for p in tmp_path.iterdir() if p.is_file()}
    assert got == {i.sop_instance_uid for i in site.studies[study]}


def test_find_without_level_is_refused(site: Site) -> None:
    identifier = Dataset()
    identifier.PatientID = "P-ONE"
    answers = _c_find(site.rf, identifier)
    assert [s for s, _ in answers] == [0xA900]


def test_move_everything_is_refused(site: Site) -> None:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    ae = AE(ae_title="QRTEST")
    ae.add_requested_context(STUDY_ROOT_MOVE)
    assoc = ae.associate(HOST, site.rf.port, ae_title=site.rf.ae_title)
    assert assoc.is_established
    try:
        statuses = [int(s.Status) for s, _ in assoc.send_c_move(identifier, "SINK",
                                                                STUDY_ROOT_MOVE)]
    finally:
        assoc.release()
    assert statuses[-1] == 0xA900


def test_move_cancel_stops_sub_operations(tmp_path: Path) -> None:
    sink = Storescp(tmp_path / "sink", ae_title="SINK").start()
    rf = RadflowProcess(tmp_path / "radflow", {"query_retrieve": {"move_destinations": [
        {"ae_title": "SINK", "host": HOST, "port": sink.port}]}})
    rf.start()
    try:
        study, series = generate_uid(), generate_uid()
        files = [write_instance(tmp_path / "f", study_instance_uid=study,
                                series_instance_uid=series, instance_number=i, seed=i)
                 for i in range(1, 41)]
        assert storescu(rf, [f.path for f in files]).returncode == 0
        _wait_indexed(rf, 40)
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study
        ae = AE(ae_title="QRTEST")
        ae.add_requested_context(STUDY_ROOT_MOVE)
        assoc = ae.associate(HOST, rf.port, ae_title=rf.ae_title)
        assert assoc.is_established
        statuses = []
        try:
            for status, _ in assoc.send_c_move(identifier, "SINK", STUDY_ROOT_MOVE, msg_id=7):
                statuses.append(int(status.Status))
                if len(statuses) == 1:
                    # sent while sub-operations go on: the SCP checks it between them
                    assoc.send_c_cancel(7, query_model=STUDY_ROOT_MOVE)
        finally:
            assoc.release()
        assert statuses[-1] == 0xFE00
        assert len(sink.received()) < 40
    finally:
        rf.close()
        sink.stop()


def test_presentation_contexts_include_query_retrieve(site: Site) -> None:
    ae = AE(ae_title="QRTEST")
    for uid in ("1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.1.2",
                "1.2.840.10008.5.1.4.1.2.1.3", STUDY_ROOT_FIND, STUDY_ROOT_MOVE,
                "1.2.840.10008.5.1.4.1.2.2.3"):
        ae.add_requested_context(uid)
    assoc = ae.associate(HOST, site.rf.port, ae_title=site.rf.ae_title)
    assert assoc.is_established
    try:
        assert len(assoc.accepted_contexts) == 6
    finally:
        assoc.release()
