"""Every predicate and combinator of a match tree, compiled and tested against subjects."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from engine.hl7.message import Hl7Message
from engine.rules.match import compile_match
from engine.rules.ruleset import DicomSubject, Hl7Subject, RoutingContext
from tests.helpers import dicomgen

CTX = RoutingContext(calling_ae="CT_1", called_ae="RADFLOW", source_ip="10.20.3.4",
                     listener="main", now=dt.datetime(2026, 11, 28, 22, 30))  # a Saturday


def dataset() -> Dataset:
    ds = dicomgen.new_dataset("CT", patient_id="MRN-42", accession_number="A100")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SliceThickness = "1.25"
    ds.StudyDescription = "CT Thorax"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    ds.ReferencedStudySequence = Sequence([item])
    block = ds.private_block(0x0009, "ACME 1.1", create=True)
    block.add_new(0x10, "LO", "ai-please")
    return ds


def compiled(raw: Any) -> Any:
    problems: list[str] = []
    node = compile_match(raw, ("match",), lambda w, m: problems.append(m))
    assert problems == [] and node is not None
    return node


def problems(raw: Any) -> list[str]:
    out: list[str] = []
    compile_match(raw, ("match",), lambda w, m: out.append(m))
    return out


def matches(raw: Any, ds: Dataset | None = None, ctx: RoutingContext = CTX) -> bool:
    return bool(compiled(raw).test(DicomSubject(ds if ds is not None else dataset(), ctx)))


@pytest.mark.parametrize("raw, expected", [
    ({"attr": "Modality", "equals": "CT"}, True),
    ({"attr": "Modality", "equals": "ct"}, False),
    ({"attr": "Modality", "equals": "ct", "ignore_case": True}, True),
    ({"attr": "(0008,0060)", "equals": "CT"}, True),
    ({"attr": "00080060", "in": ["MR", "CT"]}, True),
    ({"attr": "ImageType", "equals": "AXIAL"}, True),  # any value of a multi-valued attribute
    ({"attr": "ImageType", "in": ["LOCALIZER"]}, False),
    ({"attr": "PatientID", "regex": "^MRN-\\d+$"}, True),
    ({"attr": "StudyDescription", "regex": "thorax"}, False),
    ({"attr": "StudyDescription", "regex": "thorax", "ignore_case": True}, True),
    ({"attr": "PatientComments", "exists": False}, True),
    ({"attr": "PatientID", "exists": True}, True),
    ({"attr": "SliceThickness", "le": 1.25}, True),
    ({"attr": "SliceThickness", "lt": 1.25}, False),
    ({"attr": "SliceThickness", "gt": 1}, True),
    ({"attr": "SeriesNumber", "ge": 2}, False),
    ({"attr": "PatientID", "gt": 1}, False),  # not a number: never matches a comparison
    ({"attr": "StudyDate", "after": "2024-12-31"}, True),
    ({"attr": "StudyDate", "before": dt.date(2025, 1, 1)}, False),
    ({"attr": "StudyDate", "before": 20250102}, True),
    ({"attr": "ReferencedStudySequence[0].ReferencedSOPInstanceUID", "equals": "1.2.3"}, True),
    ({"attr": "ReferencedStudySequence[*].ReferencedSOPInstanceUID", "equals": "1.2.3"}, True),
    ({"attr": "ReferencedStudySequence.ReferencedSOPInstanceUID", "equals": "9"}, False),
    ({"attr": "ReferencedStudySequence", "exists": True}, True),
    ({"attr": '(0009,"ACME 1.1",10)', "equals": "ai-please"}, True),
    ({"attr": '(0009,"OTHER",10)', "exists": True}, False),
    ({"context": "calling_ae", "equals": "CT_1"}, True),
    ({"context": "called_ae", "in": ["RADFLOW", "ARCHIVE"]}, True),
    ({"context": "source_ip", "cidr": ["10.20.0.0/16"]}, True),
    ({"context": "source_ip", "cidr": "192.168.0.0/16"}, False),
    ({"context": "listener", "equals": "main"}, True),
    ({"context": "time", "between": ["20:00", "07:00"]}, True),  # wraps midnight
    ({"context": "time", "between": ["08:00", "18:00"]}, False),
    ({"context": "weekday", "in": ["sat", "sun"]}, True),
    ({"context": "event", "equals": "instance"}, True),
])
def test_predicates(raw: dict[str, Any], expected: bool) -> None:
    assert matches(raw) is expected


def test_combinators_and_lists() -> None:
    assert matches({"all": [{"attr": "Modality", "equals": "CT"},
                            {"not": {"attr": "ImageType", "equals": "LOCALIZER"}}]})
    assert matches({"any": [{"attr": "Modality", "equals": "MR"},
                            {"context": "calling_ae", "regex": "^CT_"}]})
    assert not matches({"not": {"attr": "Modality", "equals": "CT"}})
    assert matches([{"attr": "Modality", "equals": "CT"}, {"attr": "PatientID", "exists": True}])
    assert matches(None)


def test_yaml_sexagesimal_times_are_understood() -> None:
    # YAML 1.1 reads an unquoted 22:00 as 1320 (minutes): accept it as a time.
    assert matches({"context": "time", "between": [1320, 1380]})


def test_hl7_paths() -> None:
    raw = (b"MSH|^~\\&|HIS|HOSP|RADFLOW|RAD|20261125||ORM^O01|MSG1|P|2.5\r"
           b"PID|||MRN-42^^^HOSP~OTHER-7^^^X||Doe^Jane\r"
           b"ORC|NW|P100\rOBR|1|P100||CTCHEST^CT Chest^L\r")
    subject = Hl7Subject(Hl7Message.parse(raw), CTX)
    assert compiled({"hl7": "MSH-9.1", "equals": "ORM"}).test(subject)
    assert compiled({"hl7": "PID-3.1", "equals": "OTHER-7"}).test(subject)  # any repetition
    assert not compiled({"hl7": "PID-3[1].1", "equals": "OTHER-7"}).test(subject)
    assert compiled({"hl7": "OBR-4.2", "regex": "Chest"}).test(subject)
    assert compiled({"hl7": "ZDS-1", "exists": False}).test(subject)
    assert compiled({"context": "event", "equals": "order"}).test(subject)


@pytest.mark.parametrize("raw, fragment", [
    ({"attr": "Modalty", "equals": "CT"}, "did you mean Modality"),
    ({"attr": "Modality"}, "exactly one operator"),
    ({"attr": "Modality", "equals": "CT", "in": ["CT"]}, "one operator per predicate"),
    ({"equals": "CT"}, "exactly one of attr, context, hl7"),
    ({"attr": "Modality", "equal": "CT"}, "unknown key"),
    ({"context": "calling_aet", "equals": "X"}, "unknown context"),
    ({"hl7": "PID3", "equals": "X"}, "not an HL7 field path"),
    ({"attr": "Modality", "regex": "(unclosed"}, "invalid regex"),
    ({"attr": "Modality", "regex": "(a)\\1"}, "backreferences"),
    ({"attr": "Modality", "in": []}, "non-empty list"),
    ({"attr": "SliceThickness", "lt": "2"}, "takes a number"),
    ({"attr": "StudyDate", "after": "yesterday"}, "takes a date"),
    ({"attr": "Modality", "between": ["1", "2"]}, "context: time"),
    ({"context": "time", "between": ["8", "18:00"]}, "HH:MM"),
    ({"context": "source_ip", "cidr": ["10.0.0.300/8"]}, "not an address"),
    ({"context": "weekday", "in": ["monday"]}, "weekdays are"),
    ({"all": {"attr": "Modality", "equals": "CT"}}, "non-empty list"),
    ({"all": [], "any": []}, "must be alone"),
    ({"attr": "Modality", "exists": "yes"}, "true or false"),
])
def test_compile_errors_name_the_problem(raw: dict[str, Any], fragment: str) -> None:
    found = problems(raw)
    assert any(fragment in p for p in found), found


def test_catastrophic_regex_runs_in_linear_time() -> None:
    # (a+)+$ takes exponential time in a backtracking engine on "aaaa...b"; RE2 cannot.
    node = compiled({"attr": "StudyDescription", "regex": "^(a+)+$"})
    ds = dataset()
    ds.StudyDescription = "a" * 60 + "b"
    started = time.perf_counter()
    assert not node.test(DicomSubject(ds, CTX))
    assert time.perf_counter() - started < 0.5


def test_explain_gives_a_reason_per_predicate() -> None:
    node = compiled({"all": [{"attr": "Modality", "equals": "CT"},
                             {"context": "calling_ae", "in": ["MR_1"]}]})
    rows = node.explain(DicomSubject(dataset(), CTX))
    assert not rows[0].matched
    assert "Modality equals 'CT': 'CT' -> matched" in rows[1].reason
    assert "context.calling_ae in ['MR_1']: 'CT_1' -> not matched" in rows[2].reason


def test_the_dataset_is_read_only_when_an_attribute_is_needed() -> None:
    calls = []

    def loader() -> Dataset:
        calls.append(1)
        return dataset()

    subject = DicomSubject(loader, CTX)
    assert compiled({"context": "calling_ae", "equals": "CT_1"}).test(subject)
    assert calls == []
    assert compiled({"attr": "Modality", "equals": "CT"}).test(subject)
    assert compiled({"attr": "PatientID", "exists": True}).test(subject)
    assert calls == [1]
