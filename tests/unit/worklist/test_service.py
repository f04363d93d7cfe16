"""WorklistService on a real SQLite store: batches, idempotency, order life cycle, ADT, purge."""

from __future__ import annotations

import json

import pytest

from engine.durable.sqlite import SqliteStore
from engine.hl7.ack import Hl7ErrorCode
from engine.records.worklist import ACTIVE_STATUSES, WorklistItem, WorklistStatus
from engine.worklist.mapping import WorklistMapping
from engine.worklist.service import WorklistConflict, WorklistService
from engine.worklist.types import Hl7Outcome
from tests.unit.worklist.hl7_samples import adt, orm


async def send(service: WorklistService, *messages: bytes) -> list[Hl7Outcome]:
    return await service.accept_hl7_batch([service.received(m) for m in messages])


async def item(service: WorklistService, item_id: int) -> WorklistItem:
    stored = await service.get_item(item_id)
    assert stored is not None
    return stored.item


async def test_new_order_is_committed_and_journaled(service: WorklistService,
                                                    store: SqliteStore) -> None:
    (out,) = await send(service, orm("M1"))
    assert (out.code, out.errors, out.duplicate) == ("AA", (), False)
    (item_id,) = out.worklist_item_ids
    stored = await item(service, item_id)
    assert stored.accession_number == "ACC1"
    assert stored.status is WorklistStatus.SCHEDULED
    assert stored.created_at and stored.updated_at
    journal = await store.get_hl7_message(out.journal_id or 0)
    assert journal is not None
    assert journal.entry.raw == orm("M1")  # raw bytes kept with the commit
    assert (journal.entry.control_id, journal.entry.message_type) == ("M1", "ORM")
    assert journal.ack_code == "AA"


async def test_duplicate_returns_the_original_outcome_and_changes_nothing(
        service: WorklistService, store: SqliteStore) -> None:
    (first,) = await send(service, orm("M1"))
    # Same sender and MSH-10, different content: still the original answer, nothing applied.
    (again,) = await send(service, orm("M1", accession="OTHER", placer="ORD9"))
    assert again.duplicate
    assert (again.code, again.journal_id, again.worklist_item_ids) == (
        first.code, first.journal_id, first.worklist_item_ids)
    total, items = await service.list_items()
    assert total == 1 and items[0].item.accession_number == "ACC1"
    assert await store.count_hl7_messages() == 1
    # Another sender may reuse the control id.
    (other,) = await send(service, orm("M1", facility="CLINIC2", placer="ORD2"))
    assert not other.duplicate and other.code == "AA"


async def test_duplicate_inside_one_batch(service: WorklistService) -> None:
    first, again = await send(service, orm("M1"), orm("M1"))
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.journal_id == first.journal_id
    assert again.worklist_item_ids == first.worklist_item_ids


async def test_duplicates_are_found_without_a_sending_facility(
        service: WorklistService) -> None:
    first, again = await send(service, orm("M1", facility=""), orm("M1", facility=""))
    (later,) = await send(service, orm("M1", facility=""))
    assert (first.duplicate, again.duplicate, later.duplicate) == (False, True, True)
    assert first.journal_id == again.journal_id == later.journal_id
    assert first.code == later.code == "AA"


async def test_duplicate_of_a_rejected_message_gets_the_same_rejection(
        service: WorklistService) -> None:
    (first,) = await send(service, orm("M1", patient_id=""))
    (again,) = await send(service, orm("M1"))
    assert first.code == again.code == "AE"
    assert again.duplicate
    assert again.errors == first.errors


