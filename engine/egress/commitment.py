"""Storage Commitment reports (N-EVENT-REPORT) to modalities: the ``commitment`` destination.

Each outbox row holds one report (``engine.durable.commitment.CommitmentReport``). It goes on
the association the modality asked on while that is still open (PS3.4 J.3.3; found in
:class:`~engine.dicom.associations.OpenAssociations`), else on a new association to the
address configured for the modality's AE title, on which radflow proposes the SCP role by
SCP/SCU Role Selection (PS3.4 J.3.3, PS3.7 D.3.3.4). No open association and no address, a
refused association or a failure status are transient: the dispatcher retries (the modality
may come back) until its policy gives up. Event Type 1 when everything is committed, 2 when
something failed (the Failed SOP Sequence carries each Failure Reason). It must not decide
retries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Final

from pydicom.dataset import Dataset
from pynetdicom import build_context, build_role
from pynetdicom.association import Association

from engine.dicom.associations import OpenAssociations
from engine.dicom.wire import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from engine.durable.commitment import CommitmentReport
from engine.egress.classify import Verdict, classify_dimse
from engine.egress.delivery import Delivery, SendOutcome, failed
from engine.egress.dimse import _quiet_reactor
from engine.egress.errors import (
    DeliveryError,
    NotHereDeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from engine.observability.logging import get_logger
from engine.reactor import EventDrivenAE
from engine.settings import CommitmentReports, DimseDestination
from engine.tls import client_ssl_context

log = get_logger("engine.egress.commitment")

STORAGE_COMMITMENT_PUSH: Final = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE: Final = "1.2.840.10008.1.20.1.1"
_SYNTAXES: Final = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
#: seconds before a report left to another process is offered again
_NOT_HERE_RETRY: Final = 0.5
#: The N-ACTION response is being sent (milliseconds away) when its report was claimed.
_ANSWERING_RETRY: Final = 0.1
_ALL_COMMITTED: Final = 1
_SOME_FAILED: Final = 2


def event_information(report: CommitmentReport) -> tuple[int, Dataset]:
    """(Event Type ID, Event Information) of a report (PS3.4 J.3.3.1)."""
    ds = Dataset()
    ds.TransactionUID = report.transaction_uid
    if report.success:
        items = []
        for sop_class, uid in report.success:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = uid
            items.append(item)
        ds.ReferencedSOPSequence = items
    if report.failed:
        failures = []
        for sop_class, uid, reason in report.failed:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = uid
            item.FailureReason = reason
            failures.append(item)
        ds.FailedSOPSequence = failures
    return (_SOME_FAILED if report.failed else _ALL_COMMITTED), ds


class CommitmentSender:
    """One worker's sender of commitment reports (blocking work on a thread)."""

    max_batch = 8

    def __init__(self, name: str, config: CommitmentReports,
                 associations: OpenAssociations | None) -> None:
        self.name = name
        self.config = config
        self._associations = associations or OpenAssociations()
        self._ae = EventDrivenAE(ae_title=config.calling_ae_title)
        self._ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        self._ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        self._ae.acse_timeout = config.timeout
        self._ae.dimse_timeout = config.timeout
        self._ae.network_timeout = config.timeout
        self._ae.connection_timeout = min(config.timeout, 15.0)
        self._addresses = {m.ae_title: (m.host, m.port) for m in config.modalities
                           if m.host is not None and m.port is not None}

    async def send(self, batch: Sequence[Delivery]) -> list[SendOutcome]:
        return await asyncio.to_thread(lambda: [self._send_one(d) for d in batch])

    async def idle(self) -> None:
        return None

    async def close(self) -> None:
        # A report cancelled at shutdown may still be negotiating a new association; the
        # rest of its batch must not open another.
        self._ae.refuse_new()
        await asyncio.to_thread(self._ae.abort_all)

    def _send_one(self, delivery: Delivery) -> SendOutcome:
        started = time.perf_counter()
        try:
            report = CommitmentReport.from_payload(delivery.payload)
        except ValueError as exc:
            return failed(PermanentDeliveryError(f"outbox row {delivery.row_id}: {exc}",
                                                 reason="bad_payload"))
        event_type, info = event_information(report)
        notes: dict[str, Any] = {"calling_ae": report.calling_ae, "event_type": event_type,
                                 "transaction_uid": report.transaction_uid}
        try:
            open_assoc = self._associations.find(report.calling_ae, STORAGE_COMMITMENT_PUSH)
            if open_assoc is None and self._elsewhere(report, delivery):
                return failed(NotHereDeliveryError(
                    f"{report.calling_ae} asked on {report.via}, which may hold its "
                    "association open", retry_in=_NOT_HERE_RETRY))
            if open_assoc is None and self._associations.is_answering(report.calling_ae):
                # Committed and claimed (a database notification can be that quick) before
                # the N-ACTION response left: the report goes after it, on that association.
                return failed(NotHereDeliveryError(
                    f"{report.calling_ae}'s N-ACTION response is still on its way",
                    retry_in=_ANSWERING_RETRY))
            if open_assoc is not None:
                notes["association"] = "kept_open"
                code = self._report(open_assoc, event_type, info)
            else:
                notes["association"] = "new"
                code = self._report_on_new(report.calling_ae, event_type, info)
        except DeliveryError as exc:
            return failed(exc, time.perf_counter() - started)
        except (RuntimeError, OSError, ValueError) as exc:
            return failed(TransientDeliveryError(f"N-EVENT-REPORT failed: {exc}",
                                                 reason="association_lost"),
                          time.perf_counter() - started)
        notes["status"] = f"0x{code:04X}"
        seconds = time.perf_counter() - started
        if classify_dimse(code) is Verdict.DELIVERED:
            log.info("egress.commitment.reported", **notes)
            return SendOutcome(None, seconds, notes)
        # A modality that refuses the report today may take it tomorrow; it never becomes
        # a success by giving up, so retry like any delivery.
        return SendOutcome(TransientDeliveryError(
            f"N-EVENT-REPORT answered 0x{code:04X}", reason=f"status_{code:04x}",
            status=code), seconds, notes)

    def _elsewhere(self, report: CommitmentReport, delivery: Delivery) -> bool:
        """Another process took this request (several workers or nodes): leave the report to
        it for a while, since the modality may be waiting on that process's association (an
        association only the process that accepted it can write to); after
        ``worker_wait_seconds`` (that process died, or the modality left) anyone sends it."""
        if not report.via or report.via == self._associations.owner:
            return False
        return time.time() - delivery.created_at < self.config.worker_wait_seconds

    @staticmethod
    def _report(assoc: Association, event_type: int, info: Dataset) -> int:
        status, _reply = assoc.send_n_event_report(
            info, event_type, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE)
        code = getattr(status, "Status", None)
        if code is None:
            raise TransientDeliveryError("no N-EVENT-REPORT response", reason="no_response")
        return int(code)

    def _report_on_new(self, calling_ae: str, event_type: int, info: Dataset) -> int:
        address = self._addresses.get(calling_ae)
        if address is None:
            raise TransientDeliveryError(
                f"{calling_ae} closed its association and has no address under "
                "commitment.modalities", reason="no_address")
        host, port = address
        try:
            assoc = self._ae.associate(
                host, port, ae_title=calling_ae,
                contexts=[build_context(STORAGE_COMMITMENT_PUSH, _SYNTAXES)],
                ext_neg=[build_role(STORAGE_COMMITMENT_PUSH, scp_role=True)])
        except (OSError, RuntimeError, ValueError) as exc:
            raise TransientDeliveryError(f"{calling_ae}@{host}:{port} unreachable: {exc}",
                                         reason="unreachable") from exc
        if not assoc.is_established:
            raise TransientDeliveryError(f"{calling_ae}@{host}:{port} refused the association",
                                         reason="association_rejected")
        _quiet_reactor(assoc)  # it only sends: every message it gets is the awaited response
        try:
            if not assoc.accepted_contexts:
                raise TransientDeliveryError(
                    f"{calling_ae} does not accept Storage Commitment reports",
                    reason="context_rejected")
            return self._report(assoc, event_type, info)
        finally:
            if assoc.is_established:
                assoc.release()


