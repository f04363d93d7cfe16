"""DIMSE statuses and HL7 acknowledgement codes: the one place where failures become answers.

Handlers never carry bare hex literals: they name a status here, and an exception raised inside
the engine is turned into the wire answer by :func:`c_store_status_for`. This module knows the
standards' vocabulary (PS3.4 / PS3.7 statuses, HL7 table 0008) and nothing about transport.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

from engine import errors


class DimseStatus(IntEnum):
    """DIMSE status codes used by radflow (PS3.7 Annex C and the service classes in PS3.4)."""

    SUCCESS = 0x0000
    PENDING = 0xFF00
    PENDING_WARNING = 0xFF01  # C-FIND: optional keys not supported
    CANCEL = 0xFE00
    # PS3.7 C.4.2.1.4: general failure used when a SOP Instance already exists
    DUPLICATE_SOP_INSTANCE = 0x0111
    NO_SUCH_OBJECT_INSTANCE = 0x0112
    INVALID_ATTRIBUTE_VALUE = 0x0106
    MISSING_ATTRIBUTE = 0x0120
    PROCESSING_FAILURE = 0x0110
    # PS3.4 B.2.3 (Storage), C.4.1.1.4 (Find)
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    # C-FIND (PS3.4 C.4.1.1.4 / K.4.1.1.4): the same code, named as the Find service names it
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    UNABLE_TO_PROCESS = 0xC001


class AckCode(StrEnum):
    """HL7 v2 acknowledgement codes (table 0008), original and enhanced mode."""

    APPLICATION_ACCEPT = "AA"
    APPLICATION_ERROR = "AE"
    APPLICATION_REJECT = "AR"
    COMMIT_ACCEPT = "CA"
    COMMIT_ERROR = "CE"
    COMMIT_REJECT = "CR"


# Most specific class first: the first isinstance match wins.
_C_STORE_TABLE: tuple[tuple[type[BaseException], DimseStatus], ...] = (
    (errors.DuplicateRejected, DimseStatus.DUPLICATE_SOP_INSTANCE),
    (errors.SopClassMismatch, DimseStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS),
    (errors.InvalidInput, DimseStatus.CANNOT_UNDERSTAND),
    (errors.TransientError, DimseStatus.OUT_OF_RESOURCES),
)


def c_store_status_for(exc: BaseException) -> DimseStatus:
    """The C-STORE status a peer gets for ``exc``.

    Anything unexpected is Out of Resources (0xA700): the peer keeps the instance and may retry,
    which is the safe direction for data that radflow could not secure.
    """
    for exc_type, status in _C_STORE_TABLE:
        if isinstance(exc, exc_type):
            return status
    return DimseStatus.OUT_OF_RESOURCES


_C_FIND_TABLE: tuple[tuple[type[BaseException], DimseStatus], ...] = (
    (errors.InvalidInput, DimseStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS),
    (errors.TransientError, DimseStatus.OUT_OF_RESOURCES),
)


def c_find_status_for(exc: BaseException) -> DimseStatus:
    """The C-FIND status a peer gets for ``exc``: a malformed Identifier is 0xA900; a store
    that cannot answer now is Out of Resources; anything else Unable to Process (0xC001)."""
    for exc_type, status in _C_FIND_TABLE:
        if isinstance(exc, exc_type):
            return status
    return DimseStatus.UNABLE_TO_PROCESS


def error_comment(exc: BaseException) -> str:
    """A short text for the DIMSE Error Comment (LO: at most 64 characters)."""
    # LO forbids backslash and control characters.
    text = str(exc) or type(exc).__name__
    text = "".join(" " if c == "\\" or ord(c) < 0x20 else c for c in text)
    return text[:64]
