"""The most recent errors an operator cares about, gathered from the log lines the stages
already write (one structlog processor), for the console's Overview.

Every stage reports its failures as stable, dotted log events (``ingress.dimse.association.
rejected``, ``outbox.dead_lettered``, ``rules.reload_failed``...); :func:`record` sees each
event before the level filter and :data:`RECENT` keeps the ones that name an operator-facing
failure, classified by :data:`KINDS`, plus every other event logged at error level. Repeats of
the same failure (same kind, subject and reason) are counted into one note instead of flooding
the list. Notes wait here, bounded, until the engine takes them (:meth:`Recorder.take`) and
writes them to the store, where every worker and node adds to one shared list. This module
must not block, raise into the caller (a log call on an intake path), touch the store, or keep
patient names (only the fields named below are read).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, replace
from typing import Any

#: what the console calls each kind of note
KINDS: dict[str, str] = {
    "association_refused": "association refused",
    "c_store_failed": "C-STORE failed",
    "hl7_refused": "HL7 message refused",
    "hl7_connection_refused": "HL7 connection refused",
    "delivery_failed": "delivery failed (will retry)",
    "dead_letter": "dead letter",
    "integrity_failed": "integrity check failed",
    "rules_reload_failed": "rule reload failed",
    "audit_failed": "audit repository error",
    "error": "internal error",
}
#: notes waiting for the engine to take them; beyond this the oldest are dropped (counted)
MAX_PENDING = 200
#: how often the engine writes pending notes to the store
FLUSH_SECONDS = 2.0
#: a failure seen again within this long adds to the count of its note instead of a new one
MERGE_SECONDS = 300.0
#: how many notes the store keeps (the newest)
KEEP = 500
_MAX_TEXT = 500
_ERROR_LEVELS = frozenset({"error", "critical", "exception", "fatal"})


@dataclass(frozen=True, slots=True)
class ErrorNote:
    """One failure, or several alike: ``count`` of them between ``first_at`` and ``last_at``
    (epoch seconds). ``subject`` is what it concerns (calling AE, destination, listener);
    ``event`` the log event it came from, so an operator finds the full lines."""

    kind: str
    subject: str
    reason: str
    peer_host: str
    event: str
    first_at: float
    last_at: float
    count: int = 1
    node: str = ""
    id: int = 0

    @property
    def key(self) -> tuple[str, str, str]:
        return self.kind, self.subject, self.reason


Fields = Mapping[str, Any]
Classified = tuple[str, str, str, str] | None  # kind, subject, reason, peer host


def _s(fields: Fields, *names: str) -> str:
    for name in names:
        value = fields.get(name)
        if value not in (None, ""):
            return str(value)[:_MAX_TEXT]
    return ""


def _association(f: Fields) -> Classified:
    ae = _s(f, "calling_ae") or "(no AE title)"
    return "association_refused", ae, _s(f, "reason") or "refused", _s(f, "peer_host")


def _identity(f: Fields) -> Classified:
    return ("association_refused", _s(f, "calling_ae"), "user identity refused",
            _s(f, "peer_host"))


def _connection(f: Fields) -> Classified:
    return ("association_refused", _s(f, "listener"), _s(f, "reason") or "connection refused",
            _s(f, "peer_host"))


def _c_store(f: Fields) -> Classified:
    reason = " ".join(x for x in (_s(f, "status"), _s(f, "reason"), _s(f, "detail")) if x)
    return "c_store_failed", _s(f, "calling_ae"), reason, _s(f, "peer_host")


def _hl7_ack(f: Fields) -> Classified:
    code = _s(f, "ack_code")
    if code in ("AA", "CA", ""):
        return None
    subject = _s(f, "message_type", "listener")
    return "hl7_refused", subject, f"{code}: {_s(f, 'reason') or 'refused'}", _s(f, "peer_host")


def _hl7_connection(f: Fields) -> Classified:
    return ("hl7_connection_refused", _s(f, "listener"), _s(f, "reason") or "refused",
            _s(f, "peer_host"))


def _delivery(kind: str) -> Callable[[Fields], Classified]:
    def classify(f: Fields) -> Classified:
        error = _s(f, "error")
        integrity = error.startswith("integrity_failed")  # a damaged spool file, say
        return "integrity_failed" if integrity else kind, _s(f, "destination"), error, ""
    return classify


def _rules(f: Fields) -> Classified:
    problems = f.get("problems") or []
    first = str(problems[0])[:_MAX_TEXT] if isinstance(problems, list) and problems else ""
    reason = f"{_s(f, 'errors') or '?'} problem(s), previous rules kept" + \
        (f": {first}" if first else "")
    return "rules_reload_failed", _s(f, "trigger"), reason, ""


def _audit(f: Fields) -> Classified:
    return "audit_failed", _s(f, "destination", "repository"), \
        _s(f, "error", "dropped_event") or "not written", ""


#: log event -> how to read it (stages keep these names stable: they are documented)
_CLASSIFIERS: dict[str, Callable[[Fields], Classified]] = {
    "ingress.dimse.association.rejected": _association,
    "ingress.dimse.association.identity_refused": _identity,
    "ingress.dimse.connection.refused": _connection,
    "ingress.dimse.c_store.failed": _c_store,
    "ingress.hl7.ack_sent": _hl7_ack,
    "ingress.hl7.connection_refused": _hl7_connection,
    "outbox.dead_lettered": _delivery("dead_letter"),
    "rules.reload_failed": _rules,
    "audit.write_failed": _audit,
    "audit.buffer_full": _audit,
}
_DELIVERY_FAILED = _delivery("delivery_failed")


def _classify(event: str, level: str, fields: Fields) -> Classified:
    classify = _CLASSIFIERS.get(event)
    if classify is not None:
        return classify(fields)
    if event.startswith("egress.") and event.endswith(".failed"):
        return _DELIVERY_FAILED(fields)  # egress.dimse.failed, egress.hl7.failed, ...
    if level in _ERROR_LEVELS:
        return "error", event, _s(fields, "error", "detail", "reason"), _s(fields, "peer_host")
    return None


class _Merged:
    """A pending note while repeats are added to it (mutable: a repeat on a busy failure path
    costs a few assignments, not a new record)."""

    __slots__ = ("count", "first", "first_at", "last_at", "peer_host")

    def __init__(self, note: ErrorNote) -> None:
        self.first = note
        self.count = note.count
        self.first_at = note.first_at
        self.last_at = note.last_at
        self.peer_host = note.peer_host

    def note(self) -> ErrorNote:
        return replace(self.first, count=self.count, first_at=self.first_at,
                       last_at=self.last_at, peer_host=self.peer_host)


class Recorder:
    """Pending notes of this process, merged by key, bounded; thread-safe."""

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str, str], _Merged] = {}
        self._max = max_pending
        self.node = ""
        #: notes dropped because nobody took them in time (the store was down, or no engine)
        self.dropped = 0

    def note(self, event: str, level: str, fields: Fields) -> None:
        found = _classify(event, level, fields)
        if found is None:
            return
        kind, subject, reason, peer = found
        now = time.time()
        self.add(ErrorNote(kind, subject, reason[:_MAX_TEXT], peer, event, now, now, 1,
                           self.node))

    def add(self, note: ErrorNote) -> None:
        key = note.key
        with self._lock:
            seen = self._pending.pop(key, None)
            if seen is None:
                seen = _Merged(note)
            else:
                seen.count += note.count
                seen.first_at = min(seen.first_at, note.first_at)
                seen.last_at = max(seen.last_at, note.last_at)
                seen.peer_host = note.peer_host
            self._pending[key] = seen  # re-inserted: newest last
            while len(self._pending) > self._max:
                del self._pending[next(iter(self._pending))]
                self.dropped += 1

    def take(self) -> list[ErrorNote]:
        """Everything pending, oldest first; the recorder is empty after."""
        with self._lock:
            merged = list(self._pending.values())
            self._pending.clear()
        return [m.note() for m in merged]

    def put_back(self, notes: list[ErrorNote]) -> None:
        """Notes the store did not take (it was down): kept for the next try, bounded."""
        for note in notes:
            self.add(note)


#: the process's recorder (the engine takes its notes and writes them to the store)
RECENT = Recorder()


def record(_: Any, method: str, event_dict: MutableMapping[str, Any]
           ) -> MutableMapping[str, Any]:
    """structlog processor: note the event if it is an operator-facing failure. Never raises:
    a failure here must not fail the log call, nor the intake path that made it."""
    try:
        event = event_dict.get("event")
        if isinstance(event, str):
            RECENT.note(event, method, event_dict)
    except Exception:  # logging about it from inside logging would recurse
        pass
    return event_dict
