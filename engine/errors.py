"""The root of radflow's exception tree.

Everything the engine raises on purpose derives from :class:`RadflowError`, so protocol edges can
translate a failure into a DIMSE status or HL7 ACK code through one table (``engine.status``).
This module must stay dependency-free: it is imported by every other module.
"""

from __future__ import annotations

from typing import Any


class RadflowError(Exception):
    """Base class of every error radflow raises on purpose."""

    #: a short machine-readable reason, used as a metric label and log key
    reason: str = "error"


class ConfigError(RadflowError):
    """The configuration (settings or routes) is invalid."""

    reason = "config"


class TransientError(RadflowError):
    """The work cannot be done now but may succeed later (resources, shutdown, timeouts)."""

    reason = "transient"


class ShuttingDown(TransientError):
    """The engine is stopping and takes no new work."""

    reason = "shutting_down"


class BridgeTimeout(TransientError):
    """Work handed to the event loop did not finish within its deadline."""

    reason = "timeout"


class OutOfResources(TransientError):
    """The spool's disk is below its free-space threshold, or another bound is reached."""

    reason = "out_of_resources"


class StorageFailure(TransientError):
    """Writing to the spool or committing to the store failed."""

    reason = "storage_failure"


class PartlyCommitted(StorageFailure):
    """A batch committed in two transactions of which only the first went through:
    ``results[i]`` is item ``i``'s committed result, or None for an item the failure took
    (nothing of it is kept). Callers answer the committed items as committed."""

    def __init__(self, message: str, results: list[Any]) -> None:
        super().__init__(message)
        self.results = results


class InvalidInput(RadflowError):
    """The peer sent content radflow cannot accept as it is (permanent for that input)."""

    reason = "invalid_input"


class MalformedDataset(InvalidInput):
    """A DICOM dataset's encoding is broken (truncated, bad lengths, undecodable)."""

    reason = "malformed_dataset"


class InvalidIdentifier(InvalidInput):
    """A UID or identifier does not follow its value representation's rules."""

    reason = "invalid_identifier"


class SopClassMismatch(InvalidInput):
    """The dataset's SOP Class UID differs from the one in the command."""

    reason = "sop_class_mismatch"


class DuplicateRejected(InvalidInput):
    """A second, different instance with a known SOP Instance UID, refused by policy."""

    reason = "duplicate_rejected"


# --- Modality Performed Procedure Step (engine.procedure); statuses in engine.status -----------
class ProcedureStepError(InvalidInput):
    """An MPPS N-CREATE / N-SET that PS3.4 Annex F says to refuse; ``tags`` name the
    attributes at fault (sent back as the Attribute Identifier List when there are any)."""

    reason = "procedure_step"

    def __init__(self, message: str, tags: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.tags = tags


class DuplicateProcedureStep(ProcedureStepError):
    reason = "duplicate_sop_instance"


class NoSuchProcedureStep(ProcedureStepError):
    reason = "no_such_object_instance"


class ProcedureStepFinal(ProcedureStepError):
    """The step is COMPLETED or DISCONTINUED: it may no longer be updated (PS3.4 F.7.2.2.3)."""

    reason = "may_no_longer_be_updated"


class MissingAttribute(ProcedureStepError):
    reason = "missing_attribute"


class MissingAttributeValue(ProcedureStepError):
    reason = "missing_attribute_value"


class InvalidAttributeValue(ProcedureStepError):
    reason = "invalid_attribute_value"
