"""De-identification (PS3.15 Basic Profile and options), character sets, and the properties
every morph must have: deterministic bytes, and no profile attribute left as it was."""

from __future__ import annotations

import copy
import functools
import io
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from engine.morph import MorphKeys, apply_steps, morph_bytes, write_dataset
from engine.morph.deid import DeidOptions, effective_action
from engine.morph.ps315 import PROFILE_BY_TAG, PROFILE_TABLE
from tests.unit.morph.support import SECRET, run, sample, steps


def test_table_is_the_standards_size_and_shape() -> None:
    assert len(PROFILE_TABLE) > 600
    assert PROFILE_BY_TAG[0x00100010].action == "Z"  # Patient's Name
    assert PROFILE_BY_TAG[0x00080018].action == "U"  # SOP Instance UID
    assert PROFILE_BY_TAG[0x00181000].option("D") == "K"  # Device Serial Number
    assert PROFILE_BY_TAG[0x00081030].option("C") == "C"  # Study Description
    assert PROFILE_BY_TAG[0x00080020].option("L") == "K"  # Study Date
    assert {r.action for r in PROFILE_TABLE} <= {"X", "Z", "D", "U", "K", "C", "X/Z", "X/D",
                                                  "Z/D", "X/Z/D", "X/Z/U*"}


def test_basic_profile_actions(ds: Dataset) -> None:
    out = run(ds, {"op": "deidentify"})
    assert out.PatientName == "" and out.PatientBirthDate == ""
    assert ("OtherPatientIDs" not in out and "InstitutionName" not in out) or \
        out.InstitutionName in ("", "ANONYMOUS")
    assert out.StudyInstanceUID != ds.StudyInstanceUID
    assert out.SOPClassUID == ds.SOPClassUID
    assert "StudyDescription" not in out  # X without clean descriptors
    assert not [e for e in out if e.tag.is_private or e.tag.group in (0x5000, 0x6000)]
    assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID != "1.2.3.4.5.7"
    assert "PatientName" not in out.ReferencedImageSequence[0] or \
        out.ReferencedImageSequence[0].PatientName == ""
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert out.PixelData == ds.PixelData


