"""Every morph op: what it changes, what it refuses at compile time, and its JSON round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from engine.morph import (
    CompileEnv,
    MorphError,
    MorphKeys,
    apply_steps,
    diff,
    morph_bytes,
    read_dataset,
    steps_from_json,
    steps_to_json,
)
from engine.morph.ops import remap_uid
from tests.unit.morph.support import SECRET, problems_of, run, steps

# --- set / set_if_absent ---------------------------------------------------------------------


def test_set_writes_a_constant_and_a_template(ds: Dataset) -> None:
    out = run(ds, {"op": "set", "attr": "InstitutionName", "value": "Radflow Teaching"},
              {"op": "set", "attr": "StudyID", "value": "{AccessionNumber}-{Modality}"})
    assert out.InstitutionName == "Radflow Teaching"
    assert out.StudyID == "12345-CT"


def test_set_template_of_an_absent_attribute_is_empty_and_braces_escape(ds: Dataset) -> None:
    out = run(ds, {"op": "set", "attr": "StudyID", "value": "{{x}}{PatientComments}"})
    assert out.StudyID == "{x}"


def test_set_into_a_sequence_path_creates_the_item(ds: Dataset) -> None:
    out = run(ds, {"op": "set", "attr": "RequestAttributesSequence[0].RequestedProcedureID",
                   "value": "RP1"})
    assert out.RequestAttributesSequence[0].RequestedProcedureID == "RP1"


def test_set_numbers_and_lists(ds: Dataset) -> None:
    out = run(ds, {"op": "set", "attr": "SeriesNumber", "value": 7},
              {"op": "set", "attr": "ImageType", "value": ["DERIVED", "SECONDARY"]})
    assert out.SeriesNumber == 7
    assert list(out.ImageType) == ["DERIVED", "SECONDARY"]


def test_set_private_attribute_by_creator_needs_a_vr(ds: Dataset) -> None:
    assert any("VR" in p for p in problems_of(
        {"op": "set", "attr": '(0011,"RADFLOW",01)', "value": "x"}))
    out = run(ds, {"op": "set", "attr": '(0011,"RADFLOW",01)', "value": "routed", "vr": "LO"})
    block = out.private_block(0x0011, "RADFLOW")
    assert out[block.get_tag(0x01)].value == "routed"


def test_set_if_absent_keeps_a_value_and_fills_a_gap(ds: Dataset) -> None:
    out = run(ds, {"op": "set_if_absent", "attr": "InstitutionName", "value": "Other"},
              {"op": "set_if_absent", "attr": "ReferringPhysicianName", "value": "Unknown"})
    assert out.InstitutionName == "Klinikum Nord"
    assert out.ReferringPhysicianName == "Unknown"


def test_set_if_absent_fills_an_empty_value(ds: Dataset) -> None:
    ds.InstitutionName = ""
    assert run(ds, {"op": "set_if_absent", "attr": "InstitutionName", "value": "X"}
               ).InstitutionName == "X"


def test_set_refuses_a_value_too_long_for_its_vr_at_apply_time(ds: Dataset) -> None:
    with pytest.raises(MorphError, match="longer than SH"):
        run(ds, {"op": "set", "attr": "StudyID", "value": "{StudyDescription}"})


@pytest.mark.parametrize("raw, fragment", [
    ({"op": "set", "attr": "PatientNme", "value": "x"}, "did you mean PatientName"),
    ({"op": "set", "attr": "PatientName"}, "'value' is required"),
    ({"op": "set", "attr": "ReferencedImageSequence", "value": "x"}, "is a sequence"),
    ({"op": "set", "attr": "SeriesNumber", "value": "seven"}, "not a number"),
    ({"op": "set", "attr": "StudyID", "value": "{Foo"}, "unbalanced brace"),
    ({"op": "set", "attr": "StudyID", "value": "x", "colour": 1}, "unknown key"),
    ({"op": "frobnicate"}, "unknown op"),
    ({"attr": "StudyID"}, "'op' is required"),
])
def test_compile_errors(raw: dict[str, object], fragment: str) -> None:
    assert any(fragment in p for p in problems_of(raw)), problems_of(raw)


# --- delete ------------------------------------------------------------------------------------


def test_delete_keywords_everywhere_and_exact_paths(ds: Dataset) -> None:
    out = run(ds, {"op": "delete", "attrs": ["PatientName"]})
    assert "PatientName" not in out
    assert "PatientName" not in out.ReferencedImageSequence[0]
    out = run(ds, {"op": "delete", "attrs": ["ReferencedImageSequence[0].PatientName"]})
    assert "PatientName" in out and "PatientName" not in out.ReferencedImageSequence[0]


def test_delete_private_overlay_and_curve_groups(ds: Dataset) -> None:
    out = run(ds, {"op": "delete", "private": True, "overlays": True, "curves": True})
    assert not [e for e in out if e.tag.group in (0x0009, 0x6000, 0x5000)]
    assert "PatientID" in out


def test_delete_tag_wildcards_and_keyword_globs(ds: Dataset) -> None:
    ds.PatientComments = "c"
    ds.ImageComments = "i"
    out = run(ds, {"op": "delete", "attrs": ["(0009,xxxx)", "*Comments", "(60xx,3000)"]})
    assert "PatientComments" not in out and "ImageComments" not in out
    assert 0x00091010 not in out
    assert 0x60003000 not in out and 0x60000010 in out


def test_delete_not_recursive_keeps_nested(ds: Dataset) -> None:
    out = run(ds, {"op": "delete", "attrs": ["PatientName"], "recursive": False})
    assert "PatientName" not in out and "PatientName" in out.ReferencedImageSequence[0]


def test_delete_needs_something_and_valid_patterns() -> None:
    assert any("nothing to delete" in p for p in problems_of({"op": "delete"}))
    assert any("matches no DICOM keyword" in p for p in problems_of(
        {"op": "delete", "attrs": ["*Nonsense*Zz"]}))


# --- copy, regex_replace, map ------------------------------------------------------------------


def test_copy(ds: Dataset) -> None:
    out = run(ds, {"op": "copy", "from": "AccessionNumber", "to": "StudyID"},
              {"op": "copy", "from": "PatientComments", "to": "StudyID"})
    assert out.StudyID == "12345"  # an absent source changes nothing


def test_regex_replace_each_value_with_groups(ds: Dataset) -> None:
    out = run(ds, {"op": "regex_replace", "attr": "OtherPatientIDs", "pattern": "^OLD-(\\d)$",
                   "replacement": "NEW-\\1"},
              {"op": "regex_replace", "attr": "InstitutionName", "pattern": "NORD",
               "replacement": "Süd", "ignore_case": True})
    assert list(out.OtherPatientIDs) == ["NEW-1", "NEW-2"]
    assert out.InstitutionName == "Klinikum Süd"


def test_regex_replace_rejects_backtracking_constructs_and_unknown_groups() -> None:
    assert any("backreferences" in p for p in problems_of(
        {"op": "regex_replace", "attr": "StudyID", "pattern": "(a)\\1", "replacement": ""}))
    assert any("group 2" in p for p in problems_of(
        {"op": "regex_replace", "attr": "StudyID", "pattern": "(a)", "replacement": "\\2"}))


def test_map_inline_with_default_and_case(ds: Dataset) -> None:
    out = run(ds, {"op": "map", "attr": "StationName", "table": {"ctawp00012": "CT_1"},
                   "ignore_case": True},
              {"op": "map", "attr": "InstitutionName", "table": {"X": "Y"}, "default": "Other"})
    assert out.StationName == "CT_1"
    assert out.InstitutionName == "Other"


def test_map_csv_is_read_at_compile_time_and_frozen_inline(ds: Dataset, tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("from,to\nCTAWP00012,CT_1\n# comment\n", encoding="utf-8")
    env = CompileEnv(base_dir=tmp_path)
    (step,) = steps({"op": "map", "attr": "StationName", "table_file": "t.csv"}, env=env)
    (tmp_path / "t.csv").write_text("CTAWP00012,CHANGED\n")
    frozen = steps_from_json(steps_to_json([step]))
    out = ds.copy()
    apply_steps(out, frozen, MorphKeys(None))
    assert out.StationName == "CT_1"
    assert any("cannot read" in p for p in problems_of(
        {"op": "map", "attr": "StationName", "table_file": "missing.csv"}, env))


# --- hash, date_shift, uid_remap -----------------------------------------------------------------


def test_hash_is_keyed_stable_and_sized(ds: Dataset) -> None:
    one = run(ds, {"op": "hash", "attr": "PatientID", "length": 10, "prefix": "P"})
    two = run(ds, {"op": "hash", "attr": "PatientID", "length": 10, "prefix": "P"})
    other = run(ds, {"op": "hash", "attr": "PatientID", "length": 10, "prefix": "P"},
                secret="another")
    assert one.PatientID == two.PatientID != other.PatientID
    assert len(one.PatientID) == 11 and one.PatientID.startswith("P")
    spaced = run(ds, {"op": "hash", "attr": "PatientID", "length": 10, "prefix": "P",
                      "namespace": "study-2"})
    assert spaced.PatientID != one.PatientID


def test_hash_needs_the_secret_and_a_text_attribute() -> None:
    no_secret = CompileEnv(has_secret=False)
    assert any("routing.secret" in p for p in problems_of(
        {"op": "hash", "attr": "PatientID"}, no_secret))
    assert any("uid_remap" in p for p in problems_of({"op": "hash", "attr": "StudyInstanceUID"}))
    assert any("exceed" in p for p in problems_of({"op": "hash", "attr": "StudyID",
                                                   "length": 20}))


def test_date_shift_fixed_and_per_patient(ds: Dataset) -> None:
    out = run(ds, {"op": "date_shift", "days": -10})
    assert out.StudyDate == "20241222" and out.PatientBirthDate == "19691222"
    assert out.AcquisitionDateTime == "20241222120000.000000"
    a = run(ds, {"op": "date_shift", "max_days": 30})
    b = run(ds, {"op": "date_shift", "max_days": 30})
    assert a.StudyDate == b.StudyDate != ds.StudyDate
    ds2 = ds.copy()
    ds2.StudyDate = "20250111"
    c = run(ds2, {"op": "date_shift", "max_days": 30})
    # the same patient: the same offset, so intervals survive
    from datetime import datetime
    gap = (datetime.strptime(c.StudyDate, "%Y%m%d") - datetime.strptime(a.StudyDate, "%Y%m%d"))
    assert gap.days == 10


def test_date_shift_only_named_attributes_and_bad_values_emptied(ds: Dataset) -> None:
    ds.ContentDate = "2025"
    out = run(ds, {"op": "date_shift", "days": 1, "attrs": ["StudyDate", "ContentDate"]})
    assert out.StudyDate == "20250102" and out.PatientBirthDate == "19700101"
    assert out.ContentDate == ""


def test_date_shift_compile_errors() -> None:
    assert any("either" in p for p in problems_of({"op": "date_shift"}))
    assert any("not a date" in p for p in problems_of(
        {"op": "date_shift", "days": 1, "attrs": ["PatientName"]}))
    assert any("secret" in p for p in problems_of({"op": "date_shift", "max_days": 3},
                                                  CompileEnv(has_secret=False)))


def test_uid_remap_keeps_references_consistent_and_class_uids(ds: Dataset) -> None:
    ref = ds.ReferencedImageSequence[0]
    ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    out = run(ds, {"op": "uid_remap", "prefix": "1.2.3."})
    assert out.SOPInstanceUID.startswith("1.2.3.") and out.SOPInstanceUID != ds.SOPInstanceUID
    assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == out.SOPInstanceUID
    assert out.SOPClassUID == ds.SOPClassUID
    assert out.FrameOfReferenceUID == remap_uid("1.2.3.4.5.6", MorphKeys(SECRET), "1.2.3.")
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert len(out.StudyInstanceUID) <= 64


def test_uid_remap_prefix_and_attrs_are_checked() -> None:
    assert any("UID root" in p for p in problems_of({"op": "uid_remap", "prefix": "1.2"}))
    assert any("not a UID" in p for p in problems_of({"op": "uid_remap",
                                                      "attrs": ["PatientID"]}))


# --- charset -----------------------------------------------------------------------------------


def test_charset_op_converts_to_utf8(ds: Dataset) -> None:
    out = run(ds, {"op": "charset", "to": "ISO_IR 192"})
    assert out.SpecificCharacterSet == "ISO_IR 192"
    assert out.PatientName == "Mustermann^Erika"
    assert any("only conversion" in p for p in problems_of({"op": "charset", "to": "ISO_IR 100"}))


# --- files, JSON, diff ---------------------------------------------------------------------------


def test_morph_bytes_without_steps_returns_the_input(ds: Dataset) -> None:
    data = b"not even parsed"
    assert morph_bytes(data, [], MorphKeys(None)) is data


def test_morph_bytes_round_trip_and_json(ds: Dataset, tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    raw = [{"op": "delete", "private": True},
           {"op": "set", "attr": "InstitutionName", "value": "{StationName}"},
           {"op": "uid_remap"}]
    compiled = steps(*raw)
    assert steps_from_json(steps_to_json(compiled)) == tuple(compiled)
    out = morph_bytes(path.read_bytes(), compiled, MorphKeys(SECRET))
    back = read_dataset(out)
    assert back.InstitutionName == "CTAWP00012"
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID != ds.SOPInstanceUID
    assert back.PixelData == ds.PixelData


def test_steps_from_json_rejects_an_invalid_payload() -> None:
    with pytest.raises(MorphError, match=r"morph\[0\]"):
        steps_from_json([{"op": "set"}])


def test_diff_names_added_removed_changed_and_nested(ds: Dataset) -> None:
    after = run(ds, {"op": "delete", "attrs": ["ReferencedImageSequence[0].PatientName"]},
                {"op": "set", "attr": "StudyID", "value": "S"},
                {"op": "set", "attr": "ReferringPhysicianName", "value": "Doc"})
    changes = {str(c) for c in diff(ds, after)}
    assert "~ StudyID: 1 -> S" in changes
    assert "+ ReferringPhysicianName = Doc" in changes
    assert "- ReferencedImageSequence[0].PatientName (was Nested^Name)" in changes
