"""The DICOM listeners: one pynetdicom AE and threaded server per configured listener.

Owns presentation-context set-up (Verification plus every storage SOP class pynetdicom knows and
the configured extras, with the configured transfer syntaxes), limits (associations, PDU size,
timeouts), start, and the graceful stop: close the listening socket, let open associations finish
until the deadline, then abort what is left. It must not store anything itself: C-STORE work goes
through the handlers to ``StoreIntake``.

A listener with ``tls`` speaks DICOM over TLS only. pynetdicom runs the TLS handshake on the
thread that accepts connections, with no time limit: one client that connects and stays silent
would stop the listener from accepting anyone else. :class:`_AssociationServer` moves the
handshake onto the connection's own thread, bounded by the ACSE timeout.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from engine.dicom.audit import NODE_AUTHENTICATION
from engine.dicom.wire import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from engine.ingress.dimse.commitment import STORAGE_COMMITMENT_PUSH, CommitmentProvider
from engine.ingress.dimse.handlers import ListenerPolicy, bindings
from engine.ingress.dimse.intake import StoreIntake
from engine.ingress.dimse.mpps import MppsProvider
from engine.ingress.dimse.mwl import MwlProvider
from engine.ingress.dimse.qr import FIND_SOP_CLASSES, RETRIEVE_SOP_CLASSES, QrProvider
from engine.observability import audit_sink
from engine.observability.logging import get_logger
from engine.observability.metrics import DIMSE_REJECTIONS
from engine.settings import DicomListener
from engine.tls import handshake_failure_reason, server_ssl_context

log = get_logger("engine.ingress.dimse")


# C-FIND identifiers are small datasets: the uncompressed syntaxes are all an SCU proposes.
_QUERY_SYNTAXES = frozenset({"1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2",
                             "1.2.840.10008.1.2.1.99"})


def build_ae(config: DicomListener, *, worklist: bool = False, mpps: bool = False,
             query_retrieve: bool = False, commitment: bool = False,
             storage: bool = True) -> AE:
    """An acceptor AE with radflow's contexts, limits and identity (``worklist``: also the
    Modality Worklist Information Model - FIND; ``mpps``: also Modality Performed Procedure
    Step, N-CREATE / N-SET)."""
    ae = AE(ae_title=config.ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    # pynetdicom counts every connection, negotiated or not, against its limit; radflow's
    # policy counts the two apart (ListenerPolicy), so pynetdicom's own never bites first.
    ae.maximum_associations = config.max_associations + config.max_pending_connections
    ae.maximum_pdu_size = config.max_pdu_size
    ae.acse_timeout = config.acse_timeout  # also the ARTIM timer: pynetdicom sets both
    ae.dimse_timeout = config.dimse_timeout
    ae.network_timeout = config.network_timeout
    # Checked again in the EVT_REQUESTED policy; kept on so pynetdicom itself fails closed.
    ae.require_called_aet = True
    if config.allowed_calling:
        ae.require_calling_aet = sorted({p.ae_title for p in config.allowed_calling})
    syntaxes = list(config.transfer_syntaxes)
    # PS3.5 10.1: Implicit VR Little Endian is every implementation's default, and plain
    # echoscu proposes nothing else, so Verification always accepts it.
    ae.add_supported_context(Verification, list(dict.fromkeys([*syntaxes, ImplicitVRLittleEndian])))
    sop_classes = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    # query_retrieve: a C-GET requestor proposes to be the SCP of these (role selection,
    # PS3.7 D.3.3.4); accepting both roles leaves plain C-STORE as it was.
    roles = {"scu_role": True, "scp_role": True} if query_retrieve else {}
    for uid in [*sop_classes, *config.extra_storage_sop_classes] if storage else []:
        ae.add_supported_context(uid, syntaxes, **roles)
    if commitment:
        # Both roles: modalities ask radflow (radflow SCP), and archives radflow asked report
        # back on associations they open, proposing the SCP role (PS3.4 J.3.3).
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH,
                                 [ts for ts in syntaxes if ts in _QUERY_SYNTAXES],
                                 scu_role=True, scp_role=True)
    if query_retrieve:
        for uid in [*FIND_SOP_CLASSES, *RETRIEVE_SOP_CLASSES]:
            ae.add_supported_context(uid, [ts for ts in syntaxes if ts in _QUERY_SYNTAXES])
    if worklist:
        query_syntaxes = [ts for ts in syntaxes if ts in _QUERY_SYNTAXES]
        ae.add_supported_context(ModalityWorklistInformationFind, query_syntaxes)
    if mpps:
        # Attribute and Modification Lists are small datasets, like C-FIND identifiers.
        ae.add_supported_context(ModalityPerformedProcedureStep,
                                 [ts for ts in syntaxes if ts in _QUERY_SYNTAXES])
    return ae


class _AssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with the TLS handshake on each connection's thread and
    the pending-connection budget of the listener's policy applied as connections arrive."""

    listener = "main"
    handshake_timeout = 30.0
    policy: ListenerPolicy | None = None
    # socketserver listens with a backlog of 5: in a burst (a department's modalities after a
    # network outage) the kernel drops the SYNs beyond it, and each sender waits out TCP's
    # retransmission backoff (1, 3, 7, 15, 31 s...) before radflow even sees it; 200 at once
    # took a minute to be answered. The kernel caps this at net.core.somaxconn.
    request_queue_size = 1024

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if self.policy is None or self.policy.admit(request):
            return True
        # Refused before any thread exists for it: socketserver closes it.
        DIMSE_REJECTIONS.labels(self.listener, "too_many_pending").inc()
        log.warning("ingress.dimse.connection.refused", listener=self.listener,
                    reason="too_many_pending",
                    limit=self.policy.config.max_pending_connections,
                    peer_host=str(client_address[0]) if client_address else "")
        return False

    def shutdown_request(self, request: Any) -> None:
        if self.policy is not None:
            self.policy.settle(request)
        super().shutdown_request(request)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        if self.ssl_context is not None:
            client = self.ssl_context.wrap_socket(client, server_side=True,
                                                  do_handshake_on_connect=False)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket) and not self._handshake(request, client_address):
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)

    def _handshake(self, sock: ssl.SSLSocket, client_address: Any) -> bool:
        previous = sock.gettimeout()
        try:
            sock.settimeout(self.handshake_timeout)
            sock.do_handshake()
            sock.settimeout(previous)
            return True
        except (OSError, ValueError) as exc:  # SSLError and timeouts are OSErrors
            DIMSE_REJECTIONS.labels(self.listener, "tls_failed").inc()
            host = str(client_address[0]) if client_address else ""
            detail = str(exc) or type(exc).__name__
            log.warning("ingress.dimse.tls_failed", listener=self.listener, peer_host=host,
                        reason=handshake_failure_reason(exc), detail=detail)
            audit_sink.notify(lambda a: a.security_alert(
                NODE_AUTHENTICATION, f"TLS handshake failed: {detail}", peer_host=host,
                subject=f"dicom-listener:{self.listener}"))
            return False


