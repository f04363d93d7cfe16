"""The DICOM audit message schema's required structure (PS3.15 A.5.1), as a checker for tests,
and a reader of the syslog lines an audit repository received.

``check(xml)`` raises AssertionError naming the first rule a message breaks: element order
(EventIdentification, ActiveParticipant+, AuditSourceIdentification,
ParticipantObjectIdentification*), required attributes and their value sets, coded values
(csd-code, codeSystemName, originalText), base64 where the schema says base64Binary, and the
per-event content PS3.15 A.5.3 requires of the events radflow sends.
"""

from __future__ import annotations

import base64
import binascii
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime

ACTIONS = {"C", "R", "U", "D", "E"}
OUTCOMES = {"0", "4", "8", "12"}
_SYSLOG = re.compile(rb"^<(\d+)>1 (\S+) (\S+) (\S+) (\S+) (\S+) (-|\[.*?\]) (.*)$", re.S)


@dataclass
class Received:
    pri: int
    timestamp: str
    hostname: str
    app_name: str
    msgid: str
    xml: str
    root: ET.Element

    @property
    def event_id(self) -> str:
        node = self.root.find("EventIdentification/EventID")
        assert node is not None
        return node.get("csd-code", "")

    @property
    def event_types(self) -> list[str]:
        return [e.get("csd-code", "") for e in self.root.findall(
            "EventIdentification/EventTypeCode")]

    @property
    def action(self) -> str:
        return self.root.find("EventIdentification").get("EventActionCode", "")  # type: ignore[union-attr]

    @property
    def outcome(self) -> str:
        return self.root.find("EventIdentification").get(  # type: ignore[union-attr]
            "EventOutcomeIndicator", "")

    def objects(self, id_type: str) -> list[ET.Element]:
        return [o for o in self.root.findall("ParticipantObjectIdentification")
                if o.find("ParticipantObjectIDTypeCode").get("csd-code") == id_type]  # type: ignore[union-attr]

    def participants(self) -> list[ET.Element]:
        return self.root.findall("ActiveParticipant")


def parse_syslog(line: bytes) -> Received:
    """One RFC 5424 line as the repository stored it; the XML checked with :func:`check`."""
    match = _SYSLOG.match(line)
    assert match, f"not an RFC 5424 message: {line[:120]!r}"
    pri, ts, host, app, _procid, msgid, _sd, msg = match.groups()
    if msg.startswith(b"\xef\xbb\xbf"):
        msg = msg[3:]
    xml = msg.decode("utf-8")
    root = check(xml)
    return Received(int(pri), ts.decode(), host.decode(), app.decode(), msgid.decode(), xml,
                    root)


def _coded(element: ET.Element | None, where: str) -> None:
    assert element is not None, f"{where}: missing"
    for attr in ("csd-code", "codeSystemName", "originalText"):
        assert element.get(attr), f"{where}: no {attr}"


def _base64(value: str | None, where: str) -> bytes:
    assert value is not None, f"{where}: missing"
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise AssertionError(f"{where}: not base64: {exc}") from exc


