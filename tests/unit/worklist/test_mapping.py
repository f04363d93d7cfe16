"""HL7 → worklist mapping: each message type and order control, names, dates, charsets, errors."""

from __future__ import annotations

import pytest

from engine.hl7.ack import Hl7ErrorCode
from engine.records.worklist import CodeItem, WorklistStatus
from engine.settings import SettingsError
from engine.worklist import charset
from engine.worklist.mapping import WorklistMapping, parse_mapping
from engine.worklist.model import OrderChanges, OrderControl, PatientMerge, PatientUpdate
from engine.worklist.types import Hl7ContentError, UnsupportedMessage
from tests.unit.worklist.hl7_samples import MAPPING_FILE, adt, orm, parse


def single(mapping: WorklistMapping, data: bytes) -> OrderChanges:
    change = mapping.plan(parse(data))
    assert isinstance(change, OrderChanges)
    return change


def test_new_order_maps_every_field(mapping: WorklistMapping) -> None:
    (order,) = single(mapping, orm(zds="1.2.3.4.5")).orders
    assert order.control is OrderControl.NEW
    assert (order.placer_order_number, order.filler_order_number) == ("ORD1", "FIL1")
    item = order.item
    assert item is not None
    assert item.patient_id == "PAT1"
    assert item.issuer_of_patient_id == "HOSP"
    assert item.patient_name == "DOE^JOHN"
    assert item.patient_birth_date == "19700101"
    assert item.patient_sex == "M"
    assert item.accession_number == "ACC1"
    assert item.requested_procedure_id == "RPACC1"
    assert item.scheduled_procedure_step_id == "SPSACC1"
    assert item.requested_procedure_description == "CT Head w/o contrast"
    assert item.requested_procedure_code == (CodeItem("CTHEAD", "L", "CT Head w/o contrast"),)
    assert item.study_instance_uid == "1.2.3.4.5"
    assert not order.study_uid_generated
    assert item.referring_physician_name == "Smith^Anna^^Dr"
    assert item.modality == "CT"
    assert item.scheduled_station_ae_title == "CT_SCANNER_1"  # table lookup by modality
    assert item.scheduled_procedure_step_start_date == "20261125"
    assert item.scheduled_procedure_step_start_time == "083000"
    assert item.placer_order_number == "ORD1"
    assert item.filler_order_number == "FIL1"
    assert item.status is WorklistStatus.SCHEDULED
    assert item.specific_character_set == ()
    assert item.source == "HOSP"


def test_omi_o23_is_an_order_message(mapping: WorklistMapping) -> None:
    (order,) = single(mapping, orm(msg_type="OMI^O23^OMI_O23")).orders
    assert order.control is OrderControl.NEW


def test_study_uid_generated_deterministically(mapping: WorklistMapping) -> None:
    a = single(mapping, orm("M1")).orders[0]
    b = single(mapping, orm("M2")).orders[0]  # the same order, resent with another MSH-10
    c = single(mapping, orm("M3", placer="ORD2")).orders[0]
    assert a.study_uid_generated
    assert a.item is not None and b.item is not None and c.item is not None
    assert a.item.study_instance_uid == b.item.study_instance_uid
    assert a.item.study_instance_uid != c.item.study_instance_uid
    assert a.item.study_instance_uid.startswith("1.2.826.0.1.3680043.8.498.")


def test_modality_from_procedure_table_when_obr24_empty(mapping: WorklistMapping) -> None:
    (order,) = single(mapping, orm(section="", procedure="MRBRAIN")).orders
    assert order.item is not None
    assert order.item.modality == "MR"
    assert order.item.scheduled_station_ae_title == "MR_SCANNER_1"


def test_scheduled_time_falls_back_to_tq1(mapping: WorklistMapping) -> None:
    data = orm(when="", msg_type="OMI^O23^OMI_O23", extra="TQ1|1||||||202611301415")
    (order,) = single(mapping, data).orders
    assert order.item is not None
    assert order.item.scheduled_procedure_step_start_date == "20261130"
    assert order.item.scheduled_procedure_step_start_time == "141500"


