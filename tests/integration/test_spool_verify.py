"""``radflow spool verify`` against a running radflow's store and spool: intact objects pass
(exit 0); a damaged file and a missing one are each named, with both digests for the damaged
one (exit 1), and listed in the console's recent errors; ``--study`` narrows the check to one
study."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom

from tests.helpers import dicomgen
from tests.helpers.proc import REPO_ROOT, RadflowFactory, store_responses, storescu


def verify(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", "spool", "verify", "--config",
                           str(config), *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60, check=False)


def test_spool_verify_names_damaged_and_missing_objects(radflow: RadflowFactory,
                                                        tmp_path: Path) -> None:
    rf = radflow()
    study_a, study_b = (dicomgen.new_dataset("CT") for _ in range(2))
    files = []
    for i in range(3):
        ds = dicomgen.new_dataset("CT")
        ds.StudyInstanceUID = study_a.StudyInstanceUID
        files.append(dicomgen.write_part10(ds, tmp_path / f"a{i}.dcm"))
    files.append(dicomgen.write_part10(study_b, tmp_path / "b.dcm"))
    assert store_responses(storescu(rf, files).stdout) == ["Success"] * 4
    rf.stop()

    ok = verify(rf.config_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "4 object(s) checked in the spool, 0 damaged or missing" in ok.stdout

    rows = {r["sop_instance_uid"]: r for r in rf.journal_rows()}
    damaged = rows[str(pydicom.dcmread(files[0]).SOPInstanceUID)]
    missing = rows[str(pydicom.dcmread(files[1]).SOPInstanceUID)]
    path = rf.spool_dir / damaged["spool_path"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    (rf.spool_dir / missing["spool_path"]).unlink()

    bad = verify(rf.config_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    lines = bad.stdout.splitlines()
    (damaged_line,) = [ln for ln in lines if damaged["sop_instance_uid"] in ln]
    assert "damaged" in damaged_line and damaged["sha256"] in damaged_line
    assert damaged_line.count("sha256") == 2
    (missing_line,) = [ln for ln in lines if missing["sop_instance_uid"] in ln]
    assert "missing" in missing_line
    assert "4 object(s) checked in the spool, 2 damaged or missing" in bad.stdout

    only_b = verify(rf.config_path, "--study", str(study_b.StudyInstanceUID))
    assert only_b.returncode == 0, only_b.stdout
    assert "1 object(s) checked" in only_b.stdout

    # What the command found is in the console's list of recent errors too.
    rf.start()
    status, body = rf.http_get("/api/v1/errors?kind=integrity_failed")
    assert status == 200, body
    notes = json.loads(body)["items"]
    # One note per study, counting its damaged and missing objects and naming them.
    (note,) = [n for n in notes
               if n["subject"] == f"spool verify: study {study_a.StudyInstanceUID}"]
    assert note["kind_label"] == "integrity check failed"
    assert note["reason"].startswith("2 object(s) damaged or missing")
    assert f"{damaged['sop_instance_uid']} damaged" in note["reason"]
    assert f"{missing['sop_instance_uid']} missing" in note["reason"]
