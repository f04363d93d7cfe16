"""MPPS events routed end to end: pynetdicom as the modality's MPPS SCU against a running
radflow whose route ``trigger: {on: procedure_step}`` sends status updates to an HL7
destination and forwards the MPPS to another MPPS SCP. After the N-CREATE and after the N-SET
COMPLETED the outbox (SQLite) holds the rows: an ORM^O01 (ORC-1 SC, ORC-5 IP then CM) rendered
at routing time, and the N-CREATE / N-SET forward the egress MPPS sender reads (nothing listens
at those destinations: that test is about routing). The FHIR test is about delivery: an aiohttp
FHIR endpoint gets one Task, created at the start and updated in place at the end.
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.request
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.association import Association
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

from engine.hl7.message import Hl7Message
from engine.reactor import EventDrivenAE
from tests.helpers.peers import FhirServer
from tests.helpers.proc import HOST, RadflowFactory, RadflowProcess, free_port

pytestmark = pytest.mark.timeout(120)

DAY = "20261125"
ROUTES = """\
version: 1
routes:
  - name: status-to-ris
    trigger: {on: procedure_step}
    match: {context: calling_ae, equals: CT01}
    destinations: [ris]
  - name: mpps-to-peer
    trigger: {on: procedure_step}
    match: {attr: Modality, equals: CT}
    destinations: [peer]
"""


def order(patient_id: str) -> bytes:
    segments = [
        f"MSH|^~\\&|RIS|HOSP|RADFLOW|RAD|{DAY}120000||ORM^O01^ORM_O01|C-{patient_id}|P|2.5.1",
        f"PID|1||{patient_id}^^^HOSP^MR||Doe^{patient_id}||19700101|F",
        f"ORC|NW|O-{patient_id}|F-{patient_id}||||^^^{DAY}083000",
        f"OBR|1|O-{patient_id}|F-{patient_id}|PROC^Procedure^L||||||||||||||"
        f"ACC-{patient_id}|RP-{patient_id}|||||CT",
    ]
    return ("\r".join(segments) + "\r").encode("ascii")


def http(rf: RadflowProcess, path: str, body: bytes | None = None) -> Any:
    req = urllib.request.Request(f"http://{HOST}:{rf.http_port}{path}", data=body,
                                 method="POST" if body is not None else "GET",
                                 headers={"Content-Type": "x-application/hl7-v2+er7"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def create_attrs(wl: dict[str, Any]) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ssa = Dataset()
    ssa.StudyInstanceUID = wl["study_instance_uid"]
    ssa.ReferencedStudySequence = []
    ssa.AccessionNumber = wl["accession_number"]
    ssa.RequestedProcedureID = wl["requested_procedure_id"]
    ssa.RequestedProcedureDescription = ""
    ssa.ScheduledProcedureStepID = wl["scheduled_procedure_step_id"]
    ssa.ScheduledProcedureStepDescription = ""
    ssa.ScheduledProtocolCodeSequence = []
    ds.ScheduledStepAttributesSequence = [ssa]
    ds.PatientName = "Doe^X"
    ds.PatientID = wl["patient_id"]
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "CT01"
    ds.PerformedProcedureStepStartDate = DAY
    ds.PerformedProcedureStepStartTime = "0900"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.PerformedSeriesSequence = []
    return ds


def completed_attrs() -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "COMPLETED"
    ds.PerformedProcedureStepEndDate = DAY
    ds.PerformedProcedureStepEndTime = "0930"
    series = Dataset()
    series.SeriesInstanceUID = generate_uid()
    series.RetrieveAETitle = ""
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ref.ReferencedSOPInstanceUID = generate_uid()
    series.ReferencedImageSequence = [ref]
    ds.PerformedSeriesSequence = [series]
    return ds


def outbox(rf: RadflowProcess) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{rf.db_path}?mode=ro", uri=True, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(
            "SELECT * FROM outbox WHERE source_table = 'procedure_step_events' ORDER BY id")]
    finally:
        conn.close()


def wait_rows(rf: RadflowProcess, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    rows = outbox(rf)
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.1)
        rows = outbox(rf)
    assert len(rows) == count, (rows, rf.diagnostics())
    return rows


def started_with_routes(radflow: RadflowFactory, destinations: dict[str, Any], routes: str,
                        patient_id: str) -> tuple[RadflowProcess, dict[str, Any], Association]:
    """radflow with these destinations and routes, one order for ``patient_id`` in its
    worklist, and the modality's MPPS association to it: (radflow, worklist item, assoc)."""
    rf = radflow({"destinations": destinations}, start=False)
    with open(f"{rf.config['routing']['routes_dir']}/45-mpps.yaml", "w", encoding="utf-8") as f:
        f.write(routes)
    rf.start()
    assert http(rf, "/api/v1/worklist", order(patient_id))["ack_code"] == "AA"
    wl = http(rf, f"/api/v1/worklist?patient_id={patient_id}")["items"][0]
    ae = EventDrivenAE(ae_title="CT01")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate(HOST, rf.port, ae_title=rf.ae_title)
    assert assoc.is_established
    return rf, wl, assoc


