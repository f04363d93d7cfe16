"""The IHE ATNA audit trail against a real audit repository: a private rsyslogd (Debian's
rsyslog with rsyslog-gnutls) receiving syslog over mutual TLS (RFC 5425) and over UDP
(RFC 5426). Real peers make the events: DCMTK echoscu/storescu/findscu and storescp, the hl7
package's MLLP client, pynetdicom as the MPPS SCU, HTTP to the admin API. Every message the
repository received is checked against the DICOM audit message schema's structure; a
repository that is down loses nothing (records wait in the outbox across a restart, /readyz and
/metrics show it) and gets everything once it is up.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hl7.client import MLLPClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

from engine.reactor import EventDrivenAE
from tests.helpers import dicomgen
from tests.helpers.audit_schema import Received, parse_syslog
from tests.helpers.certs import have_openssl, make_cert
from tests.helpers.peers import Storescp, have_storescp
from tests.helpers.proc import (
    HOST,
    RadflowFactory,
    RadflowProcess,
    dcmtk,
    echoscu,
    free_port,
    store_responses,
    storescu,
)
from tests.helpers.rsyslog import Rsyslog, have_rsyslog

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not have_rsyslog() or not have_openssl(),
                       reason="rsyslog with rsyslog-gnutls, and openssl, are needed"),
]

DAY = "20261204"
ROUTES = """\
version: 1
routes:
  - name: ct-to-pacs
    match: {attr: Modality, equals: CT}
    destinations: [pacs, ai]
