"""Associations modalities keep open to radflow, by calling AE title.

Storage Commitment reports go back on the association the modality asked on when it is still
open (PS3.4 J.3.3); the intake side registers it when the request arrives and forgets it when
the connection closes, the delivery side looks it up. :class:`OpenAssociations` is the one
thread-safe table both share (so ingress and egress never import each other). It must not
send anything itself.
"""

from __future__ import annotations

import threading
from typing import Any


class OpenAssociations:
    """Acceptor associations by calling AE title (newest last)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_ae: dict[str, list[Any]] = {}

    def add(self, calling_ae: str, assoc: Any) -> None:
        with self._lock:
            held = self._by_ae.setdefault(calling_ae, [])
            if not any(a is assoc for a in held):
                held.append(assoc)

    def remove(self, assoc: Any) -> None:
        with self._lock:
            for ae, held in list(self._by_ae.items()):
                held[:] = [a for a in held if a is not assoc]
                if not held:
                    del self._by_ae[ae]

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