@pytest.mark.parametrize(("control", "status", "expected"), [
    ("CA", "", WorklistStatus.CANCELLED),
    ("DC", "", WorklistStatus.DISCONTINUED),
    ("SC", "IP", WorklistStatus.IN_PROGRESS),
    ("SC", "CM", WorklistStatus.COMPLETED),
    ("SC", "CA", WorklistStatus.CANCELLED),
])
def test_status_order_controls(mapping: WorklistMapping, control: str, status: str,
                               expected: WorklistStatus) -> None:
    (order,) = single(mapping, orm(control=control, order_status=status)).orders
    assert order.control is OrderControl(control)
    assert order.new_status is expected
    assert order.item is None


def test_cancel_needs_only_the_order_keys(mapping: WorklistMapping) -> None:
    # A CA often carries no procedure or date; required item fields must not refuse it.
    (order,) = single(mapping, orm(control="CA", when="", section="", procedure="",
                                   accession="")).orders
    assert order.new_status is WorklistStatus.CANCELLED


def test_change_order_maps_the_full_item(mapping: WorklistMapping) -> None:
    (order,) = single(mapping, orm(control="XO", when="20261126100000")).orders
    assert order.control is OrderControl.CHANGE
    assert order.item is not None
    assert order.item.scheduled_procedure_step_start_date == "20261126"


def test_adt_a08_is_a_patient_update(mapping: WorklistMapping) -> None:
    change = mapping.plan(parse(adt("A1", "A08", name="DOE^JANE", birth="")))
    assert isinstance(change, PatientUpdate)
    p = change.patient
    assert (p.patient_id, p.patient_name, p.issuer_of_patient_id) == ("PAT1", "DOE^JANE",
                                                                        "HOSP")
    # An empty field is "no change", not "erase".
    assert "patient_birth_date" not in p.present
    assert "patient_name" in p.present


def test_adt_a40_is_a_merge(mapping: WorklistMapping) -> None:
    change = mapping.plan(parse(adt("A2", "A40", patient_id="NEW1", prior="OLD1")))
    assert isinstance(change, PatientMerge)
    assert change.prior_patient_id == "OLD1"
    assert change.prior_issuer == "HOSP"
    assert change.patient.patient_id == "NEW1"


def test_a40_without_mrg_is_a_content_error(mapping: WorklistMapping) -> None:
    with pytest.raises(Hl7ContentError) as err:
        mapping.plan(parse(adt("A3", "A40")))
    assert err.value.field_path == "MRG"


@pytest.mark.parametrize(("msg_type", "path", "code"), [
    ("ORU^R01^ORU_R01", "MSH-9.1", Hl7ErrorCode.UNSUPPORTED_MESSAGE_TYPE),
    ("ADT^A01^ADT_A01", "MSH-9.2", Hl7ErrorCode.UNSUPPORTED_EVENT_CODE),
    ("ORM^O02^ORM_O02", "MSH-9.2", Hl7ErrorCode.UNSUPPORTED_EVENT_CODE),
])
def test_unsupported_messages(mapping: WorklistMapping, msg_type: str, path: str,
                              code: Hl7ErrorCode) -> None:
    with pytest.raises(UnsupportedMessage) as err:
        mapping.plan(parse(orm(msg_type=msg_type)))
    assert err.value.field_path == path
    assert err.value.code is code


@pytest.mark.parametrize(("kwargs", "path", "code", "words"), [
    ({"patient_id": ""}, "PID-3.1", Hl7ErrorCode.REQUIRED_FIELD_MISSING, "PatientID"),
    ({"birth": "1970-01-01"}, "PID-7", Hl7ErrorCode.DATA_TYPE_ERROR, "PatientBirthDate"),
    ({"birth": "19700231"}, "PID-7", Hl7ErrorCode.DATA_TYPE_ERROR, "calendar"),
    ({"when": "2026112"}, "ORC-7.4", Hl7ErrorCode.DATA_TYPE_ERROR, "Start"),
    ({"when": ""}, "ORC-7.4", Hl7ErrorCode.REQUIRED_FIELD_MISSING, "StartDate"),
    ({"control": "ZZ"}, "ORC-1", Hl7ErrorCode.TABLE_VALUE_NOT_FOUND, "order control"),
    ({"control": ""}, "ORC-1", Hl7ErrorCode.REQUIRED_FIELD_MISSING, "order control"),
    ({"control": "SC"}, "ORC-5", Hl7ErrorCode.REQUIRED_FIELD_MISSING, "ORC-5"),
    ({"control": "SC", "order_status": "ZZ"}, "ORC-5", Hl7ErrorCode.TABLE_VALUE_NOT_FOUND,
     "not mapped"),
    ({"placer": "", "filler": ""}, "ORC-2.1", Hl7ErrorCode.REQUIRED_FIELD_MISSING, "order"),
    ({"section": "", "procedure": "UNKNOWN"}, "OBR-24", Hl7ErrorCode.REQUIRED_FIELD_MISSING,
     "Modality"),
    ({"zds": "1.02.3"}, "ZDS-1", Hl7ErrorCode.DATA_TYPE_ERROR, "UID"),
])
def test_content_errors_name_the_field(mapping: WorklistMapping, kwargs: dict[str, str],
                                       path: str, code: Hl7ErrorCode, words: str) -> None:
    with pytest.raises(Hl7ContentError) as err:
        mapping.plan(parse(orm(**kwargs)))
    assert err.value.field_path == path
    assert err.value.code is code
    assert words in err.value.text
    ack = err.value.ack_error()
    assert ack.segment == path[:3]
    assert ack.code is code


