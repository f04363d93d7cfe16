"""Operator view of the delivery queues: depth, age, circuit, dead letters (list/retry/purge).

Shared by the admin API (``/api/v1/queues``) and ``radflow queue`` (which runs without the
engine, against the configured store). It goes through the store's outbox API only and wakes the
running dispatcher after a retry, so retried rows leave at once. It must not send anything.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from engine.durable.store import DeadLetter, Store

if TYPE_CHECKING:
    from engine.egress.dispatcher import DestinationConfig, Dispatcher

_CIRCUIT = {0: "closed", 1: "open", 2: "half_open"}


def dead_letter_json(d: DeadLetter, with_payload: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": d.id, "destination": d.destination, "kind": d.kind, "route": d.route,
        "source_table": d.source_table, "source_id": d.source_id,
        "study_instance_uid": d.study_instance_uid, "attempts": d.attempts,
        "last_error": d.last_error, "created_at": _iso(d.created_at),
        "dead_since": _iso(d.updated_at)}
    if with_payload:
        out["payload"] = d.payload
    return out


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class QueueAdmin:
    """What operators may see and do with the outbox."""

    def __init__(self, store: Store, destinations: Mapping[str, DestinationConfig],
                 dispatcher: Dispatcher | None = None) -> None:
        self._store = store
        self._destinations = destinations
        self._dispatcher = dispatcher

    def known(self, destination: str) -> bool:
        return destination in self._destinations

    async def overview(self) -> list[dict[str, Any]]:
        now = time.time()
        out = []
        for s in await self._store.outbox_stats(list(self._destinations)):
            row: dict[str, Any] = {
                "destination": s.destination, "type": self._destinations[s.destination].type,
                "pending": s.pending, "leased": s.leased, "dead": s.dead,
                "oldest_age_seconds": round(now - s.oldest_created_at, 3)
                if s.oldest_created_at else None}
            if self._dispatcher is not None:
                breaker = self._dispatcher.circuit(s.destination)
                row["circuit"] = _CIRCUIT[int(breaker.state)]
                last = self._dispatcher.last_delivered(s.destination)
                row["last_delivered_at"] = _iso(last) if last is not None else None
            out.append(row)
        return out

    async def dead_letters(self, destination: str | None, limit: int = 100, offset: int = 0
                           ) -> tuple[int, list[DeadLetter]]:
        total = await self._store.count_dead_letters(destination)
        return total, await self._store.list_dead_letters(destination, limit, offset)

    async def retry(self, destination: str, ids: Sequence[int] | None = None) -> int:
        """Dead letters (all of ``destination``'s, or ``ids``) back to the queue, now."""
        count = await self._store.retry_dead_letters(destination, ids, time.time())
        if count and self._dispatcher is not None:
            self._dispatcher.wake(destination)
        return count

    async def purge(self, destination: str, ids: Sequence[int] | None = None) -> int:
        return await self._store.purge_dead_letters(destination, ids)
