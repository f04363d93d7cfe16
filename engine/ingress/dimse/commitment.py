"""The Storage Commitment Push Model SCP handler (N-ACTION): thin and synchronous.

:func:`handle_n_action` reads the Action Information (Transaction UID and the Referenced SOP
Sequence, PS3.4 J.3.2), records the request through the one bridge (the store decides an
``on_receipt`` request in the same transaction and queues its report in the outbox) and only
then answers Success: the request survives a restart from that moment. The N-EVENT-REPORT goes
later, from the dispatcher, on this association while the modality keeps it open (registered in
:class:`~engine.dicom.associations.OpenAssociations` once the N-ACTION response is sent) or on
a new one. A malformed request gets
a named failure status. It must not hold module state, talk SQL or ``await``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from engine.bridge import LoopBridge
from engine.dicom import wire
from engine.dicom.associations import OpenAssociations, serialize_messages
from engine.dicom.vr import is_valid_uid
from engine.durable.commitment import (
    CommitmentPlan,
    CommitmentRequest,
    CommitmentResult,
    SopRef,
)
from engine.durable.store import Store
from engine.errors import InvalidInput, RadflowError
from engine.observability.logging import get_logger
from engine.settings import CommitmentSettings
from engine.status import DimseStatus, error_comment

if TYPE_CHECKING:  # handlers.py binds these handlers, so a runtime import would be circular
    from engine.ingress.dimse.handlers import ListenerPolicy

log = get_logger("engine.ingress.dimse")

STORAGE_COMMITMENT_PUSH: Final = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE: Final = "1.2.840.10008.1.20.1.1"  # the well-known SOP Instance
_REQUEST_COMMITMENT: Final = 1  # Action Type ID
_MAX_REFS: Final = 65_535


class BadCommitmentRequest(InvalidInput):
    reason = "invalid_commitment_request"


@dataclass
class CommitmentProvider:
    """What the N-ACTION handler needs, bound once per engine."""

    bridge: LoopBridge
    store: Store
    settings: CommitmentSettings
    associations: OpenAssociations
    timeout: float
    #: the site's side of deciding (default policy, archives, archives that commit themselves)
    plan: CommitmentPlan = field(default_factory=CommitmentPlan)
    #: whether some route of the ruleset in use says how its instances are committed
    routes_say: Callable[[], bool] = lambda: False
    #: wakes the ``commitment`` queue's worker (the dispatcher's ``wake``), on the loop
    wake: Callable[[str | None], None] | None = None

    async def _record(self, request: CommitmentRequest) -> CommitmentResult:
        return await self.store.commit_commitment_request(request, self.plan, time.time())

    def responded(self) -> None:
        """The N-ACTION response is on its way: the report may follow now."""
        if self.wake is not None:
            self.bridge.post(self.wake, "commitment")

    def record(self, request: CommitmentRequest) -> CommitmentResult:
        return self.bridge.call(self._record(request), self.timeout)


def parse_request(info: Dataset, calling_ae: str, settings: CommitmentSettings,
                  now: float, routes_say: bool = False, via: str = "") -> CommitmentRequest:
    """The request in an N-ACTION's Action Information (``BadCommitmentRequest`` if unusable)."""
    try:
        transaction_uid = str(info.get("TransactionUID", "") or "").strip()
        items = info.get("ReferencedSOPSequence") or []
        refs: list[SopRef] = [(str(i.get("ReferencedSOPClassUID", "") or "").strip(),
                               str(i.get("ReferencedSOPInstanceUID", "") or "").strip())
                              for i in items]
    except Exception as exc:
        raise BadCommitmentRequest(f"undecodable Action Information: {exc}") from exc
    if not is_valid_uid(transaction_uid):
        raise BadCommitmentRequest("Transaction UID missing or not a UID")
    if not refs or len(refs) > _MAX_REFS:
        raise BadCommitmentRequest("Referenced SOP Sequence empty or too long")
    for sop_class, uid in refs:
        if not is_valid_uid(sop_class) or not is_valid_uid(uid):
            raise BadCommitmentRequest("a Referenced SOP Sequence item lacks a valid UID")
    policy = settings.policy_for(calling_ae, routes_say)
    deadline = now + settings.archive_timeout_minutes * 60 if policy != "on_receipt" else None
    return CommitmentRequest(transaction_uid, calling_ae, policy, tuple(refs),
                             dt.datetime.fromtimestamp(now, dt.UTC).isoformat(), deadline,
                             via=via)