"""

APP, INSTANCES, EXPORT, ORDER, PROCEDURE, QUERY, SECURITY, USER_AUTH = (
    "110100", "110104", "110106", "110109", "110111", "110112", "110113", "110114")


class Site:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.ca = make_cert(folder, "audit-ca")
        self.repository = make_cert(folder, "repository", ca=self.ca)
        self.radflow = make_cert(folder, "radflow", ca=self.ca)
        self.rsyslog = Rsyslog(folder / "rsyslog", self.ca, self.repository)

    def audit(self, transport: str = "tls", port: int | None = None,
              **extra: Any) -> dict[str, Any]:
        repo: dict[str, Any] = {"host": HOST, "transport": transport}
        if transport == "tls":
            repo["port"] = port or self.rsyslog.tls_port
            repo["tls"] = {"ca_file": str(self.ca[0]), "cert_file": str(self.radflow[0]),
                           "key_file": str(self.radflow[1])}
        else:
            repo["port"] = port or self.rsyslog.udp_port
        return {"repository": repo, "enterprise_site_id": "HOSP-1", "source_id": "RADFLOW-A",
                "flush_seconds": 0.2, "study_quiet_seconds": 1.0, **extra}


@pytest.fixture
def site(tmp_path: Path) -> Any:
    s = Site(tmp_path / "site")
    yield s
    s.rsyslog.stop()


def received(rsyslog: Rsyslog, want: dict[str, int], timeout: float = 30.0,
             actions: dict[str, str] | None = None) -> list[Received]:
    """Every message so far, once the repository holds at least ``want`` of each event (and,
    for the events ``actions`` names, one with that EventActionCode)."""
    def enough(lines: list[bytes]) -> bool:
        got = [parse_syslog(line) for line in lines]
        have = Counter(m.event_id for m in got)
        acted = {(m.event_id, m.action) for m in got}
        return all(have[k] >= n for k, n in want.items()) and \
            all((k, a) in acted for k, a in (actions or {}).items())
    return [parse_syslog(line) for line in rsyslog.wait_for(enough, timeout)]


def http(rf: RadflowProcess, method: str, path: str, token: str | None = None,
         body: bytes | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(f"http://{HOST}:{rf.http_port}{path}", data=body,
                                 method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def order(control: str, patient_id: str, accession: str) -> str:
    return "\r".join([
        f"MSH|^~\\&|RIS|HOSP|RADFLOW|RAD|{DAY}120000||ORM^O01^ORM_O01|{control}|P|2.5.1",
        f"PID|1||{patient_id}^^^HOSP^MR||Doe^Jane||19700101|F",
        f"ORC|NW|O-{accession}|F-{accession}||||^^^{DAY}083000",
        f"OBR|1|O-{accession}|F-{accession}|PROC^Procedure^L||||||||||||||"
        f"{accession}|RP-{accession}|||||CT",
    ]) + "\r"


def mpps(rf: RadflowProcess, patient_id: str) -> str:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ssa = Dataset()
    ssa.StudyInstanceUID = generate_uid()
    ssa.ReferencedStudySequence = []
    ssa.AccessionNumber = ""
    ssa.RequestedProcedureID = ""
    ssa.RequestedProcedureDescription = ""
    ssa.ScheduledProcedureStepID = ""
    ssa.ScheduledProcedureStepDescription = ""
    ssa.ScheduledProtocolCodeSequence = []
    ds.ScheduledStepAttributesSequence = [ssa]
    ds.PatientName = "Doe^Jane"
    ds.PatientID = patient_id
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "CT01"
    ds.PerformedProcedureStepStartDate = DAY
    ds.PerformedProcedureStepStartTime = "0900"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.PerformedSeriesSequence = []
    ae = EventDrivenAE(ae_title="CT01")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate(HOST, rf.port, ae_title=rf.ae_title)
    assert assoc.is_established
    uid = generate_uid()
    try:
        status, _ = assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
        assert int(status.Status) == 0x0000
    finally:
        assoc.release()
    return uid


@pytest.mark.skipif(not have_storescp(), reason="DCMTK storescp not installed")
def test_every_event_reaches_the_repository_over_mutual_tls(
        radflow: RadflowFactory, site: Site, tmp_path: Path, dicom_dir: Path) -> None:
    site.rsyslog.start()
    pacs = Storescp(tmp_path / "pacs", ae_title="PACS").start()
    ai = Storescp(tmp_path / "ai", ae_title="AI").start()
    audit_file = tmp_path / "audit" / "radflow-audit.log"
    try:
        rf = radflow({
            "audit": site.audit(file=str(audit_file), export_destinations=["ai"]),
            "destinations": {
                "pacs": {"type": "dimse", "ae_title": "PACS", "host": HOST, "port": pacs.port},
                "ai": {"type": "dimse", "ae_title": "AI", "host": HOST, "port": ai.port}},
            "http": {"token": "s3cret"},
        }, start=False)
        Path(rf.config["routing"]["routes_dir"], "10.yaml").write_text(ROUTES)
        rf.start()

        assert echoscu(rf).returncode == 0
        refused = echoscu(rf, called_ae="NOT_RADFLOW")
        assert refused.returncode != 0
        study = dicomgen.generate_uid()
        files = [dicomgen.write_part10(
            dicomgen.new_dataset("CT", seed=i, study_instance_uid=study,
                                 patient_id="MRN-AUD", instance_number=i),
            dicom_dir / f"ct{i}.dcm") for i in range(1, 4)]
        result = storescu(rf, files, "-aet", "CT01")
        assert store_responses(result.stdout) == ["Success"] * 3
        hl7_port = int(rf.config["hl7"]["listeners"][0]["port"])
        with MLLPClient(HOST, hl7_port) as client:
            ack = client.send_message(order("AUD-1", "MRN-ORD", "ACC-AUD"))
        assert b"MSA|AA|AUD-1" in ack
        out = tmp_path / "find"
        out.mkdir()
        find = dcmtk("findscu", "-W", "-aet", "CT01", "-aec", rf.ae_title, "-X", "-od",
                     str(out), "-k", "PatientID=MRN-ORD", "-k", "AccessionNumber",
                     HOST, str(rf.port))
        assert find.returncode == 0, find.stdout
        step_uid = mpps(rf, "MRN-ORD")
        assert http(rf, "POST", "/api/v1/routes/reload", token="wrong") == 401
        assert http(rf, "POST", "/api/v1/routes/reload", token="s3cret") == 200

        got = received(site.rsyslog, {APP: 1, USER_AUTH: 3, SECURITY: 2, INSTANCES: 2,
                                      EXPORT: 1, ORDER: 1, QUERY: 1, PROCEDURE: 1},
                       actions={INSTANCES: "C"})
        for msg in got:  # each one passed the schema checks in parse_syslog
            assert msg.pri == 85 and msg.msgid == "IHE+RFC-3881" and msg.app_name == "radflow"
            source = msg.root.find("AuditSourceIdentification")
            assert source is not None and source.get("AuditSourceID") == "RADFLOW-A"
            assert source.get("AuditEnterpriseSiteID") == "HOSP-1"
        by_event: dict[str, list[Received]] = {}
        for msg in got:
            by_event.setdefault(msg.event_id, []).append(msg)

        assert by_event[APP][0].event_types == ["110120"]
        logins = by_event[USER_AUTH]
        assert {m.outcome for m in logins} == {"0", "4"}  # accepted and refused
        alerts = [m.xml for m in by_event[SECURITY]]
        assert any("association refused" in x and "NOT_RADFLOW" in x for x in alerts)
        assert any("login refused" in x for x in alerts)
        assert any("POST /api/v1/routes/reload" in x and "api-token" in x for x in alerts)

        # one record per association and study, not per instance
        stored = [m for m in by_event[INSTANCES] if m.action == "C"]
        assert len(stored) == 1
        study_obj = stored[0].objects("110180")[0]
        assert study_obj.get("ParticipantObjectID") == study
        sop = study_obj.find("SOPClass")
        assert sop is not None and sop.get("NumberOfInstances") == "3"
        assert stored[0].objects("2")[0].get("ParticipantObjectID") == "MRN-AUD"
        sent = [m for m in by_event[INSTANCES] if m.action == "R"]
        assert sent and all(m.objects("110180")[0].get("ParticipantObjectID") == study
                            for m in sent)
        assert 'UserID="PACS"' in sent[0].xml
        exported = by_event[EXPORT][0]
        assert 'UserID="AI"' in exported.xml and exported.action == "R"

        order_rec = by_event[ORDER][0]
        assert order_rec.action == "C"
        assert order_rec.objects("2")[0].get("ParticipantObjectID") == "MRN-ORD"
        query = by_event[QUERY][0]
        identifier = query.root.find(
            "ParticipantObjectIdentification/ParticipantObjectQuery")
        assert identifier is not None and identifier.text
        assert b"MRN-ORD" in base64.b64decode(identifier.text)
        proc = by_event[PROCEDURE][0]
        details = {d.get("type"): base64.b64decode(d.get("value") or "")
                   for d in proc.root.iter("ParticipantObjectDetail")}
        assert proc.action == "C"
        assert details["Performed Procedure Step SOP Instance UID"] == step_uid.encode()
        assert details["Status"] == b"IN PROGRESS"

        # the local file holds the same records, one line each
        lines = [parse_syslog(line) for line in audit_file.read_bytes().splitlines()]
        in_file = Counter(m.event_id for m in lines)
        assert all(in_file[event] >= n for event, n in Counter(m.event_id for m in got).items())
        assert rf.metric("radflow_audit_records_total", event="Query") >= 1

        rf.stop()
        stopped = received(site.rsyslog, {APP: 2})
        assert ["110121"] in [m.event_types for m in stopped if m.event_id == APP]
    finally:
        pacs.stop()
        ai.stop()


def wait_readyz(rf: RadflowProcess, done: Any, timeout: float = 30.0) -> tuple[int, Any]:
    deadline = time.monotonic() + timeout
    status, body = rf.readyz()
    while not done(status, body) and time.monotonic() < deadline:
        time.sleep(0.2)
        status, body = rf.readyz()
    return status, body


def test_a_repository_that_is_down_loses_nothing(radflow: RadflowFactory, site: Site) -> None:
    rf = radflow({"audit": site.audit(max_queue_age_minutes=0.01)})
    for _ in range(3):
        assert echoscu(rf).returncode == 0

    # Down: records wait in the outbox; /readyz says so but intake goes on (by default)...
    status, body = wait_readyz(rf, lambda s, b: "down?" in b["checks"]["audit"]["detail"])
    assert status == 200, body
    assert "audit repository down?" in body["checks"]["audit"]["detail"]
    assert rf.metric("radflow_outbox_oldest_age_seconds", destination="audit") > 0
    assert echoscu(rf).returncode == 0

    # ... unless the site says no audit, no work. The records survive the restart.
    rf.stop()
    rf.env["RADFLOW_AUDIT__READINESS"] = "fail"
    rf.start(wait_ready=False)
    status, body = wait_readyz(rf, lambda s, b: s == 503)
    assert status == 503, body
    assert "audit repository down?" in body["checks"]["audit"]["detail"]

    # Up: everything arrives, and radflow is ready again.
    site.rsyslog.start()
    got = received(site.rsyslog, {APP: 3, USER_AUTH: 4}, timeout=60)
    # Retried records keep their backoff, so arrival order is not event order; the
    # repository orders by EventDateTime.
    assert Counter(m.event_types[0] for m in got if m.event_id == APP) >= \
        Counter({"110120": 2, "110121": 1})
    status, body = wait_readyz(rf, lambda s, b: s == 200)
    assert status == 200, body
    assert body["checks"]["audit"]["detail"] == "every audit record delivered"


def test_udp_transport(radflow: RadflowFactory, site: Site) -> None:
    site.rsyslog.start()
    rf = radflow({"audit": site.audit(transport="udp")})
    assert echoscu(rf).returncode == 0
    got = received(site.rsyslog, {APP: 1, USER_AUTH: 1})
    assert all(m.msgid == "IHE+RFC-3881" for m in got)


def test_audit_destination_names_are_reserved(radflow: RadflowFactory) -> None:
    rf = radflow({"destinations": {"audit": {"type": "dimse", "ae_title": "X", "host": HOST,
                                             "port": free_port()}}}, start=False)
    check = subprocess.run([sys.executable, "-m", "engine", "check-config", "--config",
                            str(rf.config_path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 1
    assert "reserved for the audit trail" in check.stdout + check.stderr