def ask_commitment(config: DimseDestination, transaction_uid: str,
                   refs: Sequence[tuple[str, str]]) -> None:
    """radflow as Storage Commitment SCU: N-ACTION to an archive for instances it delivered
    (blocking). The archive answers later with an N-EVENT-REPORT to radflow's listener (the
    association is released at once, so an archive that would answer on it opens a new one,
    as PS3.4 J.3.3 allows). Raises :class:`TransientDeliveryError` when it cannot ask."""
    ae = EventDrivenAE(ae_title=config.calling_ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    for attr in ("acse_timeout", "dimse_timeout", "network_timeout"):
        setattr(ae, attr, config.timeout)
    ae.connection_timeout = min(config.timeout, 15.0)
    tls = ((client_ssl_context(config.tls), config.tls.server_hostname or config.host)
           if config.tls else None)
    where = f"{config.ae_title}@{config.host}:{config.port}"
    try:
        assoc = ae.associate(config.host, config.port, ae_title=config.ae_title,
                             contexts=[build_context(STORAGE_COMMITMENT_PUSH, _SYNTAXES)],
                             tls_args=tls)
    except (OSError, RuntimeError, ValueError) as exc:
        raise TransientDeliveryError(f"{where} unreachable: {exc}", reason="unreachable") \
            from exc
    if not assoc.is_established:
        raise TransientDeliveryError(f"{where} refused the association",
                                     reason="association_rejected")
    _quiet_reactor(assoc)
    try:
        if not assoc.accepted_contexts:
            raise TransientDeliveryError(f"{where} does not offer Storage Commitment",
                                         reason="context_rejected")
        info = Dataset()
        info.TransactionUID = transaction_uid
        items = []
        for sop_class, uid in refs:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = uid
            items.append(item)
        info.ReferencedSOPSequence = items
        status, _reply = assoc.send_n_action(info, 1, STORAGE_COMMITMENT_PUSH,
                                             STORAGE_COMMITMENT_INSTANCE)
        code = getattr(status, "Status", None)
        if code is None or classify_dimse(int(code)) is not Verdict.DELIVERED:
            raise TransientDeliveryError(f"{where} answered the N-ACTION with "
                                         f"{'nothing' if code is None else hex(int(code))}",
                                         reason="commitment_refused")
    finally:
        if assoc.is_established:
            assoc.release()