@pytest.mark.parametrize(("second", "path"), [
    ("ORC|NW|ORD2|FIL2||||^^^2026-11-25\r"
     "OBR|1|ORD2|FIL2|CTCHEST^CT Chest^L||||||||||||||ACC2|||||CT", "ORC[2]-7.4"),
    ("ORC|NW|ORD2|||||^^^20261125090000\r"
     "OBR|1|ORD2||CTCHEST^CT Chest^L||||||||||||||||||||CT", "OBR[2]-18"),
])
def test_error_in_second_order_group_names_that_segment(mapping: WorklistMapping, second: str,
                                                        path: str) -> None:
    with pytest.raises(Hl7ContentError) as err:
        mapping.plan(parse(orm(extra=second)))
    assert err.value.field_path == path
    ack = err.value.ack_error()
    assert (ack.segment, ack.sequence) == (path[:3], 2)


def test_two_order_groups_give_two_changes(mapping: WorklistMapping) -> None:
    second = ("ORC|NW|ORD2|FIL2||||^^^20261125090000\r"
              "OBR|1|ORD2|FIL2|MRBRAIN^MR Brain^L||||||||||||||ACC2|RP2||||MR")
    change = single(mapping, orm(extra=second))
    assert [o.placer_order_number for o in change.orders] == ["ORD1", "ORD2"]
    assert change.orders[1].item is not None
    assert change.orders[1].item.modality == "MR"
    assert change.orders[1].item.accession_number == "ACC2"
    assert change.orders[1].item.scheduled_procedure_step_start_time == "090000"


# --- names -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("pid5", "pn"), [
    ("DOE^JOHN^Q^JR^DR", "DOE^JOHN^Q^DR^JR"),  # XPN suffix/prefix → PN prefix/suffix
    ("DOE&VAN^JOHN", "DOE^JOHN"),  # FN subcomponents: the surname
    ("O\\S\\BRIEN^PAT", "O BRIEN^PAT"),  # an escaped ^ must not split the PN
    ("ALIAS^A^^^^^A~DOE^JOHN^^^^^L", "DOE^JOHN"),  # the legal name wins
    ("YAMADA^TARO^^^^^L^A~山田^太郎^^^^^L^I~やまだ^たろう^^^^^L^P",
     "YAMADA^TARO=山田^太郎=やまだ^たろう"),  # XPN-8 representation codes → groups
    ("ヤマダ^タロウ=山田^太郎", "ヤマダ^タロウ=山田^太郎"),  # the "=" convention
    ("山田^太郎^^^^^L^I", "=山田^太郎"),  # ideographic only
])
def test_person_names(mapping: WorklistMapping, pid5: str, pn: str) -> None:
    (order,) = single(mapping, orm(name=pid5, charset="UNICODE UTF-8")).orders
    assert order.item is not None
    assert order.item.patient_name == pn


# --- character sets --------------------------------------------------------------------------
@pytest.mark.parametrize(("hl7", "dicom"), [
    ("ASCII", ()),
    ("8859/1", ("ISO_IR 100",)),
    ("8859/2", ("ISO_IR 101",)),
    ("8859/5", ("ISO_IR 144",)),
    ("8859/15", ("ISO_IR 203",)),
    ("UNICODE UTF-8", ("ISO_IR 192",)),
    ("ISO IR87", ("", "ISO 2022 IR 87")),
    ("ISO IR159", ("", "ISO 2022 IR 87", "ISO 2022 IR 159")),
    ("GB 18030-2000", ("GB18030",)),
    ("KS X 1001", ("", "ISO 2022 IR 149")),
    ("BIG-5", ("ISO_IR 192",)),
])
def test_charset_table(hl7: str, dicom: tuple[str, ...]) -> None:
    assert charset.dicom_charset(hl7) == dicom


