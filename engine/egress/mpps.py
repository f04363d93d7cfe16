"""MPPS forwarder: N-CREATE / N-SET of Modality Performed Procedure Steps to another MPPS SCP.

Owns the association to the peer (one per worker, reused, released when idle), the rebuilding
of the request from the row's ``mpps`` payload (``operation``, ``sop_instance_uid`` and the
attributes as DICOM JSON) and the classification of the response status. An N-CREATE answered
"Duplicate SOP Instance" (0x0111) counts as delivered: it is the retry of a create whose
response was lost, and the step exists there. Rows of one step must arrive in order (create,
then sets): give the destination ``concurrency: 1`` or ``per_study_order``. It must not decide
retries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import build_context
from pynetdicom.association import Association
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

from engine.dicom.vr import is_valid_uid
from engine.dicom.wire import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from engine.egress.classify import Verdict, classify_dimse
from engine.egress.delivery import Delivery, SendOutcome, failed
from engine.egress.dimse import _quiet_reactor, open_association, verify
from engine.egress.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from engine.observability.logging import get_logger
from engine.reactor import EventDrivenAE
from engine.settings import MppsDestination
from engine.status import DimseStatus
from engine.tls import client_ssl_context

log = get_logger("engine.egress.mpps")

_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


def mpps_request(delivery: Delivery) -> tuple[str, str, Dataset]:
    """(operation, SOP Instance UID, attributes) from the row; permanent error if malformed."""
    body = delivery.payload.get("mpps")
    if not isinstance(body, dict):
        raise PermanentDeliveryError(f"outbox row {delivery.row_id}: no mpps object",
                                     reason="bad_payload")
    operation = body.get("operation")
    uid = body.get("sop_instance_uid")
    if operation not in ("create", "set") or not isinstance(uid, str) or not is_valid_uid(uid):
        raise PermanentDeliveryError("mpps needs operation create|set and a sop_instance_uid",
                                     reason="bad_payload")
    try:
        ds = Dataset.from_json(body.get("dataset") or {})
    except Exception as exc:
        raise PermanentDeliveryError(f"mpps dataset is not DICOM JSON: {exc}",
                                     reason="bad_payload") from exc
    return str(operation), uid, ds


class MppsSender:
    """One worker's MPPS SCU for one destination (blocking work on a thread)."""

    max_batch = 16

    def __init__(self, name: str, config: MppsDestination) -> None:
        self.name = name
        self.config = config
        self._ae = EventDrivenAE(ae_title=config.calling_ae_title)
        self._ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        self._ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        self._ae.acse_timeout = config.timeout
        self._ae.dimse_timeout = config.timeout
        self._ae.network_timeout = config.timeout
        self._ae.connection_timeout = min(config.timeout, 15.0)
        self._tls = ((client_ssl_context(config.tls), config.tls.server_hostname or config.host)
                     if config.tls else None)
        self._assoc: Association | None = None
        self._last_used = 0.0

    async def send(self, batch: Sequence[Delivery]) -> list[SendOutcome]:
        return await asyncio.to_thread(self._send_batch, batch)

    async def idle(self) -> None:
        if self._assoc is not None and time.monotonic() - self._last_used >= 5.0:
            await asyncio.to_thread(self._release)

    async def close(self) -> None:
        await asyncio.to_thread(self._close_sync)

    def _close_sync(self) -> None:
        self._ae.refuse_new()  # a batch still running must not open another association
        self._release()
        # A batch cancelled at shutdown may still be negotiating on its thread.
        self._ae.abort_all()

    async def check(self) -> str:
        """C-ECHO with this destination's AE titles, TLS and timeouts."""
        return await asyncio.to_thread(verify, self._ae, self.config.host, self.config.port,
                                       ae_title=self.config.ae_title, tls=self._tls)

    def _send_batch(self, batch: Sequence[Delivery]) -> list[SendOutcome]:
        out: list[SendOutcome] = []
        for i, delivery in enumerate(batch):
            outcome = self._send_one(delivery)
            out.append(outcome)
            if outcome.error is not None and outcome.error.transient:
                # Steps must stay in order: what follows waits with the failed one.
                held = TransientDeliveryError("held back behind a failed MPPS message",
                                              reason="held_back")
                out += [failed(held) for _ in batch[i + 1:]]
                break
        self._last_used = time.monotonic()
        return out

    def _send_one(self, delivery: Delivery) -> SendOutcome:
        started = time.perf_counter()
        try:
            operation, uid, ds = mpps_request(delivery)
            assoc = self._association()
            if operation == "create":
                status, _attrs = assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
            else:
                status, _attrs = assoc.send_n_set(ds, ModalityPerformedProcedureStep, uid)
            code = getattr(status, "Status", None)
            if code is None:
                self._abort()
                raise TransientDeliveryError(f"no N-{operation.upper()} response",
                                             reason="association_lost")
        except DeliveryError as exc:
            return failed(exc, time.perf_counter() - started)
        except (RuntimeError, OSError) as exc:
            self._abort()
            return failed(TransientDeliveryError(f"MPPS association failed: {exc}",
                                                 reason="association_lost"),
                          time.perf_counter() - started)
        code = int(code)
        seconds = time.perf_counter() - started
        notes: dict[str, Any] = {"operation": operation, "status": f"0x{code:04X}"}
        verdict = classify_dimse(code)
        if operation == "create" and code == DimseStatus.DUPLICATE_SOP_INSTANCE:
            verdict = Verdict.DELIVERED  # a resent create: the step is already there
        if verdict is Verdict.DELIVERED:
            return SendOutcome(None, seconds, notes)
        cls = PermanentDeliveryError if verdict is Verdict.PERMANENT else TransientDeliveryError
        return SendOutcome(cls(f"N-{operation.upper()} answered 0x{code:04X}",
                               reason=f"status_{code:04x}", status=code), seconds, notes)

    def _association(self) -> Association:
        if self._assoc is not None and self._assoc.is_established:
            return self._assoc
        cfg = self.config
        assoc = open_association(
            self._ae, cfg.host, cfg.port, ae_title=cfg.ae_title,
            contexts=[build_context(ModalityPerformedProcedureStep, _SYNTAXES)], tls=self._tls)
        if not assoc.accepted_contexts:
            assoc.release()
            raise TransientDeliveryError(
                f"MPPS refused by {cfg.ae_title}@{cfg.host}:{cfg.port} (presentation context "
                "rejected)", reason="association_rejected")
        _quiet_reactor(assoc)
        self._assoc = assoc
        return assoc

    def _release(self) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is not None and assoc.is_established:
            try:
                assoc.release()
            except Exception:
                assoc.abort()

    def _abort(self) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is not None and not assoc.is_aborted:
            assoc.abort()
