"""The root of radflow's exception tree.

Everything the engine raises on purpose derives from :class:`RadflowError`, so protocol edges can
translate a failure into a DIMSE status or HL7 ACK code through one table (``engine.status``).
This module must stay dependency-free: it is imported by every other module.
"""

from __future__ import annotations


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
