"""Storage Commitment Push Model against a running radflow, with pynetdicom as the modality.

The modality stores with storescu, asks for commitment with N-ACTION, and either keeps its
association open (the report comes on it) or closes it (the report comes on a new association
to its configured address, also after radflow restarted in between). The answers checked are
what the modality's N-EVENT-REPORT handler received.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt

from tests.helpers.dicomgen import Instance, write_instance
from tests.helpers.proc import HOST, RadflowProcess, free_port, storescu

pytestmark = pytest.mark.dcmtk

PUSH = "1.2.840.10008.1.20.1"
PUSH_INSTANCE = "1.2.840.10008.1.20.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"


class Reports:
    """N-EVENT-REPORTs a modality received: (event type, Event Information)."""

    def __init__(self) -> None:
        self.got: list[tuple[int, Dataset]] = []
        self._cv = threading.Condition()

    def handler(self, event: Any) -> tuple[int, None]:
        info = event.event_information
        with self._cv:
            self.got.append((int(event.event_type), info))
            self._cv.notify_all()
        return 0x0000, None

    def wait(self, count: int = 1, timeout: float = 60.0) -> list[tuple[int, Dataset]]:
        deadline = time.monotonic() + timeout
        with self._cv:
            while len(self.got) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"only {len(self.got)} report(s) within {timeout} s"
                self._cv.wait(left)
            return list(self.got)


def _request(instances: list[Instance], extra_uid: str | None = None) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = generate_uid()
    items = []
    for inst in instances:
        item = Dataset()
        item.ReferencedSOPClassUID = inst.sop_class_uid
        item.ReferencedSOPInstanceUID = inst.sop_instance_uid
        items.append(item)
    if extra_uid is not None:
        item = Dataset()
        item.ReferencedSOPClassUID = CT
        item.ReferencedSOPInstanceUID = extra_uid
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def _stored(rf: RadflowProcess, tmp_path: Path, n: int = 2) -> list[Instance]:
    insts = [write_instance(tmp_path / "f", seed=i) for i in range(n)]
    assert storescu(rf, [i.path for i in insts]).returncode == 0
    return insts


def _modality(rf: RadflowProcess, reports: Reports | None = None) -> Any:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(PUSH)
    handlers = [(evt.EVT_N_EVENT_REPORT, reports.handler)] if reports else []
    assoc = ae.associate(HOST, rf.port, ae_title=rf.ae_title, evt_handlers=handlers)
    assert assoc.is_established
    return assoc


def _action(assoc: Any, request: Dataset) -> int:
    status, _reply = assoc.send_n_action(request, 1, PUSH, PUSH_INSTANCE)
    return int(status.Status)


def _refs(info: Dataset, keyword: str) -> dict[str, int | None]:
    return {str(i.ReferencedSOPInstanceUID): (int(i.FailureReason) if "FailureReason" in i
                                              else None)
            for i in info.get(keyword, [])}


class ModalityScp:
    """The modality's own listener, where reports on new associations arrive."""

    def __init__(self, port: int, reports: Reports) -> None:
        self.ae = AE(ae_title="MODALITY")
        self.ae.add_supported_context(PUSH, scu_role=True, scp_role=True)
        self.port = port
        self.reports = reports
        self.server: Any = None

    def start(self) -> ModalityScp:
        self.server = self.ae.start_server(
            (HOST, self.port), block=False,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self.reports.handler)])
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


@pytest.fixture
def modality_port() -> int:
    return free_port()


@pytest.fixture
def rf(tmp_path: Path, modality_port: int) -> Iterator[RadflowProcess]:
    radflow = RadflowProcess(tmp_path / "radflow", {"commitment": {
        "modalities": [{"ae_title": "MODALITY", "host": HOST, "port": modality_port}],
        "retry": {"initial_delay": 0.2, "max_delay": 1.0, "jitter": 0.0}}})
    radflow.start()
    yield radflow
    radflow.close()


def test_report_on_the_association_kept_open(rf: RadflowProcess, tmp_path: Path) -> None:
    insts = _stored(rf, tmp_path)
    reports = Reports()
    assoc = _modality(rf, reports)
    unknown = generate_uid()
    try:
        request = _request(insts, extra_uid=unknown)
        assert _action(assoc, request) == 0x0000
        (event_type, info), = reports.wait()
    finally:
        assoc.release()
    assert event_type == 2  # some failed
    assert info.TransactionUID == request.TransactionUID
    assert _refs(info, "ReferencedSOPSequence") == {i.sop_instance_uid: None for i in insts}
    assert _refs(info, "FailedSOPSequence") == {unknown: 0x0112}
    assert rf.events("egress.commitment.reported", association="kept_open")


