"""radflow as a real process between a sender and a real PACS: ``storescu → radflow →
storescp`` through the routing rules and the dispatcher; SIGKILL in the middle of delivery;
the queue API and ``radflow queue`` on dead letters.

The invariant: every instance that got a success status from radflow reaches every destination
its routes name - across a crash of radflow (rows leased by the dead process come back at
start) and across the destination being down.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.dicomgen import write_series
from tests.helpers.peers import ScriptedScp, Storescp, have_storescp
from tests.helpers.proc import (
    HOST,
    REPO_ROOT,
    RadflowFactory,
    RadflowProcess,
    StorescuRun,
    store_responses,
    storescu,
)

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(240),
              pytest.mark.skipif(not have_storescp(), reason="DCMTK storescp not installed")]

FAST = {"initial_delay": 0.2, "max_delay": 1.0, "jitter": 0.2, "circuit_failures": 3,
        "circuit_cooldown": 0.5}


def routed_config(tmp_path: Path, destinations: dict[str, Any]) -> dict[str, Any]:
    routes = tmp_path / "routes"
    routes.mkdir(exist_ok=True)
    names = ", ".join(destinations)
    (routes / "10-all.yaml").write_text(
        f"version: 1\nroutes:\n  - name: everything\n    destinations: [{names}]\n")
    return {"routing": {"routes_dir": str(routes), "reload_poll_seconds": 0},
            "destinations": destinations,
            "delivery": {"poll_interval": 0.1, "stats_interval": 0.2, "retry": FAST}}


def sink(port: int, ae: str = "SINK", **kw: Any) -> dict[str, Any]:
    return {"type": "dimse", "ae_title": ae, "host": HOST, "port": port, "concurrency": 1,
            "timeout": 10, **kw}


def wait(cond: Any, timeout: float, what: str, rf: RadflowProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout} s"
                                 + (f"\n{rf.diagnostics()}" if rf else ""))
        time.sleep(0.2)


def api(rf: RadflowProcess, method: str, path: str) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://{HOST}:{rf.http_port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_routed_instances_reach_storescp(radflow: RadflowFactory, tmp_path: Path) -> None:
    scp = Storescp(tmp_path / "scp").start()
    try:
        rf = radflow(routed_config(tmp_path, {"pacs": sink(scp.port)}))
        instances = write_series(tmp_path / "in", 60)
        result = storescu(rf, [i.path for i in instances])
        assert store_responses(result.stdout).count("Success") == 60
        uids = {i.sop_instance_uid for i in instances}
        wait(lambda: scp.received() == uids, 60, "delivery to storescp", rf)
        status, body = api(rf, "GET", "/api/v1/queues")
        assert status == 200
        queues = {q["destination"]: q for q in body["queues"]}
        assert queues["pacs"]["dead"] == 0
        assert rf.metric("radflow_delivery_outcomes_total", destination="pacs",
                         outcome="delivered") >= 60
        assert rf.stop() == 0
    finally:
        scp.stop()


def test_sigkill_mid_delivery_then_everything_acknowledged_arrives(
        radflow: RadflowFactory, tmp_path: Path) -> None:
    scp = Storescp(tmp_path / "scp").start()
    try:
        rf = radflow(routed_config(tmp_path, {"pacs": sink(scp.port, batch_size=16)}))
        instances = write_series(tmp_path / "in", 600, size=64)
        uid_of = {i.path: i.sop_instance_uid for i in instances}
        run = StorescuRun(rf, [i.path for i in instances], "-xe")
        wait(lambda: len(scp.received()) >= 40, 60, "delivery under way", rf)
        rf.kill()  # SIGKILL: leased rows and an open association die with it
        run.finish()
        acknowledged = {uid_of[p] for p in run.acknowledged}
        assert acknowledged, run.text()
        assert not acknowledged <= scp.received(), "nothing was left to deliver at the kill"
        rf.restart()
        # Rows the dead process had leased come back at start (same node); entries it had not
        # routed yet are replayed by the router; the rest was still pending.
        wait(lambda: acknowledged <= scp.received(), 120, "acknowledged instances delivered",
             rf)
        assert rf.stop() == 0
    finally:
        scp.stop()


def test_dead_letters_through_the_api_and_the_cli(radflow: RadflowFactory,
                                                  tmp_path: Path) -> None:
    refuse = {"on": True}
    scp = ScriptedScp(lambda ds, seen: 0xA900 if refuse["on"] else 0x0000)
    try:
        rf = radflow(routed_config(tmp_path, {"pacs": sink(scp.port, ae="FAULTY")}))
        instances = write_series(tmp_path / "in", 4)
        storescu(rf, [i.path for i in instances])
        wait(lambda: api(rf, "GET", "/api/v1/queues/pacs/dead")[1].get("total") == 4, 30,
             "dead letters", rf)
        _, dead = api(rf, "GET", "/api/v1/queues/pacs/dead?limit=10")
        assert all("0xA900" in item["last_error"] for item in dead["items"])
        cli = subprocess.run([sys.executable, "-m", "engine", "queue", "list", "--dead",
                              "--config", str(rf.config_path)], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        assert "(4 of 4 dead letters)" in cli.stdout and "0xA900" in cli.stdout
        # retry one through the API, after the PACS was "fixed"
        refuse["on"] = False
        first = dead["items"][0]["id"]
        assert api(rf, "POST", f"/api/v1/queues/pacs/retry?id={first}") == (200, {"retried": 1})
        wait(lambda: len(scp.stored) == 1, 30, "retried row delivered", rf)
        # retry the rest with the CLI (a running radflow picks them up)
        cli = subprocess.run([sys.executable, "-m", "engine", "queue", "retry", "pacs",
                              "--id", str(dead["items"][1]["id"]), "--config",
                              str(rf.config_path)], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=60)
        assert cli.returncode == 0 and "1 dead letter(s) of pacs queued again" in cli.stdout
        wait(lambda: len(scp.stored) == 2, 30, "CLI-retried row delivered", rf)
        # "all" is said, never implied
        assert api(rf, "DELETE", "/api/v1/queues/pacs/dead")[0] == 400
        assert api(rf, "DELETE", "/api/v1/queues/pacs/dead?all=true") == (200, {"purged": 2})
        assert api(rf, "GET", "/api/v1/queues/pacs/dead")[1]["total"] == 0
        assert api(rf, "GET", "/api/v1/queues/nowhere/dead")[0] == 404
        assert rf.stop() == 0
    finally:
        scp.stop()


def test_burned_in_text_is_blanked_for_the_ai_node_and_unknown_devices_are_held(
        radflow: RadflowFactory, tmp_path: Path) -> None:
    """A de-identifying route with a Clean Pixel Data region: the RLE-compressed image that
    fits it reaches storescp uncompressed with the region blank; an image marked Burned In
    Annotation YES from a device no region names is dead-lettered with the reason."""
    import numpy as np
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless

    from tests.helpers import dicomgen

    scp = Storescp(tmp_path / "scp").start()
    try:
        config = routed_config(tmp_path, {"ai": sink(scp.port)})
        (tmp_path / "routes" / "10-all.yaml").write_text(
            "version: 1\nroutes:\n  - name: to-ai\n    destinations: [ai]\n"
            "    morph:\n      - op: deidentify\n        clean_pixel_data:\n"
            "          - {modality: CT, manufacturer: Acme, rectangles: [[0, 0, 32, 3]]}\n")
        config["routing"]["secret"] = "integration-secret"
        rf = radflow(config)
        known = dicomgen.new_dataset("CT", size=32, seed=1)
        known.Manufacturer, known.BurnedInAnnotation = "Acme", "YES"
        unknown = dicomgen.new_dataset("CT", size=32, seed=2)
        unknown.Manufacturer, unknown.BurnedInAnnotation = "Other", "YES"
        sent = [dicomgen.write_part10(known, tmp_path / "known.dcm", RLELossless),
                dicomgen.write_part10(unknown, tmp_path / "unknown.dcm")]
        # storescu proposes one file's own compressed syntax with -R -xr
        assert store_responses(storescu(rf, sent[0], "-R", "-xr").stdout) == ["Success"]
        assert store_responses(storescu(rf, sent[1]).stdout) == ["Success"]
        wait(lambda: len(scp.received_files()) == 1, 30, "the cleaned image arrives", rf)
        wait(lambda: api(rf, "GET", "/api/v1/queues/ai/dead")[1].get("total") == 1, 30,
             "the unknown device's image is held", rf)
        got = pydicom.dcmread(scp.received_files()[0])
        assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        original = pydicom.dcmread(sent[0]).pixel_array
        assert (got.pixel_array[0:3] == 0).all()
        assert np.array_equal(got.pixel_array[3:], original[3:])
        assert got.BurnedInAnnotation == "NO" and got.PatientIdentityRemoved == "YES"
        _, dead = api(rf, "GET", "/api/v1/queues/ai/dead?limit=10")
        assert "Burned In Annotation is YES" in dead["items"][0]["last_error"]
    finally:
        scp.stop()
