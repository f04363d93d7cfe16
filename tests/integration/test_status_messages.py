"""ORM^O01 status messages built from MPPS, end to end, as a RIS receives them.

The ``hl7`` package's MLLP client places the order (the HIS), pynetdicom plays the modality's
MPPS SCU, and a byte-exact MLLP sink plays the RIS behind an ``hl7`` destination. The RIS must
get the patient's name whole (every XPN repetition: alphabetic, ideographic, phonetic), in the
character set of the order (or the destination's), with MSH-18 saying which, and MSH-5/MSH-6
addressed to it. A step no order is known for sends nothing until an order for its accession
number arrives; then the RIS gets the status with the order numbers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hl7.client import MLLPClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

from engine.hl7.message import Hl7Message
from engine.reactor import EventDrivenAE
from tests.helpers.peers import MllpSink
from tests.helpers.proc import HOST, RadflowFactory, RadflowProcess

pytestmark = pytest.mark.timeout(120)

DAY = "20261125"
ROUTES = """\
version: 1
routes:
  - name: status-to-ris
    trigger: {on: procedure_step}
    destinations: [ris]
"""
JAPANESE = "ヤマダ^タロウ=山田^太郎=やまだ^たろう"


def order(patient_id: str, name: str, msh18: str, accession: str | None = None) -> str:
    accession = accession or f"ACC-{patient_id}"
    return "\r".join([
        f"MSH|^~\\&|RIS_APP|HOSP|RADFLOW|RAD|{DAY}120000||ORM^O01^ORM_O01|C-{patient_id}|P|"
        f"2.5.1||||||{msh18}",
        f"PID|1||{patient_id}^^^HOSP^MR||{name}||19700101|M",
        f"ORC|NW|O-{patient_id}|F-{patient_id}||||^^^{DAY}083000",
        f"OBR|1|O-{patient_id}|F-{patient_id}|PROC^Procedure^L||||||||||||||"
        f"{accession}|RP-{patient_id}|||||CT",
    ]) + "\r"


def send_order(rf: RadflowProcess, message: bytes) -> None:
    port = int(rf.config["hl7"]["listeners"][0]["port"])
    with MLLPClient(HOST, port) as client:
        answer = client.send_message(message)
    assert b"MSA|AA|" in answer, answer


@pytest.fixture
def sink() -> Iterator[MllpSink]:
    receiver = MllpSink().start()
    yield receiver
    receiver.stop()


def start(radflow: RadflowFactory, sink: MllpSink, **ris: Any) -> RadflowProcess:
    rf = radflow({"destinations": {"ris": {"type": "hl7", "host": HOST, "port": sink.port,
                                           **ris}}}, start=False)
    (Path(rf.config["routing"]["routes_dir"]) / "45-status.yaml").write_text(ROUTES)
    rf.start()
    return rf


def n_create(rf: RadflowProcess, patient_id: str, accession: str, study_uid: str = "") -> str:
    ds = Dataset()
    ssa = Dataset()
    ssa.StudyInstanceUID = study_uid or generate_uid()
    ssa.ReferencedStudySequence = []
    ssa.AccessionNumber = accession
    ssa.RequestedProcedureID = ""
    ssa.RequestedProcedureDescription = ""
    ssa.ScheduledProcedureStepID = ""
    ssa.ScheduledProcedureStepDescription = ""
    ssa.ScheduledProtocolCodeSequence = []
    ds.ScheduledStepAttributesSequence = [ssa]
    ds.PatientName = "Doe^X"
    ds.PatientID = patient_id
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "CT01"
    ds.PerformedProcedureStepStartDate = DAY
    ds.PerformedProcedureStepStartTime = "0900"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.PerformedSeriesSequence = []
    ae = EventDrivenAE(ae_title="CT01")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate(HOST, rf.port, ae_title=rf.ae_title)
    assert assoc.is_established
    uid = generate_uid()
    try:
        status, _ = assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
    finally:
        assoc.release()
    assert int(status.Status) == 0x0000
    return uid


def worklist_item(rf: RadflowProcess, patient_id: str) -> dict[str, Any]:
    status, body = rf.http_get(f"/api/v1/worklist?patient_id={patient_id}")
    assert status == 200
    item: dict[str, Any] = json.loads(body)["items"][0]
    return item


def outbox(rf: RadflowProcess) -> list[dict[str, Any]]:
    return [r for r in rf._table("outbox") if r["source_table"] == "procedure_step_events"]


def wait_dead(rf: RadflowProcess, timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [r for r in outbox(rf) if r["state"] == "dead"]
        if dead:
            return dead
        time.sleep(0.1)
    return []


@pytest.mark.parametrize(("msh18", "codec"), [("~ISO IR87", "iso2022_jp"),
                                              ("UNICODE UTF-8", "utf-8")],
                         ids=["iso-ir87", "utf8"])
def test_japanese_patient_status_keeps_every_name_group_in_the_orders_charset(
        radflow: RadflowFactory, sink: MllpSink, msh18: str, codec: str) -> None:
    rf = start(radflow, sink)
    send_order(rf, order("P-JP", JAPANESE, msh18).encode(codec))
    wl = worklist_item(rf, "P-JP")
    n_create(rf, "P-JP", wl["accession_number"], wl["study_instance_uid"])
    (raw,) = sink.wait_for(1)
    message = Hl7Message.parse(raw)
    assert message.msh.field(18) == msh18  # declares the order's own charset
    assert raw.decode(codec).encode(codec) == raw
    pid5 = message.segment("PID").repetitions(5)  # type: ignore[union-attr]
    names = [message.get(f"PID-5[{n}].1") + "^" + message.get(f"PID-5[{n}].2")
             for n in range(1, len(pid5) + 1)]
    assert names == ["ヤマダ^タロウ", "山田^太郎", "やまだ^たろう"]
    assert [message.get(f"PID-5[{n}].8") for n in (1, 2, 3)] == ["A", "I", "P"]
    # addressed to the order's sender by default: MSH-5/6 from the order's MSH-3/4
    assert (message.get("MSH-5"), message.get("MSH-6")) == ("RIS_APP", "HOSP")
    assert (message.get("ORC-1"), message.get("ORC-2"), message.get("ORC-5")) == \
        ("SC", "O-P-JP", "IP")


def test_destination_charset_and_addressing(radflow: RadflowFactory, sink: MllpSink) -> None:
    rf = start(radflow, sink, charset="UNICODE UTF-8", receiving_application="RIS_IN",
               receiving_facility="RADIOLOGY")
    send_order(rf, order("P-JP", JAPANESE, "~ISO IR87").encode("iso2022_jp"))
    wl = worklist_item(rf, "P-JP")
    n_create(rf, "P-JP", wl["accession_number"], wl["study_instance_uid"])
    (raw,) = sink.wait_for(1)
    message = Hl7Message.parse(raw)
    assert message.msh.field(18) == "UNICODE UTF-8"
    assert "山田^太郎" in raw.decode("utf-8")
    assert (message.get("MSH-5"), message.get("MSH-6")) == ("RIS_IN", "RADIOLOGY")


def test_a_name_the_destination_charset_cannot_hold_is_a_dead_letter_not_question_marks(
        radflow: RadflowFactory, sink: MllpSink) -> None:
    rf = start(radflow, sink, charset="8859/1")
    send_order(rf, order("P-JP", JAPANESE, "UNICODE UTF-8").encode("utf-8"))
    wl = worklist_item(rf, "P-JP")
    n_create(rf, "P-JP", wl["accession_number"], wl["study_instance_uid"])
    (dead,) = wait_dead(rf)
    assert "8859/1" in dead["last_error"] and "PID-5" in dead["last_error"], dead
    assert sink.raw == []


def test_unscheduled_step_sends_status_only_once_its_order_is_known(
        radflow: RadflowFactory, sink: MllpSink) -> None:
    rf = start(radflow, sink)
    n_create(rf, "P-LATE", "ACC-LATE")
    assert rf.wait_for_event("routing.procedure_step.no_order", timeout=20)
    assert outbox(rf) == []
    assert rf.metric("radflow_status_messages_withheld_total", reason="no_order") == 1
    assert sink.raw == []
    # The order arrives after the modality started: the step is linked by accession number
    # and the RIS hears about it now, with the order numbers.
    send_order(rf, order("P-LATE", "Late^Lou", "", accession="ACC-LATE").encode())
    (raw,) = sink.wait_for(1)
    message = Hl7Message.parse(raw)
    assert (message.get("ORC-1"), message.get("ORC-2"), message.get("ORC-3"),
            message.get("ORC-5")) == ("SC", "O-P-LATE", "F-P-LATE", "IP")
    assert message.get("OBR-18") == "ACC-LATE"
    assert worklist_item(rf, "P-LATE")["status"] == "IN_PROGRESS"
