"""Following one order end to end: ``radflow trace KEY`` and ``GET /api/v1/trace``.

An ORM^O01 over MLLP (the ``hl7`` package's client) → MPPS N-CREATE IN PROGRESS (pynetdicom
SCU) → three images by DCMTK ``storescu`` → MPPS N-SET COMPLETED → the images routed to DCMTK
``storescp`` and the step status routed to an MLLP receiver (the RIS). Then the trace, asked by
accession number, by Study Instance UID and by patient, tells that whole story in order, with
the correlation keys of the order.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hl7.client import MLLPClient
from pydicom.uid import generate_uid
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

from engine.reactor import EventDrivenAE
from tests.helpers import dicomgen
from tests.helpers.peers import MllpSink, Storescp, have_storescp
from tests.helpers.proc import (
    HOST,
    REPO_ROOT,
    RadflowFactory,
    RadflowProcess,
    store_responses,
    storescu,
)
from tests.scenarios.test_mpps_completeness import ORDER, mwl, n_create, n_set_completed

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(240),
              pytest.mark.skipif(not have_storescp(), reason="needs DCMTK storescp")]

ROUTES = """\
version: 1
routes:
  - name: images-to-pacs
    match: {attr: Modality, equals: CT}
    destinations: [pacs]
  - name: status-to-ris
    trigger: {on: procedure_step}
    destinations: [ris]
