"""The dispatcher against a real SQLite outbox and scripted senders: verdicts, dead letters,
a poisoned row that never blocks the others, the circuit breaker, per-study order, leases."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from engine.durable.sqlite import SqliteStore
from engine.durable.store import NewOutboxRow, OutboxState
from engine.egress.delivery import Delivery, SendOutcome
from engine.egress.dispatcher import Dispatcher
from engine.egress.errors import (
    DeliveryError,
    IntegrityFailure,
    NotHereDeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from engine.egress.policy import CircuitState
from engine.settings import DeliverySettings, Hl7Destination, RetryPolicy

FAST = RetryPolicy(initial_delay=0.05, max_delay=0.2, jitter=0.1, max_attempts=4,
                   circuit_failures=3, circuit_cooldown=0.2)


class ScriptedSender:
    """Delivers unless ``decide(delivery)`` returns an error; records every call."""

    def __init__(self, decide: Callable[[Delivery], Exception | None], max_batch: int = 8
                 ) -> None:
        self.decide = decide
        self.max_batch = max_batch
        self.sent: list[tuple[int, int]] = []  # (row id, attempt)
        self.batches: list[int] = []
        self.closed = False

    async def send(self, batch: Sequence[Delivery]) -> list[SendOutcome]:
        self.batches.append(len(batch))
        out = []
        for d in batch:
            self.sent.append((d.row_id, d.attempt))
            err = self.decide(d)
            out.append(SendOutcome(err if isinstance(err, DeliveryError) else None))
        await asyncio.sleep(0)
        return out

    async def idle(self) -> None:
        return None

    async def close(self) -> None:
        self.closed = True


def dest(concurrency: int = 1, per_study: bool = False) -> Hl7Destination:
    return Hl7Destination(type="hl7", host="127.0.0.1", port=1, concurrency=concurrency,
                          per_study_order=per_study, retry=FAST)


def settings() -> DeliverySettings:
    return DeliverySettings(poll_interval=0.02, stats_interval=0.05, lease_seconds=30)


async def wait_until(cond: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = cond()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def states(store: SqliteStore) -> dict[int, str]:
    return {int(r["id"]): str(r["state"]) for r in await store.outbox_rows()}  # type: ignore[call-overload]


async def enqueue(store: SqliteStore, n: int, dest_name: str = "ris", study: str | None = None,
                  payload: dict[str, object] | None = None) -> list[int]:
    rows = [NewOutboxRow(dest_name, "hl7", json.dumps(payload or {"n": i}),
                         study_instance_uid=study) for i in range(n)]
    return await store.enqueue_outbox(rows, 0.0 + __import__("time").time())


async def run(store: SqliteStore, sender: ScriptedSender, destination: Hl7Destination,
              done: Callable[[dict[int, str]], bool]) -> Dispatcher:
    d = Dispatcher(store, {"ris": destination}, settings(), Path("/nonexistent"),
                   sender_factory=lambda name, cfg: sender, rng=random.Random(3))
    await d.start()
    try:
        await wait_until(lambda: _check(store, done))
    finally:
        await d.stop(5)
    return d


async def _check(store: SqliteStore, done: Callable[[dict[int, str]], bool]) -> bool:
    return done(await states(store))


async def test_everything_is_delivered_in_pages(store: SqliteStore) -> None:
    ids = await enqueue(store, 30)
    sender = ScriptedSender(lambda d: None)
    await run(store, sender, dest(), lambda s: all(v == "done" for v in s.values()))
    assert sorted(i for i, _ in sender.sent) == ids
    assert max(sender.batches) <= 8 and sender.closed


async def test_a_poisoned_row_is_dead_lettered_and_never_blocks_the_rest(store: SqliteStore
                                                                        ) -> None:
    ids = await enqueue(store, 20)
    poison = ids[3]
    sender = ScriptedSender(lambda d: TransientDeliveryError("always")
                            if d.row_id == poison else None)
    await run(store, sender, dest(), lambda s: s[poison] == "dead"
              and all(v == "done" for k, v in s.items() if k != poison))
    attempts = [a for i, a in sender.sent if i == poison]
    assert attempts == [1, 2, 3, 4]  # max_attempts, then dead
    (dead,) = await store.list_dead_letters("ris")
    assert dead.id == poison and "always" in (dead.last_error or "")


async def test_a_row_left_to_another_process_costs_no_attempt(store: SqliteStore) -> None:
    ids = await enqueue(store, 3)
    declined: list[int] = []

    def decide(d: Delivery) -> Exception | None:
        if d.row_id == ids[0] and len(declined) < 6:  # more often than max_attempts (4)
            declined.append(d.attempt)
            return NotHereDeliveryError("another process holds it", retry_in=0.01)
        return None

    sender = ScriptedSender(decide)
    await run(store, sender, dest(), lambda s: all(v == "done" for v in s.values()))
    assert declined == [1] * 6  # each offer is the first attempt again
    assert [a for i, a in sender.sent if i == ids[0]] == [1] * 7
    assert await store.list_dead_letters("ris") == []


async def test_a_row_handed_back_is_offered_again_at_a_jittered_moment(
        store: SqliteStore) -> None:
    # Two processes: the one that hands rows back must not re-claim them in step with its own
    # poll, or the process they are meant for (polling at its own phase) rarely gets them.
    ids = await enqueue(store, 30)
    sender = ScriptedSender(lambda d: NotHereDeliveryError("elsewhere", retry_in=10.0))
    released = time.time()
    d = Dispatcher(store, {"ris": dest()}, settings(), Path("/nonexistent"),
                   sender_factory=lambda name, cfg: sender, rng=random.Random(3))
    await d.start()
    try:
        await wait_until(lambda: {i for i, _ in sender.sent} == set(ids))
    finally:
        await d.stop(5)
    rows = await store.outbox_rows("ris")
    due = [float(str(r["next_attempt_at"])) - released for r in rows]
    assert all(r["state"] == "pending" and r["attempts"] == 0 for r in rows)
    assert all(4.0 <= x <= 16.0 for x in due), due
    assert max(due) - min(due) > 3.0  # spread, not one moment


async def test_a_permanent_failure_is_dead_lettered_at_once(store: SqliteStore) -> None:
    ids = await enqueue(store, 5)
    sender = ScriptedSender(lambda d: PermanentDeliveryError("refused", reason="ack_ae")
                            if d.row_id == ids[0] else None)
    await run(store, sender, dest(), lambda s: s[ids[0]] == "dead"
              and all(v == "done" for k, v in s.items() if k != ids[0]))
    assert [a for i, a in sender.sent if i == ids[0]] == [1]
    (dead,) = await store.list_dead_letters("ris")
    assert dead.last_error == "ack_ae: refused"


async def test_a_malformed_payload_is_dead_lettered(store: SqliteStore) -> None:
    await store.enqueue_outbox([NewOutboxRow("ris", "hl7", "not json")], 1.0)
    sender = ScriptedSender(lambda d: None)
    await run(store, sender, dest(), lambda s: list(s.values()) == ["dead"])
    assert sender.sent == []


async def test_the_circuit_opens_on_an_outage_and_a_probe_closes_it(store: SqliteStore) -> None:
    await enqueue(store, 40)
    down = {"yes": True}
    sender = ScriptedSender(lambda d: TransientDeliveryError("refused") if down["yes"] else None,
                            max_batch=4)
    d = Dispatcher(store, {"ris": dest()}, settings(), Path("/nonexistent"),
                   sender_factory=lambda name, cfg: sender, rng=random.Random(3))
    await d.start()
    try:
        await wait_until(lambda: d.circuit("ris").state is CircuitState.OPEN)
        tried = len(sender.sent)
        assert tried == 12  # three failed batches of four, then it rests
        await asyncio.sleep(0.1)
        assert len(sender.sent) <= tried + 1  # resting (at most one probe)
        down["yes"] = False
        await wait_until(lambda: _check(store, lambda s: all(v == "done" for v in s.values())))
        assert d.circuit("ris").state is CircuitState.CLOSED
    finally:
        await d.stop(5)
    # rows that failed during the outage were retried, none was dead-lettered
    assert await store.count_dead_letters("ris") == 0


async def test_integrity_failures_never_move_the_circuit(store: SqliteStore) -> None:
    # A damaged spool file says nothing about the destination: dead-lettered at once, and the
    # breaker's count is neither raised (no outage) nor reset (no success either).
    await enqueue(store, 12)
    sender = ScriptedSender(lambda d: IntegrityFailure("recorded sha256 a, found sha256 b"),
                            max_batch=4)
    d = Dispatcher(store, {"ris": dest()}, settings(), Path("/nonexistent"),
                   sender_factory=lambda name, cfg: sender, rng=random.Random(3))
    d.circuit("ris").record_failure(0.0)
    d.circuit("ris").record_failure(0.0)
    await d.start()
    try:
        await wait_until(lambda: _check(store, lambda s: all(v == "dead" for v in s.values())))
        assert d.circuit("ris").state is CircuitState.CLOSED
        assert d.circuit("ris").failures == 2
    finally:
        await d.stop(5)
    assert [a for _i, a in sender.sent] == [1] * 12  # permanent: never retried
    dead = await store.list_dead_letters("ris")
    assert all((x.last_error or "").startswith("integrity_failed:") for x in dead)


async def test_per_study_order_holds_a_study_behind_its_failed_row(store: SqliteStore) -> None:
    a = await enqueue(store, 4, study="1.1")
    b = await enqueue(store, 4, study="1.2")
    failures = {a[1]: 2}  # the second row of study 1.1 fails twice

    def decide(d: Delivery) -> Exception | None:
        if failures.get(d.row_id, 0) > 0:
            failures[d.row_id] -= 1
            return TransientDeliveryError("busy")
        return None

    sender = ScriptedSender(decide)
    await run(store, sender, dest(per_study=True), lambda s: all(v == "done" for v in s.values()))
    order_a = [i for i, _ in sender.sent if i in a]
    # a[2] and a[3] are never sent before a[1] succeeded; study 1.2 flows regardless
    first_success_a1 = max(n for n, (i, _) in enumerate(sender.sent) if i == a[1])
    assert all(n > first_success_a1 for n, (i, _) in enumerate(sender.sent) if i in a[2:])
    assert order_a[0] == a[0] and set(order_a) == set(a)
    assert {i for i, _ in sender.sent if i in b} == set(b)


async def test_leases_of_an_earlier_run_of_this_node_are_sent_again(store: SqliteStore) -> None:
    ids = await enqueue(store, 3)
    # a previous process of this node leased two rows and died
    await store.lease_outbox("ris", "testnode/1/1", 0.0 + __import__("time").time(), 3600, 2)
    sender = ScriptedSender(lambda d: None)
    d = Dispatcher(store, {"ris": dest()}, settings(), Path("/x"),
                   sender_factory=lambda name, cfg: sender, node="testnode/")
    await d.start()
    try:
        await wait_until(lambda: _check(store, lambda s: all(v == "done" for v in s.values())))
    finally:
        await d.stop(5)
    assert sorted(i for i, _ in sender.sent) == ids
    assert {a for i, a in sender.sent if i in ids[:2]} == {2}  # the crashed attempt counted


async def test_metrics_report_depth_and_outcomes(store: SqliteStore) -> None:
    from engine.observability.metrics import DELIVERY_OUTCOMES, OUTBOX_ROWS

    await enqueue(store, 3)
    before = DELIVERY_OUTCOMES.labels("ris", "delivered")._value.get()
    sender = ScriptedSender(lambda d: None)
    d = await run(store, sender, dest(), lambda s: all(v == "done" for v in s.values()))
    assert DELIVERY_OUTCOMES.labels("ris", "delivered")._value.get() - before == 3
    await d.refresh_metrics()
    assert OUTBOX_ROWS.labels("ris", "pending")._value.get() == 0
    assert (await store.outbox_rows("ris", [OutboxState.DONE]))
