"""The audit trail of Query/Retrieve against a running radflow: DCMTK findscu, movescu and
getscu ask, and the records radflow wrote (its local audit file, the same RFC 5424 lines the
repository gets) are checked against the audit message schema's structure and PS3.15 A.5.3:
Query with the identifier as received, Begin Transferring DICOM Instances and DICOM Instances
Transferred per study with radflow as source and the Move Destination (C-MOVE) or the
requestor (C-GET) as destination."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.helpers.audit_schema import Received, parse_syslog
from tests.helpers.dicomgen import write_instance
from tests.helpers.peers import Storescp
from tests.helpers.proc import HOST, RadflowProcess, dcmtk, storescu

pytestmark = pytest.mark.dcmtk

QUERY, BEGIN, TRANSFERRED = "110112", "110102", "110104"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
SOURCE, DESTINATION = "110153", "110152"


def _records(path: Path, enough: Callable[[list[Received]], bool],
             timeout: float = 30.0) -> list[Received]:
    deadline = time.monotonic() + timeout
    while True:
        got = [parse_syslog(line) for line in path.read_bytes().splitlines()] \
            if path.exists() else []
        if enough(got):
            return got
        assert time.monotonic() < deadline, [(m.event_id, m.action) for m in got]
        time.sleep(0.2)


def _roles(msg: Received) -> dict[str, tuple[str, str]]:
    """Role code (or "other") -> (UserID, UserIsRequestor)."""
    out = {}
    for p in msg.participants():
        role = p.find("RoleIDCode")
        out[role.get("csd-code", "") if role is not None else "other"] = (
            p.get("UserID", ""), p.get("UserIsRequestor", ""))
    return out


def test_find_move_and_get_are_audited(tmp_path: Path) -> None:
    sink = Storescp(tmp_path / "sink", ae_title="SINK").start()
    audit_file = tmp_path / "audit" / "radflow-audit.log"
    rf = RadflowProcess(tmp_path / "radflow", {
        "audit": {"file": str(audit_file), "flush_seconds": 0.2, "study_quiet_seconds": 0.5},
        "query_retrieve": {"move_destinations": [
            {"ae_title": "SINK", "host": HOST, "port": sink.port}]}})
    rf.start()
    try:
        study = generate_uid()
        insts = [write_instance(tmp_path / "f", patient_id="P-AUD", study_instance_uid=study,
                                seed=i, instance_number=i) for i in range(1, 4)]
        assert storescu(rf, [i.path for i in insts]).returncode == 0
        deadline = time.monotonic() + 30
        while sum(int(e.get("indexed", 0)) for e in rf.events("qr.indexed")) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.1)

        find = dcmtk("findscu", "-S", "-aet", "WS1", "-aec", rf.ae_title, "-k",
                     "QueryRetrieveLevel=STUDY", "-k", "PatientID=P-AUD", "-k",
                     "StudyInstanceUID", HOST, str(rf.port), timeout=60)
        assert find.returncode == 0, find.stdout
        move = dcmtk("movescu", "-S", "-aet", "PACS2", "-aec", rf.ae_title, "-aem", "SINK",
                     "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                     HOST, str(rf.port), timeout=60)
        assert move.returncode == 0, move.stdout
        assert sink.wait_for({i.sop_instance_uid for i in insts}) == set()
        out = tmp_path / "get"
        out.mkdir()
        get = dcmtk("getscu", "-S", "-aet", "WS1", "-aec", rf.ae_title, "-od", str(out),
                    "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                    HOST, str(rf.port), timeout=60)
        assert get.returncode == 0, get.stdout

        def enough(got: list[Received]) -> bool:
            ids = [m.event_id for m in got]
            return QUERY in ids and ids.count(BEGIN) >= 2 and \
                sum(1 for m in got if m.event_id == TRANSFERRED and m.action == "R") >= 2
        got = _records(audit_file, enough)  # each passed the schema checks in parse_syslog
    finally:
        rf.close()
        sink.stop()

    query = next(m for m in got if m.event_id == QUERY)
    sop_class = query.objects("110181")[0]
    assert sop_class.get("ParticipantObjectID") == STUDY_ROOT_FIND
    identifier = sop_class.find("ParticipantObjectQuery")
    assert identifier is not None and b"P-AUD" in base64.b64decode(identifier.text or "")
    assert _roles(query)["110153"] == ("WS1", "true")

    begins = [m for m in got if m.event_id == BEGIN]
    sent = [m for m in got if m.event_id == TRANSFERRED and m.action == "R"]
    for msg in begins + sent:
        assert msg.outcome == "0"
        study_obj = msg.objects("110180")[0]
        assert study_obj.get("ParticipantObjectID") == study
        assert study_obj.find("SOPClass").get("NumberOfInstances") == "3"  # type: ignore[union-attr]
        assert msg.objects("2")[0].get("ParticipantObjectID") == "P-AUD"
        assert _roles(msg)[SOURCE] == (rf.ae_title, "false")
    assert {m.action for m in begins} == {"E"}
    # C-MOVE: the Move Destination receives, the Move SCU asked
    moved = next(m for m in sent if _roles(m)[DESTINATION][0] == "SINK")
    assert _roles(moved)[DESTINATION] == ("SINK", "false")
    assert _roles(moved)["other"] == ("PACS2", "true")
    # C-GET: the requestor receives what it asked for
    fetched = next(m for m in sent if _roles(m)[DESTINATION][0] == "WS1")
    assert _roles(fetched)[DESTINATION] == ("WS1", "true")
    assert "other" not in _roles(fetched)
