"""Structured logging: one structlog chain for radflow, pynetdicom, aiohttp and the stdlib.

Owns :func:`configure_logging`, called once at start-up before any thread exists. Output is JSON
lines when stdout is not a terminal and readable key-values when it is. Event names are stable and
dotted (``ingress.dimse.c_store.accepted``). This module must not log patient names: callers pass
IDs and UIDs only, and the ``_drop_phi`` processor removes known PHI keys as a safety net.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

import structlog
from structlog.types import EventDict, Processor

from engine.observability import recent_errors

# Keys that could carry patient-identifying text; IDs and UIDs are fine at the default level.
_PHI_KEYS = frozenset({"patient_name", "PatientName", "patient_birth_date", "PatientBirthDate"})


def _drop_phi(_: Any, method: str, event_dict: EventDict) -> EventDict:
    for key in _PHI_KEYS & event_dict.keys():
        event_dict[key] = "<redacted>"
    return event_dict


def configure_logging(level: str = "info", fmt: str = "auto",
                      identity: dict[str, Any] | None = None) -> None:
    """Route structlog and stdlib logging through one processor chain and one handler;
    ``identity`` (node, worker) is added to every line, whatever thread writes it."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    fixed = dict(identity or {})
    recent_errors.RECENT.node = str(fixed.get("node", ""))

    def add_identity(_: Any, __: str, event_dict: EventDict) -> EventDict:
        for key, value in fixed.items():
            event_dict.setdefault(key, value)
        return event_dict

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_identity,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_phi,
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    structlog.configure(
        processors=[
            # Before the level filter: the console's list of recent errors holds the failures
            # whatever the log level (one dictionary look-up per line).
            recent_errors.record,
            # Then, so a debug line below the configured level costs a level check, not the
            # time stamp and the rest of the chain (per-row lines sit on the delivery hot path).
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        # Errors of the libraries (aiohttp's "Error handling request", pynetdicom's) are
        # recent errors too.
        foreign_pre_chain=[recent_errors.record, *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if use_json else _identity,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    numeric = getattr(logging, level.upper())
    root.setLevel(numeric)
    # pynetdicom logs every PDU at INFO/DEBUG; keep it one notch quieter than radflow.
    logging.getLogger("pynetdicom").setLevel(max(numeric, logging.WARNING))
    logging.getLogger("aiohttp.access").setLevel(max(numeric, logging.WARNING))


def _identity(_: Any, __: str, event_dict: EventDict) -> EventDict:
    return event_dict


#: The keys that tie one order's log lines and events together, from the HL7 order through the
#: worklist, MPPS, the images and every delivery: ``radflow trace`` finds the same story by them.
CORRELATION_KEYS = ("accession_number", "study_instance_uid", "placer_order_number",
                    "filler_order_number", "patient_id")


def correlation(**values: object) -> dict[str, str]:
    """The correlation keys among ``values`` that are known (empty and None are left out, so
    a line never claims an empty accession)."""
    return {key: str(value) for key, value in values.items()
            if key in CORRELATION_KEYS and value not in (None, "")}


@contextlib.contextmanager
def about(**keys: object) -> Iterator[None]:
    """Add ``keys`` to every line logged inside the block by this thread (or task), the
    libraries' lines too: pydicom's warning about text it could not decode then names the
    instance, the sender and the destination. Empty values are left out."""
    with structlog.contextvars.bound_contextvars(
            **{k: v for k, v in keys.items() if v not in (None, "")}):
        yield


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