async def test_batch_with_one_bad_message(service: WorklistService, store: SqliteStore) -> None:
    outcomes = await send(service, orm("M1", placer="O1", accession="A1"),
                          orm("M2", placer="O2", birth="bad"),
                          b"not hl7 at all",
                          orm("M3", placer="O3", accession="A3"),
                          orm("M4", msg_type="ORU^R01^ORU_R01"))
    assert [o.code for o in outcomes] == ["AA", "AE", "AR", "AA", "AR"]
    assert outcomes[1].errors[0].segment == "PID"
    assert outcomes[1].errors[0].field == 7
    assert outcomes[1].errors[0].code is Hl7ErrorCode.DATA_TYPE_ERROR
    assert outcomes[4].errors[0].code is Hl7ErrorCode.UNSUPPORTED_MESSAGE_TYPE
    total, _ = await service.list_items()
    assert total == 2
    # Every message is journaled, rejected ones listed by ACK code.
    assert await store.count_hl7_messages() == 5
    rejected_total, rejected = await service.hl7_messages(["AE", "AR"])
    assert rejected_total == 3
    assert {r.ack_code for r in rejected} == {"AE", "AR"}
    unparseable = [r for r in rejected if r.entry.control_id is None]
    assert len(unparseable) == 1
    full = await store.get_hl7_message(unparseable[0].id)
    assert full is not None and full.entry.raw == b"not hl7 at all"


async def test_order_life_cycle(service: WorklistService) -> None:
    (new,) = await send(service, orm("M1"))
    (item_id,) = new.worklist_item_ids
    (xo,) = await send(service, orm("M2", control="XO", when="20261126101500"))
    assert xo.code == "AA" and xo.worklist_item_ids == (item_id,)
    changed = await item(service, item_id)
    assert changed.scheduled_procedure_step_start_date == "20261126"
    assert changed.scheduled_procedure_step_start_time == "101500"
    assert changed.study_instance_uid == (await item(service, item_id)).study_instance_uid
    (ip,) = await send(service, orm("M3", control="SC", order_status="IP"))
    assert ip.code == "AA"
    assert (await item(service, item_id)).status is WorklistStatus.IN_PROGRESS
    (cm,) = await send(service, orm("M4", control="SC", order_status="CM"))
    assert cm.code == "AA"
    assert (await item(service, item_id)).status is WorklistStatus.COMPLETED
    # A final item never changes again.
    (ca,) = await send(service, orm("M5", control="CA"))
    assert ca.code == "AE"
    assert ca.errors[0].code is Hl7ErrorCode.APPLICATION_RECORD_LOCKED
    (xo2,) = await send(service, orm("M6", control="XO"))
    assert xo2.code == "AE"


@pytest.mark.parametrize(("control", "status"), [("CA", WorklistStatus.CANCELLED),
                                                 ("DC", WorklistStatus.DISCONTINUED)])
async def test_cancel_and_discontinue(service: WorklistService, control: str,
                                      status: WorklistStatus) -> None:
    (new,) = await send(service, orm("M1"))
    (out,) = await send(service, orm("M2", control=control, when="", accession=""))
    assert out.code == "AA"
    assert (await item(service, new.worklist_item_ids[0])).status is status
    (again,) = await send(service, orm("M3", control=control))
    assert again.code == "AA"  # already true: harmless


@pytest.mark.parametrize("control", ["XO", "CA", "DC", "SC"])
async def test_unknown_order_is_a_content_error(service: WorklistService, control: str) -> None:
    (out,) = await send(service, orm("M1", control=control, order_status="IP"))
    assert out.code == "AE"
    (error,) = out.errors
    assert error.code is Hl7ErrorCode.UNKNOWN_KEY_IDENTIFIER
    assert (error.segment, error.field) == ("ORC", 2)
    assert "unknown order ORD1" in error.text


async def test_new_order_twice_is_a_duplicate_key(service: WorklistService) -> None:
    await send(service, orm("M1"))
    (out,) = await send(service, orm("M2"))
    assert out.code == "AE"
    assert out.errors[0].code is Hl7ErrorCode.DUPLICATE_KEY_IDENTIFIER


async def test_message_with_two_orders_is_all_or_nothing(service: WorklistService) -> None:
    await send(service, orm("M0", placer="ORD1"))
    # The second order of this XO message is unknown: the first must not be applied either.
    second = "ORC|XO|ORD404|FIL404||||^^^20261127090000\r" \
             "OBR|1|ORD404|FIL404|CTHEAD^CT Head^L||||||||||||||ACC2|||||CT"
    (out,) = await send(service, orm("M1", control="XO", when="20261127080000", extra=second))
    assert out.code == "AE"
    assert out.errors[0].segment == "ORC" and out.errors[0].sequence == 2
    _, items = await service.list_items()
    assert items[0].item.scheduled_procedure_step_start_date == "20261125"


