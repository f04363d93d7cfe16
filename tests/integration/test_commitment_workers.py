"""Storage Commitment with several workers on one PostgreSQL (``engine.workers: 2``): the
N-ACTION reaches one worker, the report is queued in the shared outbox where either worker's
dispatcher may claim it, and the modality still gets it on the association it kept open, as
its first message after the N-ACTION response, without failed attempts; an ``on_archive``
request is decided from the database whichever worker delivered the instances."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, evt

from tests.helpers import pg
from tests.helpers.dicomgen import write_instance
from tests.helpers.peers import Storescp
from tests.helpers.proc import HOST, RadflowProcess, storescu
from tests.integration.test_storage_commitment import PUSH, Reports, _action, _refs, _request

pytestmark = pytest.mark.dcmtk

ROUTES = """\
version: 1
routes:
  - name: to-pacs
    match: {context: calling_ae, in: [CT_ARCH]}
    destinations: [pacs]
    commitment: on_archive
"""


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[tuple[RadflowProcess, Storescp]]:
    if (why := pg.unavailable()) is not None:
        pytest.skip(why)
    pacs = Storescp(tmp_path / "pacs", ae_title="PACS").start()
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "10.yaml").write_text(ROUTES)
    with pg.schema() as schema:
        rf = RadflowProcess(tmp_path / "radflow", {
            "storage": pg.radflow_storage(schema), "engine": {"workers": 2},
            "routing": {"routes_dir": str(routes), "reload_poll_seconds": 0},
            "destinations": {"pacs": {"type": "dimse", "ae_title": "PACS", "host": HOST,
                                      "port": pacs.port}},
            "delivery": {"poll_interval": 0.1},
            # a report handed back to the worker holding the association says so at debug
            "logging": {"level": "debug"},
            # no address for the modalities: the report can only go on their association
            "commitment": {"archive_check_seconds": 0.2,
                           "retry": {"initial_delay": 0.2, "max_delay": 1.0, "jitter": 0.0}}})
        rf.start()
        try:
            yield rf, pacs
        finally:
            rf.close()
            pacs.stop()


def _ask(rf: RadflowProcess, folder: Path, ae_title: str) -> tuple[int, Any, list[str]]:
    insts = [write_instance(folder, seed=i) for i in range(2)]
    assert storescu(rf, [i.path for i in insts], "-aet", ae_title).returncode == 0
    reports = Reports()
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(PUSH)
    assoc = ae.associate(HOST, rf.port, ae_title=rf.ae_title,
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)])
    assert assoc.is_established
    try:
        request = _request(insts)
        assert _action(assoc, request) == 0x0000
        (event_type, info), = reports.wait(timeout=60)
        rf.wait_for_event("egress.commitment.reported", transaction_uid=request.TransactionUID,
                          timeout=30)
    finally:
        assoc.release()
    return event_type, info, [i.sop_instance_uid for i in insts]


def test_reports_reach_the_association_kept_open_whichever_worker_claims_them(
        workers: tuple[RadflowProcess, Storescp], tmp_path: Path) -> None:
    rf, _pacs = workers
    # Short associations: the kernel spreads them over both workers by a hash of the
    # connection, so at least eight, and more until both workers have taken some.
    for n in range(32):
        event_type, info, uids = _ask(rf, tmp_path / f"r{n}", "CT_1")
        assert event_type == 1
        assert set(_refs(info, "ReferencedSOPSequence")) == set(uids)
        asked = {e.get("worker") for e in rf.events("ingress.dimse.commitment.requested")}
        if n >= 7 and asked == {0, 1}:
            break
    assert asked == {0, 1}, asked  # both workers took N-ACTIONs
    reported = rf.events("egress.commitment.reported")
    assert len(reported) == n + 1 and {e["association"] for e in reported} == {"kept_open"}
    assert not rf.events("egress.commitment.failed")  # no attempt was wasted


def test_on_archive_is_decided_from_the_database(
        workers: tuple[RadflowProcess, Storescp], tmp_path: Path) -> None:
    rf, pacs = workers
    for n in range(4):
        event_type, _info, uids = _ask(rf, tmp_path / f"a{n}", "CT_ARCH")
        assert event_type == 1
        assert pacs.wait_for(set(uids)) == set()
    requested = rf.events("ingress.dimse.commitment.requested", calling_ae="CT_ARCH")
    assert {e["policy"] for e in requested} == {"by_route"}
    # decided once (at the N-ACTION when the PACS was already done, else by one worker's
    # watch), reported once
    decided = [e["transaction_uid"] for e in rf.events("commitment.archive_decided")]
    assert len(decided) == len(set(decided))
    reported = [e["transaction_uid"] for e in rf.events("egress.commitment.reported")
                if e["calling_ae"] == "CT_ARCH"]
    assert sorted(reported) == sorted({e["transaction_uid"] for e in requested})
