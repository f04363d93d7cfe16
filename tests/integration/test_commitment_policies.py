"""Storage Commitment policy per route and per calling AE, against a running radflow.

Five modalities (pynetdicom, each its own AE title) store with storescu and ask for
commitment on the association they keep open. The routes pick the policy by calling AE: an
``on_archive`` route to a PACS that takes the images (DCMTK storescp), an ``on_archive`` route
to an archive that is switched off, an ``on_receipt`` route to the same switched-off archive,
and a route that says nothing (the site's ``on_receipt``); one modality's own
``commitment.modalities`` policy overrides the route its images match. What is checked is each
modality's N-EVENT-REPORT.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, evt

from tests.helpers.dicomgen import Instance, write_instance
from tests.helpers.peers import Storescp
from tests.helpers.proc import HOST, RadflowProcess, free_port, storescu
from tests.integration.test_storage_commitment import PUSH, Reports, _action, _refs, _request

pytestmark = pytest.mark.dcmtk

ROUTES = """\
version: 1
routes:
  - name: archived-by-pacs
    match: {context: calling_ae, in: [CT_OK]}
    destinations: [pacs]
    commitment: on_archive
  - name: archived-offline
    match: {context: calling_ae, in: [CT_DOWN, CT_OWN]}
    destinations: [offline]
    commitment: {policy: on_archive, archive: [offline]}
  - name: kept-on-receipt
    match: {context: calling_ae, in: [MR_1]}
    destinations: [offline]
    commitment: on_receipt
  - name: says-nothing
    match: {context: calling_ae, in: [DX_1]}
    destinations: [offline]
"""


class Site:
    def __init__(self, rf: RadflowProcess, pacs: Storescp) -> None:
        self.rf = rf
        self.pacs = pacs


@pytest.fixture
def site(tmp_path: Path, storage_overrides: dict[str, Any]) -> Iterator[Site]:
    pacs = Storescp(tmp_path / "pacs", ae_title="PACS").start()
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "10-commitment.yaml").write_text(ROUTES)
    rf = RadflowProcess(tmp_path / "radflow", {
        "storage": storage_overrides,
        "routing": {"routes_dir": str(routes), "reload_poll_seconds": 0},
        "destinations": {
            "pacs": {"type": "dimse", "ae_title": "PACS", "host": HOST, "port": pacs.port},
            # nothing listens there: its deliveries never confirm anything
            "offline": {"type": "dimse", "ae_title": "OFFLINE", "host": HOST,
                        "port": free_port(), "timeout": 2}},
        "delivery": {"poll_interval": 0.1},
        "commitment": {"policy": "on_receipt", "archive_check_seconds": 0.2,
                       "archive_timeout_minutes": 0.1,
                       "modalities": [{"ae_title": "CT_OWN", "policy": "on_receipt"}]}})
    rf.start()
    try:
        yield Site(rf, pacs)
    finally:
        rf.close()
        pacs.stop()


def _ask(site: Site, tmp_path: Path, ae_title: str) -> tuple[list[Instance], int, Any]:
    """Store two instances as ``ae_title``, ask for their commitment, wait for the report."""
    insts = [write_instance(tmp_path / ae_title, seed=i) for i in range(2)]
    assert storescu(site.rf, [i.path for i in insts], "-aet", ae_title).returncode == 0
    reports = Reports()
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(PUSH)
    assoc = ae.associate(HOST, site.rf.port, ae_title=site.rf.ae_title,
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT,
                                        reports.handler)])
    assert assoc.is_established
    try:
        assert _action(assoc, _request(insts)) == 0x0000
        (event_type, info), = reports.wait(timeout=90)
        # released once radflow has the answer to its report, not while it is on its way
        site.rf.wait_for_event("egress.commitment.reported", calling_ae=ae_title, timeout=30)
    finally:
        assoc.release()
    return insts, event_type, info


def test_each_route_and_calling_ae_gets_its_policy(site: Site, tmp_path: Path) -> None:
    # on_archive route: committed only once the PACS took them
    insts, event_type, info = _ask(site, tmp_path, "CT_OK")
    assert event_type == 1
    assert set(_refs(info, "ReferencedSOPSequence")) == {i.sop_instance_uid for i in insts}
    assert site.pacs.wait_for({i.sop_instance_uid for i in insts}) == set()

    # on_archive route whose archive is down: a failure report once the time is up
    insts, event_type, info = _ask(site, tmp_path, "CT_DOWN")
    assert event_type == 2
    assert _refs(info, "FailedSOPSequence") == {i.sop_instance_uid: 0x0110 for i in insts}

    # the same route, but the calling AE's own policy (on_receipt) comes first
    insts, event_type, info = _ask(site, tmp_path, "CT_OWN")
    assert event_type == 1
    assert set(_refs(info, "ReferencedSOPSequence")) == {i.sop_instance_uid for i in insts}

    # on_receipt route, and a route that says nothing (the site's on_receipt): committed
    # although their destination never got them
    for ae_title in ("MR_1", "DX_1"):
        insts, event_type, info = _ask(site, tmp_path, ae_title)
        assert event_type == 1, ae_title
        assert set(_refs(info, "ReferencedSOPSequence")) == {i.sop_instance_uid
                                                            for i in insts}

    policies = {e["calling_ae"]: e["policy"]
                for e in site.rf.events("ingress.dimse.commitment.requested")}
    assert policies == {"CT_OK": "by_route", "CT_DOWN": "by_route", "CT_OWN": "on_receipt",
                        "MR_1": "by_route", "DX_1": "by_route"}
