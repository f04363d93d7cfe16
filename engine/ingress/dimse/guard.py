"""Every DIMSE request on a radflow listener gets an answer: a failure status with an Error
Comment, or an A-ABORT with a logged reason.

pynetdicom drops a request whose command set lacks a parameter the service requires (an empty
Affected SOP Instance UID in a C-STORE-RQ decodes as "absent") with a debug log line and no
response, so the sender waits out its own timeout and radflow shows nothing; and it aborts on a
command set it cannot turn into a primitive (a UID longer than 64 characters, say) with only its
own logger's line. This module owns those cases for an acceptor association: a request whose
parameters are missing, or present but refused by pynetdicom's checks, is answered with the
status :data:`_FAILURE` names for the service (``engine.status``), echoing the Message ID, and
the association goes on; only a command set that names no request or no Message ID still ends
in pynetdicom's abort, logged and counted here first. It must not judge valid requests (the
handlers do) nor change anything on the wire for them.

Installed per association from the ``EVT_CONN_OPEN`` handler, by wrapping two of the
association's bound methods and each incoming message's conversion (pynetdicom offers no hook
for any of them); the unit tests pin the pynetdicom internals used.
"""

from __future__ import annotations

from typing import Any

from pynetdicom.association import Association
from pynetdicom.dimse_messages import (
    _DATASET_KEYWORDS,
    _MSG_TO_PRIMITVE,
    _MULTIVALUE_TAGS,
    DIMSEMessage,
)
from pynetdicom.dimse_primitives import (
    C_ECHO,
    C_FIND,
    C_GET,
    C_MOVE,
    C_STORE,
    N_ACTION,
    N_CREATE,
    N_DELETE,
    N_EVENT_REPORT,
    N_GET,
    N_SET,
)

from engine.observability.logging import get_logger
from engine.observability.metrics import DIMSE_REJECTIONS
from engine.status import DimseStatus

log = get_logger("engine.ingress.dimse")

# The C-services' own failure range (PS3.4 B.2.3 "Cannot understand", C.4.1.1.4 "Unable to
# process": Cxxx); for C-ECHO and the DIMSE-N services the general "Processing failure"
# (PS3.7 C.4), which every SCU understands as failure.
_FAILURE: dict[type, DimseStatus] = {
    C_STORE: DimseStatus.CANNOT_UNDERSTAND,
    C_FIND: DimseStatus.CANNOT_UNDERSTAND,
    C_GET: DimseStatus.CANNOT_UNDERSTAND,
    C_MOVE: DimseStatus.CANNOT_UNDERSTAND,
    C_ECHO: DimseStatus.PROCESSING_FAILURE,
    N_EVENT_REPORT: DimseStatus.PROCESSING_FAILURE,
    N_GET: DimseStatus.PROCESSING_FAILURE,
    N_SET: DimseStatus.PROCESSING_FAILURE,
    N_ACTION: DimseStatus.PROCESSING_FAILURE,
    N_CREATE: DimseStatus.PROCESSING_FAILURE,
    N_DELETE: DimseStatus.PROCESSING_FAILURE,
}
# What a response echoes of its request (PS3.7 9.3, 10.3): DIMSE-N responses name the
# requested SOP class and instance as the affected ones.
_ECHOED = {"AffectedSOPClassUID": "AffectedSOPClassUID",
           "AffectedSOPInstanceUID": "AffectedSOPInstanceUID",
           "RequestedSOPClassUID": "AffectedSOPClassUID",
           "RequestedSOPInstanceUID": "AffectedSOPInstanceUID"}
_NAMES = {"AffectedSOPClassUID": "Affected SOP Class UID",
          "AffectedSOPInstanceUID": "Affected SOP Instance UID",
          "RequestedSOPClassUID": "Requested SOP Class UID",
          "RequestedSOPInstanceUID": "Requested SOP Instance UID",
          "MessageID": "Message ID", "Priority": "Priority", "DataSet": "Data Set",
          "Identifier": "Identifier", "MoveDestination": "Move Destination",
          "ModificationList": "Modification List", "ActionTypeID": "Action Type ID",
          "EventTypeID": "Event Type ID"}


def missing_parameters(msg: Any) -> list[str]:
    """The parameters the request's service requires that it lacks (empty counts as lacking:
    pynetdicom decodes an empty UID as absent)."""
    return [keyword for keyword in getattr(msg, "REQUEST_KEYWORDS", ())
            if getattr(msg, keyword, None) is None]


def install(assoc: Association, listener: str) -> None:
    """Answer or log every malformed request on ``assoc`` (an acceptor whose threads have
    not started)."""
    serve = assoc._serve_request
    dimse = assoc.dimse
    receive = dimse.receive_primitive

    def serve_request(msg: Any, context_id: int) -> None:
        if type(msg) in _FAILURE and msg.MessageIDBeingRespondedTo is None \
                and (getattr(msg, "_radflow_invalid", None) or not msg.is_valid_request):
            _answer_invalid(assoc, listener, msg, context_id)
            return
        serve(msg, context_id)

    def receive_primitive(primitive: Any) -> None:
        # pynetdicom's own receive_primitive decodes the message and, on success, resets
        # ``dimse.message``. A message whose command set was complete (``decode_msg`` True)
        # but is still there afterwards failed to become a primitive: pynetdicom has queued
        # Evt19 (an A-ABORT) and logged only to its own logger.
        message = dimse.message
        if message is None:
            message = dimse.message = DIMSEMessage()
        completed: list[bool] | None = message.__dict__.get("_radflow_completed")
        if completed is None:  # wrapped once per message, not once per fragment
            completed = [False]
            decode = message.decode_msg

            def decode_msg(p: Any, a: Any = None) -> bool:
                assert completed is not None
                completed[0] = decode(p, a)
                return completed[0]

            message.decode_msg = decode_msg  # type: ignore[method-assign,assignment]
            message._radflow_completed = completed  # type: ignore[attr-defined]
            message.message_to_primitive = _lenient(message)  # type: ignore[method-assign]
        receive(primitive)
        if completed[0] and dimse.message is message:
            command = getattr(message, "command_set", None)
            DIMSE_REJECTIONS.labels(listener, "invalid_command").inc()
            log.warning("ingress.dimse.request.aborted", listener=listener,
                        reason="invalid_command", request=type(message).__name__,
                        message_id=getattr(command, "MessageID", None),
                        **_peer(assoc))

    assoc._serve_request = serve_request  # type: ignore[method-assign]
    dimse.receive_primitive = receive_primitive  # type: ignore[method-assign]


