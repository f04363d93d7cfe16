"""Routing end to end: DCMTK storescu sends a study to a running radflow, and the outbox holds
exactly the deliveries the routes say, each with frozen morph steps that, applied to the
spooled original, give the expected datasets attribute by attribute.

Also: a route file edited into invalid YAML while radflow runs keeps the old rules (reload
failure in the log, the metric and /readyz, which stays ready), a valid edit is picked up, and
the dry-run API answers without writing anything.
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from engine.morph import MorphKeys, morph_bytes, read_dataset, steps_from_json
from tests.helpers import dicomgen
from tests.helpers.proc import HOST, RadflowFactory, RadflowProcess, store_responses, storescu

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(240)]

SECRET = "scenario-site-secret"
CT_FILES = 6
ROUTES = """\
version: 1
routes:
  - name: discard-phantoms
    match: {attr: PatientID, regex: "^PHANTOM"}
    destinations: []
    stop: true
  - name: ct-to-pacs
    match:
      all:
        - {attr: Modality, equals: CT}
        - {context: calling_ae, equals: CT_1}
    destinations: [pacs]
    morph:
      - {op: set, attr: InstitutionName, value: "Radflow General"}
      - {op: map, attr: StationName, table: {CTAWP00012: CT_1}}
  - name: ct-study-to-ai
    trigger: {on: study, quiet_seconds: 1.5, max_wait_seconds: 60}
    match: {attr: Modality, equals: CT}
    destinations: [ai]
    morph: [research]
  - name: rest-to-archive
    fallback: true
    destinations: [archive]
profiles:
  research:
    - {op: deidentify, retain_longitudinal_dates: modified, pseudonymize_patient: true}
    - {op: set, attr: ClinicalTrialProtocolID, value: AI-1}