"""


def api(rf: RadflowProcess, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{rf.http_port}{path}", timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_delivered(rf: RadflowProcess, accession: str, rows: int) -> dict[str, Any]:
    """The trace once every delivery of the order is done (the outbox says so)."""
    import time

    deadline = time.monotonic() + 60
    while True:
        _, answer = api(rf, f"/api/v1/trace?accession={accession}")
        done = [e for e in answer["timeline"] if e["kind"] == "delivery"]
        if sum(e["details"]["delivered"] for e in done) >= rows:
            return dict(answer)
        assert time.monotonic() < deadline, (answer, rf.diagnostics())
        time.sleep(0.3)


def test_one_order_traced_end_to_end(radflow: RadflowFactory, dicom_dir: Path,
                                     tmp_path: Path) -> None:
    pacs = Storescp(tmp_path / "pacs", ae_title="PACS").start()
    ris = MllpSink().start()
    try:
        rf = radflow({"destinations": {
            "pacs": {"type": "dimse", "ae_title": "PACS", "host": HOST, "port": pacs.port},
            "ris": {"type": "hl7", "host": HOST, "port": ris.port}}}, start=False)
        Path(rf.config["routing"]["routes_dir"], "10-site.yaml").write_text(ROUTES)
        rf.start()

        with MLLPClient(HOST, int(rf.config["hl7"]["listeners"][0]["port"])) as client:
            client.send_message(ORDER)
        (answer,) = mwl(rf, tmp_path / "mwl")
        study_uid = str(answer.StudyInstanceUID)
        ae = EventDrivenAE(ae_title="CT01")
        ae.add_requested_context(ModalityPerformedProcedureStep)
        assoc = ae.associate(HOST, rf.port, ae_title=rf.ae_title)
        mpps_uid = generate_uid()
        series_uid = generate_uid()
        instances = [dicomgen.write_instance(
            dicom_dir, name=f"ct{i}.dcm", seed=i, study_instance_uid=study_uid,
            series_instance_uid=series_uid, instance_number=i, patient_id="MRN-42",
            accession_number="ACC-42") for i in range(1, 4)]
        try:
            status, _ = assoc.send_n_create(n_create(answer), ModalityPerformedProcedureStep,
                                            mpps_uid)
            assert status.Status == 0x0000
            sent = storescu(rf, [i.path for i in instances], "-aet", "CT01")
            assert store_responses(sent.stdout) == ["Success"] * 3, sent.stdout
            status, _ = assoc.send_n_set(n_set_completed(series_uid, instances),
                                         ModalityPerformedProcedureStep, mpps_uid)
            assert status.Status == 0x0000
        finally:
            assoc.release()
        # 3 images to the PACS, 2 status messages (IP, CM) to the RIS
        trace = wait_delivered(rf, "ACC-42", rows=5)
        assert pacs.wait_for({i.sop_instance_uid for i in instances}) == set()
        assert len(ris.wait_for(2)) == 2
    finally:
        pacs.stop()
        ris.stop()

    assert trace["found"] is True and trace["by"] == "accession"
    assert trace["keys"] == {
        "accession_numbers": ["ACC-42"], "study_instance_uids": [study_uid],
        "patient_ids": ["MRN-42"], "placer_order_numbers": ["O-42"],
        "filler_order_numbers": ["F-42"]}
    kinds = [e["kind"] for e in trace["timeline"]]
    # The story in the order it happened.
    assert kinds.index("hl7_message") < kinds.index("procedure_step") < kinds.index("instances")
    assert kinds.count("procedure_step") == 2
    assert [e["details"]["status"] for e in trace["timeline"]
            if e["kind"] == "procedure_step"] == ["IN PROGRESS", "COMPLETED"]
    [message] = [e for e in trace["timeline"] if e["kind"] == "hl7_message"]
    assert message["details"]["control_id"] == "MPPS-1"
    assert message["details"]["ack_code"] == "AA"
    [item] = [e for e in trace["timeline"] if e["kind"] == "worklist_item"]
    assert item["details"]["status"] == "COMPLETED"
    [received] = [e for e in trace["timeline"] if e["kind"] == "instances"]
    assert received["details"]["instances"] == 3
    assert received["details"]["calling_aes"] == ["CT01"]
    deliveries = {(e["details"]["route"], e["details"]["destination"]): e["details"]
                  for e in trace["timeline"] if e["kind"] == "delivery"}
    assert deliveries[("images-to-pacs", "pacs")]["delivered"] == 3
    assert deliveries[("images-to-pacs", "pacs")]["dead"] == 0
    assert deliveries[("status-to-ris", "ris")]["delivered"] == 2
    assert all(d["attempts"] >= d["rows"] for d in deliveries.values())

    # The log lines of the order, its steps and its study carry the same correlation keys.
    order_keys = {"accession_number": "ACC-42", "study_instance_uid": study_uid,
                  "placer_order_number": "O-42", "filler_order_number": "F-42",
                  "patient_id": "MRN-42"}
    [ack] = rf.events("ingress.hl7.ack_sent", control_id="MPPS-1")
    assert {k: ack.get(k) for k in order_keys} == order_keys
    for name in ("mpps.created", "mpps.set"):  # the step moved the order's item: all keys
        [line] = rf.events(name, sop_instance_uid=mpps_uid)
        assert {k: line.get(k) for k in order_keys} == order_keys, line
    # Every line that names this study names the order's accession too, and vice versa.
    for line in rf.logs():
        if line.get("study_instance_uid") == study_uid or line.get("accession_number"):
            assert line.get("accession_number") == "ACC-42", line
            assert line.get("study_instance_uid") in (study_uid, None), line

    # The same story from the study and from the patient.
    status, by_study = api(rf, f"/api/v1/trace?study={study_uid}")
    assert status == 200 and by_study["timeline"] == trace["timeline"]
    status, by_patient = api(rf, "/api/v1/trace?patient=MRN-42")
    assert status == 200 and by_patient["timeline"] == trace["timeline"]
    assert api(rf, "/api/v1/trace?accession=ACC-42&study=x")[0] == 400
    assert api(rf, "/api/v1/trace?accession=NOPE")[1]["found"] is False

    # The command line reads the same store.
    cli = subprocess.run([sys.executable, "-m", "engine", "trace", "ACC-42", "--config",
                          str(rf.config_path)], capture_output=True, text=True, timeout=60,
                         cwd=REPO_ROOT)
    assert cli.returncode == 0, cli.stderr
    lines = cli.stdout.splitlines()
    assert lines[0] == "accession ACC-42"
    assert "  placer order numbers: O-42" in lines
    assert any("MPPS N-SET COMPLETED from CT01" in line for line in lines)
    assert any("route images-to-pacs -> pacs: 3 row(s) from instances, 3 delivered" in line
               for line in lines)
    as_json = subprocess.run([sys.executable, "-m", "engine", "trace", study_uid, "--json",
                              "--config", str(rf.config_path)], capture_output=True, text=True,
                             timeout=60, cwd=REPO_ROOT)
    assert json.loads(as_json.stdout)["by"] == "study"
