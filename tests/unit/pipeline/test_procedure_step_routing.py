"""Routing of MPPS events: the store's unrouted event rows, the planner, the routing commit."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from engine.durable.sqlite import SqliteStore
from engine.hl7.message import Hl7Message
from engine.pipeline.procedure_steps import plan_procedure_step
from engine.procedure.model import apply_set, check_create, worklist_link
from engine.records.procedure_step import PpsStatus, ProcedureStep, StepUpdate, WorklistLink
from engine.records.worklist import StoredWorklistItem, WorklistItem
from engine.rules.loader import load_ruleset
from engine.rules.ruleset import Ruleset

STUDY = "1.2.826.0.1.3680043.8.498.1"
NOW = "2026-11-25T09:00:00.000+00:00"
ROUTES = """\
version: 1
routes:
  - name: status-to-ris
    trigger: {on: procedure_step}
    match: {context: calling_ae, equals: CT01}
    destinations: [ris]
  - name: completed-to-peer
    trigger: procedure_step
    match:
      all:
        - {attr: Modality, equals: CT}
        - {context: state, in: [IN PROGRESS, COMPLETED]}
    destinations: [peer, fhir-ehr]
  - name: images
    destinations: [pacs]
"""
DESTINATIONS = {"ris": "hl7", "peer": "mpps", "fhir-ehr": "fhir", "pacs": "dimse"}


@pytest.fixture
def ruleset(tmp_path: Path) -> Ruleset:
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "10-mpps.yaml").write_text(ROUTES)
    return load_ruleset(routes, DESTINATIONS, has_secret=False, uid_prefix="1.2.3.")


def create_attrs(calling: str = "CT01") -> Dataset:
    ds = Dataset()
    ssa = Dataset()
    ssa.StudyInstanceUID = STUDY
    ssa.AccessionNumber = "ACC1"
    ssa.RequestedProcedureID = "RP1"
    ssa.ScheduledProcedureStepID = "SPS1"
    ds.ScheduledStepAttributesSequence = [ssa]
    ds.PatientID = "P1"
    ds.PatientName = "Doe^Jane"
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = calling
    ds.PerformedProcedureStepStartDate = "20261125"
    ds.PerformedProcedureStepStartTime = "0900"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    return ds


def final_attrs(status: str) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20261125"
    ds.PerformedProcedureStepEndTime = "0930"
    series = Dataset()
    series.SeriesInstanceUID = STUDY + ".2"
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ref.ReferencedSOPInstanceUID = STUDY + ".2.1"
    series.ReferencedImageSequence = [ref]
    ds.PerformedSeriesSequence = [series]
    return ds


async def mpps(store: SqliteStore, final: str | None, calling: str = "CT01") -> str:
    await store.add_worklist_items([WorklistItem(
        patient_id="P1", issuer_of_patient_id="HOSP", patient_name="Doe^Jane",
        accession_number="ACC1", requested_procedure_id="RP1", study_instance_uid=STUDY,
        placer_order_number="O-1", filler_order_number="F-1",
        scheduled_procedure_step_id="SPS1", modality="CT", source="HIS")])
    uid = generate_uid()
    new = check_create(uid, create_attrs(calling), calling_ae=calling, received_at=NOW)

    def link(items: Sequence[StoredWorklistItem]) -> WorklistLink:
        return worklist_link(items, new.keys, PpsStatus.IN_PROGRESS, NOW)

    await store.create_procedure_step(new, link)
    if final is not None:
        def change(step: ProcedureStep) -> StepUpdate:
            return apply_set(step, final_attrs(final))

        await store.set_procedure_step(
            uid, change, lambda s: lambda items: worklist_link(items, (), s, NOW), NOW)
    return uid


async def test_create_and_completed_become_outbox_rows(store: SqliteStore,
                                                       ruleset: Ruleset) -> None:
    uid = await mpps(store, "COMPLETED")
    records = await store.unrouted_procedure_step_events(0, 100)
    assert [(r.operation, r.status) for r in records] == [("create", "IN PROGRESS"),
                                                          ("set", "COMPLETED")]
    assert records[0].worklist_items and records[0].step.sop_instance_uid == uid
    plans = [plan_procedure_step(ruleset, r)[0] for r in records]
    assert [p.outcome for p in plans] == ["routed", "routed"]
    # hl7, mpps and fhir per event
    assert [sorted(r.destination for r in p.rows) for p in plans] == \
        [["fhir-ehr", "peer", "ris"]] * 2

    results = await store.commit_routing(plans, NOW, 1.0)
    assert all(r.applied for r in results)
    assert await store.unrouted_procedure_step_events(0, 100) == []
    again = await store.commit_routing(plans, NOW, 2.0)  # a replay racing the bus
    assert not any(r.applied for r in again)

    rows = await store.outbox_rows()
    assert len(rows) == 6
    by_dest: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        assert row["source_table"] == "procedure_step_events"
        by_dest.setdefault(str(row["destination"]), []).append(
            json.loads(str(row["payload"])))
    forwards = by_dest["peer"]
    assert [f["mpps"]["operation"] for f in forwards] == ["create", "set"]  # type: ignore[index]
    assert all(f["mpps"]["sop_instance_uid"] == uid for f in forwards)  # type: ignore[index]
    created = Dataset.from_json(forwards[0]["mpps"]["dataset"])  # type: ignore[index]
    assert created.PerformedProcedureStepStatus == "IN PROGRESS"
    modified = Dataset.from_json(forwards[1]["mpps"]["dataset"])  # type: ignore[index]
    assert modified.PerformedProcedureStepStatus == "COMPLETED"
    statuses = []
    for payload in by_dest["ris"]:
        assert payload["kind"] == "hl7" and payload["message_type"] == "ORM^O01"
        msg = Hl7Message.parse(str(payload["message"]).encode("ascii"))
        assert msg.control_id == payload["control_id"]
        assert msg.get("ORC-2") == "O-1" and msg.get("OBR-18") == "ACC1"
        assert msg.get("PID-3.1") == "P1"
        statuses.append(msg.get("ORC-5"))
    assert statuses == ["IP", "CM"]
    tasks = [p["resource"] for p in by_dest["fhir-ehr"]]
    assert [p["kind"] for p in by_dest["fhir-ehr"]] == ["fhir", "fhir"]
    assert [t["status"] for t in tasks] == ["in-progress", "completed"]  # type: ignore[index]
    for task in tasks:
        assert task["resourceType"] == "Task" and task["intent"] == "order"  # type: ignore[index]
        # one identifier for both events: the second is an update of the same Task
        assert task["identifier"] == [{"system": "urn:dicom:uid",  # type: ignore[index]
                                       "value": f"urn:oid:{uid}"}]
        assert task["focus"]["identifier"]["value"] == "ACC1"  # type: ignore[index]
        assert [b["identifier"]["value"] for b in task["basedOn"]] == \
            ["O-1", "F-1"]  # type: ignore[index]
        assert task["for"]["identifier"]["value"] == "P1"  # type: ignore[index]
        assert task["input"][0]["valueOid"] == f"urn:oid:{STUDY}"  # type: ignore[index]
    from fhir.resources.R4B.task import Task

    from engine.pipeline.fhir_status import with_zone
    start, end = with_zone("2026-11-25T09:00:00"), with_zone("2026-11-25T09:30:00")
    assert tasks[0]["executionPeriod"] == {"start": start}  # type: ignore[index]
    assert tasks[1]["executionPeriod"] == {"start": start, "end": end}  # type: ignore[index]
    for task in tasks:
        Task.model_validate(task)  # valid FHIR (a dateTime with a time carries a zone)


async def test_state_and_calling_ae_select_routes(store: SqliteStore,
                                                  ruleset: Ruleset) -> None:
    await mpps(store, "DISCONTINUED", calling="MR01")
    records = await store.unrouted_procedure_step_events(0, 100)
    plans = [plan_procedure_step(ruleset, r)[0] for r in records]
    # MR01: not the RIS route; DISCONTINUED: not the forward route
    assert [(p.outcome, [r.destination for r in p.rows]) for p in plans] == [
        ("routed", ["peer", "fhir-ehr"]), ("unmatched", [])]
    await store.commit_routing(plans, NOW, 1.0)
    counts = await store.routing_counts()
    assert counts["procedure_step_events.routed"] == 1
    assert counts["procedure_step_events.unmatched"] == 1


async def test_only_the_ids_asked_for(store: SqliteStore) -> None:
    await mpps(store, "COMPLETED")
    records = await store.unrouted_procedure_step_events(0, 100)
    wanted = await store.unrouted_procedure_step_events(0, 1, ids=[records[1].id])
    assert [r.id for r in wanted] == [records[1].id]
    assert await store.unrouted_procedure_step_events(0, 10, ids=[]) == []


# --- dry runs of procedure step events (radflow rules test-step, POST .../test/procedure-step)
def test_a_step_dry_run_shows_the_matches_and_the_messages_it_would_queue(
        ruleset: Ruleset) -> None:
    import datetime as dt

    from engine.pipeline import dryrun

    attrs = create_attrs()
    attrs.PerformedProcedureStepStatus = "COMPLETED"
    data = json.dumps(attrs.to_json_dict()).encode()
    context = dryrun.context_for(calling_ae="CT01",
                                 when=dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.UTC))
    run = dryrun.dry_run_step(data, ruleset, context, label="step.json")
    assert run.outcome == "routed" and run.event == "procedure_step"
    assert [d.route for d in run.decisions] == ["status-to-ris", "completed-to-peer"]
    by_destination = {m["destination"]: m for m in run.messages}
    assert set(by_destination) == {"ris", "peer", "fhir-ehr"}
    assert by_destination["ris"]["kind"] == "hl7"
    assert "ORC|SC" in by_destination["ris"]["content"] and "ACC1" in \
        by_destination["ris"]["content"]
    assert by_destination["fhir-ehr"]["content"]["resourceType"] == "Task"
    assert by_destination["peer"]["content"]["operation"] == "set"
    text = dryrun.render_text(run)
    assert "[MATCH] status-to-ris" in text and "hl7 for ris" in text
    assert dryrun.to_json(run)["messages"] == run.messages

    # the status given wins over the attributes'; another modality AE: only one route
    other = dryrun.context_for(calling_ae="MR07")
    started = dryrun.dry_run_step(data, ruleset, other, status="IN PROGRESS")
    assert [d.route for d in started.decisions] == ["completed-to-peer"]
    assert started.messages[0]["content"]["operation"] == "create"


@pytest.mark.parametrize(("data", "status", "error"), [
    (b"not json", None, "not DICOM JSON"),
    (json.dumps({"00400252": {"vr": "CS", "Value": ["SCHEDULED"]}}).encode(), None,
     "is not IN PROGRESS"),
])
def test_a_step_dry_run_reports_bad_input(ruleset: Ruleset, data: bytes, status: str | None,
                                          error: str) -> None:
    from engine.pipeline import dryrun

    run = dryrun.dry_run_step(data, ruleset, dryrun.context_for(), status=status)
    assert run.outcome == "error" and error in (run.error or "")


def test_rules_test_step_on_the_command_line(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "10-mpps.yaml").write_text(ROUTES)
    config = tmp_path / "radflow.yaml"
    config.write_text(
        f"storage: {{sqlite_path: {tmp_path / 'db'}, spool_dir: {tmp_path / 'spool'}}}\n"
        f"routing: {{routes_dir: {routes}}}\n"
        "destinations:\n"
        "  ris: {type: hl7, host: 127.0.0.1, port: 2575}\n"
        "  peer: {type: mpps, ae_title: PEER, host: 127.0.0.1, port: 104}\n"
        "  fhir-ehr: {type: fhir, base_url: 'http://127.0.0.1:9/fhir'}\n"
        "  pacs: {type: dimse, ae_title: PACS, host: 127.0.0.1, port: 104}\n")
    step = tmp_path / "step.json"
    step.write_text(json.dumps(create_attrs().to_json_dict()))
    code = main(["rules", "test-step", str(step), "--config", str(config),
                 "--calling-ae", "CT01", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out[0]["event"] == "procedure_step" and out[0]["outcome"] == "routed"
    assert {m["destination"] for m in out[0]["messages"]} == {"ris", "peer", "fhir-ehr"}


async def test_a_step_without_its_order_is_linked_when_the_order_arrives(
        store: SqliteStore) -> None:
    def decide(status: PpsStatus) -> Callable[[Sequence[StoredWorklistItem]], WorklistLink]:
        return lambda items: worklist_link(items, (), status, NOW)

    # No unscheduled step: nothing to link (and nothing written).
    assert await store.link_unscheduled_procedure_steps(None, decide, NOW) == []
    uid = generate_uid()
    new = check_create(uid, create_attrs(), calling_ae="CT01", received_at=NOW)
    await store.create_procedure_step(
        new, lambda items: worklist_link(items, new.keys, PpsStatus.IN_PROGRESS, NOW))
    assert (await store.get_procedure_step(uid)).unscheduled
    [item_id] = await store.add_worklist_items([WorklistItem(
        patient_id="P1", accession_number="ACC1", study_instance_uid=STUDY,
        scheduled_procedure_step_id="SPS1", modality="CT", source="HIS")])
    [linked] = await store.link_unscheduled_procedure_steps([item_id], decide, NOW)
    assert linked.step.sop_instance_uid == uid
    assert linked.step.worklist_item_ids == (item_id,)
    assert await store.link_unscheduled_procedure_steps([item_id], decide, NOW) == []
