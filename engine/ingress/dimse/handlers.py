"""pynetdicom event handlers: synchronous, thin, and bound as data by :func:`bindings`.

Each handler runs on a pynetdicom thread, reads what it needs from the event, delegates the work
(association policy to :class:`ListenerPolicy`, C-STORE to ``StoreIntake``), and turns the outcome
into a DIMSE status through ``engine.status``. Handlers hold no module state and never ``await``;
notification handlers only log and count, so they cannot harm an association.
"""

from __future__ import annotations

import ipaddress
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from engine import reactor
from engine.crashpoints import crash_point
from engine.dicom import wire
from engine.errors import RadflowError
from engine.ingress.dimse import guard, spill
from engine.ingress.dimse.commitment import (
    CommitmentProvider,
    handle_dimse_sent,
    handle_n_action,
    handle_n_event_report,
)
from engine.ingress.dimse.commitment import handle_conn_close as handle_commitment_closed
from engine.ingress.dimse.intake import ReceivedInstance, StoreIntake
from engine.ingress.dimse.mpps import MppsProvider, handle_n_create, handle_n_set
from engine.ingress.dimse.mwl import MwlProvider, handle_find
from engine.ingress.dimse.qr import (
    FIND_SOP_CLASSES,
    QrProvider,
    handle_get,
    handle_move,
    handle_qr_find,
)
from engine.observability import audit_sink
from engine.observability.logging import get_logger
from engine.observability.metrics import (
    DIMSE_ECHOES,
    DIMSE_OPEN_ASSOCIATIONS,
    DIMSE_REJECTIONS,
    DIMSE_STORE_SECONDS,
)
from engine.settings import DicomListener
from engine.status import DimseStatus, c_store_status_for, error_comment

log = get_logger("engine.ingress.dimse")

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
_RJ_CALLING_AE = (0x01, 0x01, 0x03)
_RJ_CALLED_AE = (0x01, 0x01, 0x07)
_RJ_NO_REASON = (0x01, 0x01, 0x01)
_RJ_CONGESTION = (0x02, 0x03, 0x01)
_RJ_LOCAL_LIMIT = (0x02, 0x03, 0x02)
# A-ASSOCIATE-AC presentation context results, PS3.8 9.3.3.2
_CONTEXT_RESULTS = {0x01: "user_rejection", 0x02: "no_reason",
                    0x03: "abstract_syntax_not_supported",
                    0x04: "transfer_syntaxes_not_supported"}
_MAX_LOGGED_CONTEXTS = 16


@dataclass
class ListenerPolicy:
    """Who may associate with one listener, and the bookkeeping of its connections: the
    pending ones (accepted, not yet negotiated), the association slots, the established ones.

    Two budgets, because pynetdicom has one: it counts every connection against
    ``maximum_associations``, so connections that never send an A-ASSOCIATE-RQ could refuse
    every modality. Pending connections have their own budget (``max_pending_connections``,
    each bounded in time by the ACSE timeout); an association slot (``max_associations``) is
    taken only by a request that passed every other check, and given back when its thread
    ends."""

    config: DicomListener
    is_closing: Callable[[], bool]
    _open: set[int] = field(default_factory=set)
    _slots: set[int] = field(default_factory=set)
    _pending: set[object] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.config.name

    def refusal(self, calling_ae: str, called_ae: str, host: str, has_identity: bool,
                certificate_names: frozenset[str] = frozenset()
                ) -> tuple[str, tuple[int, int, int]] | None:
        """``None`` to accept, else the reason and the A-ASSOCIATE-RJ fields.
        ``certificate_names``: the names the peer's TLS client certificate carries."""
        if self.is_closing():
            return "shutting_down", _RJ_CONGESTION
        if called_ae != self.config.ae_title:
            return "called_ae_unknown", _RJ_CALLED_AE
        if not self.config.accept_any_calling and not any(
                _peer_matches(p.ae_title, p.host, calling_ae, host)
                and (p.certificate is None or p.certificate.casefold() in certificate_names)
                for p in self.config.allowed_calling):
            return "calling_ae_not_allowed", _RJ_CALLING_AE
        if self.config.user_identities and not has_identity:
            return "user_identity_required", _RJ_NO_REASON
        return None

    def verify_identity(self, id_type: int, primary: bytes, secondary: bytes | None) -> bool:
        """PS3.7 D.3.3.7: type 1 is a username, type 2 a username and passcode."""
        if not self.config.user_identities:
            return True  # identities are not asked for on this listener
        username = primary.decode("utf-8", "replace")
        for ident in self.config.user_identities:
            if ident.username != username:
                continue
            if id_type == 1 and ident.passcode is None:
                return True
            if id_type == 2 and ident.passcode is not None and secondary is not None:
                return ident.passcode.get_secret_value() == secondary.decode("utf-8", "replace")
        return False

    def admit(self, connection: object) -> bool:
        """Count a new connection as pending; ``False`` if the pending budget is spent."""
        with self._lock:
            if len(self._pending) >= self.config.max_pending_connections:
                return False
            self._pending.add(connection)
            return True

    def settle(self, connection: object) -> None:
        """The connection is no longer pending (negotiated, refused or closed)."""
        with self._lock:
            self._pending.discard(connection)

    def take_slot(self, assoc_id: int) -> bool:
        """Reserve one of ``max_associations`` for an association about to be accepted."""
        with self._lock:
            if assoc_id in self._slots:
                return True
            if len(self._slots) >= self.config.max_associations:
                return False
            self._slots.add(assoc_id)
            return True

    def release_slot(self, assoc_id: int) -> None:
        with self._lock:
            self._slots.discard(assoc_id)

    def opened(self, assoc_id: int) -> None:
        with self._lock:
            self._open.add(assoc_id)
            DIMSE_OPEN_ASSOCIATIONS.labels(self.name).set(len(self._open))

    def closed(self, assoc_id: int) -> None:
        with self._lock:
            self._open.discard(assoc_id)
            DIMSE_OPEN_ASSOCIATIONS.labels(self.name).set(len(self._open))


