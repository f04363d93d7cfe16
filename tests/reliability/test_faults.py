"""Group F cases that no other test covers the way RELIABILITY.md asks (the table in
``docs/reliability.md`` points to the rest), each judged by the one checker.

F9: the queue database is locked by another process while a modality and a RIS send: nothing is
acknowledged without its commit (C-STORE gets a failure status, HL7 no ``AA``), and once the
lock goes both are taken and delivered. F11: a peer that aborts in the middle of its fourth
instance: the three acknowledged before the abort are kept and delivered to every destination,
the partial one nowhere.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from hl7.client import MLLPClient
from pydicom.uid import ExplicitVRLittleEndian

from tests.helpers import dicomgen
from tests.helpers.invariant import assert_nothing_lost
from tests.helpers.proc import HOST, STORESCU_PROPOSE, store_responses, storescu
from tests.helpers.scu import association, send_partial_then_quit
from tests.reliability.test_bad_input import _order

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(150)]

ARGS = STORESCU_PROPOSE[ExplicitVRLittleEndian]


def _send_order(port: int, cid: str) -> str:
    with MLLPClient(HOST, port) as client:
        client.socket.settimeout(30)
        answer = client.send_message(_order(cid))
    text = answer.decode() if isinstance(answer, bytes) else answer
    return text.split("\r")[1].split("|")[1]


def test_f9_a_locked_database_acknowledges_nothing_then_recovers(fanout,
                                                                 dicom_dir: Path) -> None:
    rf, sinks = fanout(dicom={"store_timeout": 3}, hl7={"commit_timeout": 3})
    mllp_port = int(rf.config["hl7"]["listeners"][0]["port"])
    inst = dicomgen.write_instance(dicom_dir)

    lock = sqlite3.connect(rf.db_path, timeout=5, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        result = storescu(rf, inst.path, *ARGS)
        during_store = store_responses(result.stdout)
        during_order = _send_order(mllp_port, "LOCK1")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert during_store and "Success" not in during_store, result.stdout[-2000:]
    assert during_order not in ("AA", "CA"), during_order

    # The sender resends; now both are taken (a commit that landed late is an identical copy).
    deadline = time.monotonic() + 60
    while True:
        result = storescu(rf, inst.path, *ARGS)
        if store_responses(result.stdout) == ["Success"] or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert store_responses(result.stdout) == ["Success"], result.stdout[-2000:]
    assert _send_order(mllp_port, "LOCK1") in ("AA", "CA")
    for sink in sinks.values():
        sink.wait_for({inst.sop_instance_uid}, timeout=60)
    assert_nothing_lost({inst.sop_instance_uid},
                        {n: s.received() for n, s in sinks.items()}, rf=rf)
    status, body = rf.http_get("/api/v1/worklist?limit=100")
    assert status == 200 and body.count(b"ACCLOCK1") == 1


def test_f11_abort_mid_study_keeps_and_delivers_what_was_acknowledged(fanout,
                                                                      dicom_dir: Path) -> None:
    rf, sinks = fanout(dicom={"listeners": [{"max_pdu_size": 16384}]})
    done = dicomgen.write_series(dicom_dir / "series", 3)
    partial = dicomgen.write_instance(dicom_dir / "partial", size=256)
    acked = set()
    with association(rf, [(dicomgen.CT_IMAGE_STORAGE, [ExplicitVRLittleEndian])]) as assoc:
        for inst in done:
            if assoc.send_c_store(inst.path).Status == 0x0000:
                acked.add(inst.sop_instance_uid)
        send_partial_then_quit(assoc, partial.path, partial.sop_class_uid,
                               partial.sop_instance_uid, fragments=3, how="abort")
    assert acked == dicomgen.sop_instance_uids(done)
    rf.wait_for_event("ingress.dimse.association.aborted")
    for sink in sinks.values():
        assert sink.wait_for(acked) == set()
    time.sleep(1.0)  # anything else queued would be delivered by now
    assert_nothing_lost(acked, {n: s.received() for n, s in sinks.items()}, sent=acked, rf=rf)
    assert partial.sop_instance_uid not in {r["sop_instance_uid"] for r in rf.journal_rows()}