@pytest.mark.parametrize(("msh18", "name", "expected"), [
    ("8859/1", "Müller^Jürgen", ("ISO_IR 100",)),
    ("UNICODE UTF-8", "Müller^Jürgen", ("ISO_IR 192",)),
    ("ISO IR87", "ヤマダ^タロウ=山田^太郎", ("", "ISO 2022 IR 87")),
    ("8859/1", "DOE^JOHN", ()),  # plain ASCII needs no declared set
])
def test_item_charset_follows_msh18(mapping: WorklistMapping, msh18: str, name: str,
                                    expected: tuple[str, ...]) -> None:
    (order,) = single(mapping, orm(name=name, charset=msh18)).orders
    assert order.item is not None
    assert order.item.patient_name == name
    assert order.item.specific_character_set == expected


def test_charset_falls_back_to_utf8_when_the_set_cannot_hold_a_name() -> None:
    assert charset.choose("8859/1", ["Müller", "Ωμέγα"]) == ("ISO_IR 192",)
    assert charset.choose("8859/1", ["Müller"]) == ("ISO_IR 100",)
    assert charset.fits(["ヤマダ^タロウ=山田^太郎"], ("", "ISO 2022 IR 87"))
    assert not charset.fits(["Ωμέγα"], ("ISO_IR 100",))


# --- the YAML file ---------------------------------------------------------------------------
def test_shipped_mapping_loads() -> None:
    text = MAPPING_FILE.read_text(encoding="utf-8")
    assert parse_mapping(text, str(MAPPING_FILE)).spec.fields["PatientID"].required


def test_a_site_changes_a_field_without_code() -> None:
    text = MAPPING_FILE.read_text(encoding="utf-8").replace(
        "AccessionNumber: {from: [OBR-18, ORC-3.1], required: true}",
        "AccessionNumber: {from: [ORC-3.1], transform: upper, required: true}")
    site = parse_mapping(text)
    (order,) = single(site, orm(filler="fil77")).orders
    assert order.item is not None
    assert order.item.accession_number == "FIL77"


def test_mapping_errors_are_reported_together_with_lines() -> None:
    text = """version: 1
tables:
  t: {A: B}
fields:
  PatientID: {from: [PID-3.1], required: true}
  PatientNmae: {from: [PID-5]}
  AccessionNumber: {from: [OBR18]}
  Modality: {from: [{path: OBR-24, table: nope}]}
  ScheduledStationAETitle: {from: [{field: Missing}]}
  PatientBirthDate: {from: [PID-7], transform: dat}
  StudyInstanceUID: {from: [ZDS-1], extra_key: 1}
"""
    with pytest.raises(SettingsError) as err:
        parse_mapping(text, "site.yaml")
    shown = [str(p) for p in err.value.problems]
    # pydantic finds the unknown key first; after fixing it the cross-checks would follow.
    assert any("site.yaml:11" in s and "extra_key" in s and "unknown key" in s for s in shown)

    fixed = text.replace(", extra_key: 1", "")
    with pytest.raises(SettingsError) as err:
        parse_mapping(fixed, "site.yaml")
    shown = [str(p) for p in err.value.problems]
    assert len(shown) == 5, shown
    assert any(s.startswith("site.yaml:6: fields.PatientNmae") for s in shown)
    assert any(s.startswith("site.yaml:7: fields.AccessionNumber.from[0]") and "OBR18" in s
               for s in shown)
    assert any(s.startswith("site.yaml:8:") and "unknown table 'nope'" in s for s in shown)
    assert any(s.startswith("site.yaml:9:") and "Missing" in s for s in shown)
    assert any(s.startswith("site.yaml:10:") and "'dat'" in s for s in shown)


def test_mapping_must_map_patient_id() -> None:
    with pytest.raises(SettingsError) as err:
        parse_mapping("fields: {}\n", "x.yaml")
    assert "PatientID must be mapped" in str(err.value)