def _lenient(message: DIMSEMessage) -> Any:
    """``message.message_to_primitive``, except that a request whose parameters pynetdicom
    refuses becomes a primitive without them, marked with what was refused, instead of an
    exception (which pynetdicom answers with an A-ABORT). The association thread then answers
    it like any other invalid request, in order with the responses already on their way: the
    answer must not be sent from the reading thread."""
    convert = message.message_to_primitive

    def message_to_primitive() -> Any:
        try:
            return convert()
        except (ValueError, TypeError) as exc:
            primitive = _salvage(message)
            if primitive is None:
                raise
            log.debug("ingress.dimse.request.unconvertible", error=str(exc)[:200])
            return primitive

    return message_to_primitive


def invalid_reason(exc: BaseException) -> str:
    """pynetdicom's reason for refusing a value, without the value (peer text of any length):
    "Invalid 'X' value '...' - must not exceed 64 characters" gives the part after the dash."""
    text = str(exc)
    reason = text.rsplit(" - ", 1)[1] if " - " in text else type(exc).__name__
    return reason.strip()[:64]


def _salvage(message: DIMSEMessage) -> Any:
    """A request primitive carrying every parameter of ``message`` that pynetdicom accepts,
    with ``_radflow_invalid`` naming the refused ones and why; None when the message is not a
    request radflow can answer (a response, C-CANCEL, no Message ID) or nothing was refused."""
    name = type(message).__name__
    if not name.endswith("_RQ") or name[:-3] not in _MSG_TO_PRIMITVE:
        return None
    primitive: Any = _MSG_TO_PRIMITVE[name[:-3]]()
    if type(primitive) not in _FAILURE:
        return None
    invalid: dict[str, str] = {}
    for elem in message.command_set:
        if not hasattr(primitive, elem.keyword):
            continue
        value = elem.value
        if elem.VM > 1 and elem.tag not in _MULTIVALUE_TAGS:  # as pynetdicom does
            value = value[0]
        try:
            setattr(primitive, elem.keyword, value)
        except (ValueError, TypeError) as exc:
            invalid[elem.keyword] = invalid_reason(exc)
    if not invalid or primitive.MessageID is None:
        return None
    keyword = _DATASET_KEYWORDS.get(name)
    if keyword is not None:
        setattr(primitive, keyword, message.data_set)
    primitive._context_id = message.context_id
    primitive._radflow_invalid = invalid
    return primitive


def _peer(assoc: Association) -> dict[str, str]:
    primitive = assoc.requestor.primitive
    calling = str(primitive.calling_ae_title).strip() if primitive is not None else ""
    return {"calling_ae": calling, "peer_host": str(assoc.requestor.address)}


def _answer_invalid(assoc: Association, listener: str, msg: Any, context_id: int) -> None:
    invalid: dict[str, str] = getattr(msg, "_radflow_invalid", None) or {}
    missing = [k for k in missing_parameters(msg) if k not in invalid]
    name = type(msg).__name__.replace("_", "-")
    DIMSE_REJECTIONS.labels(listener, "invalid_request").inc()
    if msg.MessageID is None or context_id not in assoc._accepted_cx:
        # A response must name the request's Message ID and travel on an accepted context.
        log.warning("ingress.dimse.request.aborted", listener=listener,
                    reason="invalid_request", request=f"{name}-RQ",
                    missing=missing, invalid=invalid, context_id=context_id, **_peer(assoc))
        assoc.abort()
        return
    status = _FAILURE[type(msg)]
    if invalid:
        # The first refused parameter and pynetdicom's reason: what the modality's log needs.
        keyword, why = next(iter(invalid.items()))
        comment = f"Invalid {_NAMES.get(keyword, keyword)}: {why}"[:64]
    else:
        comment = ("Missing or empty " + ", ".join(_NAMES.get(k, k) for k in missing))[:64]
    log.warning("ingress.dimse.request.invalid", listener=listener,
                request=f"{name}-RQ", message_id=msg.MessageID, missing=missing,
                invalid=invalid, status=f"0x{int(status):04X}", **_peer(assoc))
    rsp = type(msg)()
    rsp.MessageIDBeingRespondedTo = msg.MessageID
    for keyword, answer in _ECHOED.items():
        value = getattr(msg, keyword, None)
        if value is not None and hasattr(rsp, answer):
            setattr(rsp, answer, value)
    rsp.Status = int(status)
    if hasattr(rsp, "ErrorComment"):
        rsp.ErrorComment = comment
    assoc.dimse.send_msg(rsp, context_id)