"""


def config() -> dict[str, Any]:
    dest = {"type": "dimse", "host": HOST}
    return {
        "destinations": {"pacs": {**dest, "ae_title": "PACS", "port": 4242},
                         "ai": {**dest, "ae_title": "AI", "port": 4243},
                         "archive": {**dest, "ae_title": "ARCHIVE", "port": 4244}},
        "routing": {"secret": SECRET},
    }


def outbox(rf: RadflowProcess) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{rf.db_path}?mode=ro", uri=True, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM outbox ORDER BY id")]
    finally:
        conn.close()


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def write_study(folder: Path) -> tuple[list[Path], list[Path], list[Path]]:
    study, series = dicomgen.generate_uid(), dicomgen.generate_uid()
    ct = []
    for i in range(1, CT_FILES + 1):
        ds = dicomgen.new_dataset("CT", seed=i, study_instance_uid=study,
                                  series_instance_uid=series, instance_number=i,
                                  patient_id="MRN-77", accession_number="ACC-77")
        ds.PatientName = "Beispiel^Anna"
        ds.StationName = "CTAWP00012"
        ds.InstitutionName = "Klinikum Nord"
        ds.add_new(0x00091010, "LO", "vendor private")
        ct.append(dicomgen.write_part10(ds, folder / f"ct{i}.dcm"))
    phantom = dicomgen.new_dataset("CT", patient_id="PHANTOM-1")
    mr = dicomgen.new_dataset("MR", patient_id="MRN-77")
    return (ct, [dicomgen.write_part10(phantom, folder / "phantom.dcm")],
            [dicomgen.write_part10(mr, folder / "mr.dcm")])


def test_a_study_becomes_exactly_the_deliveries_the_routes_say(radflow: RadflowFactory,
                                                               dicom_dir: Path) -> None:
    rf = radflow(config(), start=False)
    routes_dir = Path(rf.config["routing"]["routes_dir"])
    (routes_dir / "10-site.yaml").write_text(ROUTES, encoding="utf-8")
    rf.start()
    ct, phantom, mr = write_study(dicom_dir)
    result = storescu(rf, ct + phantom + mr, "-aet", "CT_1")
    assert store_responses(result.stdout) == ["Success"] * (CT_FILES + 2), result.stdout[-2000:]

    # pacs and archive rows come at once; the study's ai rows after its quiet period
    expected = Counter({"pacs": CT_FILES, "ai": CT_FILES, "archive": 1})
    wait_for(lambda: Counter(r["destination"] for r in outbox(rf)) == expected)
    time.sleep(0.5)
    rows = outbox(rf)
    assert Counter(r["destination"] for r in rows) == expected  # nothing more arrived
    journal = {r["id"]: r for r in rf.journal_rows()}
    by_uid = {r["sop_instance_uid"]: r for r in journal.values()}
    outcomes = Counter(r["routing_outcome"] for r in journal.values())
    assert outcomes == Counter({"routed": CT_FILES + 1, "discarded": 1})
    assert all(r["routed_at"] for r in journal.values())

    originals = {str(read_dataset(p.read_bytes()).SOPInstanceUID): p for p in ct + mr}
    ai_uids = set()
    for row in rows:
        payload = json.loads(row["payload"])
        obj = payload["object"]
        # Nothing listens on the destinations' ports: each row waits for its next attempt, or
        # is leased by the dispatcher for that attempt at the moment it is read.
        assert row["state"] in ("pending", "leased") and row["kind"] == "dicom"
        assert payload["destination"]["name"] == row["destination"]
        assert journal[row["source_id"]]["sop_instance_uid"] == obj["sop_instance_uid"]
        spooled = (rf.spool_dir / obj["spool_path"]).read_bytes()
        assert len(spooled) == obj["size_bytes"]
        sent = read_dataset(morph_bytes(spooled, steps_from_json(payload["morph"]),
                                        MorphKeys(SECRET)))
        original = read_dataset(originals[obj["sop_instance_uid"]].read_bytes())
        if row["destination"] == "archive":
            assert payload["route"] == "rest-to-archive" and payload["morph"] == []
            assert original.Modality == "MR"
            assert sent.SOPInstanceUID == original.SOPInstanceUID
        elif row["destination"] == "pacs":
            assert payload["trigger"] == {"level": "instance"}
            check_pacs(original, sent)
        else:
            assert payload["trigger"]["level"] == "study"
            assert payload["trigger"]["reason"] == "quiet"
            assert payload["trigger"]["instances"] == CT_FILES
            assert payload["secret_fingerprint"] == MorphKeys(SECRET).fingerprint
            check_research(original, sent)
            ai_uids.add(str(sent.SOPInstanceUID))
            # the same frozen steps give the same bytes on a retry
            again = morph_bytes(spooled, steps_from_json(payload["morph"]), MorphKeys(SECRET))
            assert again == morph_bytes(spooled, steps_from_json(payload["morph"]),
                                        MorphKeys(SECRET))
    assert len(ai_uids) == CT_FILES
    assert "PHANTOM-1" not in {r["patient_id"] for r in journal.values()
                               if r["routing_outcome"] != "discarded"}
    assert by_uid  # the journal still holds the discarded phantom: kept, not dropped
    assert rf.metric("radflow_routing_entries_total", outcome="discarded") == 1


def check_pacs(original: Dataset, sent: Dataset) -> None:
    for elem in original:
        if elem.keyword in ("InstitutionName", "StationName"):
            continue
        assert sent[elem.tag].value == elem.value, elem.keyword
    assert sent.InstitutionName == "Radflow General"
    assert sent.StationName == "CT_1"
    assert len(sent) == len(original)


def check_research(original: Dataset, sent: Dataset) -> None:
    assert sent.PatientIdentityRemoved == "YES"
    assert sent.LongitudinalTemporalInformationModified == "MODIFIED"
    assert sent.PatientID == sent.PatientName and sent.PatientID not in ("", "MRN-77")
    assert sent.PatientBirthDate == ""
    assert sent.AccessionNumber == ""
    assert sent.StudyDate != original.StudyDate and len(sent.StudyDate) == 8
    assert sent.StudyTime == original.StudyTime
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        assert sent[keyword].value != original[keyword].value
    assert sent.file_meta.MediaStorageSOPInstanceUID == sent.SOPInstanceUID
    assert sent.SOPClassUID == original.SOPClassUID
    assert sent.InstitutionName == "ANONYMOUS"  # X/Z/D: a dummy keeps any IOD valid
    assert not [e for e in sent if e.tag.is_private]
    assert sent.ClinicalTrialProtocolID == "AI-1"
    assert sent.PixelData == original.PixelData
    assert sent.Rows == original.Rows and sent.Modality == "CT"


def test_invalid_route_edit_keeps_the_old_rules_and_is_reported(radflow: RadflowFactory,
                                                                 dicom_dir: Path) -> None:
    rf = radflow(config(), start=False)
    routes_dir = Path(rf.config["routing"]["routes_dir"])
    route_file = routes_dir / "10-site.yaml"
    route_file.write_text(ROUTES, encoding="utf-8")
    rf.start()
    route_file.write_text(ROUTES + "  - name: broken\n    match: {attr: [unclosed\n",
                          encoding="utf-8")
    found = rf.wait_for_event("rules.reload_failed", timeout=15)
    assert found["errors"] >= 1 and "invalid YAML" in found["problems"][0]
    status, body = rf.readyz()
    assert status == 200, body
    assert "last reload failed, previous rules kept" in body["checks"]["rules"]["detail"]
    assert rf.metric("radflow_rules_last_reload_ok") == 0
    assert rf.metric("radflow_rules_reloads_total", outcome="failed") >= 1

    # the old rules still route
    ct, _, _ = write_study(dicom_dir)
    assert store_responses(storescu(rf, ct[:1], "-aet", "CT_1").stdout) == ["Success"]
    wait_for(lambda: any(r["destination"] == "pacs" for r in outbox(rf)))

    # a valid edit is picked up (the poller) and reported healthy again
    route_file.write_text(ROUTES.replace("ct-to-pacs", "ct-to-pacs-v2"), encoding="utf-8")
    rf.wait_for_event("rules.reloaded", timeout=15)
    wait_for(lambda: "last reload failed" not in rf.readyz()[1]["checks"]["rules"]["detail"])
    status, body = rf.http_get("/api/v1/routes")
    names = [r["name"] for r in json.loads(body)["routes"]]
    assert "ct-to-pacs-v2" in names

    # dry run over HTTP: reasons, destinations and the morph diff; nothing written
    before = len(outbox(rf))
    request = urllib.request.Request(
        f"http://{HOST}:{rf.http_port}/api/v1/routes/test?calling_ae=CT_1",
        data=ct[1].read_bytes(), headers={"Content-Type": "application/dicom"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as resp:
        run = json.loads(resp.read())
    assert run["outcome"] == "routed"
    assert {d["route"] for d in run["decisions"]} == {"ct-to-pacs-v2", "ct-study-to-ai"}
    pacs = next(m for m in run["morphs"] if m["route"] == "ct-to-pacs-v2")
    assert {"path": "StationName", "kind": "changed", "before": "CTAWP00012",
            "after": "CT_1"} in pacs["changes"]
    assert len(outbox(rf)) == before
    rf.stop()