def _peer_matches(ae_title: str, host_pattern: str | None, calling_ae: str, host: str) -> bool:
    if ae_title != calling_ae:
        return False
    if host_pattern is None:
        return True
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(host_pattern, strict=False)
    except ValueError:
        return False


def certificate_names(event: Event) -> frozenset[str]:
    """The subject common names and subject alternative names (DNS, IP address) of the peer's
    verified TLS client certificate, case-folded; empty without one."""
    transport = event.assoc.dul.socket
    sock = getattr(transport, "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return frozenset()
    # getpeercert()'s shape: subject is a tuple of RDNs, each a tuple of (key, value) pairs;
    # subjectAltName a tuple of (kind, value) pairs.
    cert: dict[str, Any] = dict(sock.getpeercert() or {})
    names = {str(pair[1]) for rdn in cert.get("subject", ()) for pair in rdn
             if pair[0] == "commonName"}
    names.update(str(pair[1]) for pair in cert.get("subjectAltName", ())
                 if pair[0] in ("DNS", "IP Address"))
    return frozenset(n.casefold() for n in names)


def _peer(event: Event) -> tuple[str, str, str]:
    # Read from the A-ASSOCIATE-RQ itself: ``requestor.ae_title`` is filled in only after
    # negotiation, too late for EVT_REQUESTED.
    requestor = event.assoc.requestor
    primitive = requestor.primitive
    if primitive is None:
        return requestor.ae_title.strip(), "", str(requestor.address)
    return (str(primitive.calling_ae_title).strip(), str(primitive.called_ae_title).strip(),
            str(requestor.address))


# --- notification handlers -------------------------------------------------------------------
def handle_conn_open(event: Event, policy: ListenerPolicy, intake: StoreIntake) -> None:
    assoc = event.assoc
    wire.set_nodelay(assoc)
    reactor.install(assoc, policy.name)
    wire.fast_responses(assoc)
    guard.install(assoc, policy.name)
    spill.install(assoc, intake.spill_policy)
    connection = getattr(assoc.dul.socket, "socket", None)
    assoc_id = id(assoc)
    run = assoc.run

    def run_then_settle() -> None:
        # The one exit every association thread passes, whatever ended it (release, abort,
        # ARTIM, a refused request, an exception): its pending place and slot are given back.
        try:
            run()
        finally:
            spill.discard_unfinished(assoc)
            policy.settle(connection)
            policy.release_slot(assoc_id)
            _note_unnegotiated_timeout(assoc, policy)

    # ``Thread.run`` is looked up on the instance, as reactor.install relies on too.
    assoc.run = run_then_settle  # type: ignore[method-assign]


def _note_unnegotiated_timeout(assoc: Any, policy: ListenerPolicy) -> None:
    """Log and count a connection closed because no A-ASSOCIATE-RQ came within the ACSE
    timeout (ARTIM), unless the reader already logged why it gave up on it."""
    dul = assoc.dul
    if (assoc.requestor.primitive is None and dul.artim_timer.expired
            and getattr(dul, "_radflow_refused", None) is None):
        DIMSE_REJECTIONS.labels(policy.name, "acse_timeout").inc()
        log.info("ingress.dimse.connection.timed_out", listener=policy.name,
                 peer_host=str(assoc.requestor.address), acse_timeout=policy.config.acse_timeout)


def handle_requested(event: Event, policy: ListenerPolicy) -> None:
    """Association policy, applied before pynetdicom negotiates (fail closed)."""
    calling, called, host = _peer(event)
    has_identity = event.assoc.requestor.user_identity is not None
    refusal = policy.refusal(calling, called, host, has_identity, certificate_names(event))
    if refusal is None:
        if policy.take_slot(id(event.assoc)):
            return
        refusal = "too_many_associations", _RJ_LOCAL_LIMIT
    reason, (result, source, diagnostic) = refusal
    event.assoc.acse.send_reject(result, source, diagnostic)
    DIMSE_REJECTIONS.labels(policy.name, reason).inc()
    audit_sink.notify(lambda a: a.association(calling_ae=calling, called_ae=called,
                                              peer_host=host, accepted=False, reason=reason))
    log.warning("ingress.dimse.association.rejected", listener=policy.name, reason=reason,
                calling_ae=calling, called_ae=called, peer_host=host)
    # As pynetdicom's own rejection does: wait until the DUL has sent the A-ASSOCIATE-RJ (and
    # the peer closed, or ARTIM expired). Otherwise the server shuts the socket down first and
    # the peer sees an abort instead of the reason.
    event.assoc.kill()


def handle_established(event: Event, policy: ListenerPolicy) -> None:
    policy.settle(getattr(event.assoc.dul.socket, "socket", None))
    policy.opened(id(event.assoc))
    calling, called, host = _peer(event)
    log.info("ingress.dimse.association.accepted", listener=policy.name, calling_ae=calling,
             called_ae=called, peer_host=host)
    identity = event.assoc.requestor.user_identity
    user = (identity.primary_field.decode("utf-8", "replace")
            if identity is not None and identity.primary_field else None)
    audit_sink.notify(lambda a: a.association(calling_ae=calling, called_ae=called,
                                              peer_host=host, accepted=True,
                                              user_identity=user))
    rejected = event.assoc.rejected_contexts
    if rejected:
        # Otherwise an SCU that finds "no acceptable presentation context" leaves no trace of why.
        proposed = {cx.context_id: cx.transfer_syntax
                    for cx in event.assoc.requestor.requested_contexts}
        accepted = len(event.assoc.accepted_contexts)
        log_fn = log.info if accepted else log.warning
        log_fn("ingress.dimse.association.contexts_rejected", listener=policy.name,
               calling_ae=calling, peer_host=host, accepted=accepted, rejected=len(rejected),
               contexts=[{"abstract_syntax": str(cx.abstract_syntax),
                          "transfer_syntaxes": [str(ts)
                                                for ts in proposed.get(cx.context_id, [])],
                          "reason": _CONTEXT_RESULTS.get(cx.result or 0, f"result {cx.result}")}
                         for cx in rejected[:_MAX_LOGGED_CONTEXTS]])


def handle_aborted(event: Event, policy: ListenerPolicy) -> None:
    calling, _called, host = _peer(event)
    DIMSE_REJECTIONS.labels(policy.name, "aborted").inc()
    log.warning("ingress.dimse.association.aborted", listener=policy.name, calling_ae=calling,
                peer_host=host)


def handle_conn_close(event: Event, policy: ListenerPolicy) -> None:
    policy.closed(id(event.assoc))


# --- intervention handlers -------------------------------------------------------------------
def handle_user_id(event: Event, policy: ListenerPolicy) -> tuple[bool, bytes | None]:
    # pynetdicom sets these attributes on EVT_USER_ID events only.
    id_type: int = getattr(event, "user_id_type")  # noqa: B009
    primary: bytes = getattr(event, "primary_field")  # noqa: B009
    secondary: bytes | None = getattr(event, "secondary_field")  # noqa: B009
    ok = policy.verify_identity(id_type, primary, secondary)
    if not ok:
        DIMSE_REJECTIONS.labels(policy.name, "user_identity_invalid").inc()
        calling, _, host = _peer(event)
        log.warning("ingress.dimse.association.identity_refused", listener=policy.name,
                    calling_ae=calling, peer_host=host, user_id_type=id_type)
        audit_sink.notify(lambda a: a.login(
            user=primary.decode("utf-8", "replace"), peer_host=host, ok=False,
            reason=f"DICOM user identity (type {id_type}) refused for {calling}"))
    return ok, None


def handle_echo(event: Event, policy: ListenerPolicy) -> int:
    DIMSE_ECHOES.labels(policy.name).inc()
    return int(DimseStatus.SUCCESS)


def handle_store(event: Event, policy: ListenerPolicy, intake: StoreIntake) -> Dataset | int:
    started = time.perf_counter()
    request = cast(C_STORE, event.request)
    calling, called, host = _peer(event)
    sop_instance_uid = str(request.AffectedSOPInstanceUID or "")
    buffer = request.DataSet
    try:
        received = ReceivedInstance(
            listener=policy.name,
            local_ae=policy.config.ae_title,
            calling_ae=calling,
            called_ae=called,
            peer_host=host,
            sop_class_uid=str(request.AffectedSOPClassUID or ""),
            sop_instance_uid=sop_instance_uid,
            transfer_syntax_uid=str(event.context.transfer_syntax),
            dataset=b"",
        )
        if isinstance(buffer, spill.SpillingBuffer) and buffer.spilled:
            # Larger than memory should hold: read from its file, never whole.
            with spill.opened(buffer) as (mapped, path):
                intake.accept(replace(received, dataset=mapped, source=path))
        else:
            intake.accept(replace(received,
                                  dataset=buffer.getvalue() if buffer is not None else b""))
        crash_point("response")
        return int(DimseStatus.SUCCESS)
    except Exception as exc:
        status = c_store_status_for(exc)
        reason = exc.reason if isinstance(exc, RadflowError) else "internal_error"
        DIMSE_REJECTIONS.labels(policy.name, reason).inc()
        log_fn = log.warning if isinstance(exc, RadflowError) else log.exception
        log_fn("ingress.dimse.c_store.failed", listener=policy.name, reason=reason,
               status=f"0x{int(status):04X}", detail=str(exc), calling_ae=calling,
               peer_host=host, sop_instance_uid=sop_instance_uid[:64])
        answer = Dataset()
        answer.Status = int(status)
        answer.ErrorComment = error_comment(exc)
        return answer
    finally:
        if isinstance(buffer, spill.SpillingBuffer):
            buffer.discard()
        DIMSE_STORE_SECONDS.labels(policy.name).observe(time.perf_counter() - started)


def handle_c_find(event: Event, policy: ListenerPolicy, mwl: MwlProvider | None,
                  qr: QrProvider | None) -> Any:
    """EVT_C_FIND: one handler per event, so the SOP class picks the service."""
    if qr is not None and str(event.context.abstract_syntax) in FIND_SOP_CLASSES:
        return handle_qr_find(event, policy, qr)
    assert mwl is not None  # the only other C-FIND context build_ae accepts
    return handle_find(event, policy, mwl)


def bindings(policy: ListenerPolicy, intake: StoreIntake, mwl: MwlProvider | None = None,
             mpps: MppsProvider | None = None, qr: QrProvider | None = None,
             commitment: CommitmentProvider | None = None) -> list[tuple[Any, ...]]:
    """Every (event, handler, arguments) binding of one listener, in one place."""
    worklist = [(evt.EVT_C_FIND, handle_c_find, [policy, mwl, qr])] \
        if mwl is not None or qr is not None else []
    query_retrieve = [(evt.EVT_C_MOVE, handle_move, [policy, qr]),
                      (evt.EVT_C_GET, handle_get, [policy, qr])] if qr is not None else []
    storage_commitment = [(evt.EVT_N_ACTION, handle_n_action, [policy, commitment]),
                          (evt.EVT_N_EVENT_REPORT, handle_n_event_report, [policy, commitment]),
                          (evt.EVT_DIMSE_SENT, handle_dimse_sent, [commitment]),
                          (evt.EVT_CONN_CLOSE, handle_commitment_closed, [commitment])] \
        if commitment is not None else []
    procedure_steps = [(evt.EVT_N_CREATE, handle_n_create, [policy, mpps]),
                       (evt.EVT_N_SET, handle_n_set, [policy, mpps])] if mpps is not None else []
    return [
        *worklist,
        *query_retrieve,
        *storage_commitment,
        *procedure_steps,
        (evt.EVT_CONN_OPEN, handle_conn_open, [policy, intake]),
        (evt.EVT_REQUESTED, handle_requested, [policy]),
        (evt.EVT_USER_ID, handle_user_id, [policy]),
        (evt.EVT_ESTABLISHED, handle_established, [policy]),
        (evt.EVT_ABORTED, handle_aborted, [policy]),
        (evt.EVT_CONN_CLOSE, handle_conn_close, [policy]),
        (evt.EVT_C_ECHO, handle_echo, [policy]),
        (evt.EVT_C_STORE, handle_store, [policy, intake]),
    ]