async def test_orders_of_one_batch_see_each_others_changes(service: WorklistService) -> None:
    # One transaction: each message's lookup must see what the messages before it wrote
    # (a backend may read the batch's orders ahead).
    outs = await send(service, orm("M1"), orm("M2", control="XO", when="20261126101500"),
                      orm("M3", control="SC", order_status="IP"), orm("M4"),
                      orm("M5", control="CA", placer="ORD2"), orm("M6", placer="ORD2"),
                      orm("M7", control="XO", placer="ORD2", when="20261127090000"))
    assert [o.code for o in outs] == ["AA", "AA", "AA", "AE", "AE", "AA", "AA"]
    assert outs[3].errors[0].code is Hl7ErrorCode.DUPLICATE_KEY_IDENTIFIER
    assert outs[4].errors[0].code is Hl7ErrorCode.UNKNOWN_KEY_IDENTIFIER
    (first,) = outs[0].worklist_item_ids
    assert outs[1].worklist_item_ids == outs[2].worklist_item_ids == (first,)
    changed = await item(service, first)
    assert (changed.status, changed.scheduled_procedure_step_start_date) == (
        WorklistStatus.IN_PROGRESS, "20261126")
    (second,) = outs[5].worklist_item_ids
    assert outs[6].worklist_item_ids == (second,)
    assert (await item(service, second)).scheduled_procedure_step_start_date == "20261127"


async def test_an_order_undone_in_its_batch_is_unknown_to_the_next_message(
        service: WorklistService) -> None:
    await send(service, orm("M0", placer="ORD9", filler="FIL9", accession="ACC9"))
    # M1 orders ORD1 and ORD9; ORD9 exists, so M1 is undone whole, and M2 finds no ORD1.
    again = "ORC|NW|ORD9|FIL9||||^^^20261127090000\r" \
            "OBR|1|ORD9|FIL9|CTHEAD^CT Head^L||||||||||||||ACC9|||||CT"
    m1, m2, m3 = await send(service, orm("M1", extra=again),
                            orm("M2", control="XO", when="20261126101500"), orm("M3"))
    assert (m1.code, m2.code, m3.code) == ("AE", "AE", "AA")
    assert m2.errors[0].code is Hl7ErrorCode.UNKNOWN_KEY_IDENTIFIER
    total, items = await service.list_items()
    assert total == 2
    assert {i.item.placer_order_number for i in items} == {"ORD1", "ORD9"}


async def test_an_order_found_by_its_filler_number_alone(service: WorklistService) -> None:
    out, xo = await send(service, orm("M1", placer="", filler="FIL7"),
                         orm("M2", control="XO", placer="", filler="FIL7",
                             when="20261126101500"))
    assert (out.code, xo.code) == ("AA", "AA")
    assert xo.worklist_item_ids == out.worklist_item_ids
    (later,) = await send(service, orm("M3", control="CA", placer="", filler="FIL7"))
    assert later.code == "AA" and later.worklist_item_ids == out.worklist_item_ids


async def test_an_order_number_with_a_nul_is_found_again(service: WorklistService) -> None:
    # Never valid HL7, but kept rather than refused (PostgreSQL stores it without the NUL):
    # a later message naming the same order must still find it.
    (new,) = await send(service, orm("M1", placer="OR\x00D7"))
    assert new.code == "AA"
    (xo,) = await send(service, orm("M2", control="XO", placer="OR\x00D7",
                                    when="20261126101500"))
    assert (xo.code, xo.worklist_item_ids) == ("AA", new.worklist_item_ids)
    (again,) = await send(service, orm("M3", placer="OR\x00D7"))
    assert again.code == "AE"  # the same order twice: a duplicate key, not a second item


