"""Driving the dispatcher in-process for the egress tests: a SQLite store in the test's folder,
a spool holding generated instances, outbox rows in the router's payload layout, and a
context manager that runs a :class:`~engine.egress.dispatcher.Dispatcher` with real senders."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian

from engine.durable.sqlite import SqliteStore
from engine.durable.store import NewOutboxRow, OutboxState
from engine.egress.dispatcher import DestinationConfig, Dispatcher
from engine.settings import DeliverySettings, RetryPolicy
from tests.helpers.dicomgen import Instance, write_series

#: retries in fractions of a second, so fault tests finish quickly
FAST_RETRY = RetryPolicy(initial_delay=0.2, max_delay=1.0, jitter=0.2, max_attempts=50,
                         circuit_failures=3, circuit_cooldown=0.5)
FAST_DELIVERY = DeliverySettings(retry=FAST_RETRY, lease_seconds=30, poll_interval=0.05,
                                 stats_interval=0.2)


def spool_series(spool: Path, count: int, transfer_syntax: str = ExplicitVRLittleEndian,
                 size: int = 16) -> list[Instance]:
    """``count`` instances of one series written under ``spool/objects/``."""
    return write_series(spool / "objects" / f"s{time.time_ns()}", count, transfer_syntax,
                        size=size)


def dicom_payload(inst: Instance, spool: Path, morph: list[dict[str, Any]] | None = None
                  ) -> str:
    """The router's version-1 layout (``engine.pipeline``): the instance under ``object``."""
    return json.dumps({
        "v": 1, "kind": "dicom", "route": "test", "morph": morph or [],
        "secret_fingerprint": None,
        "object": {"spool_path": str(inst.path.relative_to(spool)),
                   "sop_class_uid": inst.sop_class_uid,
                   "sop_instance_uid": inst.sop_instance_uid,
                   "transfer_syntax_uid": inst.transfer_syntax_uid,
                   "size_bytes": inst.path.stat().st_size,
                   "sha256": hashlib.sha256(inst.path.read_bytes()).hexdigest()}})


async def enqueue_instances(store: SqliteStore, spool: Path, destination: str,
                            instances: Sequence[Instance], study: str | None = None
                            ) -> list[int]:
    rows = [NewOutboxRow(destination, "dicom", dicom_payload(i, spool), route="test",
                         study_instance_uid=study) for i in instances]
    return await store.enqueue_outbox(rows, time.time())


async def row_states(store: SqliteStore, destination: str | None = None) -> dict[int, str]:
    return {int(str(r["id"])): str(r["state"]) for r in await store.outbox_rows(destination)}


async def wait_until(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition"
                     ) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.1)


async def all_done(store: SqliteStore, destination: str | None = None) -> bool:
    states = await row_states(store, destination)
    return bool(states) and all(s == OutboxState.DONE for s in states.values())


@contextlib.asynccontextmanager
async def running_dispatcher(store: SqliteStore, spool: Path,
                             destinations: Mapping[str, DestinationConfig],
                             delivery: DeliverySettings = FAST_DELIVERY
                             ) -> AsyncIterator[Dispatcher]:
    dispatcher = Dispatcher(store, destinations, delivery, spool)
    await dispatcher.start()
    try:
        yield dispatcher
    finally:
        await dispatcher.stop(5)
