"""Where code outside the engine's wiring reports audit facts: pynetdicom's association
threads, the TLS accept path, the admin server, the rules reloader.

A process-wide slot, like logging's: the engine installs its audit trail at start and removes it
at stop; with none installed every report is dropped. :func:`notify` never raises, so a caller
on an intake path can report without a guard. Thread-safe (the trail's own methods are).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from engine.observability.logging import get_logger

log = get_logger("engine.audit.sink")

#: a coded value (code, coding scheme, meaning), as ``engine.dicom.audit`` writes them
Code = tuple[str, str, str]


class AuditSink(Protocol):
    def association(self, *, calling_ae: str, called_ae: str, peer_host: str, accepted: bool,
                    reason: str = "", user_identity: str | None = None) -> None: ...

    def security_alert(self, kind: Code, description: str, *, peer_host: str = "",
                       subject: str | None = None, failure: bool = True) -> None: ...

    def login(self, *, user: str, peer_host: str, ok: bool, reason: str = "") -> None: ...

    def query(self, *, calling_ae: str, called_ae: str, peer_host: str, sop_class_uid: str,
              identifier: bytes, transfer_syntax_uid: str, ok: bool) -> None: ...

    def api_change(self, *, user: str, peer_host: str, method: str, path: str,
                   status: int) -> None: ...

    def retrieve(self, *, begin: bool, move: bool, calling_ae: str, called_ae: str,
                 peer_host: str, destination_ae: str, destination_host: str,
                 studies: Mapping[str, tuple[str, Mapping[str, int]]], ok: bool,
                 detail: str = "") -> None: ...


_current: AuditSink | None = None


def install(sink: AuditSink | None) -> None:
    global _current
    _current = sink


def notify(report: Callable[[AuditSink], None]) -> None:
    """``report(sink)`` if a trail is installed; never raises."""
    sink = _current
    if sink is None:
        return
    try:
        report(sink)
    except Exception:
        log.exception("audit.report_failed")