def test_report_on_a_new_association(rf: RadflowProcess, tmp_path: Path,
                                     modality_port: int) -> None:
    insts = _stored(rf, tmp_path)
    reports = Reports()
    scp = ModalityScp(modality_port, reports).start()
    try:
        assoc = _modality(rf)
        request = _request(insts)
        assert _action(assoc, request) == 0x0000
        assoc.release()
        (event_type, info), = reports.wait()
    finally:
        scp.stop()
    assert event_type == 1  # all committed
    assert _refs(info, "ReferencedSOPSequence") == {i.sop_instance_uid: None for i in insts}
    assert "FailedSOPSequence" not in info
    assert rf.events("egress.commitment.reported", association="new")


def test_request_survives_a_restart_before_the_report(rf: RadflowProcess, tmp_path: Path,
                                                      modality_port: int) -> None:
    insts = _stored(rf, tmp_path)
    assoc = _modality(rf)
    request = _request(insts)
    assert _action(assoc, request) == 0x0000  # the modality's listener is not up yet
    assoc.release()
    rf.kill()
    rf.restart()
    reports = Reports()
    scp = ModalityScp(modality_port, reports).start()
    try:
        (event_type, info), = reports.wait()
    finally:
        scp.stop()
    assert event_type == 1
    assert info.TransactionUID == request.TransactionUID
    assert len(info.ReferencedSOPSequence) == 2


def test_same_transaction_twice_reports_once(rf: RadflowProcess, tmp_path: Path) -> None:
    insts = _stored(rf, tmp_path, 1)
    reports = Reports()
    assoc = _modality(rf, reports)
    try:
        request = _request(insts)
        assert _action(assoc, request) == 0x0000
        reports.wait()
        assert _action(assoc, request) == 0x0000
        assert rf.wait_for_event("ingress.dimse.commitment.requested", duplicate=True)
    finally:
        assoc.release()
    assert len(reports.got) == 1


def test_malformed_request_is_refused(rf: RadflowProcess) -> None:
    assoc = _modality(rf)
    try:
        empty = Dataset()
        empty.TransactionUID = generate_uid()
        assert _action(assoc, empty) == 0x0106
        no_uid = _request([], extra_uid=generate_uid())
        del no_uid.TransactionUID
        assert _action(assoc, no_uid) == 0x0106
    finally:
        assoc.release()
    assert rf.events("ingress.dimse.commitment.failed", reason="invalid_commitment_request")


def test_on_archive_failure_when_the_archive_never_confirms(tmp_path: Path) -> None:
    """An archive that takes the images but cannot answer commitment (DCMTK storescp) turns
    into a failure report after the configured time, never a silent success."""
    from tests.helpers.peers import Storescp

    sink = Storescp(tmp_path / "sink", ae_title="PACS").start()
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "10-all.yaml").write_text(
        "version: 1\nroutes:\n  - name: everything\n    destinations: [pacs]\n")
    rf = RadflowProcess(tmp_path / "radflow", {
        "routing": {"routes_dir": str(routes), "reload_poll_seconds": 0},
        "destinations": {"pacs": {"type": "dimse", "ae_title": "PACS", "host": HOST,
                                  "port": sink.port, "storage_commitment": True}},
        "delivery": {"poll_interval": 0.1},
        "commitment": {"policy": "on_archive", "archive_destinations": ["pacs"],
                       "archive_check_seconds": 0.2, "archive_timeout_minutes": 0.05}})
    rf.start()
    try:
        insts = _stored(rf, tmp_path, 1)
        reports = Reports()
        assoc = _modality(rf, reports)
        try:
            assert _action(assoc, _request(insts)) == 0x0000
            (event_type, info), = reports.wait(timeout=90)
        finally:
            assoc.release()
        assert sink.wait_for({insts[0].sop_instance_uid}) == set()  # delivered, unconfirmed
        assert event_type == 2
        assert _refs(info, "FailedSOPSequence") == {insts[0].sop_instance_uid: 0x0110}
        assert rf.events("commitment.archive_ask_failed", destination="pacs")
    finally:
        rf.close()
        sink.stop()
