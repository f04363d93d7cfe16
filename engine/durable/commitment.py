"""Storage Commitment (Push Model) records shared by every store backend.

A modality's N-ACTION becomes a :class:`CommitmentRequest` (its Transaction UID, the SOP
Instances it names, and the policy that decides them); the answer it waits for is a
:class:`CommitmentReport`, queued in the outbox for the ``commitment`` destination (durable,
retried by the dispatcher like any delivery). :func:`decide_on_receipt` is the ``on_receipt``
policy, pure so every backend applies it the same way: an instance is committed when radflow's
journal holds it (its C-STORE was answered only after the file and the row were durable);
:func:`decide` is ``on_archive`` and ``by_route`` (each instance as the routes that matched it
asked, see :class:`CommitmentPlan`). This module holds no SQL and talks to no peer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from engine.status import DimseStatus

#: ``by_route``: neither the calling AE nor the site decided alone: each instance follows what
#: the routes that matched it asked for (recorded when it was routed), else the site's policy
CommitmentPolicy = Literal["on_receipt", "on_archive", "by_route"]
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
    #: the process (its outbox lease prefix) that took the N-ACTION: the one that holds the
    #: association the modality may keep open for the report
    via: str = ""


@dataclass(frozen=True, slots=True)
class CommitmentReport:
    """The N-EVENT-REPORT a modality gets: what is committed, what failed and why."""

    transaction_uid: str
    calling_ae: str
    success: tuple[SopRef, ...]
    failed: tuple[FailedRef, ...]
    #: the request's ``via``
    via: str = ""

    def payload(self) -> str:
        return json.dumps({"commitment": {
            "transaction_uid": self.transaction_uid, "calling_ae": self.calling_ae,
            "success": [list(r) for r in self.success],
            "failed": [list(r) for r in self.failed], "via": self.via}},
            separators=(",", ":"))

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> CommitmentReport:
        """``ValueError`` when ``payload`` is not what :meth:`payload` wrote."""
        body = payload.get("commitment")
        if not isinstance(body, dict):
            raise ValueError("no commitment object")
        try:
            return cls(str(body["transaction_uid"]), str(body["calling_ae"]),
                       tuple((str(c), str(u)) for c, u in body["success"]),
                       tuple((str(c), str(u), int(r)) for c, u, r in body["failed"]),
                       str(body.get("via") or ""))
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
                            tuple(failed), request.via)


def next_ask(current: Mapping[str, Any], transaction_uid: str, sent: bool, now: float,
             claim_seconds: float) -> dict[str, Any] | None:
    """The archive ask entry after recording an ask (see ``Store.record_commitment_ask``);
    None when a claim (``sent`` False with ``claim_seconds``) loses: the archive was asked
    already, or another process's claim is still fresh."""
    if not sent and claim_seconds > 0 and (
            current.get("sent") or now - float(current.get("claimed_at") or 0) < claim_seconds):
        return None
    return {"transaction_uid": transaction_uid, "sent": sent,
            "results": current.get("results"), "claimed_at": now if not sent else
            current.get("claimed_at")}


def encode_route_archives(archives: tuple[str, ...] | None) -> str | None:
    """How an instance keeps what its routes asked for (``instances.route_commitment``)."""
    return None if archives is None else json.dumps(list(archives))


def decode_route_archives(raw: str | None) -> tuple[str, ...] | None:
    return None if raw is None else tuple(str(a) for a in json.loads(raw))


@dataclass(frozen=True, slots=True)
class HeldInstance:
    """What deciding a commitment needs of one current journal row."""

    sop_class_uid: str
    journal_id: int
    routed: bool
    #: what the routes that matched it asked for when it was routed: None (no route said),
    #: () on_receipt, else the archives that must confirm it
    route_archives: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class CommitmentPlan:
    """The site's side of deciding (from the ``commitment`` settings): the default policy, its
    archives, and the archives that answer Storage Commitment themselves."""

    policy: Literal["on_receipt", "on_archive"] = "on_receipt"
    archives: tuple[str, ...] = ()
    committing: frozenset[str] = frozenset()

    def archives_for(self, policy: CommitmentPolicy, held: HeldInstance
                     ) -> tuple[str, ...] | None:
        """The destinations that must confirm ``held`` (empty: committed on receipt); None
        while routing has not told yet what its routes ask for (``by_route``)."""
        if policy == "on_receipt":
            return ()
        if policy == "on_archive":
            return self.archives
        if not held.routed:
            return None
        if held.route_archives is not None:
            return held.route_archives
        return self.archives if self.policy == "on_archive" else ()

    def needed(self, request: CommitmentRequest, journal: Mapping[str, HeldInstance]
               ) -> set[str]:
        """Every archive some instance of ``request`` waits for (known so far)."""
        out: set[str] = set()
        for _, uid in request.refs:
            held = journal.get(uid)
            if held is not None:
                out.update(self.archives_for(request.policy, held) or ())
        return out


def decide(request: CommitmentRequest, journal: Mapping[str, HeldInstance],
           confirmed: set[tuple[int, str]], expired: bool, plan: CommitmentPlan
           ) -> CommitmentReport | None:
    """The ``on_archive`` and ``by_route`` policies. ``journal``: SOP Instance UID -> the
    current journal row; ``confirmed``: (journal id, destination) pairs that destination
    delivered; an archive in ``plan.committing`` must also have confirmed it with its own
    Storage Commitment answer (``request.asks``). None while an instance is still on its way
    (or not routed yet) and the deadline has not passed; past it, what is unconfirmed fails
    with Processing Failure (never a silent success)."""
    success: list[SopRef] = []
    failed: list[FailedRef] = []
    waiting = False
    processing_failure = int(DimseStatus.PROCESSING_FAILURE)
    for sop_class, uid in request.refs:
        held = journal.get(uid)
        if held is None:
            failed.append((sop_class, uid, int(DimseStatus.NO_SUCH_OBJECT_INSTANCE)))
            continue
        if held.sop_class_uid != sop_class:
            failed.append((sop_class, uid, int(DimseStatus.CLASS_INSTANCE_CONFLICT)))
            continue
        needed = plan.archives_for(request.policy, held)
        reason: int | None = None
        if needed is not None and all((held.journal_id, d) in confirmed for d in needed):
            reason = 0
        for destination in needed if reason == 0 and needed else ():
            if destination not in plan.committing:
                continue
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
                            tuple(failed), request.via)
