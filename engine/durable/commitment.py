"""Storage Commitment (Push Model) records shared by every store backend.

A modality's N-ACTION becomes a :class:`CommitmentRequest` (its Transaction UID, the SOP
Instances it names, and the policy that decides them); the answer it waits for is a
:class:`CommitmentReport`, queued in the outbox for the ``commitment`` destination (durable,
retried by the dispatcher like any delivery). :func:`decide_on_receipt` is the ``on_receipt``
policy, pure so every backend applies it the same way: an instance is committed when radflow's
journal holds it (its C-STORE was answered only after the file and the row were durable). This
module holds no SQL and talks to no peer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from engine.status import DimseStatus

CommitmentPolicy = Literal["on_receipt", "on_archive"]
#: the outbox destination (and ``source_table``) of commitment reports
COMMITMENT_DESTINATION: Final = "commitment"
COMMITMENT_SOURCE: Final = "commitment_requests"
COMMITMENT_KIND: Final = "commitment_report"

SopRef = tuple[str, str]  # (SOP Class UID, SOP Instance UID)
FailedRef = tuple[str, str, int]  # ... and the Failure Reason


@dataclass(frozen=True, slots=True)
class CommitmentRequest:
    transaction_uid: str
    calling_ae: str
    policy: CommitmentPolicy
    refs: tuple[SopRef, ...]
    received_at: str  # ISO 8601, UTC
    #: on_archive: when a request still unconfirmed turns into a failure report (epoch seconds)
    deadline: float | None = None
    #: on_archive, archives radflow asked for commitment: destination ->
    #: ``{"transaction_uid": ..., "results": {SOP Instance UID: Failure Reason or 0} | None}``
    asks: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CommitmentReport:
    """The N-EVENT-REPORT a modality gets: what is committed, what failed and why."""

    transaction_uid: str
    calling_ae: str
    success: tuple[SopRef, ...]
    failed: tuple[FailedRef, ...]

    def payload(self) -> str:
        return json.dumps({"commitment": {
            "transaction_uid": self.transaction_uid, "calling_ae": self.calling_ae,
            "success": [list(r) for r in self.success],
            "failed": [list(r) for r in self.failed]}}, separators=(",", ":"))

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> CommitmentReport:
        """``ValueError`` when ``payload`` is not what :meth:`payload` wrote."""
        body = payload.get("commitment")
        if not isinstance(body, dict):
            raise ValueError("no commitment object")
        try:
            return cls(str(body["transaction_uid"]), str(body["calling_ae"]),
                       tuple((str(c), str(u)) for c, u in body["success"]),
                       tuple((str(c), str(u), int(r)) for c, u, r in body["failed"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed commitment report: {exc}") from exc


@dataclass(frozen=True, slots=True)
class CommitmentResult:
    request_id: int
    duplicate: bool  # the same Transaction UID from the same AE again: nothing new queued
    report: CommitmentReport | None  # queued now (None: waiting for the archive)


def decide_on_receipt(request: CommitmentRequest, journal: Mapping[str, str]
                      ) -> CommitmentReport:
    """``journal``: SOP Instance UID -> SOP Class UID of the current rows radflow holds."""
    success: list[SopRef] = []
    failed: list[FailedRef] = []
    for sop_class, uid in request.refs:
        held = journal.get(uid)
        if held is None:
            failed.append((sop_class, uid, int(DimseStatus.NO_SUCH_OBJECT_INSTANCE)))
        elif held != sop_class:
            failed.append((sop_class, uid, int(DimseStatus.CLASS_INSTANCE_CONFLICT)))
        else:
            success.append((sop_class, uid))
    return CommitmentReport(request.transaction_uid, request.calling_ae, tuple(success),
                            tuple(failed))


def decide_on_archive(request: CommitmentRequest, journal: Mapping[str, tuple[str, int]],
                      confirmed: set[int], expired: bool,
                      committing: tuple[str, ...] = ()) -> CommitmentReport | None:
    """The ``on_archive`` policy. ``journal``: SOP Instance UID -> (SOP Class UID, journal id);
    ``confirmed``: journal ids every archive destination delivered; ``committing``: the
    archive destinations whose own Storage Commitment answer (``request.asks``) must confirm
    too. None while an instance is still on its way and the deadline has not passed; past it,
    what is unconfirmed fails with Processing Failure (never a silent success)."""
    success: list[SopRef] = []
    failed: list[FailedRef] = []
    waiting = False
    processing_failure = int(DimseStatus.PROCESSING_FAILURE)
    for sop_class, uid in request.refs:
        held = journal.get(uid)
        if held is None:
            failed.append((sop_class, uid, int(DimseStatus.NO_SUCH_OBJECT_INSTANCE)))
            continue
        if held[0] != sop_class:
            failed.append((sop_class, uid, int(DimseStatus.CLASS_INSTANCE_CONFLICT)))
            continue
        reason: int | None = 0 if held[1] in confirmed else None
        for destination in committing if reason == 0 else ():
            results = (request.asks.get(destination) or {}).get("results")
            if results is None:
                reason = None  # asked (or about to be), not answered yet
                break
            answer = int(results.get(uid, processing_failure))
            if answer != 0:
                reason = answer  # the archive's own Failure Reason, relayed
                break
        if reason == 0:
            success.append((sop_class, uid))
        elif reason is not None:
            failed.append((sop_class, uid, reason))
        elif expired:
            failed.append((sop_class, uid, processing_failure))
        else:
            waiting = True
    if waiting:
        return None
    return CommitmentReport(request.transaction_uid, request.calling_ae, tuple(success),
                            tuple(failed))
