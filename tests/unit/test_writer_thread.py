"""The store's two-lane writer thread: a journal commit goes ahead of queued routine writes."""

from __future__ import annotations

import threading

import pytest

from engine.durable.writer_thread import LaneWriter


def test_an_urgent_job_runs_before_queued_normal_ones_and_each_lane_keeps_its_order() -> None:
    writer = LaneWriter("test-writer")
    gate = threading.Event()
    order: list[str] = []
    try:
        blocker = writer.submit(gate.wait, 5)  # running: never interrupted
        normal = [writer.submit(order.append, f"normal-{i}") for i in range(3)]
        urgent = [writer.submit_urgent(order.append, f"urgent-{i}") for i in range(2)]
        gate.set()
        for f in [blocker, *normal, *urgent]:
            f.result(5)
        assert order == ["urgent-0", "urgent-1", "normal-0", "normal-1", "normal-2"]
    finally:
        writer.shutdown()


def test_a_failing_job_reaches_its_caller_and_the_thread_goes_on() -> None:
    writer = LaneWriter("test-writer")
    try:
        bad = writer.submit_urgent(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            bad.result(5)
        assert writer.submit(lambda: 42).result(5) == 42
    finally:
        writer.shutdown()


def test_shutdown_runs_what_was_queued_then_refuses_new_work() -> None:
    writer = LaneWriter("test-writer")
    gate = threading.Event()
    writer.submit(gate.wait, 5)
    queued = writer.submit(lambda: "done")
    stopper = threading.Thread(target=writer.shutdown)
    stopper.start()
    gate.set()
    stopper.join(5)
    assert queued.result(0) == "done"
    with pytest.raises(RuntimeError):
        writer.submit_urgent(lambda: None)
