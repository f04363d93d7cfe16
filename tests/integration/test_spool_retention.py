"""Retention against a running radflow: with ``storage.retention_days`` set, instances whose
routing is done and that nothing waits for leave the spool and the journal at the next pass (one
runs at start), while one with a delivery still pending stays; with
``storage.journal_retention_days`` set, old HL7 messages leave the journal the same way."""

from __future__ import annotations

import time
from pathlib import Path

from tests.helpers import dicomgen
from tests.helpers.proc import HOST, RadflowFactory, free_port, store_responses, storescu

ROUTES = """\
version: 1
routes:
  - name: mr-to-pacs
    match: {attr: Modality, equals: MR}
    destinations: [pacs]
"""


def test_old_routed_instances_leave_and_pending_ones_stay(radflow: RadflowFactory,
                                                          tmp_path: Path) -> None:
    # ~0.9 s: everything stored before the restart is "old" by then
    rf = radflow({"storage": {"retention_days": 0.00001},
                  "destinations": {"pacs": {"type": "dimse", "ae_title": "PACS", "host": HOST,
                                            "port": free_port()}}}, start=False)
    Path(rf.config["routing"]["routes_dir"], "10-site.yaml").write_text(ROUTES)
    rf.start()
    files = [dicomgen.write_part10(dicomgen.new_dataset("CT"), tmp_path / f"ct{i}.dcm")
             for i in range(3)]
    files.append(dicomgen.write_part10(dicomgen.new_dataset("MR"), tmp_path / "mr.dcm"))
    result = storescu(rf, files)
    assert store_responses(result.stdout) == ["Success"] * 4
    deadline = time.monotonic() + 15
    while any(r["routed_at"] is None for r in rf.journal_rows()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(rf.spool_objects()) == 4
    time.sleep(1.0)
    rf.restart()  # a retention pass runs at start
    deadline = time.monotonic() + 15
    while len(rf.journal_rows()) > 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    rows = rf.journal_rows()
    # The three CTs were unmatched (routed, nothing to deliver): gone. The MR still waits for
    # its PACS, which is down: kept, with its file.
    assert [r["modality"] for r in rows] == ["MR"]
    assert [p.name for p in rf.spool_objects()] == [Path(rows[0]["spool_path"]).name]
    assert rf.events("durable.spool.purged", instances=3)


def test_old_hl7_messages_leave_the_journal(radflow: RadflowFactory) -> None:
    """``storage.journal_retention_days``: an order routed long enough ago (no routes here:
    routed as unmatched) and a rejected message leave the journal at the pass run at start."""
    from tests.integration.test_hl7_ingress import msa, order, send

    rf = radflow({"storage": {"journal_retention_days": 0.00001}})
    assert msa(send(rf, order("KEEP0001")))[0] == "AA"
    assert msa(send(rf, order("BAD00001", pid="")))[0] == "AE"
    assert len(rf.hl7_rows()) == 2
    deadline = time.monotonic() + 15
    while any(r["ack_code"] == "AA" and r["routed_at"] is None for r in rf.hl7_rows()) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    rf.restart()  # a retention pass runs at start
    deadline = time.monotonic() + 15
    while rf.hl7_rows() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rf.hl7_rows() == []
    assert rf.events("durable.journal.purged", hl7_messages=2)
