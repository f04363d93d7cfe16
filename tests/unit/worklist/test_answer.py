"""The hand-written answer encoder (engine.worklist.answer) against pydicom's own writer: for
each query shape, item, character set and transfer syntax, the bytes must be exactly what
pydicom writes for the answer Dataset, and they must read back to the same values."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pynetdicom.dsutils import encode

from engine.app import configure_libraries
from engine.records.worklist import CodeItem, WorklistItem, WorklistStatus
from engine.worklist.query import MwlQuery
from tests.unit.worklist.test_query import ITEM, JAPANESE, identifier

configure_libraries()  # radflow's pydicom settings (writing validation RAISE), as in the engine

UTF8 = ITEM.replace(patient_name="Łukasz^Żółć", requested_procedure_description="Głowa CT",
                    specific_character_set=("ISO_IR 192",))
ASCII = ITEM.replace(patient_name="Smith^John", specific_character_set=())
ODD = ITEM.replace(patient_id="P1234", study_instance_uid="1.2.3.45", accession_number="A1",
                   scheduled_procedure_step_start_time="0830", patient_sex="",
                   status=WorklistStatus.IN_PROGRESS,
                   scheduled_protocol_code=(CodeItem("P1", "99X", "Protocol one"),
                                            CodeItem("P2", "99X", "Zwei")))

SCANNER_KEYS: dict[str, Any] = {
    "AccessionNumber": "", "ReferringPhysicianName": "", "PatientName": "", "PatientID": "",
    "IssuerOfPatientID": "", "PatientBirthDate": "", "PatientSex": "", "StudyInstanceUID": "",
    "RequestedProcedureDescription": "", "RequestedProcedureID": "",
    "PlacerOrderNumberImagingServiceRequest": "", "PatientWeight": "",
    "AdmissionID": "", "RequestedProcedureCodeSequence": [],
}
SPS_KEYS: dict[str, Any] = {
    "Modality": "CT", "ScheduledStationAETitle": "", "ScheduledProcedureStepStartDate": "",
    "ScheduledProcedureStepStartTime": "", "ScheduledPerformingPhysicianName": "",
    "ScheduledProcedureStepDescription": "", "ScheduledProcedureStepID": "",
    "ScheduledStationName": "", "ScheduledProcedureStepStatus": "",
    "ScheduledProtocolCodeSequence": [],
}


def _queries() -> dict[str, Dataset]:
    whole_sps = identifier(PatientID="", PatientName="")
    whole_sps.ScheduledProcedureStepSequence = [Dataset()]  # empty item: the whole step
    code_keys = identifier(PatientID="")
    code = Dataset()
    code.CodeValue = ""
    code.CodeMeaning = ""
    code_keys.RequestedProcedureCodeSequence = [code]
    return {
        "scanner": identifier(SPS_KEYS, **SCANNER_KEYS),
        "patient": identifier(PatientID="PAT1", PatientName=""),
        "whole-sps": whole_sps,
        "code-keys": code_keys,
        "nothing": identifier(),
    }


ITEMS = {"latin1": ITEM, "japanese": JAPANESE, "utf8": UTF8, "ascii": ASCII, "odd": ODD}


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("item_name", sorted(ITEMS))
@pytest.mark.parametrize("query_name", sorted(_queries()))
def test_bytes_equal_pydicoms_encoding(query_name: str, item_name: str, implicit: bool) -> None:
    query = MwlQuery.parse(_queries()[query_name])
    item: WorklistItem = ITEMS[item_name]
    charset = item.specific_character_set
    ours = query.response_bytes(item, charset, implicit)
    theirs = encode(query.response(item, charset), implicit, True)
    assert ours is not None
    assert ours == theirs
    back = read_dataset(BytesIO(ours), implicit, True)
    back.decode()  # Specific Character Set applied, as a scanner reads it
    if "PatientName" in back:
        assert str(back.PatientName) == item.patient_name


def test_a_value_with_a_backslash_is_left_to_pydicom() -> None:
    query = MwlQuery.parse(identifier(PatientID="", PatientName=""))
    item = ITEM.replace(patient_id="A\\B")
    assert query.response_bytes(item, item.specific_character_set, True) is None


def test_a_name_the_charset_cannot_hold_is_left_to_pydicom() -> None:
    query = MwlQuery.parse(identifier(PatientName=""))
    item = ITEM.replace(patient_name="山田^太郎")  # not Latin-1
    assert query.response_bytes(item, ("ISO_IR 100",), False) is None
