"""MWL C-FIND matching (PS3.4 C.2.2.2) and answers: pure, no store, no network."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset

from engine.records.worklist import CodeItem, WorklistItem, WorklistStatus
from engine.records.worklist_criteria import AnyOf, Column, Criterion
from engine.worklist.query import InvalidQuery, MwlQuery, norm_time, parse_date_range, pn_matches

ITEM = WorklistItem(
    patient_id="PAT1", issuer_of_patient_id="HOSP", patient_name="Müller^Jürgen",
    patient_birth_date="19700101", patient_sex="M", accession_number="ACC1",
    requested_procedure_id="RP1", requested_procedure_description="CT Head",
    requested_procedure_code=(CodeItem("CTHEAD", "99RADFLOW", "CT Head"),),
    study_instance_uid="1.2.3.4", referring_physician_name="Smith^Anna",
    scheduled_procedure_step_id="SPS1", modality="CT", scheduled_station_ae_title="CT_SCANNER_1",
    scheduled_station_name="CT1", scheduled_procedure_step_start_date="20261125",
    scheduled_procedure_step_start_time="083000",
    scheduled_performing_physician_name="Tech^Tom", scheduled_procedure_step_description="Head",
    specific_character_set=("ISO_IR 100",))
JAPANESE = ITEM.replace(patient_name="ヤマダ^タロウ=山田^太郎",
                        specific_character_set=("", "ISO 2022 IR 87"))


def identifier(sps: dict[str, Any] | None = None, **top: Any) -> Dataset:
    ds = Dataset()
    for key, value in top.items():
        setattr(ds, key, value)
    if sps is not None:
        item = Dataset()
        for key, value in sps.items():
            setattr(item, key, value)
        ds.ScheduledProcedureStepSequence = [item]
    return ds


def match(ident: Dataset, item: WorklistItem = ITEM, ci: bool = False) -> bool:
    return MwlQuery.parse(ident, case_insensitive_pn=ci).matches(item)


# --- single value, wildcard, universal -------------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [
    ("PAT1", True), ("PAT2", False), ("PAT*", True), ("P?T1", True), ("P?T", False),
    ("*", True), ("", True), ("pat1", False),
])
def test_patient_id(value: str, expected: bool) -> None:
    assert match(identifier(PatientID=value)) is expected


def test_single_value_becomes_an_indexed_equality() -> None:
    q = MwlQuery.parse(identifier(PatientID="PAT1", AccessionNumber="AC*"))
    assert Criterion(Column.PATIENT_ID, "eq", value="PAT1") in q.constraints
    assert Criterion(Column.ACCESSION, "wildcard", value="AC*") in q.constraints


def test_universal_keys_add_no_constraint() -> None:
    q = MwlQuery.parse(identifier({"Modality": "", "ScheduledStationAETitle": ""},
                                  PatientID="", PatientName=""))
    assert q.constraints == []
    assert q.matches(ITEM)


# --- person names ----------------------------------------------------------------------------
@pytest.mark.parametrize(("pattern", "ci", "expected"), [
    ("Müller^Jürgen", False, True),
    ("Müller*", False, True),
    ("müller*", False, False),
    ("müller*", True, True),
    ("MÜLLER^JÜRGEN", True, True),
    ("M?ller*", False, True),
    ("Mueller*", True, False),
])
def test_pn_matching(pattern: str, ci: bool, expected: bool) -> None:
    assert match(identifier(PatientName=pattern), ci=ci) is expected


@pytest.mark.parametrize(("pattern", "expected"), [
    ("ヤマダ*", True),  # alphabetic group
    ("山田*", True),  # a pattern without "=" is tried on every group
    ("山田^太郎", True),
    ("=山田*", True),  # group-positional
    ("ヤマダ*=山田*", True),
    ("ヤマダ*=田中*", False),
    ("田中*", False),
])
def test_pn_component_groups(pattern: str, expected: bool) -> None:
    assert pn_matches(pattern, JAPANESE.patient_name, False) is expected
    assert match(identifier(PatientName=pattern), JAPANESE) is expected


def test_pn_query_uses_the_folded_group_columns() -> None:
    q = MwlQuery.parse(identifier(PatientName="müller*"), case_insensitive_pn=True)
    (any_of,) = q.constraints
    assert isinstance(any_of, AnyOf)
    assert {c.column for c in any_of.criteria} == {Column.NAME_ALPHA, Column.NAME_IDEO,
                                                   Column.NAME_PHON}
    assert {c.value for c in any_of.criteria} == {"MÜLLER*"}


def test_referring_physician_pn() -> None:
    assert match(identifier(ReferringPhysicianName="Smith*"))
    assert not match(identifier(ReferringPhysicianName="Jones*"))


# --- dates and times -------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [
    ("20261125", ("20261125", "20261125")),
    ("20261125-", ("20261125", None)),
    ("-20261125", (None, "20261125")),
    ("20261125-20261130", ("20261125", "20261130")),
])
def test_date_range_parsing(value: str, expected: tuple[str | None, str | None]) -> None:
    assert parse_date_range(value) == expected


@pytest.mark.parametrize("bad", ["2026-11-25x", "202611", "-", "abc"])
def test_bad_dates_are_invalid_queries(bad: str) -> None:
    with pytest.raises(InvalidQuery):
        MwlQuery.parse(identifier({"ScheduledProcedureStepStartDate": bad}))


@pytest.mark.parametrize(("date", "expected"), [
    ("20261125", True), ("20261124", False), ("20261125-", True), ("20261126-", False),
    ("-20261125", True), ("-20261124", False), ("20261120-20261130", True),
    ("20261126-20261130", False),
])
def test_sps_date_range(date: str, expected: bool) -> None:
    assert match(identifier({"ScheduledProcedureStepStartDate": date})) is expected


def test_time_normalisation() -> None:
    assert norm_time("0800") == "080000.000000"
    assert norm_time("0800", upper=True) == "080059.999999"
    assert norm_time("08", upper=True) == "085959.999999"
    assert norm_time("08:30:15") == "083015.000000"


@pytest.mark.parametrize(("time", "expected"), [
    ("0830", True), ("0800-0900", True), ("0900-", False), ("-0829", False), ("-0830", True),
])
def test_sps_time_range_alone(time: str, expected: bool) -> None:
    assert match(identifier({"ScheduledProcedureStepStartTime": time})) is expected


@pytest.mark.parametrize(("date", "time", "expected"), [
    ("20261125", "0800-0900", True),
    ("20261125", "0900-1000", False),
    # Combined: from 24 Nov 20:00 to 25 Nov 09:00 includes 25 Nov 08:30 ...
    ("20261124-20261125", "2000-0900", True),
    # ... and from 25 Nov 09:00 onwards does not.
    ("20261125-", "0900-", False),
    ("20261124-", "0900-", True),  # 24 Nov 09:00 → open end: 25 Nov 08:30 is inside
    ("-20261125", "-0800", False),  # up to 25 Nov 08:00
])
def test_combined_date_time_range(date: str, time: str, expected: bool) -> None:
    q = MwlQuery.parse(identifier({"ScheduledProcedureStepStartDate": date,
                                   "ScheduledProcedureStepStartTime": time}))
    assert q.matches(ITEM) is expected
    assert any(isinstance(c, Criterion) and c.column is Column.SPS_DATE for c in q.constraints)


def test_birth_date_range() -> None:
    assert match(identifier(PatientBirthDate="19600101-19751231"))
    assert not match(identifier(PatientBirthDate="19710101-"))


# --- lists and sequences ---------------------------------------------------------------------
def test_list_of_uids() -> None:
    q = MwlQuery.parse(identifier(StudyInstanceUID=["1.2.9", "1.2.3.4"]))
    assert q.matches(ITEM)
    assert Criterion(Column.STUDY_UID, "in", values=("1.2.3.4", "1.2.9")) in q.constraints
    assert not match(identifier(StudyInstanceUID=["1.2.9", "1.2.8"]))


def test_uid_wildcards_are_refused() -> None:
    with pytest.raises(InvalidQuery):
        MwlQuery.parse(identifier(StudyInstanceUID="1.2.*"))


@pytest.mark.parametrize(("sps", "expected"), [
    ({"Modality": "CT"}, True),
    ({"Modality": "MR"}, False),
    ({"ScheduledStationAETitle": "CT_SCANNER_1"}, True),
    ({"ScheduledStationAETitle": "CT_*"}, True),
    ({"ScheduledStationAETitle": "MR_SCANNER_1"}, False),
    ({"ScheduledPerformingPhysicianName": "Tech*"}, True),
    ({"ScheduledPerformingPhysicianName": "Other*"}, False),
    ({"ScheduledProcedureStepID": "SPS1"}, True),
    ({"ScheduledProcedureStepStatus": "SCHEDULED"}, True),
    ({"ScheduledProcedureStepStatus": "STARTED"}, False),
])
def test_sequence_matching_in_the_sps(sps: dict[str, str], expected: bool) -> None:
    assert match(identifier(sps)) is expected


def test_code_sequence_matching() -> None:
    code = Dataset()
    code.CodeValue = "CTHEAD"
    ds = identifier()
    ds.RequestedProcedureCodeSequence = [code]
    assert match(ds)
    code.CodeValue = "MR*"
    assert not match(ds)


def test_unsupported_key_with_a_value_is_reported() -> None:
    q = MwlQuery.parse(identifier(BodyPartExamined="HEAD", AdmissionID=""))
    assert q.unsupported == ["BodyPartExamined"]
    assert q.matches(ITEM)


def test_standard_return_keys_match_universally_and_come_back_empty() -> None:
    from pydicom.datadict import tag_for_keyword

    from engine.worklist.keys import RETURN_KEYS, SPS_RETURN_KEYS
    assert all(tag_for_keyword(k) is not None for k in RETURN_KEYS | SPS_RETURN_KEYS)
    q = MwlQuery.parse(identifier(PatientWeight="70", PregnancyStatus=4, MedicalAlerts="x"))
    assert q.unsupported == []
    assert q.matches(ITEM)
    answer = q.response(ITEM)
    assert answer.PregnancyStatus is None and answer["PatientWeight"].value in (None, "")


# --- answers ---------------------------------------------------------------------------------
def test_only_requested_keys_come_back() -> None:
    q = MwlQuery.parse(identifier({"Modality": "", "ScheduledProcedureStepStartDate": ""},
                                  PatientID="", PatientName="", AdmissionID=""))
    ds = q.response(ITEM)
    assert [e.keyword for e in ds] == ["SpecificCharacterSet", "PatientName", "PatientID",
                                       "AdmissionID", "ScheduledProcedureStepSequence"]
    assert ds.SpecificCharacterSet == "ISO_IR 100"
    assert ds.PatientName == "Müller^Jürgen"
    assert ds["AdmissionID"].is_empty  # requested but not kept: returned empty
    (sps,) = ds.ScheduledProcedureStepSequence
    assert [e.keyword for e in sps] == ["Modality", "ScheduledProcedureStepStartDate"]
    assert sps.Modality == "CT"


def test_an_empty_sps_item_returns_the_whole_step() -> None:
    ds = identifier()
    ds.ScheduledProcedureStepSequence = [Dataset()]
    (sps,) = MwlQuery.parse(ds).response(ITEM).ScheduledProcedureStepSequence
    assert sps.ScheduledStationAETitle == "CT_SCANNER_1"
    assert sps.ScheduledProcedureStepStartTime == "083000"
    assert sps.ScheduledProcedureStepStatus == "SCHEDULED"
    assert sps.ScheduledProtocolCodeSequence == []


def test_code_sequence_answer_has_the_requested_item_keys() -> None:
    ds = identifier(RequestedProcedureDescription="")
    ds.RequestedProcedureCodeSequence = [Dataset()]
    (code,) = MwlQuery.parse(ds).response(ITEM).RequestedProcedureCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
        "CTHEAD", "99RADFLOW", "CT Head")


def test_in_progress_items_report_started() -> None:
    ds = identifier({"ScheduledProcedureStepStatus": ""})
    answer = MwlQuery.parse(ds).response(ITEM.replace(status=WorklistStatus.IN_PROGRESS))
    assert answer.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "STARTED"


def test_japanese_answer_declares_iso_2022() -> None:
    ds = MwlQuery.parse(identifier(PatientName="")).response(JAPANESE)
    assert list(ds.SpecificCharacterSet) == ["", "ISO 2022 IR 87"]
    assert ds.PatientName == "ヤマダ^タロウ=山田^太郎"
