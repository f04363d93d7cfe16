"""The worklist service's contract with HL7 intake: what arrived, what came of it, and why not.

:class:`Hl7Received` is a message as the MLLP listener read it; :class:`Hl7Outcome` is everything
the listener needs to build the acknowledgement (deterministically, so a duplicate gets the same
answer). :class:`UnsupportedMessage` (→ ``AR``) and :class:`Hl7ContentError` (→ ``AE`` with an ERR
segment naming the field) are the two ways a message is refused. This module must not build
ACK bytes or touch the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from engine.errors import InvalidInput
from engine.hl7.ack import AckError, Hl7ErrorCode
from engine.hl7.message import Hl7Message


@dataclass(frozen=True)
class Hl7Received:
    """One HL7 message as it arrived on a listener."""

    raw: bytes
    message: Hl7Message | None  # None when the bytes could not be parsed
    parse_error: str | None
    peer_host: str
    listener: str
    received_at: str  # ISO 8601, UTC
    #: where parsing failed (``"MSH-18"``, ``"PID-5"``); None with a parse error: no MSH at all
    parse_error_at: str | None = None


@dataclass(frozen=True)
class Hl7Outcome:
    """What radflow made of one message; the ACK is built from this alone."""

    code: str  # "AA" | "AE" | "AR"
    errors: tuple[AckError, ...]
    text: str | None
    #: an earlier message with the same MSH-10 from the same sender: this is ITS outcome
    duplicate: bool
    journal_id: int | None
    worklist_item_ids: tuple[int, ...]
    #: the order's correlation keys as the mapping read them (accession, study, placer and
    #: filler order numbers, patient): for the log line and the event of this message
    keys: dict[str, str] = field(default_factory=dict)


class UnsupportedMessage(InvalidInput):
    """A message type, trigger event or order control radflow does not handle (→ AR)."""

    reason = "hl7_unsupported"

    def __init__(self, text: str, field_path: str = "MSH-9",
                 code: Hl7ErrorCode = Hl7ErrorCode.UNSUPPORTED_MESSAGE_TYPE) -> None:
        super().__init__(text)
        self.field_path = field_path
        self.code = code
        self.text = text

    def ack_error(self) -> AckError:
        return ack_error_at(self.field_path, self.code, self.text)


class Hl7ContentError(InvalidInput):
    """The message is handled but its content is wrong (→ AE naming the field)."""

    reason = "hl7_content"

    def __init__(self, field_path: str, code: Hl7ErrorCode, text: str) -> None:
        super().__init__(f"{field_path}: {text}" if field_path else text)
        self.field_path = field_path
        self.code = code
        self.text = text

    def ack_error(self) -> AckError:
        return ack_error_at(self.field_path, self.code, self.text)


_LOCATION = re.compile(r"([A-Z][A-Z0-9]{2})(?:\[(\d+)\])?(?:-(\d+)(?:\[\d+\])?(?:\.(\d+))?)?")


def ack_error_at(field_path: str, code: Hl7ErrorCode, text: str) -> AckError:
    """An ERR for ``field_path`` (``"PID-3.1"``, ``"ORC[2]-1"``, ``"MSH"`` or ``""``)."""
    m = _LOCATION.match(field_path or "")
    if m is None:
        return AckError(code=code, text=text)
    seg, occurrence, fld, comp = m.groups()
    return AckError(segment=seg, sequence=int(occurrence or 1),
                    field=int(fld) if fld else None, component=int(comp) if comp else None,
                    code=code, text=text)
