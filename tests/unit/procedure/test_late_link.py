"""Linking unscheduled steps to orders accepted later: a stream of orders costs one store
sweep at a time, each taking every order accepted while the one before it ran."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from engine.events import OrderReceived
from engine.procedure.service import ProcedureStepService


class SlowStore:
    """Only what linking needs: each sweep waits until the test lets it finish."""

    def __init__(self) -> None:
        self.sweeps: list[list[int] | None] = []
        self.release = asyncio.Event()

    async def link_unscheduled_procedure_steps(self, item_ids: Sequence[int] | None,
                                               decide: Any, now: str) -> list[Any]:
        self.sweeps.append(None if item_ids is None else list(item_ids))
        await self.release.wait()
        self.release.clear()
        return []


def order(*item_ids: int) -> OrderReceived:
    return OrderReceived(occurred_at=datetime.now(UTC), journal_id=1, message_type="ORM^O01",
                         control_id="M1", peer_host="127.0.0.1", listener="main",
                         worklist_item_ids=item_ids)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_orders_accepted_during_a_sweep_share_the_next_one() -> None:
    store = SlowStore()
    service = ProcedureStepService(store, bus=None)  # type: ignore[arg-type]
    service.on_order_received(order(1))
    await _settle()
    assert store.sweeps == [[1]]
    for ids in ((2,), (4, 3), (), (2,)):
        service.on_order_received(order(*ids))
    await _settle()
    assert store.sweeps == [[1]]  # nothing more while the first sweep runs
    store.release.set()
    await _settle()
    assert store.sweeps == [[1], [2, 3, 4]]
    store.release.set()
    await _settle()
    service.on_order_received(order(5))
    await _settle()
    assert store.sweeps == [[1], [2, 3, 4], [5]]  # idle again: the next order sweeps at once
    store.release.set()
    await service.stop()


async def test_a_failed_sweep_does_not_stop_later_ones() -> None:
    store = SlowStore()

    async def failing(item_ids: Sequence[int] | None, decide: Any, now: str) -> list[Any]:
        store.sweeps.append(list(item_ids or ()))
        raise RuntimeError("database gone")

    store.link_unscheduled_procedure_steps = failing  # type: ignore[method-assign]
    service = ProcedureStepService(store, bus=None)  # type: ignore[arg-type]
    service.on_order_received(order(1))
    await _settle()
    service.on_order_received(order(2))
    await _settle()
    assert store.sweeps == [[1], [2]]
    await service.stop()
