"""The sender's input and output: a typed :class:`Delivery` built from an outbox row, the
payload views each sender reads, and the :class:`Sender` protocol.

The payload is JSON the router froze into the row (D3), so a retry sends the same bytes. Fields
this package relies on (a missing or malformed one is a permanent error: retrying cannot fix
the row):

* DICOM rows (``kind`` ``dicom``): the router's layout (``engine.pipeline``, version 1) puts
  the instance under ``object``: ``spool_path`` (relative to the spool root),
  ``transfer_syntax_uid``, ``sop_class_uid``, ``sop_instance_uid``, optional ``size_bytes``
  and ``sha256`` (recorded at intake: the bytes are checked against them before they leave);
  beside it ``morph`` (frozen steps as JSON, applied with ``engine.morph.morph_bytes``) and
  ``secret_fingerprint`` (the morph secret's fingerprint at routing time). The same keys at the
  top level are read too (rows enqueued by hand, the demo, benchmarks).
* ``hl7``: ``message``, either the HL7 v2 text itself or the router's reference
  ``{"journal_id": N, ...}`` to the raw bytes kept in ``hl7_messages``; or ``segments``
  (values the sender renders with HL7 escaping).
* ``fhir``: ``resource`` (a FHIR R4 resource as JSON); optional ``method`` (``PUT``/``POST``).
* ``mpps``: ``mpps`` = ``{"operation": "create"|"set", "sop_instance_uid": ...,
  "dataset": <DICOM JSON (PS3.18 F.2)>}``.

It must not talk to peers or the store.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from engine.dicom.vr import is_valid_uid
from engine.durable.store import OutboxRow
from engine.egress.errors import DeliveryError, PermanentDeliveryError
from engine.morph import MorphKeys, morph_bytes, steps_from_json

#: ``kind`` values that name one DICOM instance in the spool
DICOM_KINDS = frozenset({"dicom", "instance"})


@dataclass(frozen=True, slots=True)
class Delivery:
    """One outbox row, as a sender sees it."""

    row_id: int
    destination: str
    kind: str
    payload: Mapping[str, Any]
    attempt: int  # 1 for the first try
    study_instance_uid: str | None = None
    route: str = ""
    source_table: str = ""
    source_id: int = 0
    created_at: float = 0.0

    @classmethod
    def from_row(cls, row: OutboxRow) -> Delivery:
        """``PermanentDeliveryError`` if the payload is not a JSON object."""
        try:
            payload = json.loads(row.payload)
        except (TypeError, ValueError) as exc:
            raise PermanentDeliveryError(f"outbox row {row.id}: payload is not JSON: {exc}",
                                         reason="bad_payload") from exc
        if not isinstance(payload, dict):
            raise PermanentDeliveryError(f"outbox row {row.id}: payload is not a JSON object",
                                         reason="bad_payload")
        return cls(row.id, row.destination, row.kind, payload, row.attempts,
                   row.study_instance_uid, row.route, row.source_table, row.source_id,
                   row.created_at)


def _bad(delivery: Delivery, what: str) -> PermanentDeliveryError:
    return PermanentDeliveryError(f"outbox row {delivery.row_id} ({delivery.kind}): {what}",
                                  reason="bad_payload")


def _uid(delivery: Delivery, fields: Mapping[str, Any], key: str) -> str:
    value = fields.get(key)
    if not isinstance(value, str) or not is_valid_uid(value):
        raise _bad(delivery, f"{key} is missing or not a UID")
    return value


@dataclass(frozen=True, slots=True)
class DicomObject:
    """A spooled instance to send, and the morph to apply on the way out."""

    spool_path: str
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    morph: tuple[Mapping[str, Any], ...] = ()
    size_bytes: int | None = None
    secret_fingerprint: str | None = None
    #: SHA-256 (hex) of the spool file recorded at intake; None for hand-made rows
    sha256: str | None = None

    @classmethod
    def of(cls, delivery: Delivery) -> DicomObject:
        if delivery.kind not in DICOM_KINDS:
            raise _bad(delivery, "a DICOM destination got a row that is not an instance")
        nested = delivery.payload.get("object")
        fields: Mapping[str, Any] = nested if isinstance(nested, dict) else delivery.payload
        path = fields.get("spool_path")
        if not isinstance(path, str) or not path:
            raise _bad(delivery, "spool_path is missing")
        morph = delivery.payload.get("morph") or []
        if not isinstance(morph, list) or not all(isinstance(s, dict) for s in morph):
            raise _bad(delivery, "morph must be a list of step objects")
        size = fields.get("size_bytes")
        fingerprint = delivery.payload.get("secret_fingerprint")
        digest = fields.get("sha256")
        return cls(path, _uid(delivery, fields, "transfer_syntax_uid"),
                   _uid(delivery, fields, "sop_class_uid"),
                   _uid(delivery, fields, "sop_instance_uid"),
                   tuple(morph), size if isinstance(size, int) else None,
                   fingerprint if isinstance(fingerprint, str) else None,
                   digest if isinstance(digest, str) and digest else None)

    def path_in(self, spool_root: Path) -> Path:
        """The file under ``spool_root``; a path leaving the spool is refused (permanent).

        Checked on the text (an absolute path or ``..`` that climbs out), not with
        ``Path.resolve``: that costs a dozen ``lstat`` calls per send on the delivery hot path,
        and only radflow creates anything inside the spool, so no link there leads out."""
        rel = os.path.normpath(self.spool_path)
        if os.path.isabs(rel) or rel == ".." or rel.startswith(("../", "./")) or rel == ".":
            raise PermanentDeliveryError(f"spool_path {self.spool_path!r} leaves the spool",
                                         reason="bad_payload")
        return spool_root / rel


#: ``morph(part10_bytes, steps_json, secret_fingerprint) -> part10_bytes``
MorphFn = Callable[[bytes, Sequence[Mapping[str, Any]], str | None], bytes]


def find_morph(secret: str | None) -> MorphFn:
    """The morph stage's entry point bound to the site secret. A row routed under another
    secret (its fingerprint differs) would get other UIDs and pseudonyms than the ones routed:
    that is a permanent error, never a silent change of the bytes."""
    keys = MorphKeys(secret)

    def apply(data: bytes, steps: Sequence[Mapping[str, Any]], fingerprint: str | None
              ) -> bytes:
        current = keys.fingerprint
        if fingerprint is not None and current != fingerprint:
            raise PermanentDeliveryError(
                "the morph secret changed since this row was routed (fingerprint "
                f"{fingerprint} routed, {current} now)", reason="secret_changed")
        return morph_bytes(data, steps_from_json([dict(s) for s in steps]), keys)

    return apply


@dataclass(slots=True)
class SendOutcome:
    """What happened to one delivery of a batch: ``error`` None is success."""

    error: DeliveryError | None = None
    seconds: float = 0.0
    #: short facts for the log line (``status``, ``transcoded``...), never patient data
    notes: dict[str, Any] = field(default_factory=dict)


class Sender(Protocol):
    """One worker's connection to one destination. Not shared between workers."""

    #: how many rows one lease hands to :meth:`send`
    max_batch: int

    async def send(self, batch: Sequence[Delivery]) -> list[SendOutcome]:
        """Deliver ``batch`` in order; one outcome per delivery, same order. Must not raise
        for a row's failure (that is the row's outcome); raising means "every row of the
        batch failed this way" and is treated as such by the dispatcher."""
        ...

    async def idle(self) -> None:
        """Called when the worker found nothing to do: release idle connections."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class CheckableSender(Protocol):
    """A sender that can check its destination (every type a route can name)."""

    async def check(self) -> str:
        """Reach the destination as a delivery would (same addresses, AE titles, TLS and
        credentials) and ask something harmless: C-ECHO, an MLLP connect, a metadata GET.
        Return a short text of the answer; raise :class:`DeliveryError` with the exact failure.
        """
        ...


def failed(error: DeliveryError, seconds: float = 0.0) -> SendOutcome:
    return SendOutcome(error=error, seconds=seconds)
