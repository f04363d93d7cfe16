"""The routing header reader and the values routes see: the same as from ``dcmread`` for every
character set and both uncompressed syntaxes; anything else goes to ``dcmread``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from engine.morph.paths import parse_path
from engine.pipeline.header import read_header
from engine.rules.ruleset import DicomSubject, RoutingContext
from tests.helpers import dicomgen

CTX = RoutingContext(now=dt.datetime(2026, 1, 5, 9))
PATHS = ["Modality", "StudyDescription", "InstitutionName", "PatientName", "ImageType",
         "SliceThickness", "InstanceNumber", "Rows", "SmallestImagePixelValue",
         "ReferencedStudySequence", "StationName", "SpecificCharacterSet"]
CHARSETS: list[tuple[str | list[str] | None, str, str]] = [
    ("ISO_IR 100", "Hôpital Süd", "Müller^Jürgen"),
    ("ISO_IR 192", "Klinik Ωmega 東京", "Wang^XiaoDong=王^小東"),
    (None, "Plain Hospital", "Doe^John"),
    (["", "ISO 2022 IR 87"], "Tokyo", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    ("ISO_IR 144", "Больница", "Иванов^Иван"),
]


def write(tmp_path: Path, charset: str | list[str] | None, institution: str, patient: str,
          syntax: str) -> Path:
    ds = dicomgen.new_dataset("CT", size=4)
    if charset is None:
        del ds.SpecificCharacterSet
    else:
        ds.SpecificCharacterSet = charset
    ds.InstitutionName = institution
    ds.PatientName = patient
    ds.StudyDescription = "CT chest routine"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SliceThickness = "1.25"
    ds.InstanceNumber = "0007"
    ds.SmallestImagePixelValue = 3
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    ds.ReferencedStudySequence = [item]
    return dicomgen.write_part10(ds, tmp_path / "i.dcm", syntax)


def tags() -> frozenset[int]:
    out = set()
    for text in PATHS:
        tag = parse_path(text).leaf.tag
        assert tag is not None
        out.add(tag)
    return frozenset(out)


@pytest.mark.parametrize("charset, institution, patient", CHARSETS)
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_routes_see_what_dcmread_gives(tmp_path: Path, charset: str | list[str] | None,
                                       institution: str, patient: str, syntax: str) -> None:
    path = write(tmp_path, charset, institution, patient, syntax)
    fast = read_header(str(path), tags())
    full = pydicom.dcmread(path, stop_before_pixels=True)
    assert isinstance(fast.get_item(0x00080060), RawDataElement)  # the walker, not dcmread
    assert fast.original_character_set == full.original_character_set
    for text in PATHS:
        attr = parse_path(text)
        seen = DicomSubject(fast, CTX).attr(attr)
        assert seen == DicomSubject(full, CTX).attr(attr), text
        # and what a dataset that never recorded its character set gives (decoded by Dataset)
        assert seen == DicomSubject(Dataset(full), CTX).attr(attr), text
    assert DicomSubject(fast, CTX).attr(parse_path("InstitutionName")) == [institution]


def test_a_file_read_twice_in_one_subject_is_decoded_once(tmp_path: Path) -> None:
    path = write(tmp_path, "ISO_IR 100", "Hôpital", "A^B", ExplicitVRLittleEndian)
    reads = []

    def load() -> Dataset:
        reads.append(1)
        return read_header(str(path), tags())

    subject = DicomSubject(load, CTX)
    for _ in range(3):
        assert subject.attr(parse_path("Modality")) == ["CT"]
        assert subject.attr(parse_path("StationName")) is None
    assert len(reads) == 1


def test_other_syntaxes_go_to_dcmread(tmp_path: Path) -> None:
    path = write(tmp_path, "ISO_IR 100", "Hôpital", "A^B", DeflatedExplicitVRLittleEndian)
    ds = read_header(str(path), tags())
    assert "PatientID" in ds  # a full read, not just the wanted tags
    assert DicomSubject(ds, CTX).attr(parse_path("InstitutionName")) == ["Hôpital"]