def test_options_retain_uids_device_and_full_dates(ds: Dataset) -> None:
    out = run(ds, {"op": "deidentify", "retain_uids": True, "retain_device_identity": True,
                   "retain_longitudinal_dates": "full"})
    assert out.StudyInstanceUID == ds.StudyInstanceUID
    assert out.SOPInstanceUID == ds.SOPInstanceUID
    assert out.DeviceSerialNumber == "SN-778" and out.StationName == "CTAWP00012"
    assert out.StudyDate == ds.StudyDate and out.AcquisitionDateTime == ds.AcquisitionDateTime
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"
    codes = {i.CodeValue for i in out.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113110", "113109", "113106"}


def test_modified_dates_shift_consistently_per_patient(ds: Dataset) -> None:
    out = run(ds, {"op": "deidentify", "retain_longitudinal_dates": "modified"})
    again = run(ds, {"op": "deidentify", "retain_longitudinal_dates": "modified"})
    assert out.StudyDate != ds.StudyDate and out.StudyDate == again.StudyDate
    assert out.StudyTime == ds.StudyTime  # whole days: times stay
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"


def test_clean_descriptors_scrubs_identifying_values(ds: Dataset) -> None:
    out = run(ds, {"op": "deidentify", "clean_descriptors": True})
    assert out.StudyDescription == "CT Thorax *** ***"
    assert out.SeriesDescription == "Lung 1.0"


def test_pseudonymize_patient_links_studies_of_one_patient(ds: Dataset) -> None:
    a = run(ds, {"op": "deidentify", "pseudonymize_patient": True})
    other = ds.copy()
    other.StudyInstanceUID = "1.2.99"
    b = run(other, {"op": "deidentify", "pseudonymize_patient": True})
    assert a.PatientID == b.PatientID == a.PatientName != ""
    assert a.PatientID != "PAT-001"


def test_compound_actions_resolve_to_keep_iods_valid() -> None:
    opts = DeidOptions()
    assert effective_action(PROFILE_BY_TAG[0x00081070], opts) == "D"  # X/Z/D
    assert effective_action(PROFILE_BY_TAG[0x00081110], opts) == "Z"  # X/Z
    assert effective_action(PROFILE_BY_TAG[0x00081140], opts) == "U*"  # X/Z/U*
    assert effective_action(PROFILE_BY_TAG[0x00081140], DeidOptions(retain_uids=True)) == "K"


def test_deidentify_needs_the_secret() -> None:
    from engine.morph import CompileEnv
    from tests.unit.morph.support import problems_of

    assert any("routing.secret" in p for p in problems_of(
        {"op": "deidentify"}, CompileEnv(has_secret=False)))
    assert any("off, full or modified" in p for p in problems_of(
        {"op": "deidentify", "retain_longitudinal_dates": "sometimes"}))


# --- character sets ----------------------------------------------------------------------------


def test_text_that_fits_keeps_the_character_set(ds: Dataset) -> None:
    out = run(ds, {"op": "set", "attr": "InstitutionName", "value": "Universitätsklinik"})
    assert out.SpecificCharacterSet == "ISO_IR 100"
    assert b"Universit\xe4tsklinik" in write_dataset(out)


def test_text_that_does_not_fit_converts_the_dataset_to_utf8(ds: Dataset) -> None:
    ds.PatientName = "Müller^Jürgen"
    out = run(ds, {"op": "set", "attr": "InstitutionName", "value": "東京病院"})
    assert out.SpecificCharacterSet == "ISO_IR 192"
    data = write_dataset(out)
    assert "東京病院".encode() in data
    assert "Müller^Jürgen".encode() in data  # the old text re-encoded, not garbled


def test_ascii_dataset_gets_utf8_for_latin_text(ds: Dataset) -> None:
    del ds.SpecificCharacterSet
    out = run(ds, {"op": "set", "attr": "InstitutionName", "value": "Hôpital"})
    assert out.SpecificCharacterSet == "ISO_IR 192"


def test_japanese_iso2022_text_is_preserved_through_a_morph(ds: Dataset) -> None:
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    out = morph_bytes(buf.getvalue(), steps({"op": "set", "attr": "StationName",
                                             "value": "CT_1"}), MorphKeys(None))
    from engine.morph import read_dataset

    back = read_dataset(out)
    assert str(back.PatientName) == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert list(back.SpecificCharacterSet) == ["", "ISO 2022 IR 87"]


# --- properties --------------------------------------------------------------------------------

_TEXT = st.text(alphabet=string.ascii_letters + string.digits + " ^-", min_size=3, max_size=12)
_SIMPLE_VRS = {"LO", "SH", "PN", "CS", "DA", "TM", "DT", "UI", "ST", "LT", "AE", "UT"}


def _value(vr: str, text: str, n: int) -> str:
    if vr == "DA":
        return f"19{n % 90 + 10:02d}0{n % 9 + 1}1{n % 9}"
    if vr == "TM":
        return f"1{n % 9}3000"
    if vr == "DT":
        return f"20{n % 90 + 10:02d}01011200"
    if vr == "UI":
        return f"1.2.826.0.1.3680043.9.{n + 1}"
    if vr == "CS":
        return text.upper().replace("^", "_").replace("-", "_")[:16]
    if vr == "AE":
        return text[:16].strip() or "AE"
    if vr == "SH":
        return text[:16]
    return text


def _profile_rows() -> list[tuple[int, str]]:
    out = []
    for row in PROFILE_TABLE:
        if row.is_wildcard:
            continue
        tag = int(row.pattern, 16)
        if tag >> 16 in (0x0000, 0x0002):
            continue  # command and file meta elements are never in a stored dataset
        try:
            vr = str(dictionary_VR(tag))
        except KeyError:
            continue
        if vr in _SIMPLE_VRS:
            out.append((tag, vr))
    return out


PROFILE_ROWS = _profile_rows()


@functools.cache
def _baseline() -> bytes:
    """The bytes of the de-identified sample, before any generated attribute is added."""
    return write_dataset(apply_steps(sample(), steps({"op": "deidentify"}), MorphKeys(SECRET)))


def _without_uid_values(ds: Dataset) -> bytes:
    """``ds`` written with every UID value (at any depth) emptied."""
    blank = copy.deepcopy(ds)

    def empty_uids(dataset: Dataset, elem: DataElement) -> None:
        if elem.VR == "UI":
            elem.value = ""

    blank.walk(empty_uids)
    meta = getattr(blank, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = "1.2.3"  # the remapped instance UID again
    return write_dataset(blank)


#: the dummy values ``deidentify`` writes (engine.morph.deid), as text
_DUMMY_TEXTS = ("ANONYMOUS", "19000101000000", "000000", "000D", "http://anonymous.invalid")


@st.composite
def identified(draw: st.DrawFn) -> tuple[Dataset, dict[int, str]]:
    ds = sample()
    chosen = draw(st.lists(st.sampled_from(PROFILE_ROWS), min_size=5, max_size=40,
                           unique=True))
    originals: dict[int, str] = {}
    for n, (tag, vr) in enumerate(chosen):
        value = _value(vr, draw(_TEXT), n)
        if not value.strip() or any(value.strip() in d for d in _DUMMY_TEXTS):
            continue  # the same text as a dummy value: it would be found in any output
        ds.add_new(tag, vr, value)
        originals[tag] = value
    return ds, originals


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(identified())
def test_deidentification_leaves_none_of_the_profiles_attributes(
        case: tuple[Dataset, dict[int, str]]) -> None:
    ds, originals = case
    out = apply_steps(copy.deepcopy(ds), steps({"op": "deidentify"}), MorphKeys(SECRET))
    for tag, original in originals.items():
        if tag not in out:
            continue  # removed (X)
        value = str(out[tag].value or "")
        # emptied (Z), a dummy (D) or a remapped UID (U): never the original value
        assert value != original, (hex(tag), PROFILE_BY_TAG[tag].action, value)
    leftovers = {v for v in originals.values() if len(v) >= 6}
    text = write_dataset(out)
    digits_only = _without_uid_values(out)
    for original in leftovers:
        if original.encode() in _baseline():
            continue  # text every de-identified sample holds (a code value, say): no leak
        # A date or time is six or more digits, which a remapped UID (a hash written in
        # decimal) holds by chance now and then: those are looked for outside UID values.
        where = digits_only if original.isdigit() else text
        assert original.encode() not in where, original


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(identified(), st.sampled_from([
    [{"op": "deidentify", "retain_longitudinal_dates": "modified", "clean_descriptors": True,
      "pseudonymize_patient": True}],
    [{"op": "hash", "attr": "PatientID"}, {"op": "date_shift", "max_days": 100},
     {"op": "uid_remap"}, {"op": "delete", "private": True}],
    [{"op": "set", "attr": "InstitutionName", "value": "Ünïcode {PatientID}"},
     {"op": "regex_replace", "attr": "StudyDescription", "pattern": "[aeiou]",
      "replacement": "_"}],
]))
def test_morphs_are_deterministic(case: tuple[Dataset, dict[int, str]],
                                  raw: list[dict[str, object]]) -> None:
    ds, _ = case
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    compiled = steps(*raw)
    first = morph_bytes(data, compiled, MorphKeys(SECRET))
    second = morph_bytes(data, steps(*raw), MorphKeys(SECRET))
    assert first == second
    assert first != data


@pytest.mark.parametrize("secret", ["a", "b"])
def test_the_secret_changes_uids_and_pseudonyms(secret: str) -> None:
    ds = sample()
    a = run(ds, {"op": "deidentify", "pseudonymize_patient": True}, secret=secret)
    b = run(ds, {"op": "deidentify", "pseudonymize_patient": True}, secret=secret + "x")
    assert a.StudyInstanceUID != b.StudyInstanceUID and a.PatientID != b.PatientID
