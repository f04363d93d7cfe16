"""Classification tables: a peer's answer → delivered, transient or permanent.

One table per protocol, each a pure function the senders call and the unit tests read row by
row. Statuses are named as the standards name them (PS3.4 Annex B/F, PS3.7 Annex C, PS3.18
10.5, RFC 9110, HL7 table 0008). It must not raise, send, or decide attempts (the dispatcher
does that); it only says which side of the line an answer falls on.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from engine.status import AckCode, DimseStatus


class Verdict(StrEnum):
    DELIVERED = "delivered"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


# --- DIMSE (C-STORE, N-CREATE, N-SET) --------------------------------------------------------
# Warnings mean the SCP kept what was sent: PS3.4 B.2.3 (0xB000 coercion, 0xB006 elements
# discarded, 0xB007 does not match SOP class) and PS3.7 C.4 for N-services (0x0107 attribute
# list error, 0x0116 attribute value out of range).
_WARNINGS = frozenset({0xB000, 0xB006, 0xB007, 0x0107, 0x0116})
# PS3.7 C: failures that depend on the moment, not on the object.
_DIMSE_TRANSIENT = frozenset({
    int(DimseStatus.PROCESSING_FAILURE),  # 0x0110: the SCP's own trouble (disk, database)
    0x0213,  # Resource limitation (PS3.7 C.5)
    0x0210,  # Duplicate invocation (a Message ID reused while the first is in flight)
})
# PS3.7 C / PS3.4: this object (or this request) will never be accepted as it is.
_DIMSE_PERMANENT = frozenset({
    int(DimseStatus.DUPLICATE_SOP_INSTANCE),  # 0x0111: a different object has this UID there
    int(DimseStatus.NO_SUCH_OBJECT_INSTANCE),  # 0x0112 (N-SET of an unknown MPPS)
    int(DimseStatus.INVALID_ATTRIBUTE_VALUE),  # 0x0106
    int(DimseStatus.MISSING_ATTRIBUTE),  # 0x0120
    0x0105,  # No such attribute
    0x0117,  # Invalid object instance
    0x0118,  # No such SOP Class
    0x0119,  # Class-instance conflict
    0x0121,  # Missing attribute value
    0x0122,  # Refused: SOP Class not supported
    0x0124,  # Refused: not authorized
    0xC310,  # MPPS: the step is no longer IN PROGRESS (PS3.4 F.7.2.2)
    0x0211,  # Unrecognized operation
})


def classify_dimse(status: int) -> Verdict:
    """One DIMSE response status (C-STORE, N-CREATE, N-SET)."""
    if status == DimseStatus.SUCCESS or status in _WARNINGS or 0xB000 <= status <= 0xBFFF:
        return Verdict.DELIVERED
    if (status & 0xFF00) == 0xA700 or status in _DIMSE_TRANSIENT:
        return Verdict.TRANSIENT  # Out of Resources (PS3.4 B.2.3): "try again later"
    if (status & 0xFF00) == 0xA900 or (status & 0xF000) == 0xC000 or status in _DIMSE_PERMANENT:
        return Verdict.PERMANENT  # does not match SOP class / cannot understand (0xCxxx)
    # Anything else is unknown here: retrying is the side that cannot lose an instance, and
    # the row still dead-letters once its policy is used up.
    return Verdict.TRANSIENT


# --- HTTP (STOW-RS, FHIR) -------------------------------------------------------------------
_HTTP_TRANSIENT = frozenset({
    408,  # Request Timeout
    425,  # Too Early
    429,  # Too Many Requests
    401, 403, 407,  # credentials: a site configuration problem, fixed by an operator;
    # dead-lettering every row meanwhile would turn one typo into a manual clean-up
})


def classify_http(status: int, *, api: Literal["stow", "fhir"] = "stow") -> Verdict:
    """One HTTP response status. STOW-RS 202 (some instances failed) is DELIVERED here: the
    sender reads the response's FailedSOPSequence to classify each instance."""
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status >= 500 or status in _HTTP_TRANSIENT:
        return Verdict.TRANSIENT
    if api == "fhir" and status == 409:
        # FHIR: 409 is a version conflict with a concurrent update (RFC 9110 15.5.10); a
        # later PUT of the same resource succeeds.
        return Verdict.TRANSIENT
    # 400, 404, 409 (STOW: the instance conflicts with a stored one), 412, 413, 415, 422 ...
    return Verdict.PERMANENT


# STOW-RS FailedSOPSequence FailureReason (PS3.18 10.5.3.2 / PS3.4 B.2.3): Out of Resources
# and Processing failure are worth retrying for that instance; the others are permanent.
def classify_stow_failure(reason: int) -> Verdict:
    return classify_dimse(reason) if reason else Verdict.TRANSIENT


# --- HL7 v2 ACK (MSA-1) ---------------------------------------------------------------------
HL7Policy = Literal["dead_letter", "retry"]


def classify_hl7_ack(code: str, *, on_application_error: HL7Policy = "dead_letter",
                     on_application_reject: HL7Policy = "retry") -> Verdict:
    """MSA-1: AA/CA delivered; AR/CR (the receiver cannot take it now) and AE/CE (it refused
    the content) follow the destination's policy; anything else is transient."""
    code = code.strip().upper()
    if code in (AckCode.APPLICATION_ACCEPT, AckCode.COMMIT_ACCEPT):
        return Verdict.DELIVERED
    if code in (AckCode.APPLICATION_ERROR, AckCode.COMMIT_ERROR):
        return Verdict.PERMANENT if on_application_error == "dead_letter" else Verdict.TRANSIENT
    if code in (AckCode.APPLICATION_REJECT, AckCode.COMMIT_REJECT):
        return Verdict.PERMANENT if on_application_reject == "dead_letter" else Verdict.TRANSIENT
    return Verdict.TRANSIENT
