"""The first hour: ``sh scripts/run.sh`` and the shipped config, as a new site meets them.

- ``scripts/run.sh`` installs radflow with the codecs extra (compressed images a route must
  decompress would otherwise be dead-lettered) and runs the shipped config.
- The shipped config, named by an absolute path from another working directory, finds its
  routes and worklist mapping, and its one active destination is the test PACS the docs start
  (DCMTK ``storescp``): a JPEG 2000 image from a modality arrives there, decompressed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless

from tests.helpers import dicomgen
from tests.helpers.peers import Storescp, have_storescp
from tests.helpers.proc import HOST, REPO_ROOT, dcmtk, free_port, store_responses

pytestmark = pytest.mark.dcmtk


def test_run_script_installs_the_codecs_extra_then_runs_the_shipped_config(
        tmp_path: Path) -> None:
    # A copy of the project whose .venv/bin/python only records how it was called: the
    # script's own logic, without a network install.
    project = tmp_path / "radflow"
    shutil.copytree(REPO_ROOT / "scripts", project / "scripts")
    shutil.copy(REPO_ROOT / "pyproject.toml", project / "pyproject.toml")
    calls = tmp_path / "calls.txt"
    fake = project / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n', encoding="utf-8")
    fake.chmod(0o755)
    result = subprocess.run(["sh", "scripts/run.sh"], cwd=project, capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, PYTHON=sys.executable))
    assert result.returncode == 0, result.stderr
    lines = calls.read_text(encoding="utf-8").splitlines()
    assert "-m pip install -q -e .[codecs]" in lines
    assert lines[-1] == "-m engine run --config config/radflow.yaml"


def _readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/readyz", timeout=2) as response:
            return int(response.status)
    except OSError:
        return 0


@pytest.mark.skipif(not have_storescp(), reason="needs DCMTK storescp")
def test_the_shipped_config_sends_a_jpeg2000_image_to_the_documented_test_pacs(
        tmp_path: Path) -> None:
    pacs = Storescp(tmp_path / "pacs", ae_title="PACS").start()  # as docs/operations.md says
    dicom_port, mllp_port, http_port = free_port(), free_port(), free_port()
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADFLOW_")}
    env.update({
        # Ports and data of this test only; relative paths from the environment are relative
        # to the working directory.
        "RADFLOW_DICOM__LISTENERS__0__HOST": HOST,
        "RADFLOW_DICOM__LISTENERS__0__PORT": str(dicom_port),
        "RADFLOW_HL7__LISTENERS__0__HOST": HOST,
        "RADFLOW_HL7__LISTENERS__0__PORT": str(mllp_port),
        "RADFLOW_HTTP__PORT": str(http_port),
        "RADFLOW_STORAGE__SQLITE_PATH": "data/radflow.db",
        "RADFLOW_STORAGE__SPOOL_DIR": "data/spool",
        "RADFLOW_STORAGE__MIN_FREE_MB": "1",
        "RADFLOW_DESTINATIONS__PACS__PORT": str(pacs.port),
        "PYTHONPATH": str(REPO_ROOT),
    })
    log = tmp_path / "radflow.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "run", "--config",
             str(REPO_ROOT / "config" / "radflow.yaml")],
            cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while _readyz(http_port) != 200:
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)
        image = dicomgen.new_dataset("CT", size=32, seed=3, patient_id="P-1001")
        image.PatientName = "Doe^Jane"  # "Test^..." would meet the shipped discard route
        sent = dicomgen.write_part10(image, tmp_path / "ct.dcm", JPEG2000Lossless)
        result = dcmtk("storescu", "-v", "-aet", "CT_1", "-aec", "RADFLOW", "-R", "-xv",
                       HOST, str(dicom_port), sent, timeout=60)
        assert store_responses(result.stdout) == ["Success"], result.stdout
        assert pacs.wait_for({str(image.SOPInstanceUID)}, timeout=60) == set(), \
            log.read_text(errors="replace")
        [received] = pacs.received_files()
        got = pydicom.dcmread(received)
        assert got.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian,
                                                   ImplicitVRLittleEndian)
        assert (got.pixel_array == pydicom.dcmread(sent).pixel_array).all()
        assert (workdir / "data" / "radflow.db").is_file()  # env paths: the working directory
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        pacs.stop()
    text = log.read_text(errors="replace")
    assert "egress.dimse.failed" not in text
    assert "outbox.dead_lettered" not in text
