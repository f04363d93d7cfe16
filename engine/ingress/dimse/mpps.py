"""The Modality Performed Procedure Step SCP handlers (N-CREATE, N-SET): thin and synchronous.

Each handler runs on the association's thread: it decodes the request's Attribute List
(N-CREATE) or Modification List (N-SET; pynetdicom's ``event.attribute_list`` is empty for an
N-SET), makes the pure PS3.4 Annex F checks of :mod:`engine.procedure.model` there, and hands
the commit to :class:`~engine.procedure.service.ProcedureStepService` on the loop through the
one bridge. It answers only after the commit returned; a refusal becomes a named status from
``engine.status`` (:func:`~engine.status.mpps_status_for`). It must not hold module state,
talk SQL or ``await``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.dimse_primitives import N_CREATE, N_SET
from pynetdicom.events import Event

from engine.bridge import LoopBridge
from engine.errors import (
    InvalidAttributeValue,
    MalformedDataset,
    MissingAttribute,
    ProcedureStepError,
    ProcedureStepFinal,
    RadflowError,
)
from engine.observability.logging import get_logger
from engine.observability.metrics import MPPS_REQUESTS, MPPS_SECONDS
from engine.procedure.model import check_create, dataset_from_json
from engine.procedure.service import ProcedureStepService
from engine.status import (
    PPS_FINAL_ERROR_COMMENT,
    PPS_FINAL_ERROR_ID,
    DimseStatus,
    error_comment,
    mpps_status_for,
)

if TYPE_CHECKING:  # handlers.py binds these handlers, so a runtime import would be circular
    from engine.ingress.dimse.handlers import ListenerPolicy

log = get_logger("engine.ingress.dimse")

MppsAnswer = tuple[int | Dataset, Dataset | None]
MODALITY_PERFORMED_PROCEDURE_STEP = "1.2.840.10008.3.1.2.3.3"


@dataclass(frozen=True)
class MppsProvider:
    """What the MPPS handlers need, bound once per listener."""

    bridge: LoopBridge
    service: ProcedureStepService
    timeout: float


def _decode(ds: Dataset) -> Dataset:
    """Force pydicom's deferred decoding here, where a broken encoding can still be answered
    with a status (pynetdicom's lists decode lazily, element by element)."""
    try:
        for elem in ds.iterall():
            _ = elem.value
    except Exception as exc:
        raise MalformedDataset(f"undecodable dataset: {exc}") from exc
    return ds


def _failure(exc: BaseException, *, with_tags: bool) -> Dataset:
    status = mpps_status_for(exc)
    answer = Dataset()
    answer.Status = int(status)
    if isinstance(exc, ProcedureStepFinal):
        answer.ErrorComment = PPS_FINAL_ERROR_COMMENT
        answer.ErrorID = PPS_FINAL_ERROR_ID
    else:
        answer.ErrorComment = error_comment(exc)
    if with_tags and isinstance(exc, ProcedureStepError) and exc.tags:
        # N-SET-RSP only: pynetdicom's N-CREATE-RSP has no Attribute Identifier List.
        answer.AttributeIdentifierList = list(exc.tags)
    return answer


def _refused(operation: str, exc: BaseException, policy: ListenerPolicy, calling: str,
             uid: str) -> None:
    reason = exc.reason if isinstance(exc, RadflowError) else "internal_error"
    MPPS_REQUESTS.labels(operation, reason).inc()
    log_fn = log.warning if isinstance(exc, RadflowError) else log.exception
    log_fn(f"ingress.dimse.n_{operation}.refused", listener=policy.name, reason=reason,
           status=f"0x{int(mpps_status_for(exc)):04X}", detail=str(exc)[:200],
           calling_ae=calling, sop_instance_uid=uid[:64])


def handle_n_create(event: Event, policy: ListenerPolicy, mpps: MppsProvider) -> MppsAnswer:
    """EVT_N_CREATE for Modality Performed Procedure Step (PS3.4 F.7.2.1)."""
    started = time.perf_counter()
    request = cast(N_CREATE, event.request)
    calling = event.assoc.requestor.ae_title
    given = request.AffectedSOPInstanceUID
    # PS3.7 10.1.5.1.4: the SCP assigns the UID when the request has none (and says which).
    uid = str(given) if given else generate_uid()
    try:
        attributes = _decode(event.attribute_list)
        if not len(attributes):
            raise MissingAttribute("empty Attribute List")
        new = check_create(uid, attributes, calling_ae=calling,
                           received_at=datetime.now(UTC).isoformat(timespec="milliseconds"))
        step = mpps.bridge.call(mpps.service.create(new), mpps.timeout)
    except Exception as exc:
        _refused("create", exc, policy, calling, uid)
        return _failure(exc, with_tags=False), None
    finally:
        MPPS_SECONDS.labels("create").observe(time.perf_counter() - started)
    MPPS_REQUESTS.labels("create", step.status.value).inc()
    # The N-CREATE-RSP Attribute List: the attributes as created (PS3.7 10.1.5.1.6).
    answer = dataset_from_json(step.dataset_json)
    if not given:
        answer.AffectedSOPInstanceUID = uid  # pynetdicom moves it into the response command
    return int(DimseStatus.SUCCESS), answer


def handle_n_set(event: Event, policy: ListenerPolicy, mpps: MppsProvider) -> MppsAnswer:
    """EVT_N_SET for Modality Performed Procedure Step (PS3.4 F.7.2.2)."""
    started = time.perf_counter()
    request = cast(N_SET, event.request)
    calling = event.assoc.requestor.ae_title
    uid = str(request.RequestedSOPInstanceUID or "")
    try:
        # The Modification List: what the N-SET changes (never event.attribute_list).
        modification = _decode(event.modification_list)
        if "PerformedProcedureStepStatus" in modification and \
                not str(modification.PerformedProcedureStepStatus or "").strip():
            raise InvalidAttributeValue("empty PerformedProcedureStepStatus")
        step = mpps.bridge.call(mpps.service.set(uid, modification), mpps.timeout)
    except Exception as exc:
        _refused("set", exc, policy, calling, uid)
        return _failure(exc, with_tags=True), None
    finally:
        MPPS_SECONDS.labels("set").observe(time.perf_counter() - started)
    MPPS_REQUESTS.labels("set", step.status.value).inc()
    # The N-SET-RSP Attribute List: the modified attributes as now stored (PS3.7 10.1.3.1.6).
    current = dataset_from_json(step.dataset_json)
    answer = Dataset()
    for elem in modification:
        if elem.tag in current:
            answer[elem.tag] = current[elem.tag]
    return int(DimseStatus.SUCCESS), answer
