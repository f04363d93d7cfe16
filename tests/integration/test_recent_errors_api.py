"""The most recent errors of a running radflow, as an operator reads them on the Overview
(``GET /api/v1/errors``): an association DCMTK's echoscu opened with a wrong called AE title
(the calling AE, the address, the reason), an HL7 order refused with AE, the dead letters of a
destination that refuses for good (pynetdicom SCP), and a route file that failed to reload."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.dicomgen import write_series
from tests.helpers.peers import ScriptedScp
from tests.helpers.proc import HOST, RadflowFactory, RadflowProcess, echoscu, storescu
from tests.integration.test_hl7_ingress import msa, order, send

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(180)]


def errors(rf: RadflowProcess) -> list[dict[str, Any]]:
    status, body = rf.http_get("/api/v1/errors?limit=100")
    assert status == 200, body
    items: list[dict[str, Any]] = json.loads(body)["items"]
    return items


def wait_for(rf: RadflowProcess, kind: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in errors(rf) if e["kind"] == kind]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no {kind} in {errors(rf)}")
        time.sleep(0.3)


def test_the_recent_errors_name_what_failed_where_and_why(
        radflow: RadflowFactory, tmp_path: Path) -> None:
    faulty = ScriptedScp(lambda ds, seen: 0xA900)  # refuses for good: dead letters
    try:
        routes = tmp_path / "routes"
        routes.mkdir()
        (routes / "10-all.yaml").write_text(
            "version: 1\nroutes:\n  - name: everything\n    destinations: [faulty]\n")
        rf = radflow({
            "routing": {"routes_dir": str(routes), "reload_poll_seconds": 0},
            "destinations": {"faulty": {"type": "dimse", "host": HOST, "port": faulty.port,
                                        "ae_title": "FAULTY"}},
            "delivery": {"poll_interval": 0.1}})

        out = echoscu(rf, "-aet", "WRONGCALLER", called_ae="NOT-RADFLOW")
        assert out.returncode != 0
        refused = wait_for(rf, "association_refused")
        assert refused["subject"] == "WRONGCALLER" and refused["peer_host"] == "127.0.0.1"
        assert refused["reason"] and refused["kind_label"] == "association refused"

        ack = send(rf, order("ERR1", pid=""))
        assert msa(ack)[0] == "AE"
        hl7 = wait_for(rf, "hl7_refused")
        assert hl7["reason"].startswith("AE") and hl7["peer_host"] == "127.0.0.1"

        storescu(rf, [i.path for i in write_series(tmp_path / "in", 1)])
        dead = wait_for(rf, "dead_letter")
        assert dead["subject"] == "faulty" and "0xA900" in dead["reason"]

        (routes / "20-bad.yaml").write_text("version: 1\nroutes:\n  - name: [not a name]\n")
        req = urllib.request.Request(f"http://{HOST}:{rf.http_port}/api/v1/routes/reload",
                                     method="POST")
        try:
            urllib.request.urlopen(req, timeout=30)
        except urllib.error.HTTPError as exc:
            assert exc.code == 422
        reload = wait_for(rf, "rules_reload_failed")
        assert "previous rules kept" in reload["reason"] and reload["subject"] == "api"
        # Every entry names the node that saw it.
        assert all(e["node"] for e in errors(rf))
    finally:
        faulty.stop()
