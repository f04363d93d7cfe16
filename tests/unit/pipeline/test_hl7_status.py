"""The ORM^O01 status update of a performed procedure step (engine.pipeline.hl7_status)."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from engine.hl7.message import Hl7Message
from engine.pipeline.hl7_status import control_id, render_status_update, xpn
from engine.records.worklist import CodeItem, WorklistItem

WHEN = "2026-11-25T17:30:19.123+00:00"


def mpps() -> Dataset:
    ds = Dataset()
    ds.PatientID = "MPPS-PID"
    ds.PatientName = "Other^Name"
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedProcedureStepStartDate = "20261125"
    ds.PerformedProcedureStepStartTime = "0900"
    ds.PerformedProcedureStepEndDate = "20261125"
    ds.PerformedProcedureStepEndTime = "0930"
    ds.Modality = "CT"
    return ds


def wl_item(**changes: object) -> WorklistItem:
    base = WorklistItem(
        patient_id="P1", issuer_of_patient_id="HOSP", patient_name="Doe^Jane^M^Dr^III",
        accession_number="ACC1", requested_procedure_id="RP1",
        requested_procedure_description="CT Chest",
        requested_procedure_code=(CodeItem("CTCHEST", "L", "CT chest"),),
        placer_order_number="O-1", filler_order_number="F-1",
        scheduled_procedure_step_id="SPS1", modality="CT", source="HIS")
    return base.replace(**changes)


@pytest.mark.parametrize(("status", "orc5"), [("IN PROGRESS", "IP"), ("COMPLETED", "CM"),
                                              ("DISCONTINUED", "DC")])
def test_status_update_fields(status: str, orc5: str) -> None:
    update = render_status_update(event_id=42, status=status, received_at=WHEN,
                                  dataset=mpps(), items=[wl_item()])
    msg = Hl7Message.parse(update.text.encode("ascii"))
    assert update.control_id == control_id(42) == msg.control_id == "RFPS42"
    assert msg.get("MSH-9.1") == "ORM" and msg.get("MSH-9.2") == "O01"
    assert msg.get("MSH-12") == "2.5.1"
    assert msg.get("MSH-7") == "20261125173019+0000"
    assert msg.get("MSH-6") == "HIS"
    assert msg.get("PID-3.1") == "P1" and msg.get("PID-3.4") == "HOSP"
    assert msg.get("PID-5.1") == "Doe" and msg.get("PID-5.2") == "Jane"
    assert msg.get("PID-5.4") == "III" and msg.get("PID-5.5") == "Dr"
    assert msg.get("ORC-1") == "SC" and msg.get("ORC-5") == orc5
    assert msg.get("ORC-2") == "O-1" and msg.get("ORC-3") == "F-1"
    assert msg.get("OBR-2") == "O-1" and msg.get("OBR-3") == "F-1"
    assert msg.get("OBR-4.1") == "CTCHEST" and msg.get("OBR-4.3") == "L"
    assert msg.get("OBR-18") == "ACC1" and msg.get("OBR-19") == "RP1"
    assert msg.get("OBR-20") == "SPS1" and msg.get("OBR-24") == "CT"
    assert msg.get("OBR-7") == "202611250900"
    assert msg.get("OBR-8") == ("" if status == "IN PROGRESS" else "202611250930")


def test_rendering_is_deterministic_and_escaped() -> None:
    item = wl_item(placer_order_number="O|1^2", patient_name="O'Brien&Co^Ann")
    one = render_status_update(event_id=7, status="COMPLETED", received_at=WHEN,
                               dataset=mpps(), items=[item])
    two = render_status_update(event_id=7, status="COMPLETED", received_at=WHEN,
                               dataset=mpps(), items=[item])
    assert one == two
    assert "O\\F\\1\\S\\2" in one.text and "O'Brien\\T\\Co" in one.text
    msg = Hl7Message.parse(one.text.encode("ascii"))
    assert msg.get("ORC-2") == "O|1^2"
    assert msg.get("PID-5.1") == "O'Brien&Co"


@pytest.mark.parametrize(("name", "charset", "codec"), [
    ("Müller^Jürgen", "8859/1", "latin-1"), ("Nowak^Łukasz", "UNICODE UTF-8", "utf-8")])
def test_non_ascii_names_declare_their_charset(name: str, charset: str, codec: str) -> None:
    update = render_status_update(event_id=1, status="COMPLETED", received_at=WHEN,
                                  dataset=mpps(), items=[wl_item(patient_name=name)])
    msg = Hl7Message.parse(update.text.encode(codec))
    assert msg.get("MSH-18") == charset
    assert msg.get("PID-5.1") == name.split("^")[0]


def test_unscheduled_step_is_described_from_the_mpps() -> None:
    update = render_status_update(event_id=3, status="IN PROGRESS", received_at=WHEN,
                                  dataset=mpps(), items=[], accession_number="A9")
    msg = Hl7Message.parse(update.text.encode("ascii"))
    assert msg.get("PID-3.1") == "MPPS-PID" and msg.get("PID-5.1") == "Other"
    assert msg.get("ORC-2") == "" and msg.get("ORC-5") == "IP"
    assert msg.get("OBR-18") == "A9" and msg.get("OBR-20") == "PPS1"


def test_one_order_group_per_linked_item() -> None:
    update = render_status_update(
        event_id=5, status="COMPLETED", received_at=WHEN, dataset=mpps(),
        items=[wl_item(), wl_item(placer_order_number="O-2", accession_number="ACC2")])
    lines = update.text.split("\r")
    assert [ln[:3] for ln in lines if ln] == ["MSH", "PID", "ORC", "OBR", "ORC", "OBR"]
    assert lines[5].startswith("OBR|2|O-2|")


def test_xpn_and_unknown_status() -> None:
    assert xpn("Doe^Jane") == ["Doe", "Jane"]
    assert xpn("Yamada^Tarou=山田^太郎") == ["Yamada", "Tarou"]
    with pytest.raises(ValueError):
        render_status_update(event_id=1, status="FINISHED", received_at=WHEN,
                             dataset=mpps(), items=[])
