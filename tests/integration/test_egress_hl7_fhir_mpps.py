"""HL7 v2 over MLLP (a receiver built on the ``hl7`` package), FHIR (an aiohttp endpoint) and
MPPS forwarding (a pynetdicom MPPS SCP): delivery, ACK/status classification, escaping, and a
receiver that never answers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from engine.durable.sqlite import SqliteStore
from engine.durable.store import NewOutboxRow
from engine.settings import FhirDestination, Hl7Destination, MppsDestination
from tests.helpers.outbox import FAST_RETRY, all_done, running_dispatcher, wait_until
from tests.helpers.peers import FhirServer, MllpReceiver
from tests.helpers.proc import HOST


def orm(control_id: str, note: str = "plain") -> str:
    return (f"MSH|^~\\&|RADFLOW|HOSP|RIS|HOSP|20260101120000||ORM^O01|{control_id}|P|2.5.1\r"
            f"PID|1||PAT{control_id}^^^HOSP||Doe^John\r"
            f"ORC|NW|{control_id}\rNTE|1||{note}\r")


async def enqueue(store: SqliteStore, destination: str, kind: str,
                  payloads: list[dict[str, Any]]) -> list[int]:
    return await store.enqueue_outbox(
        [NewOutboxRow(destination, kind, json.dumps(p), source_table="hl7_messages")
         for p in payloads], time.time())


def hl7_dest(port: int, **kw: Any) -> Hl7Destination:
    return Hl7Destination.model_validate({"type": "hl7", "host": HOST, "port": port,
                                          "retry": FAST_RETRY, **kw})


async def test_hl7_ack_codes_decide_the_row(store: SqliteStore, tmp_path: Path) -> None:
    calls: dict[str, int] = {}

    def answer(message: Any) -> str:
        cid = str(message.segment("MSH")[10])
        calls[cid] = calls.get(cid, 0) + 1
        if cid == "BAD":
            return "AE"
        if cid == "BUSY" and calls[cid] < 3:
            return "AR"
        return "AA"

    receiver = await MllpReceiver(answer).start()
    try:
        ids = await enqueue(store, "ris", "hl7", [
            {"message": orm("M1")}, {"message": orm("BAD")}, {"message": orm("BUSY")},
            {"message": orm("M2").replace("\r", "\n")}])  # LF separators are normalised
        async with running_dispatcher(store, tmp_path, {"ris": hl7_dest(receiver.port)}):
            await wait_until(lambda: store.count_dead_letters("ris"), what="AE dead-lettered")
            await wait_until(lambda: _states(store, {ids[0]: "done", ids[2]: "done",
                                                     ids[3]: "done"}), what="others done")
        assert calls == {"M1": 1, "BAD": 1, "BUSY": 3, "M2": 1}  # AR retried, AE not
        (dead,) = await store.list_dead_letters("ris")
        assert dead.id == ids[1] and "ACK AE" in (dead.last_error or "")
    finally:
        await receiver.stop()


async def _states(store: SqliteStore, want: dict[int, str]) -> bool:
    rows = {int(str(r["id"])): r["state"] for r in await store.outbox_rows()}
    return all(rows.get(k) == v for k, v in want.items())


async def test_hl7_structured_payload_is_escaped_and_journal_references_resolve(
        store: SqliteStore, tmp_path: Path) -> None:
    receiver = await MllpReceiver().start()
    try:
        await enqueue(store, "ris", "hl7", [{"segments": [
            ["MSH", "RADFLOW", "HOSP", "RIS", "HOSP", "20260101", "", ["ORU", "R01"], "S1",
             "P", "2.5.1"],
            ["OBX", "1", "TX", "", "", "a|b^c&d~e\\f"]]}])
        async with running_dispatcher(store, tmp_path, {"ris": hl7_dest(receiver.port)}):
            await wait_until(lambda: all_done(store), what="delivered")
        (msg,) = receiver.received
        assert str(msg.segment("MSH")[10]) == "S1"
        obx = str(msg).split("\r")[1]
        assert obx == "OBX|1|TX|||a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"
    finally:
        await receiver.stop()


async def test_hl7_receiver_that_never_answers_times_out_and_keeps_the_row(
        store: SqliteStore, tmp_path: Path) -> None:
    receiver = await MllpReceiver(lambda m: None).start()
    try:
        await enqueue(store, "ris", "hl7", [{"message": orm("SLOW")}])
        dest = hl7_dest(receiver.port, ack_timeout=0.5)
        async with running_dispatcher(store, tmp_path, {"ris": dest}):
            await wait_until(lambda: len(receiver.received) >= 2, what="resent after timeout")
        (row,) = await store.outbox_rows("ris")
        assert row["state"] in ("pending", "leased") and "no ACK" in str(row["last_error"])
    finally:
        await receiver.stop()


async def test_fhir_conditional_update_create_and_failures(store: SqliteStore,
                                                          tmp_path: Path) -> None:
    server = await FhirServer(token="s3cret", fail={"Task": 422}).start()
    study_uid = generate_uid()
    imaging_study = {"resourceType": "ImagingStudy", "status": "available",
                     "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
                     "subject": {"reference": "Patient/1"}, "numberOfInstances": 3}
    try:
        ids = await enqueue(store, "ehr", "fhir", [
            {"resource": imaging_study},
            {"resource": {**imaging_study, "numberOfInstances": 5}},  # an update of the same
            {"resource": {"resourceType": "ServiceRequest", "status": "completed",
                          "intent": "order", "subject": {"reference": "Patient/1"}}},
            {"resource": {"resourceType": "Task", "status": "completed", "intent": "order"}}])
        dest = FhirDestination.model_validate({
            "type": "fhir", "base_url": server.base_url, "concurrency": 1, "retry": FAST_RETRY,
            "auth": {"type": "bearer", "token": "s3cret"}})
        async with running_dispatcher(store, tmp_path, {"ehr": dest}):
            await wait_until(lambda: _states(store, {ids[0]: "done", ids[1]: "done",
                                                     ids[2]: "done", ids[3]: "dead"}),
                             what="FHIR rows settled")
        key = ("ImagingStudy", f"urn:dicom:uid|urn:oid:{study_uid}")
        assert server.resources[key]["numberOfInstances"] == 5  # one resource, updated
        assert sum(1 for k in server.resources if k[0] == "ImagingStudy") == 1
        puts = [url for method, url in server.requests if method == "PUT"]
        assert len(puts) == 2 and all(u.startswith("/fhir/ImagingStudy?identifier=")
                                      for u in puts)
        (dead,) = await store.list_dead_letters("ehr")
        assert "scripted 422" in (dead.last_error or "")
    finally:
        await server.stop()


async def test_mpps_create_and_set_are_forwarded_in_order(store: SqliteStore,
                                                          tmp_path: Path) -> None:
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

    from tests.helpers.proc import free_port

    events: list[tuple[str, str, str]] = []

    def on_create(event: Any) -> tuple[int, Dataset]:
        ds = event.attribute_list
        events.append(("create", str(event.request.AffectedSOPInstanceUID),
                       str(ds.PerformedProcedureStepStatus)))
        return 0x0000, ds

    def on_set(event: Any) -> tuple[int, Dataset]:
        ds = event.modification_list
        events.append(("set", str(event.request.RequestedSOPInstanceUID),
                       str(ds.PerformedProcedureStepStatus)))
        return 0x0000, ds

    port = free_port()
    ae = AE(ae_title="RIS_MPPS")
    ae.add_supported_context(ModalityPerformedProcedureStep)
    server = ae.start_server((HOST, port), block=False,
                             evt_handlers=[(evt.EVT_N_CREATE, on_create),
                                           (evt.EVT_N_SET, on_set)])
    try:
        uid = generate_uid()
        created = Dataset()
        created.PerformedProcedureStepStatus = "IN PROGRESS"
        created.PerformedProcedureStepID = "PPS1"
        done = Dataset()
        done.PerformedProcedureStepStatus = "COMPLETED"
        await enqueue(store, "ris-mpps", "mpps", [
            {"mpps": {"operation": "create", "sop_instance_uid": uid,
                      "dataset": created.to_json_dict()}},
            {"mpps": {"operation": "set", "sop_instance_uid": uid,
                      "dataset": done.to_json_dict()}}])
        dest = MppsDestination(type="mpps", ae_title="RIS_MPPS", host=HOST, port=port,
                               retry=FAST_RETRY)
        async with running_dispatcher(store, tmp_path, {"ris-mpps": dest}):
            await wait_until(lambda: all_done(store), what="MPPS forwarded")
        assert events == [("create", uid, "IN PROGRESS"), ("set", uid, "COMPLETED")]
    finally:
        server.shutdown()
