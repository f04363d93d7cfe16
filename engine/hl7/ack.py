"""HL7 v2 acknowledgement messages (ACK) built from a parsed inbound message.

This module owns the ACK's wire form: MSH answering the sender (its delimiters, version,
processing id and character set echoed), MSA with the code in the acknowledgement mode the
sender asked for, and ERR segments with HL7 table 0357 codes and escaped texts. It must not
decide *which* code a message deserves (the listener does that from the durable commit and
``engine.status``), send anything, or log.

Mode rule: a message with MSH-15 (accept acknowledgement type) valued asks for enhanced mode,
and the answer radflow gives right after the durable commit is the accept (commit-level)
acknowledgement, so AA/AE/AR become CA/CE/CR. With MSH-15 empty, original mode: AA/AE/AR.
Either family may be passed; it is normalised to the message's mode. Application-level
acknowledgements of enhanced mode (MSH-16) are separate messages and not built here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Final

from engine.hl7.message import Hl7Message, escape
from engine.status import AckCode

__all__ = [
    "AckError",
    "Hl7ErrorCode",
    "ack_code_for",
    "ack_control_id",
    "ack_requested",
    "build_ack",
    "is_enhanced_mode",
]


class Hl7ErrorCode(IntEnum):
    """HL7 table 0357, message error condition codes (ERR-3)."""

    MESSAGE_ACCEPTED = 0
    SEGMENT_SEQUENCE_ERROR = 100
    REQUIRED_FIELD_MISSING = 101
    DATA_TYPE_ERROR = 102
    TABLE_VALUE_NOT_FOUND = 103
    UNSUPPORTED_MESSAGE_TYPE = 200
    UNSUPPORTED_EVENT_CODE = 201
    UNSUPPORTED_PROCESSING_ID = 202
    UNSUPPORTED_VERSION_ID = 203
    UNKNOWN_KEY_IDENTIFIER = 204
    DUPLICATE_KEY_IDENTIFIER = 205
    APPLICATION_RECORD_LOCKED = 206
    APPLICATION_INTERNAL_ERROR = 207

    @property
    def description(self) -> str:
        """The table's own wording, written into ERR-3.2."""
        return _ERROR_TEXTS[self]


# hl7apy ships the codes of table 0357 (the tests check ours against them) but not the texts.
_ERROR_TEXTS: Final[dict[Hl7ErrorCode, str]] = {
    Hl7ErrorCode.MESSAGE_ACCEPTED: "Message accepted",
    Hl7ErrorCode.SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    Hl7ErrorCode.REQUIRED_FIELD_MISSING: "Required field missing",
    Hl7ErrorCode.DATA_TYPE_ERROR: "Data type error",
    Hl7ErrorCode.TABLE_VALUE_NOT_FOUND: "Table value not found",
    Hl7ErrorCode.UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    Hl7ErrorCode.UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    Hl7ErrorCode.UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    Hl7ErrorCode.UNSUPPORTED_VERSION_ID: "Unsupported version id",
    Hl7ErrorCode.UNKNOWN_KEY_IDENTIFIER: "Unknown key identifier",
    Hl7ErrorCode.DUPLICATE_KEY_IDENTIFIER: "Duplicate key identifier",
    Hl7ErrorCode.APPLICATION_RECORD_LOCKED: "Application record locked",
    Hl7ErrorCode.APPLICATION_INTERNAL_ERROR: "Application internal error",
}


_SEVERITIES: Final = frozenset({"E", "W", "I"})  # HL7 table 0516


@dataclass(frozen=True, slots=True)
class AckError:
    """One ERR segment: where (segment, its occurrence, field, component), what and why.

    ``segment=""`` means no location (e.g. an unsupported message type with no single field).
    ``text`` is shown to users (ERR-8) and is HL7-escaped when written.
    """

    segment: str = ""
    sequence: int = 1
    field: int | None = None
    component: int | None = None
    code: Hl7ErrorCode = Hl7ErrorCode.APPLICATION_INTERNAL_ERROR
    text: str = ""
    severity: str = "E"

    def __post_init__(self) -> None:
        # Checked here so a bad ERR never reaches a peer; Hl7ErrorCode(int) rejects unknown codes.
        object.__setattr__(self, "code", Hl7ErrorCode(self.code))
        if self.severity not in _SEVERITIES:
            raise ValueError(f"ERR-4 severity must be E, W or I, not {self.severity!r}")
        if self.segment and (len(self.segment) != 3 or not self.segment.isalnum()):
            raise ValueError(f"bad segment id {self.segment!r}")


_TO_ENHANCED: Final = {
    AckCode.APPLICATION_ACCEPT: AckCode.COMMIT_ACCEPT,
    AckCode.APPLICATION_ERROR: AckCode.COMMIT_ERROR,
    AckCode.APPLICATION_REJECT: AckCode.COMMIT_REJECT,
}
_TO_ORIGINAL: Final = {v: k for k, v in _TO_ENHANCED.items()}
_ACCEPTING: Final = frozenset({AckCode.APPLICATION_ACCEPT, AckCode.COMMIT_ACCEPT})
# MSH-10 is ST(20) up to v2.6; an ACK id longer than that is rejected by strict receivers.
_CONTROL_ID_MAX: Final = 20
_MSA3_MAX: Final = 80  # MSA-3 is ST(80); ERR-8 carries the full texts