def _failure(status: DimseStatus, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = int(status)
    ds.ErrorComment = comment[:64]
    return ds


def handle_n_action(event: Event, policy: ListenerPolicy, commitment: CommitmentProvider
                    ) -> tuple[int | Dataset, Dataset | None]:
    """EVT_N_ACTION for the Storage Commitment Push Model SOP Class."""
    calling = str(event.assoc.requestor.ae_title).strip()
    # Before this response goes out: the report it wakes must follow it, whole, and a
    # dispatcher that claims the report before then must wait for it.
    serialize_messages(event.assoc)
    commitment.associations.answering(calling, event.assoc)
    request = event.request
    if int(getattr(request, "ActionTypeID", 0) or 0) != _REQUEST_COMMITMENT:
        log.warning("ingress.dimse.commitment.failed", listener=policy.name,
                    calling_ae=calling, reason="no_such_action_type")
        return _failure(DimseStatus.NO_SUCH_ACTION_TYPE, "Action Type ID must be 1"), None
    try:
        parsed = parse_request(event.action_information, calling, commitment.settings,
                               time.time(), commitment.routes_say(),
                               commitment.associations.owner)
        result = commitment.record(parsed)
    except Exception as exc:
        status = DimseStatus.INVALID_ATTRIBUTE_VALUE if isinstance(exc, InvalidInput) \
            else DimseStatus.PROCESSING_FAILURE
        reason = exc.reason if isinstance(exc, RadflowError) else "internal_error"
        log_fn = log.warning if isinstance(exc, RadflowError) else log.exception
        log_fn("ingress.dimse.commitment.failed", listener=policy.name, calling_ae=calling,
               reason=reason, status=f"0x{int(status):04X}", detail=str(exc))
        return _failure(status, error_comment(exc)), None
    log.info("ingress.dimse.commitment.requested", listener=policy.name, calling_ae=calling,
             transaction_uid=parsed.transaction_uid, instances=len(parsed.refs),
             policy=parsed.policy, duplicate=result.duplicate,
             failed=len(result.report.failed) if result.report else None)
    return int(DimseStatus.SUCCESS), None


def archive_results(info: Dataset) -> tuple[str, dict[str, int]]:
    """(Transaction UID, SOP Instance UID -> Failure Reason or 0) of an archive's report."""
    try:
        transaction_uid = str(info.get("TransactionUID", "") or "").strip()
        results = {str(i.ReferencedSOPInstanceUID): 0
                   for i in info.get("ReferencedSOPSequence") or []}
        for item in info.get("FailedSOPSequence") or []:
            reason = item.get("FailureReason")
            results[str(item.ReferencedSOPInstanceUID)] = \
                int(reason) if reason else int(DimseStatus.PROCESSING_FAILURE)
    except Exception as exc:
        raise BadCommitmentRequest(f"undecodable Event Information: {exc}") from exc
    if not is_valid_uid(transaction_uid):
        raise BadCommitmentRequest("Transaction UID missing or not a UID")
    return transaction_uid, results


def handle_n_event_report(event: Event, policy: ListenerPolicy,
                          commitment: CommitmentProvider) -> tuple[int | Dataset, None]:
    """EVT_N_EVENT_REPORT: an archive answers the commitment radflow asked it for (``on_archive``
    relays it to the modality)."""
    calling = str(event.assoc.requestor.ae_title).strip()
    try:
        transaction_uid, results = archive_results(event.event_information)
        known = commitment.bridge.call(
            commitment.store.record_archive_commitment(transaction_uid, results),
            commitment.timeout)
    except Exception as exc:
        status = DimseStatus.INVALID_ATTRIBUTE_VALUE if isinstance(exc, InvalidInput) \
            else DimseStatus.PROCESSING_FAILURE
        reason = exc.reason if isinstance(exc, RadflowError) else "internal_error"
        log.warning("ingress.dimse.commitment.archive_report_failed", listener=policy.name,
                    calling_ae=calling, reason=reason, detail=str(exc))
        return _failure(status, error_comment(exc)), None
    log_fn = log.info if known else log.warning
    log_fn("ingress.dimse.commitment.archive_reported", listener=policy.name,
           calling_ae=calling, archive_transaction_uid=transaction_uid, known=known,
           committed=sum(1 for r in results.values() if r == 0),
           failed=sum(1 for r in results.values() if r != 0))
    return int(DimseStatus.SUCCESS), None


@wire.blind_to_direct_responses  # it looks at N-ACTION responses only
def handle_dimse_sent(event: Event, commitment: CommitmentProvider) -> None:
    """After the N-ACTION response went out, offer this association for the report: sent
    earlier, the report would reach the modality before the answer it is waiting for."""
    if type(event.message).__name__ != "N_ACTION_RSP":
        return
    commitment.associations.add(str(event.assoc.requestor.ae_title).strip(), event.assoc)
    commitment.responded()


def handle_conn_close(event: Event, commitment: CommitmentProvider) -> None:
    commitment.associations.remove(event.assoc)
