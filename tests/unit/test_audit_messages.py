"""DICOM audit messages: every event radflow records passes the audit schema's structure
checks, peer-supplied text cannot break a record's single line, and the syslog framing is the
one RFC 5424 / RFC 5425 describe."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from engine.audit import records as r
from engine.dicom import audit as m
from tests.helpers.audit_schema import check, parse_syslog

SRC = m.AuditSource("RADFLOW-1", "HOSP")
T = datetime(2026, 12, 4, 1, 2, 3, 456000, tzinfo=UTC)


def every_record() -> list[m.AuditMessage]:
    return [
        r.application_activity(SRC, T, True, "node1", "radflow"),
        r.application_activity(SRC, T, False, "node1", "radflow"),
        r.association(SRC, T, calling_ae="CT01", called_ae="RADFLOW", peer_host="10.0.0.5",
                      node="node1", accepted=True),
        r.association(SRC, T, calling_ae="EVIL", called_ae="RADFLOW", peer_host="10.0.0.6",
                      node="node1", accepted=False, reason="calling_ae_not_allowed"),
        r.security_alert(SRC, T, m.NODE_AUTHENTICATION, description="TLS handshake failed",
                         who=r.peer("", "10.0.0.7", None), node="node1", subject="dicom"),
        r.instances_received(SRC, T, calling_ae="CT01", called_ae="RADFLOW",
                             peer_host="10.0.0.5", node="node1", study_uid="1.2.3",
                             sop_classes={"1.2.840.10008.5.1.4.1.1.2": 3}, patient_id="P1"),
        r.instances_sent(SRC, T, export=True, destination="ai", address="https://ai/studies",
                         local_ae=None, node="node1", study_uid="1.2.3",
                         sop_classes={"1.2.840.10008.5.1.4.1.1.2": 3}, patient_id="P1",
                         outcome=m.SUCCESS),
        r.instances_sent(SRC, T, export=False, destination="PACS", address="pacs:104",
                         local_ae="RADFLOW", node="node1", study_uid="1.2.3",
                         sop_classes={"1.2.840.10008.5.1.4.1.1.2": 3}, patient_id=None,
                         outcome=m.SUCCESS),
        r.order_record(SRC, T, action="C", sending_application="RIS", peer_host="10.0.0.9",
                       node="node1", patient_id="P1", accession="ACC1",
                       message_type="ORM^O01", control_id="MSG1"),
        r.procedure_record(SRC, T, action="U", calling_ae="CT01", node="node1",
                           study_uid="1.2.3", accession="ACC1", patient_id="P1",
                           step_uid="1.2.4", status="COMPLETED"),
        r.query(SRC, T, calling_ae="CT01", called_ae="RADFLOW", peer_host="10.0.0.5",
                node="node1", sop_class_uid=r.MWL_FIND_SOP_CLASS, identifier=b"\x08\x00",
                transfer_syntax_uid="1.2.840.10008.1.2.1"),
        *(r.retrieve(SRC, T, begin=begin, move=move, calling_ae="PACS2", called_ae="RADFLOW",
                     peer_host="10.0.0.8", node="node1", destination_ae="AI",
                     destination_host="10.0.0.9", study_uid="1.2.3",
                     sop_classes={"1.2.840.10008.5.1.4.1.1.2": 3}, patient_id="P1")
          for begin in (True, False) for move in (True, False)),
        r.api_change(SRC, T, user="api-token", peer_host="127.0.0.1", node="node1",
                     method="POST", path="/api/v1/queues/pacs/retry", status=200),
    ]


def test_every_record_has_the_schema_structure() -> None:
    for message in every_record():
        root = check(message.xml())
        source = root.find("AuditSourceIdentification")
        assert source is not None
        assert source.get("AuditSourceID") == "RADFLOW-1"
        assert source.get("AuditEnterpriseSiteID") == "HOSP"
        assert root[0].get("EventDateTime") == "2026-12-04T01:02:03.456Z"


def test_query_carries_the_identifier_as_received() -> None:
    message = r.query(SRC, T, calling_ae="CT01", called_ae="RADFLOW", peer_host="h", node="n",
                      sop_class_uid=r.MWL_FIND_SOP_CLASS, identifier=b"\x10\x00\x20\x00ID",
                      transfer_syntax_uid="1.2.840.10008.1.2")
    query = check(message.xml()).find("ParticipantObjectIdentification/ParticipantObjectQuery")
    assert query is not None and base64.b64decode(query.text or "") == b"\x10\x00\x20\x00ID"


def test_retrieve_names_source_destination_and_requestor() -> None:
    move = check(r.retrieve(SRC, T, begin=False, move=True, calling_ae="PACS2",
                            called_ae="RADFLOW", peer_host="10.0.0.8", node="n",
                            destination_ae="AI", destination_host="10.0.0.9",
                            study_uid="1.2.3", sop_classes={"1.2.840.10008.5.1.4.1.1.2": 2},
                            patient_id="P1", outcome=m.MINOR_FAILURE,
                            outcome_description="cancelled: 1 of 2 instances sent").xml())
    ident = move[0]
    assert ident.find("EventID").get("csd-code") == "110104"  # type: ignore[union-attr]
    assert ident.get("EventActionCode") == "R" and ident.get("EventOutcomeIndicator") == "4"
    people = {(p.get("UserID"), p.get("UserIsRequestor"),
               p.find("RoleIDCode").get("csd-code") if p.find("RoleIDCode") is not None
               else None) for p in move.findall("ActiveParticipant")}
    assert people == {("RADFLOW", "false", "110153"), ("AI", "false", "110152"),
                      ("PACS2", "true", None)}
    get = check(r.retrieve(SRC, T, begin=True, move=False, calling_ae="WS1",
                           called_ae="RADFLOW", peer_host="10.0.0.8", node="n",
                           destination_ae="WS1", destination_host="10.0.0.8",
                           study_uid="1.2.3", sop_classes={"1.2.840.10008.5.1.4.1.1.2": 2},
                           patient_id=None).xml())
    assert get[0].find("EventID").get("csd-code") == "110102"  # type: ignore[union-attr]
    assert get[0].get("EventActionCode") == "E"
    requestors = [p.get("UserID") for p in get.findall("ActiveParticipant")
                  if p.get("UserIsRequestor") == "true"]
    assert requestors == ["WS1"]


def test_peer_text_cannot_forge_a_line_or_markup() -> None:
    evil = "CT01\n<85>1 2026 forged\r</AuditMessage>"
    xml = r.association(SRC, T, calling_ae=evil, called_ae="RADFLOW", peer_host="h",
                        node="n", accepted=False, reason=evil).xml()
    assert "\n" not in xml and "\r" not in xml
    root = check(xml)
    assert root.find("ActiveParticipant").get("UserID").startswith("CT01 ")  # type: ignore[union-attr]


def test_syslog_framing() -> None:
    xml = every_record()[0].xml()
    message = m.syslog_message(xml, T, "node 1", "radflow", "42")
    assert message.startswith(b"<85>1 2026-12-04T01:02:03.456Z node1 radflow 42 IHE+RFC-3881 - "
                              b"\xef\xbb\xbf<AuditMessage>")
    received = parse_syslog(message)
    assert received.pri == 85 and received.msgid == "IHE+RFC-3881"
    framed = m.octet_counted(message)
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(rest) and rest == message
