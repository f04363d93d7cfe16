"""DICOM audit messages (PS3.15 A.5, the RFC 3881 lineage) and their syslog form (RFC 5424).

Pure: builds XML text from facts and frames it for syslog; no I/O, no clock of its own (every
builder takes the event's time), no store. Element and attribute names and their order follow
the DICOM audit message schema (PS3.15 A.5.1): ``EventIdentification``, one or more
``ActiveParticipant``, ``AuditSourceIdentification``, then ``ParticipantObjectIdentification``s.
Codes are the DICOM ones (``DCM``) and RFC 3881's; their meanings are written beside them in
``originalText`` so a repository without the code tables still shows them. Hand-written with
``xml.etree`` because no maintained Python library builds DICOM audit messages.
"""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

#: RFC 5424 PRI of audit messages: facility 10 (security/authorization), severity 5 (notice)
SYSLOG_PRI = 10 * 8 + 5
#: RFC 5424 MSGID IHE ATNA uses for these messages
SYSLOG_MSGID = "IHE+RFC-3881"
_BOM = "\ufeff"

# --- codes (PS3.16 CID 400-405, RFC 3881) -----------------------------------------------------
Code = tuple[str, str, str]  # (code, coding scheme, meaning)

APPLICATION_ACTIVITY: Code = ("110100", "DCM", "Application Activity")
BEGIN_TRANSFERRING: Code = ("110102", "DCM", "Begin Transferring DICOM Instances")
INSTANCES_TRANSFERRED: Code = ("110104", "DCM", "DICOM Instances Transferred")
EXPORT: Code = ("110106", "DCM", "Export")
ORDER_RECORD: Code = ("110109", "DCM", "Order Record")
PROCEDURE_RECORD: Code = ("110111", "DCM", "Procedure Record")
QUERY: Code = ("110112", "DCM", "Query")
SECURITY_ALERT: Code = ("110113", "DCM", "Security Alert")
USER_AUTHENTICATION: Code = ("110114", "DCM", "User Authentication")

APPLICATION_START: Code = ("110120", "DCM", "Application Start")
APPLICATION_STOP: Code = ("110121", "DCM", "Application Stop")
LOGIN: Code = ("110122", "DCM", "Login")
NODE_AUTHENTICATION: Code = ("110126", "DCM", "Node Authentication")
SOFTWARE_CONFIGURATION: Code = ("110131", "DCM", "Software Configuration")
SECURITY_CONFIGURATION: Code = ("110129", "DCM", "Security Configuration")
USE_OF_RESTRICTED_FUNCTION: Code = ("110132", "DCM", "Use of Restricted Function")

APPLICATION_ROLE: Code = ("110150", "DCM", "Application")
APPLICATION_LAUNCHER: Code = ("110151", "DCM", "Application Launcher")
DESTINATION_ROLE: Code = ("110152", "DCM", "Destination Role ID")
SOURCE_ROLE: Code = ("110153", "DCM", "Source Role ID")
DESTINATION_MEDIA: Code = ("110154", "DCM", "Destination Media")

STUDY_INSTANCE_UID: Code = ("110180", "DCM", "Study Instance UID")
SOP_CLASS_UID: Code = ("110181", "DCM", "SOP Class UID")
NODE_ID: Code = ("110182", "DCM", "Node ID")
PATIENT_NUMBER: Code = ("2", "RFC-3881", "Patient Number")
USER_IDENTIFIER: Code = ("11", "RFC-3881", "User Identifier")
URI: Code = ("12", "RFC-3881", "URI")

#: AuditSourceTypeCode 4: application server process
AUDIT_SOURCE_TYPE: Code = ("4", "DCM", "Application Server Process")

#: EventOutcomeIndicator values
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = "0", "4", "8", "12"

# Text nodes: the schema allows any text, but the local file keeps one message per line and a
# peer-supplied value must never forge a second one.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\r\n]")


def _text(value: object) -> str:
    return _CONTROL.sub(" ", str(value))


@dataclass(frozen=True)
class AuditSource:
    """Who writes the audit trail: ``AuditSourceIdentification``."""

    source_id: str
    enterprise_site_id: str = ""


@dataclass(frozen=True)
class Participant:
    """One ``ActiveParticipant``: a person, a process or a node taking part."""

    user_id: str
    requestor: bool
    role: Code | None = None
    network_access_point: str | None = None
    alternative_user_id: str | None = None
    user_name: str | None = None


@dataclass(frozen=True)
class ParticipantObject:
    """One ``ParticipantObjectIdentification``: a patient, a study, a query, a node."""

    object_id: str
    type_code: str  # 1 person, 2 system object, 3 organisation, 4 other
    role: str  # 1 patient, 3 report, 4 domain resource, 13 security resource, 24 query
    id_type: Code
    name: str | None = None
    query: bytes | None = None
    details: Sequence[tuple[str, str]] = ()  # (type, value); values are base64-encoded here
    description: str | None = None
    sop_classes: Sequence[tuple[str, int]] = ()  # (SOP Class UID, number of instances)
    lifecycle: str | None = None  # ParticipantObjectDataLifeCycle