class _SharedPortServer(_AssociationServer):
    """The server of one of several worker processes: each binds its own socket on the same
    port (SO_REUSEPORT) and the kernel spreads new connections over them. Inheriting one
    socket instead would leave accepts to whichever worker wakes first."""

    def server_bind(self) -> None:
        # pynetdicom's server_bind sets only SO_REUSEADDR; the option must be on before bind.
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def start_listener(ae: AE, config: DicomListener, evt_handlers: list[Any],
                   policy: ListenerPolicy | None = None,
                   reuse_port: bool = False) -> _AssociationServer:
    """Start ``ae`` serving ``config`` on its own accept thread (pynetdicom's non-blocking
    ``start_server``, with radflow's server class); ``policy``: the listener's, whose
    pending-connection budget the server applies; ``reuse_port``: other worker processes
    bind the same port."""
    server = ae.make_server(
        (config.host, config.port), evt_handlers=evt_handlers,
        ssl_context=server_ssl_context(config.tls) if config.tls else None,
        server_class=_SharedPortServer if reuse_port else _AssociationServer)
    assert isinstance(server, _AssociationServer)
    server.listener = config.name
    server.policy = policy
    server.handshake_timeout = config.acse_timeout
    threading.Thread(target=server.serve_forever, name=f"dicom-accept-{config.name}",
                     daemon=True).start()
    ae._servers.append(server)  # as start_server does: the server's shutdown takes it out
    return server


class DimseListeners:
    """All DICOM listeners of the engine, started and stopped together."""

    def __init__(self, configs: list[DicomListener], intake: StoreIntake,
                 is_closing: Callable[[], bool], mwl: MwlProvider | None = None,
                 mpps: MppsProvider | None = None, qr: QrProvider | None = None,
                 commitment: CommitmentProvider | None = None, reuse_port: bool = False,
                 storage: bool = True) -> None:
        self._configs = configs
        #: C-STORE offered (a node without the intake role still answers worklist or MPPS)
        self._storage = storage
        self._reuse_port = reuse_port
        self._intake = intake
        self._is_closing = is_closing
        self._mwl = mwl
        self._mpps = mpps
        self._qr = qr
        self._commitment = commitment
        self._servers: list[tuple[DicomListener, ThreadedAssociationServer]] = []

    @property
    def running(self) -> bool:
        return bool(self._servers) and len(self._servers) == len(self._configs)

    async def start(self) -> None:
        for config in self._configs:
            ae = build_ae(config, worklist=self._mwl is not None, mpps=self._mpps is not None,
                          query_retrieve=self._qr is not None,
                          commitment=self._commitment is not None, storage=self._storage)
            policy = ListenerPolicy(config, self._is_closing)
            server = await asyncio.to_thread(
                start_listener, ae, config,
                bindings(policy, self._intake, self._mwl, self._mpps, self._qr,
                         self._commitment), policy, self._reuse_port)
            self._servers.append((config, server))
            log.info("ingress.dimse.listening", listener=config.name, ae_title=config.ae_title,
                     host=config.host, port=config.port, tls=config.tls is not None)

    def open_associations(self) -> int:
        return sum(len(server.active_associations) for _, server in self._servers)

    async def stop(self, grace: float) -> None:
        """Stop accepting, drain open associations for up to ``grace`` seconds, abort the rest."""
        servers, self._servers = self._servers, []
        for _, server in servers:
            await asyncio.to_thread(server.shutdown)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            # Only established associations are drained: a connection that has not (or never
            # will) send an A-ASSOCIATE-RQ, such as a load balancer's TCP probe, has no work in
            # flight and would otherwise hold the stop until its ACSE timeout.
            if not any(assoc.is_established
                       for _, server in servers for assoc in server.active_associations):
                break
            await asyncio.sleep(0.05)
        for config, server in servers:
            for assoc in server.active_associations:
                if assoc.is_established:
                    log.warning("ingress.dimse.association.aborted_at_shutdown",
                                listener=config.name, calling_ae=assoc.requestor.ae_title)
                await asyncio.to_thread(assoc.abort)
            log.info("ingress.dimse.stopped", listener=config.name)
