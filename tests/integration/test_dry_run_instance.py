"""A dry run of an instance radflow received (DCMTK storescu), read from its spooled file: the
study's instances are listed, the dry run names the routes that match with the calling AE the
instance came with and the morph's diff, and an unknown, damaged or removed file is refused
with a reason."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.dicomgen import write_series
from tests.helpers.proc import RadflowFactory, RadflowProcess, storescu

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(180)]

ROUTES = """\
version: 1
routes:
  - name: from-modality
    match: {context: calling_ae, equals: DRYRUN-CT}
    destinations: [pacs]
    morph: [{op: set, attr: InstitutionName, value: Dry Run Hospital}]
  - name: from-elsewhere
    match: {context: calling_ae, equals: OTHER-AE}
    destinations: [pacs]
"""


def get(rf: RadflowProcess, path: str) -> tuple[int, dict[str, Any]]:
    status, body = rf.http_get(path, timeout=30)
    return status, json.loads(body)


def test_a_received_instance_dry_runs_from_its_spooled_file(
        radflow: RadflowFactory, tmp_path: Path) -> None:
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "10-site.yaml").write_text(ROUTES)
    rf = radflow({"routing": {"routes_dir": str(routes), "reload_poll_seconds": 0},
                  "destinations": {"pacs": {"type": "dimse", "host": "127.0.0.1", "port": 9,
                                            "ae_title": "PACS"}}})
    series = write_series(tmp_path / "in", 2)
    out = storescu(rf, [i.path for i in series], "-aet", "DRYRUN-CT")
    assert out.returncode == 0, out.stdout

    study = rf.api_instances()["items"][0]["study_instance_uid"]
    status, listed = get(rf, f"/api/v1/studies/{urllib.parse.quote(study)}/instances")
    assert status == 200
    uids = [i["sop_instance_uid"] for i in listed["items"]]
    assert sorted(uids) == sorted(i.sop_instance_uid for i in series)
    status, page = get(rf, f"/api/v1/studies/{urllib.parse.quote(study)}/instances?limit=1")
    assert len(page["items"]) == 1 and page["next_after"] == page["items"][0]["id"]

    status, run = get(rf, f"/api/v1/routes/test/instance/{uids[0]}")
    assert status == 200, run
    assert run["sop_instance_uid"] == uids[0] and run["instance"]["calling_ae"] == "DRYRUN-CT"
    matched = {r["name"]: r["matched"] for r in run["routes"]}
    assert matched == {"from-modality": True, "from-elsewhere": False}
    (morph,) = run["morphs"]
    change = next(c for c in morph["changes"] if c["path"] == "InstitutionName")
    assert change["after"] == "Dry Run Hospital"

    assert get(rf, "/api/v1/routes/test/instance/1.2.3.4.5.6")[0] == 404
    spooled = rf.spool_dir / run["instance"]["spool_path"]
    data = spooled.read_bytes()
    spooled.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    status, refused = get(rf, f"/api/v1/routes/test/instance/{uids[0]}")
    assert status == 409 and "checksum" in refused["error"]
    spooled.unlink()
    status, refused = get(rf, f"/api/v1/routes/test/instance/{uids[0]}")
    assert status == 410 and "gone" in refused["error"]
