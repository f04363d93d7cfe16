"""The trace timeline: journal times (ISO text in several forms) and outbox times (epoch
seconds) in one order, and the correlation keys gathered from every record."""

from __future__ import annotations

import datetime as dt

from engine.durable.trace import (
    TraceDelivery,
    TraceHl7Message,
    TraceProcedureStep,
    TraceRecords,
    TraceStepEvent,
    TraceStudy,
    TraceWorklistItem,
    keys,
    timeline,
    trace_json,
)

T0 = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)


def at(seconds: float) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).isoformat()


RECORDS = TraceRecords(
    hl7_messages=(TraceHl7Message(1, at(0), "ORM", "O01", "C-1", "RIS", "AA", (7,), None),),
    worklist_items=(TraceWorklistItem(7, "COMPLETED", "P-1", "ACC-1", "1.2.3", "O-1", "F-1",
                                      "CT", "", at(0.001), at(90)),),
    procedure_steps=(TraceProcedureStep(
        "1.2.9", "COMPLETED", "1.2.3", "ACC-1", "P-1", "CT01", False, (7,), at(30), None,
        (TraceStepEvent("create", "IN PROGRESS", at(30), None, None),
         # microseconds and no time zone: another writer's form of the same clock
         TraceStepEvent("set", "COMPLETED",
                        (T0 + dt.timedelta(seconds=80)).replace(tzinfo=None).isoformat(
                            timespec="microseconds"), None, None))),),
    studies=(TraceStudy("1.2.3", 3, 1, ("CT01",), ("CT",), ("ACC-1",), ("P-1",), at(40),
                        at(41), 0),),
    deliveries=(TraceDelivery("images-to-pacs", "pacs", "instances", "1.2.3", 3, 3, 0, 0, 3,
                              (T0 + dt.timedelta(seconds=40.5)).timestamp(),
                              (T0 + dt.timedelta(seconds=42)).timestamp(), None),),
)


def test_every_fact_in_the_order_it_happened() -> None:
    entries = timeline(RECORDS)
    assert [e.kind for e in entries] == ["hl7_message", "worklist_item", "procedure_step",
                                         "instances", "delivery", "procedure_step"]
    assert [e.at for e in entries][:2] == ["2026-11-25T09:00:00.000Z",
                                           "2026-11-25T09:00:00.001Z"]
    assert entries[-1].at == "2026-11-25T09:01:20.000Z"
    assert entries[4].summary == ("route images-to-pacs -> pacs: 3 row(s) from instances, "
                                  "3 delivered, delivered, 3 attempt(s)")
    assert entries[4].details["last_done_at"] == "2026-11-25T09:00:42.000Z"


def test_the_keys_of_the_order() -> None:
    assert keys(RECORDS) == {"accession_numbers": ["ACC-1"], "study_instance_uids": ["1.2.3"],
                             "patient_ids": ["P-1"], "placer_order_numbers": ["O-1"],
                             "filler_order_numbers": ["F-1"]}


def test_nothing_found_says_so() -> None:
    answer = trace_json("accession", "NOPE", TraceRecords())
    assert answer["found"] is False and answer["timeline"] == []
