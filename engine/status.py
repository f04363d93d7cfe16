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
    # --- MPPS (PS3.4 F.7.2.1.2 / F.7.2.2.3 / F.7.2.2.4; general codes from PS3.7 C) ---
    NO_SUCH_ATTRIBUTE = 0x0105
    MISSING_ATTRIBUTE_VALUE = 0x0121
    ATTRIBUTE_VALUE_OUT_OF_RANGE = 0x0116  # a warning on N-CREATE / N-SET
    #: PS3.4 Table F.7.2-2: a step no longer IN PROGRESS answers N-SET with 0110 (Processing
    #: failure) plus this Error Comment and Error ID. (0xC310 is a UPS status, PS3.4 CC.2.)
    PPS_MAY_NO_LONGER_BE_UPDATED = 0x0110
    # PS3.4 B.2.3 (Storage), C.4.1.1.4 (Find)
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    # C-FIND (PS3.4 C.4.1.1.4 / K.4.1.1.4): the same code, named as the Find service names it
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    UNABLE_TO_PROCESS = 0xC001
    # Query/Retrieve - MOVE and GET (PS3.4 C.4.2.1.5 / C.4.3.1.4)
    MOVE_DESTINATION_UNKNOWN = 0xA801
    UNABLE_TO_CALCULATE_MATCHES = 0xA701
    UNABLE_TO_PERFORM_SUBOPERATIONS = 0xA702
    SUBOPERATIONS_COMPLETE_WITH_FAILURES = 0xB000
    # Storage Commitment Failure Reasons (PS3.3 C.14.1.1) and N-ACTION statuses (PS3.7 C)
    CLASS_INSTANCE_CONFLICT = 0x0119
    NO_SUCH_ACTION_TYPE = 0x0123


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


#: PS3.4 Table F.7.2-2, sent with PPS_MAY_NO_LONGER_BE_UPDATED
PPS_FINAL_ERROR_COMMENT = "Performed Procedure Step Object may no longer be updated"
PPS_FINAL_ERROR_ID = 0xA710  # Error ID (0000,0903) is US

_MPPS_TABLE: tuple[tuple[type[BaseException], DimseStatus], ...] = (
    (errors.DuplicateProcedureStep, DimseStatus.DUPLICATE_SOP_INSTANCE),
    (errors.NoSuchProcedureStep, DimseStatus.NO_SUCH_OBJECT_INSTANCE),
    (errors.ProcedureStepFinal, DimseStatus.PPS_MAY_NO_LONGER_BE_UPDATED),
    (errors.MissingAttribute, DimseStatus.MISSING_ATTRIBUTE),
    (errors.MissingAttributeValue, DimseStatus.MISSING_ATTRIBUTE_VALUE),
    (errors.InvalidAttributeValue, DimseStatus.INVALID_ATTRIBUTE_VALUE),
    (errors.InvalidInput, DimseStatus.INVALID_ATTRIBUTE_VALUE),
    (errors.TransientError, DimseStatus.PROCESSING_FAILURE),
)


def mpps_status_for(exc: BaseException) -> DimseStatus:
    """The N-CREATE / N-SET status for ``exc``; anything unexpected is Processing failure
    (0x0110): nothing was committed and the modality may send again."""
    for exc_type, status in _MPPS_TABLE:
        if isinstance(exc, exc_type):
            return status
    return DimseStatus.PROCESSING_FAILURE


def error_comment(exc: BaseException) -> str:
    """A short text for the DIMSE Error Comment (LO: at most 64 characters)."""
    # LO forbids backslash and control characters.
    text = str(exc) or type(exc).__name__
    text = "".join(" " if c == "\\" or ord(c) < 0x20 else c for c in text)
    return text[:64]
