"""Helpers for the morph tests: a small dataset with the attributes the ops touch, and
compiling and running ops in one call."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

from engine.morph import CompileEnv, MorphKeys, MorphStep, apply_steps, compile_step
from tests.helpers import dicomgen

SECRET = "unit-test-secret"


def steps(*raw: dict[str, Any], env: CompileEnv | None = None) -> list[MorphStep]:
    """Compile ops; fail the test with every problem when one does not compile."""
    problems: list[str] = []
    out = []
    for i, item in enumerate(raw):
        step = compile_step(item, (i,), lambda w, m: problems.append(f"{w}: {m}"),
                            env or CompileEnv())
        if step is not None:
            out.append(step)
    assert problems == []
    return out


def problems_of(raw: dict[str, Any], env: CompileEnv | None = None) -> list[str]:
    problems: list[str] = []
    compile_step(raw, (), lambda w, m: problems.append(m), env or CompileEnv())
    return problems


def run(ds: Dataset, *raw: dict[str, Any], secret: str | None = SECRET) -> Dataset:
    out = copy.deepcopy(ds)
    return apply_steps(out, steps(*raw), MorphKeys(secret))


def sample() -> Dataset:
    d = dicomgen.new_dataset("CT", patient_id="PAT-001", accession_number="12345")
    d.PatientName = "Mustermann^Erika"
    d.InstitutionName = "Klinikum Nord"
    d.StationName = "CTAWP00012"
    d.StudyDescription = "CT Thorax Mustermann PAT-001"
    d.SeriesDescription = "Lung 1.0"
    d.OtherPatientIDs = ["OLD-1", "OLD-2"]
    d.DeviceSerialNumber = "SN-778"
    d.FrameOfReferenceUID = "1.2.3.4.5.6"
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = "1.2.3.4.5.7"
    item.PatientName = "Nested^Name"
    d.ReferencedImageSequence = DicomSequence([item])
    d.add_new(0x00091010, "LO", "private value")
    d.add_new(0x60003000, "OW", b"\x00\x01" * 8)
    d.add_new(0x60000010, "US", 4)
    d.add_new(0x50000005, "US", 1)
    d.AcquisitionDateTime = "20250101120000.000000"
    d.ContentDate = "20250102"
    d.file_meta = FileMetaDataset()
    d.file_meta.MediaStorageSOPClassUID = d.SOPClassUID
    d.file_meta.MediaStorageSOPInstanceUID = d.SOPInstanceUID
    d.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return d


def values(seq: Sequence[Any]) -> list[str]:
    return [str(v) for v in seq]