def check(xml: str) -> ET.Element:
    root = ET.fromstring(xml)
    assert root.tag == "AuditMessage", root.tag
    tags = [c.tag for c in root]
    pattern = re.compile(r"^E(A)+S(P)*$")
    code = "".join({"EventIdentification": "E", "ActiveParticipant": "A",
                    "AuditSourceIdentification": "S",
                    "ParticipantObjectIdentification": "P"}.get(t, "?") for t in tags)
    assert pattern.match(code), f"element order {tags}"

    ident = root[0]
    assert ident.get("EventActionCode") in ACTIONS, ident.attrib
    assert ident.get("EventOutcomeIndicator") in OUTCOMES, ident.attrib
    when = ident.get("EventDateTime", "")
    datetime.fromisoformat(when.replace("Z", "+00:00"))
    assert when.endswith("Z") or re.search(r"[+-]\d\d:\d\d$", when), when
    kids = [c.tag for c in ident]
    assert kids and kids[0] == "EventID", kids
    assert set(kids) <= {"EventID", "EventTypeCode", "EventOutcomeDescription"}, kids
    for child in ident:
        if child.tag != "EventOutcomeDescription":
            _coded(child, child.tag)

    for p in root.findall("ActiveParticipant"):
        assert p.get("UserID"), "ActiveParticipant without UserID"
        assert p.get("UserIsRequestor") in ("true", "false"), p.attrib
        if p.get("NetworkAccessPointID"):
            assert p.get("NetworkAccessPointTypeCode") in {"1", "2", "3", "4", "5"}, p.attrib
        for role in p.findall("RoleIDCode"):
            _coded(role, "RoleIDCode")
        assert {c.tag for c in p} <= {"RoleIDCode", "MediaIdentifier"}, [c.tag for c in p]
    assert any(p.get("UserIsRequestor") == "true" for p in root.findall("ActiveParticipant")) \
        or root[0].find("EventID").get("csd-code") == "110100", "no requestor"  # type: ignore[union-attr]

    source = root.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID"), "AuditSourceID"
    for t in source.findall("AuditSourceTypeCode"):
        _coded(t, "AuditSourceTypeCode")

    order = ["ParticipantObjectIDTypeCode", "ParticipantObjectName", "ParticipantObjectQuery",
             "ParticipantObjectDetail", "ParticipantObjectDescription", "SOPClass"]
    for obj in root.findall("ParticipantObjectIdentification"):
        assert obj.get("ParticipantObjectID"), "ParticipantObjectID"
        assert obj.get("ParticipantObjectTypeCode") in {"1", "2", "3", "4"}, obj.attrib
        role = obj.get("ParticipantObjectTypeCodeRole")
        assert role is None or 1 <= int(role) <= 24, obj.attrib
        kids = [c.tag for c in obj]
        assert kids and kids[0] == "ParticipantObjectIDTypeCode", kids
        _coded(obj[0], "ParticipantObjectIDTypeCode")
        positions = [order.index(k) for k in kids]
        assert positions == sorted(positions), f"ParticipantObjectIdentification order {kids}"
        assert not ("ParticipantObjectName" in kids and "ParticipantObjectQuery" in kids)
        for q in obj.findall("ParticipantObjectQuery"):
            _base64(q.text, "ParticipantObjectQuery")
        for d in obj.findall("ParticipantObjectDetail"):
            assert d.get("type"), "ParticipantObjectDetail type"
            _base64(d.get("value"), "ParticipantObjectDetail value")
        for sop in obj.findall("SOPClass"):
            assert sop.get("UID") and int(sop.get("NumberOfInstances", "x")) >= 0, sop.attrib
    _check_event(root)
    return root


def _objects(root: ET.Element, id_type: str) -> list[ET.Element]:
    return [o for o in root.findall("ParticipantObjectIdentification")
            if o[0].get("csd-code") == id_type]


def _check_event(root: ET.Element) -> None:
    """What PS3.15 A.5.3 asks of each event radflow sends."""
    event = root[0].find("EventID").get("csd-code")  # type: ignore[union-attr]
    types = [t.get("csd-code") for t in root[0].findall("EventTypeCode")]
    roles = [r.get("csd-code") for r in root.findall("ActiveParticipant/RoleIDCode")]
    if event == "110100":  # Application Activity
        assert types and types[0] in {"110120", "110121"}, types
        assert "110150" in roles, roles
    elif event in {"110102", "110104", "110106"}:  # Begin Transferring, Transferred, Export
        assert {"110153"} <= set(roles) and ({"110152", "110154"} & set(roles)), roles
        studies = _objects(root, "110180")
        assert studies, "no Study participant object"
        assert all(s.findall("SOPClass") for s in studies), "Study without SOPClass"
    elif event == "110112":  # Query
        queries = [o for o in root.findall("ParticipantObjectIdentification")
                   if o.find("ParticipantObjectQuery") is not None]
        assert len(queries) == 1 and queries[0][0].get("csd-code") == "110181", \
            "Query needs one SOP Class object with its query"
    elif event == "110113":  # Security Alert
        assert types, "Security Alert without a type"
    elif event == "110114":  # User Authentication
        assert types and types[0] in {"110122", "110123"}, types
    elif event in {"110109", "110111"}:  # Order Record, Procedure Record
        assert root.findall("ParticipantObjectIdentification"), "no participant object"
