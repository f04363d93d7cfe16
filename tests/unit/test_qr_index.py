"""The Query/Retrieve index in the store and the Identifier parser (no sockets)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from journal_samples import record
from pydicom.dataset import Dataset

from engine.durable.qr import COLUMNS, KEYWORD_COLUMNS, QrIndexRow, QrMatch, QrQuery
from engine.durable.routing import RoutingPlan
from engine.durable.store import DuplicatePolicy, InstanceCommit
from engine.ingress.dimse.qr_query import IdentifierError, answer, parse


def _row(instance_id: int, **values: str) -> QrIndexRow:
    by_keyword = {"SOPInstanceUID": f"1.2.3.{instance_id}", "StudyInstanceUID": "1.2.9",
                  "SeriesInstanceUID": "1.2.9.1", "PatientID": "P1", "Modality": "CT",
                  **values}
    return QrIndexRow(instance_id, tuple(by_keyword.get(k, "") for k in KEYWORD_COLUMNS))


async def _journal(store: Any, n: int) -> list[int]:
    results = await store.commit_instances(
        [InstanceCommit(record(i), DuplicatePolicy.VERSION) for i in range(1, n + 1)])
    return [r.journal_id for r in results if r.journal_id is not None]


async def test_study_level_aggregates_and_locate(store: Any) -> None:
    ids = await _journal(store, 4)
    rows = [_row(ids[0], PatientName="Doe^Jane", StudyDate="20250101"),
            _row(ids[1], PatientName="Doe^Jane", StudyDate="20250101", Modality="SR",
                 SeriesInstanceUID="1.2.9.2"),
            _row(ids[2], StudyInstanceUID="1.2.8", SeriesInstanceUID="1.2.8.1",
                 PatientName="Roe^Rick", StudyDate="20250301", PatientID="P2"),
            _row(ids[3], StudyInstanceUID="1.2.8", SeriesInstanceUID="1.2.8.1",
                 PatientName="Roe^Rick", StudyDate="20250301", PatientID="P2")]
    assert await store.qr_index(rows, ids[-1]) == 4
    assert await store.qr_index_watermark() == ids[-1]
    found = await store.qr_find(QrQuery("STUDY", (QrMatch("patient_name", "wildcard",
                                                          ("doe*",), fold=True),)))
    assert len(found) == 1
    assert found[0].values["study_instance_uid"] == "1.2.9"
    assert (found[0].series, found[0].instances, found[0].modalities) == (2, 2, ("CT", "SR"))
    by_date = await store.qr_find(QrQuery("STUDY", (QrMatch("study_date", "range",
                                                            ("20250201", "")),)))
    assert [r.values["patient_id"] for r in by_date] == ["P2"]
    by_modality = await store.qr_find(QrQuery("STUDY", (QrMatch("modality", "modalities",
                                                                ("SR",)),)))
    assert [(r.values["study_instance_uid"], r.instances) for r in by_modality] == [("1.2.9", 2)]
    located = await store.qr_locate(QrQuery("STUDY", (QrMatch("study_instance_uid", "equals",
                                                              ("1.2.8",)),)))
    assert [loc.sop_instance_uid for loc in located] == [f"1.2.3.{ids[2]}", f"1.2.3.{ids[3]}"]
    assert located[0].spool_path == record(3).spool_path


async def test_index_rows_go_with_their_journal_rows(store: Any) -> None:
    ids = await _journal(store, 2)
    await store.qr_index([_row(ids[0]), _row(ids[1], SOPInstanceUID="1.2.3.99")], ids[-1])
    # routed with nothing to deliver, so retention may forget it
    await store.commit_routing([RoutingPlan("instances", ids[0], "unmatched")],
                               "2025-01-01T00:00:00+00:00", 0.0)
    assert await store.forget_instances([ids[0]]) == 1
    images = await store.qr_find(QrQuery("IMAGE"))
    assert [r.values["sop_instance_uid"] for r in images] == ["1.2.3.99"]
    # a row whose journal entry is already gone is not indexed at all
    assert await store.qr_index([_row(ids[0])], ids[-1]) == 0


async def test_find_limit_reports_one_more(store: Any) -> None:
    ids = await _journal(store, 3)
    await store.qr_index([_row(i, StudyInstanceUID=f"1.2.{i}") for i in ids], ids[-1])
    assert len(await store.qr_find(QrQuery("STUDY", limit=1))) == 2


def test_parse_matching_kinds() -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "doe*"
    ds.StudyDate = "20250101-20250131"
    ds.StudyInstanceUID = ["1.2.3", "1.2.4"]
    ds.AccessionNumber = "A1"
    ds.ModalitiesInStudy = ["CT", "MR"]
    ds.SeriesDescription = "ignored at study level"
    ds.PatientID = ""
    request = parse(ds, limit=10)
    assert request.query.level == "STUDY"
    assert set(request.query.matches) == {
        QrMatch("patient_name", "wildcard", ("doe*",), fold=True),
        QrMatch("study_date", "range", ("20250101", "20250131")),
        QrMatch("study_instance_uid", "any", ("1.2.3", "1.2.4")),
        QrMatch("accession_number", "equals", ("A1",)),
        QrMatch("modality", "modalities", ("CT", "MR"))}
    assert "PatientID" in request.keys


def test_parse_refuses_without_level_and_retrieve_of_everything() -> None:
    ds = Dataset()
    ds.PatientID = "P1"
    with pytest.raises(IdentifierError):
        parse(ds, limit=10)
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = ""
    with pytest.raises(IdentifierError):
        parse(ds, limit=10, retrieve=True)


def test_answer_carries_exactly_the_requested_keys() -> None:
    from engine.durable.qr import QrRecord
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.NumberOfStudyRelatedInstances = ""
    ds.PatientName = ""
    ds.OtherPatientIDsSequence = []
    values = dict.fromkeys(COLUMNS, "")
    record_ = QrRecord({**values, "study_instance_uid": "1.2.9", "patient_name": "Müller^J"},
                       instances=7)
    out = answer(parse(ds, limit=10), record_, "RADFLOW")
    assert out.StudyInstanceUID == "1.2.9"
    assert int(out.NumberOfStudyRelatedInstances) == 7
    assert out.SpecificCharacterSet == "ISO_IR 192"
    assert str(out.PatientName) == "Müller^J"
    assert out.OtherPatientIDsSequence == []
    assert set(out.dir()) == {"QueryRetrieveLevel", "StudyInstanceUID", "SpecificCharacterSet",
                              "NumberOfStudyRelatedInstances", "PatientName",
                              "OtherPatientIDsSequence"}
    assert dataclasses.is_dataclass(record_)


# --- Storage Commitment in the store ------------------------------------------------------------
async def test_on_receipt_is_decided_and_queued_once(store: Any) -> None:
    from engine.durable.commitment import CommitmentPlan, CommitmentRequest

    await _journal(store, 1)
    held = record(1)
    request = CommitmentRequest("1.2.3.4.5", "CT_1", "on_receipt", (
        (held.sop_class_uid, held.sop_instance_uid), (held.sop_class_uid, "1.2.3.999"),
        ("1.2.840.10008.5.1.4.1.1.4", held.sop_instance_uid)), "2025-01-01T00:00:00+00:00")
    result = await store.commit_commitment_request(request, CommitmentPlan(), 1.0)
    assert result.report is not None and not result.duplicate
    assert result.report.success == ((held.sop_class_uid, held.sop_instance_uid),)
    assert {(u, r) for _, u, r in result.report.failed} == {
        ("1.2.3.999", 0x0112), (held.sop_instance_uid, 0x0119)}
    again = await store.commit_commitment_request(request, CommitmentPlan(), 2.0)
    assert again.duplicate and again.report is None
    rows = await store.outbox_rows("commitment")
    assert len(rows) == 1


async def test_on_archive_waits_for_delivery_and_the_archive(store: Any) -> None:
    from engine.durable.commitment import CommitmentPlan, CommitmentRequest
    from engine.durable.store import NewOutboxRow, OutboxResult, OutboxVerdict

    ids = await _journal(store, 1)
    held = record(1)
    request = CommitmentRequest("1.2.3.4.6", "CT_1", "on_archive",
                                ((held.sop_class_uid, held.sop_instance_uid),),
                                "2025-01-01T00:00:00+00:00", deadline=100.0)
    plan = CommitmentPlan("on_receipt", ("pacs",), frozenset({"pacs"}))
    first = await store.commit_commitment_request(request, plan, 1.0)
    assert first.report is None
    (request_id, waiting), = await store.waiting_commitments(10)
    assert await store.resolve_commitment(request_id, waiting, plan, 2.0) is None
    await store.enqueue_outbox([NewOutboxRow("pacs", "dicom", "{}", "instances", ids[0])], 2.0)
    leased = await store.lease_outbox("pacs", "me", 3.0, 60.0, 10)
    await store.record_outbox("me", [OutboxResult(leased[0].id, OutboxVerdict.DONE)], 3.0)
    assert await store.commitment_delivered([held.sop_instance_uid], "pacs") == {
        held.sop_instance_uid}
    # delivered, but the archive's own answer is still missing
    assert await store.resolve_commitment(request_id, waiting, plan, 4.0) is None
    await store.record_commitment_ask(request_id, "pacs", "9.8.7", sent=True)
    assert await store.record_archive_commitment("9.8.7", {held.sop_instance_uid: 0x0110})
    report = await store.resolve_commitment(request_id, waiting, plan, 5.0)
    assert report is not None
    assert report.failed == ((held.sop_class_uid, held.sop_instance_uid, 0x0110),)
    assert await store.waiting_commitments(10) == []


async def test_one_process_leads_the_index(store: Any) -> None:
    """Alone on its store, a process keeps the index (a second node left out, then taking
    over, is in test_store_postgresql.py)."""
    assert await store.hold_lead("qr-index")
    assert await store.hold_lead("qr-index")


async def test_by_route_follows_what_routing_recorded(store: Any) -> None:
    from engine.durable.commitment import (
        CommitmentPlan,
        CommitmentRequest,
        encode_route_archives,
    )
    from engine.durable.routing import RoutingPlan
    from engine.durable.store import NewOutboxRow, OutboxResult, OutboxVerdict

    ids = await _journal(store, 3)
    refs = tuple((record(i).sop_class_uid, record(i).sop_instance_uid) for i in (1, 2, 3))
    plan = CommitmentPlan()  # the site: on_receipt
    request = CommitmentRequest("1.2.3.4.7", "CT_1", "by_route", refs,
                                "2025-01-01T00:00:00+00:00", deadline=100.0)
    # 1: an on_archive route to pacs; 2: an on_receipt route; 3: not routed yet
    await store.commit_routing([
        RoutingPlan("instances", ids[0], "routed",
                    (NewOutboxRow("pacs", "dicom", "{}", "instances", ids[0], "r1"),),
                    commitment=encode_route_archives(("pacs",))),
        RoutingPlan("instances", ids[1], "discarded", commitment=encode_route_archives(()))],
        "2025-01-01T00:00:01+00:00", 1.0)
    assert (await store.commit_commitment_request(request, plan, 2.0)).report is None
    held = await store.commitment_holdings([u for _, u in refs])
    assert [held[u].route_archives for _, u in refs] == [("pacs",), (), None]
    assert [held[u].routed for _, u in refs] == [True, True, False]
    (request_id, waiting), = await store.waiting_commitments(10)
    await store.commit_routing([RoutingPlan("instances", ids[2], "unmatched")],
                               "2025-01-01T00:00:03+00:00", 3.0)
    assert await store.resolve_commitment(request_id, waiting, plan, 4.0) is None  # pacs
    leased = await store.lease_outbox("pacs", "me", 5.0, 60.0, 10)
    await store.record_outbox("me", [OutboxResult(leased[0].id, OutboxVerdict.DONE)], 5.0)
    report = await store.resolve_commitment(request_id, waiting, plan, 6.0)
    assert report is not None and not report.failed
    assert set(report.success) == set(refs)