def is_enhanced_mode(msg: Hl7Message) -> bool:
    """True when the sender valued MSH-15 (see the module docstring for the rule)."""
    return msg.accept_ack_type != ""


def ack_code_for(msg: Hl7Message, code: str) -> AckCode:
    """``code`` (AA/AE/AR or CA/CE/CR) in the acknowledgement mode ``msg`` asked for."""
    try:
        ack = AckCode(code)
    except ValueError:
        raise ValueError(f"not an HL7 acknowledgement code (table 0008): {code!r}") from None
    if is_enhanced_mode(msg):
        return _TO_ENHANCED.get(ack, ack)
    return _TO_ORIGINAL.get(ack, ack)


def ack_requested(msg: Hl7Message, code: str) -> bool:
    """Whether the sender wants this acknowledgement at all (MSH-15, table 0155).

    Original mode always answers. Enhanced mode: AL always, NE never, ER only on error or
    reject, SU only on success; an unknown value answers, since an unexpected ACK is harmless
    and a missing one makes the sender resend.
    """
    if not is_enhanced_mode(msg):
        return True
    accepting = ack_code_for(msg, code) in _ACCEPTING
    condition = msg.accept_ack_type
    if condition == "NE":
        return False
    if condition == "ER":
        return not accepting
    if condition == "SU":
        return accepting
    return True


def ack_control_id(original: str) -> str:
    """MSH-10 of the ACK, derived only from the original's MSH-10.

    Deterministic so that a duplicate gets a byte-identical answer: ``<original>-ACK`` when that
    fits in 20 characters, else ``ACK`` plus 17 hex digits of the original's SHA-1.
    """
    candidate = f"{original}-ACK"
    if len(candidate) <= _CONTROL_ID_MAX:
        return candidate
    return "ACK" + hashlib.sha1(original.encode("utf-8")).hexdigest()[: _CONTROL_ID_MAX - 3]


def build_ack(
    msg: Hl7Message,
    code: str,
    *,
    text: str | None = None,
    errors: Sequence[AckError] = (),
    sending_application: str,
    sending_facility: str,
    now: datetime,
) -> bytes:
    """The ACK payload (not MLLP-framed) for ``msg``, encoded in ``msg``'s character set.

    ``text`` goes to MSA-3 (at most 80 characters); without it, the first error's text is used.
    ERR segments use the v2.5 layout (ERR-2 location, ERR-3 code, ERR-4 severity, ERR-8 text)
    for v2.5 and later, and the only field older versions define (ERR-1, ELD) before that.
    """
    enc = msg.encoding_chars
    msh = msg.msh
    version = _version_tuple(msg.version)
    ack = ack_code_for(msg, code)

    def esc(value: str) -> str:
        return escape(value, enc)

    message_type = ["ACK", esc(msg.trigger_event), "ACK"]
    if version < (2, 3, 1):
        # MSH-9.3 (message structure) only exists from v2.3.1 on.
        message_type = message_type[:2]
    msh_fields = [
        "MSH",
        enc.msh2,
        esc(sending_application),
        esc(sending_facility),
        # The sender's own application/facility, processing id, version and character set are
        # copied as written (already encoded with the same delimiters), so they round-trip
        # exactly, components and all.
        msh.field(3),
        msh.field(4),
        _timestamp(now),
        "",
        enc.component.join(message_type).rstrip(enc.component),
        esc(ack_control_id(msg.control_id)),
        msh.field(11),
        msh.field(12),
        "",
        "",
        "",  # MSH-15/16 stay empty: an acknowledgement is never acknowledged
        "",
        "",
        msh.field(18),
    ]
    msa_text = text if text is not None else (errors[0].text if errors else "")
    segments = [
        _join(msh_fields, enc.field),
        _join(["MSA", ack.value, esc(msg.control_id), esc(msa_text[:_MSA3_MAX])], enc.field),
    ]
    for error in errors:
        segments.append(_err_segment(error, msg, version >= (2, 5)))
    return ("\r".join(segments) + "\r").encode(msg.codec, errors="replace")


def _err_segment(error: AckError, msg: Hl7Message, v25: bool) -> str:
    enc = msg.encoding_chars
    comp, sub = enc.component, enc.subcomponent
    location = [
        error.segment,
        str(error.sequence) if error.segment else "",
        "" if error.field is None else str(error.field),
    ]
    code = error.code
    if not v25:
        # ELD: segment^sequence^field^code&text&table (the code is a CE, hence subcomponents).
        cause = sub.join([str(int(code)), escape(code.description, enc), "HL70357"])
        return _join(["ERR", comp.join([*location, cause])], enc.field)
    if error.component is not None:
        location += ["", str(error.component)]  # ERL-4 (field repetition) left empty
    fields = [
        "ERR",
        "",
        comp.join(location).rstrip(comp),
        comp.join([str(int(code)), escape(code.description, enc), "HL70357"]),
        error.severity,
        "",
        "",
        "",
        escape(error.text, enc),
    ]
    return _join(fields, enc.field)


def _join(fields: list[str], field_sep: str) -> str:
    while len(fields) > 1 and fields[-1] == "":
        fields.pop()
    return field_sep.join(fields)


def _timestamp(now: datetime) -> str:
    # TS/DTM with the UTC offset when known (%z is empty for a naive time), so the sender can
    # order ACKs across time zones.
    return now.strftime("%Y%m%d%H%M%S%z")


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        # Unknown or empty: assume a current version, whose layout every modern parser reads.
        return (2, 5)
