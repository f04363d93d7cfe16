"""The C-FIND handler on a pynetdicom-like thread, with the real bridge, service and store."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydicom.dataset import Dataset

from engine.bridge import LoopBridge
from engine.durable.sqlite import SqliteStore
from engine.ingress.dimse.mwl import MwlProvider, handle_find
from engine.records.worklist import WorklistItem, WorklistStatus
from engine.status import DimseStatus
from engine.worklist.mapping import WorklistMapping
from engine.worklist.service import WorklistService

T = TypeVar("T")


@dataclass
class Requestor:
    ae_title: str = "SCANNER"


@dataclass
class Assoc:
    requestor: Requestor = field(default_factory=Requestor)


@dataclass
class FakeEvent:
    """The parts of pynetdicom's Event the handler reads."""

    identifier: Dataset
    cancel_after: int | None = None
    answers: int = 0
    assoc: Assoc = field(default_factory=Assoc)

    @property
    def is_cancelled(self) -> bool:
        return self.cancel_after is not None and self.answers >= self.cancel_after


@dataclass
class Policy:
    name: str = "main"


class Engine:
    """A loop on its own thread, as in radflow: store, service and bridge live there."""

    def __init__(self, tmp: Path, mapping: WorklistMapping) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.store = SqliteStore(tmp / "radflow.db")
        self.bridge = LoopBridge()
        self.run(self._start())
        self.service = WorklistService(self.store, mapping, find_limit=3)
        self.provider = MwlProvider(self.bridge, self.service, timeout=5.0)

    async def _start(self) -> None:
        self.bridge.attach(asyncio.get_running_loop())
        await self.store.open()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self) -> None:
        self.run(self.store.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def engine(tmp_path: Path, mapping: WorklistMapping) -> Iterator[Engine]:
    e = Engine(tmp_path, mapping)
    items = [
        WorklistItem(patient_id="P1", patient_name="Müller^Jürgen", modality="CT",
                     scheduled_procedure_step_start_date="20261125",
                     scheduled_procedure_step_start_time="1000",
                     specific_character_set=("ISO_IR 100",)),
        WorklistItem(patient_id="P2", patient_name="Ωμέγα^Άλφα", modality="CT",
                     scheduled_procedure_step_start_date="20261125",
                     scheduled_procedure_step_start_time="0800",
                     specific_character_set=("ISO_IR 100",)),  # cannot hold Greek
        WorklistItem(patient_id="P3", modality="MR",
                     scheduled_procedure_step_start_date="20261125"),
        WorklistItem(patient_id="P4", modality="CT", status=WorklistStatus.CANCELLED,
                     scheduled_procedure_step_start_date="20261125"),
    ]
    e.run(e.store.add_worklist_items(items))
    yield e
    e.close()


def ct_query(**extra: Any) -> Dataset:
    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = ""
    for k, v in extra.items():
        setattr(ds, k, v)
    sps = Dataset()
    sps.Modality = "CT"
    sps.ScheduledProcedureStepStartDate = "20261125"
    sps.ScheduledProcedureStepStartTime = ""
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def run_find(engine: Engine, event: FakeEvent) -> list[tuple[Any, Dataset | None]]:
    out = []
    for status, answer in handle_find(event, Policy(), engine.provider):  # type: ignore[arg-type]
        out.append((status, answer))
        event.answers += 1
    return out


def test_pending_answers_in_schedule_order_then_success(engine: Engine) -> None:
    answers = run_find(engine, FakeEvent(ct_query()))
    assert [s for s, _ in answers] == [DimseStatus.PENDING, DimseStatus.PENDING,
                                       DimseStatus.SUCCESS]
    first, second = (a for _, a in answers[:2])
    assert first is not None and second is not None
    assert first.PatientID == "P2"  # 08:00 before 10:00; the cancelled P4 never shows
    # Greek does not fit ISO_IR 100: answered in UTF-8 rather than failing the query.
    assert first.SpecificCharacterSet == "ISO_IR 192"
    assert second.SpecificCharacterSet == "ISO_IR 100"
    assert second.PatientName == "Müller^Jürgen"


def test_cancel_between_answers(engine: Engine) -> None:
    answers = run_find(engine, FakeEvent(ct_query(), cancel_after=1))
    assert [s for s, _ in answers] == [DimseStatus.PENDING, DimseStatus.CANCEL]


def test_malformed_identifier_fails_with_a0900(engine: Engine) -> None:
    query = ct_query()
    query.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate = "2026-11"
    ((status, answer),) = run_find(engine, FakeEvent(query))
    assert isinstance(status, Dataset)
    assert status.Status == DimseStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    assert "date" in status.ErrorComment
    assert answer is None


def test_too_many_matches_is_out_of_resources(engine: Engine) -> None:
    query = Dataset()
    query.PatientID = ""  # universal: 3 active items, limit 3 → fine
    assert run_find(engine, FakeEvent(query))[-1][0] == DimseStatus.SUCCESS
    engine.run(engine.store.add_worklist_items([WorklistItem(patient_id="P5")]))
    ((status, _),) = run_find(engine, FakeEvent(query))
    assert isinstance(status, Dataset)
    assert status.Status == DimseStatus.OUT_OF_RESOURCES


def test_unsupported_matching_key_gives_pending_warning(engine: Engine) -> None:
    # Body Part Examined is no Modality Worklist key (PS3.4 Table K.6-1)
    answers = run_find(engine, FakeEvent(ct_query(BodyPartExamined="HEAD")))
    assert answers[0][0] == DimseStatus.PENDING_WARNING


def test_standard_return_keys_with_values_give_plain_pending(engine: Engine) -> None:
    answers = run_find(engine, FakeEvent(ct_query(PatientWeight="70", PregnancyStatus=4)))
    assert answers[0][0] == DimseStatus.PENDING


def test_bridge_closed_fails_with_out_of_resources(engine: Engine) -> None:
    engine.bridge.close()
    ((status, _),) = run_find(engine, FakeEvent(ct_query()))
    assert isinstance(status, Dataset)
    assert status.Status == DimseStatus.OUT_OF_RESOURCES