async def test_adt_a08_updates_non_final_items_of_the_patient(service: WorklistService) -> None:
    outs = await send(service, orm("M1", placer="O1", accession="A1"),
                      orm("M2", placer="O2", accession="A2"),
                      orm("M3", placer="O3", accession="A3", patient_id="OTHER"))
    done = outs[1].worklist_item_ids[0]
    await send(service, orm("M4", placer="O2", control="SC", order_status="CM"))
    (upd,) = await send(service, adt("A1", "A08", name="DOE^JANE^^^MRS", sex="F"))
    assert upd.code == "AA"
    assert upd.worklist_item_ids == outs[0].worklist_item_ids
    first = await item(service, outs[0].worklist_item_ids[0])
    assert (first.patient_name, first.patient_sex, first.patient_birth_date) == (
        "DOE^JANE^^MRS", "F", "19700101")
    assert (await item(service, done)).patient_name == "DOE^JOHN"  # final: untouched
    assert (await item(service, outs[2].worklist_item_ids[0])).patient_name == "DOE^JOHN"


async def test_adt_a08_for_an_unknown_patient_is_accepted(service: WorklistService) -> None:
    (out,) = await send(service, adt("A1", "A08", patient_id="NOBODY"))
    assert (out.code, out.worklist_item_ids) == ("AA", ())


async def test_adt_a40_merges_items_onto_the_surviving_patient(
        service: WorklistService) -> None:
    (new,) = await send(service, orm("M1", patient_id="OLD1"))
    (merge,) = await send(service, adt("A1", "A40", patient_id="NEW1", name="ROE^RICHARD",
                                       prior="OLD1"))
    assert merge.code == "AA" and merge.worklist_item_ids == new.worklist_item_ids
    merged = await item(service, new.worklist_item_ids[0])
    assert (merged.patient_id, merged.patient_name) == ("NEW1", "ROE^RICHARD")


async def test_internal_error_is_retryable(store: SqliteStore, mapping: WorklistMapping,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    service = WorklistService(store, mapping)
    real = mapping.plan
    calls = {"n": 0}

    def flaky(msg):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real(msg)

    monkeypatch.setattr(mapping, "plan", flaky)
    (first,) = await send(service, orm("M1"))
    assert first.code == "AR"
    assert first.errors[0].code is Hl7ErrorCode.APPLICATION_INTERNAL_ERROR
    (again,) = await send(service, orm("M1"))  # the resend is processed, not replayed
    assert (again.code, again.duplicate, again.journal_id) == ("AA", False, first.journal_id)
    (third,) = await send(service, orm("M1"))
    assert third.duplicate and third.code == "AA"


async def test_errors_are_stored_as_json(service: WorklistService, store: SqliteStore) -> None:
    (out,) = await send(service, orm("M1", patient_id=""))
    record = await store.get_hl7_message(out.journal_id or 0)
    assert record is not None
    (error,) = json.loads(record.errors_json)
    assert error["segment"] == "PID" and error["field"] == 3 and error["code"] == 101


# --- operator actions and retention ---------------------------------------------------------
async def test_cancel_hides_and_purge_removes(service: WorklistService,
                                             store: SqliteStore) -> None:
    stored = await service.add_item(WorklistItem(patient_id="P1", modality="CT"))
    assert len(await store.find_worklist([], ACTIVE_STATUSES, 10)) == 1
    await service.cancel_item(stored.id)
    assert await store.find_worklist([], ACTIVE_STATUSES, 10) == []
    with pytest.raises(WorklistConflict):
        await service.set_status(stored.id, WorklistStatus.SCHEDULED)
    assert await service.purge(1) == 0  # changed just now: kept
    assert await service.purge(0) == 1
    assert await service.get_item(stored.id) is None


async def test_counts_by_status(service: WorklistService, store: SqliteStore) -> None:
    await send(service, orm("M1", placer="O1"), orm("M2", placer="O2"))
    await send(service, orm("M3", placer="O2", control="CA"))
    counts = await store.worklist_counts()
    assert counts[WorklistStatus.SCHEDULED] == 1
    assert counts[WorklistStatus.CANCELLED] == 1
    await service.refresh_metrics()