@dataclass(frozen=True)
class AuditMessage:
    """A whole message; :meth:`xml` writes it."""

    event_id: Code
    action: str  # C create, R read, U update, D delete, E execute
    outcome: str
    time: datetime
    participants: Sequence[Participant]
    objects: Sequence[ParticipantObject] = ()
    event_types: Sequence[Code] = ()
    outcome_description: str | None = None
    source: AuditSource = field(default_factory=lambda: AuditSource("radflow"))

    @property
    def name(self) -> str:
        """The event's name, for metrics and logs (e.g. ``Query``)."""
        return self.event_id[2]

    def xml(self) -> str:
        root = ET.Element("AuditMessage")
        ident = ET.SubElement(root, "EventIdentification", {
            "EventActionCode": self.action,
            "EventDateTime": _iso(self.time),
            "EventOutcomeIndicator": self.outcome,
        })
        _code(ident, "EventID", self.event_id)
        for event_type in self.event_types:
            _code(ident, "EventTypeCode", event_type)
        if self.outcome_description:
            ET.SubElement(ident, "EventOutcomeDescription").text = _text(
                self.outcome_description)
        for p in self.participants:
            attrs = {"UserID": _text(p.user_id), "UserIsRequestor": str(p.requestor).lower()}
            if p.alternative_user_id:
                attrs["AlternativeUserID"] = _text(p.alternative_user_id)
            if p.user_name:
                attrs["UserName"] = _text(p.user_name)
            if p.network_access_point:
                attrs["NetworkAccessPointID"] = _text(p.network_access_point)
                attrs["NetworkAccessPointTypeCode"] = (
                    "2" if re.fullmatch(r"[0-9.:a-fA-F]+", p.network_access_point) else "1")
            element = ET.SubElement(root, "ActiveParticipant", attrs)
            if p.role is not None:
                _code(element, "RoleIDCode", p.role)
        source_attrs = {"AuditSourceID": _text(self.source.source_id)}
        if self.source.enterprise_site_id:
            source_attrs["AuditEnterpriseSiteID"] = _text(self.source.enterprise_site_id)
        source = ET.SubElement(root, "AuditSourceIdentification", source_attrs)
        _code(source, "AuditSourceTypeCode", AUDIT_SOURCE_TYPE)
        for obj in self.objects:
            attrs = {"ParticipantObjectID": _text(obj.object_id),
                     "ParticipantObjectTypeCode": obj.type_code,
                     "ParticipantObjectTypeCodeRole": obj.role}
            if obj.lifecycle:
                attrs["ParticipantObjectDataLifeCycle"] = obj.lifecycle
            element = ET.SubElement(root, "ParticipantObjectIdentification", attrs)
            _code(element, "ParticipantObjectIDTypeCode", obj.id_type)
            if obj.name is not None:
                ET.SubElement(element, "ParticipantObjectName").text = _text(obj.name)
            elif obj.query is not None:
                ET.SubElement(element, "ParticipantObjectQuery").text = (
                    base64.b64encode(obj.query).decode("ascii"))
            for detail_type, value in obj.details:
                ET.SubElement(element, "ParticipantObjectDetail", {
                    "type": _text(detail_type),
                    "value": base64.b64encode(value.encode()).decode("ascii")})
            if obj.description:
                ET.SubElement(element, "ParticipantObjectDescription").text = _text(
                    obj.description)
            for uid, count in obj.sop_classes:
                ET.SubElement(element, "SOPClass",
                              {"UID": _text(uid), "NumberOfInstances": str(count)})
        return ET.tostring(root, encoding="unicode")


def _code(parent: ET.Element, tag: str, code: Code) -> None:
    ET.SubElement(parent, tag, {"csd-code": code[0], "codeSystemName": code[1],
                                "originalText": code[2]})


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _header_field(value: str, limit: int) -> str:
    """RFC 5424 header fields are printable US-ASCII without spaces; ``-`` when empty."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def syslog_message(xml: str, time: datetime, hostname: str, app_name: str,
                   procid: str = "-") -> bytes:
    """One RFC 5424 message carrying ``xml`` (UTF-8 with its BOM, as RFC 5424 MSG-UTF8 says)."""
    header = (f"<{SYSLOG_PRI}>1 {_iso(time)} {_header_field(hostname, 255)} "
              f"{_header_field(app_name, 48)} {_header_field(procid, 128)} {SYSLOG_MSGID} -")
    return f"{header} {_BOM}{xml}".encode()


def octet_counted(message: bytes) -> bytes:
    """RFC 5425 (syslog over TLS) framing: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message
