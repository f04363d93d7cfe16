"""Several worker processes on one machine (``engine.workers``) on PostgreSQL: they share the
DICOM and MLLP ports, /readyz shows each, /metrics adds them up, a killed worker is restarted
and nothing it acknowledged is lost; SIGHUP reaches every worker; SQLite refuses them."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from engine.settings import SettingsError, load_settings
from tests.helpers import dicomgen, pg
from tests.helpers.proc import (
    RadflowFactory,
    RadflowProcess,
    StorescuRun,
    metric_value,
    store_responses,
    storescu,
)
from tests.integration.test_hl7_ingress import msa, order, send, worklist

pytestmark = pytest.mark.dcmtk


def wait_until(check: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def worker_pids(rf: RadflowProcess) -> dict[int, int]:
    """The live pid of each worker, from the supervisor's log (the newest start wins)."""
    pids: dict[int, int] = {}
    for line in rf.events("supervisor.worker.started", current_run=True):
        pids[int(line["worker"])] = int(line["pid"])
    return pids


def test_sqlite_refuses_several_workers_and_says_why(tmp_path: Path) -> None:
    config = tmp_path / "radflow.yaml"
    config.write_text("engine:\n  workers: 2\n", encoding="utf-8")
    with pytest.raises(SettingsError) as caught:
        load_settings(config, environ={})
    text = " ".join(str(p) for p in caught.value.problems)
    assert "sqlite" in text and "postgresql" in text and "one process" in text


def test_two_workers_share_ports_survive_a_killed_worker_and_lose_nothing(
        radflow: RadflowFactory, dicom_dir: Path) -> None:
    if (why := pg.unavailable()) is not None:
        pytest.skip(why)
    with pg.schema() as schema:
        rf = radflow({"storage": pg.radflow_storage(schema), "engine": {"workers": 2}})
        status, body = rf.readyz()
        assert status == 200, body
        assert body["checks"]["worker:1"]["ok"], body

        # Many short associations: the kernel spreads them over both workers' sockets.
        instances = dicomgen.write_series(dicom_dir, 24)
        for inst in instances[:16]:
            out = storescu(rf, [inst.path])
            assert store_responses(out.stdout) == ["Success"], out.stdout[-2000:]
        served_by = {line.get("worker") for line in rf.events("ingress.dimse.association.accepted")}
        assert served_by == {0, 1}, served_by
        assert msa(send(rf, order("WK1", placer="P-W1")))[0] == "AA"

        # kill -9 one worker in the middle of a stream: the supervisor restarts it.
        victim = worker_pids(rf)[1]
        run = StorescuRun(rf, [i.path for i in instances[16:]])
        os.kill(victim, signal.SIGKILL)
        run.finish()
        wait_until(lambda: rf.events("supervisor.worker.died", current_run=True, worker=1),
                   "the supervisor to see the worker die")
        wait_until(lambda: worker_pids(rf).get(1) not in (None, victim), "a new worker 1")
        wait_until(lambda: rf.readyz()[0] == 200, "/readyz green with the new worker")
        # What the modality resends after a failed association, as a modality would.
        unacknowledged = [i.path for i in instances[16:] if i.path not in run.acknowledged]
        if unacknowledged:
            out = storescu(rf, unacknowledged)
            assert set(store_responses(out.stdout)) == {"Success"}, out.stdout[-2000:]

        stored = [str(r["sop_instance_uid"]) for r in rf.journal_rows()]
        assert sorted(stored) == sorted(i.sop_instance_uid for i in instances)
        placers = [str(item.get("placer_order_number")) for item in worklist(rf)]
        assert placers.count("P-W1") == 1

        # /metrics: both workers' counts together, the dead worker's included.
        _, text = rf.http_get("/metrics")
        received = metric_value(text.decode(), "radflow_dimse_instances_received_total")
        assert received >= len(instances), received
        assert metric_value(text.decode(), "radflow_node_role", role="delivery") == 1

        # SIGHUP reaches every worker (each reloads its routes).
        assert rf.proc is not None
        rf.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: {line.get("worker") for line in rf.events(
            "rules.reloaded", current_run=True, trigger="sighup")} == {0, 1},
            "both workers to reload")

        pids = worker_pids(rf)
        rf.stop()
        for pid in pids.values():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