def test_create_and_completed_produce_outbox_rows(radflow: RadflowFactory) -> None:
    rf, wl, assoc = started_with_routes(radflow, {
        "ris": {"type": "hl7", "host": HOST, "port": free_port()},
        "peer": {"type": "mpps", "ae_title": "PEER", "host": HOST, "port": free_port()},
    }, ROUTES, "P-ROUTE")
    try:
        uid = generate_uid()
        status, _ = assoc.send_n_create(create_attrs(wl), ModalityPerformedProcedureStep, uid)
        assert int(status.Status) == 0x0000
        created = wait_rows(rf, 2)
        status, _ = assoc.send_n_set(completed_attrs(), ModalityPerformedProcedureStep, uid)
        assert int(status.Status) == 0x0000
        rows = wait_rows(rf, 4)
    finally:
        assoc.release()
    # The N-SET added rows; the N-CREATE's rows are the same rows, with the same payloads.
    assert [(r["id"], r["payload"]) for r in rows[:2]] == \
        [(r["id"], r["payload"]) for r in created]

    by_dest: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        assert row["study_instance_uid"] == wl["study_instance_uid"]
        by_dest.setdefault(row["destination"], []).append(json.loads(row["payload"]))
    assert [r["route"] for r in rows if r["destination"] == "ris"] == ["status-to-ris"] * 2

    ris = by_dest["ris"]
    messages = [Hl7Message.parse(p["message"].encode("latin-1")) for p in ris]
    assert [m.get("ORC-1") for m in messages] == ["SC", "SC"]
    assert [m.get("ORC-5") for m in messages] == ["IP", "CM"]
    for m, p in zip(messages, ris, strict=True):
        assert m.get("MSH-9.1") == "ORM" and m.get("MSH-9.2") == "O01"
        assert m.control_id == p["control_id"]
        assert m.get("ORC-2") == "O-P-ROUTE" and m.get("ORC-3") == "F-P-ROUTE"
        assert m.get("OBR-18") == "ACC-P-ROUTE" and m.get("PID-3.1") == "P-ROUTE"
    assert messages[0].control_id != messages[1].control_id

    peer = by_dest["peer"]
    assert [p["mpps"]["operation"] for p in peer] == ["create", "set"]
    assert {p["mpps"]["sop_instance_uid"] for p in peer} == {uid}
    assert Dataset.from_json(peer[1]["mpps"]["dataset"]).PerformedProcedureStepStatus \
        == "COMPLETED"

    conn = sqlite3.connect(f"file:{rf.db_path}?mode=ro", uri=True, timeout=10)
    try:
        outcomes = [r[0] for r in conn.execute(
            "SELECT routing_outcome FROM procedure_step_events ORDER BY id")]
    finally:
        conn.close()
    assert outcomes == ["routed", "routed"]

    # The same step as a dry run over HTTP, from the API's own copy of its attributes: the
    # routes and messages, and nothing queued.
    step = http(rf, f"/api/v1/procedure-steps/{uid}")
    req = urllib.request.Request(
        f"http://{HOST}:{rf.http_port}/api/v1/routes/test/procedure-step?calling_ae=CT01",
        data=json.dumps(step["dataset"]).encode(), method="POST",
        headers={"Content-Type": "application/dicom+json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        run = json.loads(resp.read())
    assert run["outcome"] == "routed" and run["event"] == "procedure_step"
    assert [d["route"] for d in run["decisions"]] == ["status-to-ris", "mpps-to-peer"]
    assert {m["destination"] for m in run["messages"]} == {"ris", "peer"}
    assert len(outbox(rf)) == 4


class _FhirInThread:
    """The FHIR test endpoint on an event loop of its own thread, for a synchronous test."""

    def __init__(self) -> None:
        import asyncio
        import threading

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(FhirServer().start(), self.loop).result(10)

    def close(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_procedure_step_status_reaches_a_fhir_ehr_as_one_task(radflow: RadflowFactory) -> None:
    fhir = _FhirInThread()
    try:
        rf, wl, assoc = started_with_routes(
            radflow, {"ehr": {"type": "fhir", "base_url": fhir.server.base_url}},
            "version: 1\nroutes:\n  - name: status-to-ehr\n"
            "    trigger: {on: procedure_step}\n    destinations: [ehr]\n", "P-FHIR")
        uid = generate_uid()
        key = ("Task", f"urn:dicom:uid|urn:oid:{uid}")
        try:
            status, _ = assoc.send_n_create(create_attrs(wl), ModalityPerformedProcedureStep,
                                            uid)
            assert int(status.Status) == 0x0000
            deadline = time.monotonic() + 20
            while key not in fhir.server.resources and time.monotonic() < deadline:
                time.sleep(0.1)
            assert fhir.server.resources[key]["status"] == "in-progress", rf.diagnostics()
            status, _ = assoc.send_n_set(completed_attrs(), ModalityPerformedProcedureStep, uid)
            assert int(status.Status) == 0x0000
            deadline = time.monotonic() + 20
            while fhir.server.resources[key]["status"] != "completed" \
                    and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            assoc.release()
        task = fhir.server.resources[key]
        assert task["status"] == "completed"
        assert task["focus"]["identifier"]["value"] == "ACC-P-FHIR"
        assert task["for"]["identifier"]["value"] == "P-FHIR"
        from engine.pipeline.fhir_status import with_zone

        day = f"{DAY[:4]}-{DAY[4:6]}-{DAY[6:]}"
        assert task["executionPeriod"] == {"start": with_zone(f"{day}T09:00:00"),
                                           "end": with_zone(f"{day}T09:30:00")}
        from fhir.resources.R4B.task import Task
        Task.model_validate(task)  # valid FHIR
        # one Task, created then updated in place by conditional update on its identifier
        assert [k for k in fhir.server.resources if k[0] == "Task"] == [key]
        assert [m for m, _ in fhir.server.requests] == ["PUT", "PUT"]
    finally:
        fhir.close()
