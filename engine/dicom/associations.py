"""Associations modalities keep open to radflow, by calling AE title.

Storage Commitment reports go back on the association the modality asked on when it is still
open (PS3.4 J.3.3); the intake side registers it when the request arrives and forgets it when
the connection closes, the delivery side looks it up. Between the request's arrival and its
response going out, the association is *answering*: the report is already committed (and may be
claimed at once), but must wait, since sent earlier it would reach the modality before the
answer it is waiting for. :class:`OpenAssociations` is the one
thread-safe table both share (so ingress and egress never import each other). Since a report
then leaves from a delivery thread while the association's own thread may be answering on it,
:func:`serialize_messages` makes each DIMSE message go out whole. It must not send anything
itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from engine.dicom import wire


def serialize_messages(assoc: Any) -> None:
    """From now on, send each DIMSE message on ``assoc`` whole: one lock per association
    around pynetdicom's ``send_msg`` (which splits a message into P-DATA PDUs and queues them).
    pynetdicom fires EVT_DIMSE_SENT before it queues a message, so without the lock a report
    woken by the N-ACTION response could go out before that response, or its fragments
    interleave with another response's, which the modality cannot decode. Its responses also
    leave pynetdicom's single writer no more (:func:`engine.dicom.wire.written_by_others`).
    Idempotent; call it on the association's thread before the first response that may wake
    a report."""
    wire.written_by_others(assoc)
    dimse = assoc.dimse
    if getattr(dimse, "_radflow_serialized", False):
        return
    lock = threading.RLock()  # re-entrant: EVT_DIMSE_SENT handlers run inside a send
    send: Callable[[Any, int], None] = dimse.send_msg

    def send_msg(primitive: Any, context_id: int) -> None:
        with lock:
            send(primitive, context_id)

    dimse.send_msg = send_msg
    dimse._radflow_serialized = True


class OpenAssociations:
    """Acceptor associations by calling AE title (newest last), of one process: ``owner``
    names the process (its outbox lease prefix) to the other processes on the database."""

    def __init__(self, owner: str = "") -> None:
        self.owner = owner
        self._lock = threading.Lock()
        self._by_ae: dict[str, list[Any]] = {}
        self._answering: dict[str, list[Any]] = {}

    def answering(self, calling_ae: str, assoc: Any) -> None:
        """A request arrived on ``assoc``; its response has not gone out yet."""
        with self._lock:
            _put(self._answering, calling_ae, assoc)

    def add(self, calling_ae: str, assoc: Any) -> None:
        """The response went out: ``assoc`` may carry the report now."""
        with self._lock:
            _take(self._answering, assoc)
            _put(self._by_ae, calling_ae, assoc)

    def remove(self, assoc: Any) -> None:
        with self._lock:
            _take(self._answering, assoc)
            _take(self._by_ae, assoc)

    def is_answering(self, calling_ae: str) -> bool:
        """Whether an association of ``calling_ae`` still owes the response to a request."""
        with self._lock:
            return any(getattr(a, "is_established", False)
                       for a in self._answering.get(calling_ae, ()))

    def find(self, calling_ae: str, sop_class_uid: str) -> Any | None:
        """The newest established association of ``calling_ae`` with an accepted context
        for ``sop_class_uid``; None if there is none."""
        with self._lock:
            held = list(self._by_ae.get(calling_ae, ()))
        for assoc in reversed(held):
            if not getattr(assoc, "is_established", False):
                continue
            if any(str(cx.abstract_syntax) == sop_class_uid for cx in assoc.accepted_contexts):
                return assoc
        return None


def _put(table: dict[str, list[Any]], calling_ae: str, assoc: Any) -> None:
    held = table.setdefault(calling_ae, [])
    if not any(a is assoc for a in held):
        held.append(assoc)


def _take(table: dict[str, list[Any]], assoc: Any) -> None:
    for ae, held in list(table.items()):
        held[:] = [a for a in held if a is not assoc]
        if not held:
            del table[ae]
