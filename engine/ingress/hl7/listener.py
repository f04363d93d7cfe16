"""The MLLP listener: asyncio TCP (optionally TLS) server feeding :class:`Hl7Intake`.

Owns connections: who may connect (``hl7.allowed_sources``; nobody when empty unless
``accept_any_source``), the connection limits (in all and per source address), TCP_NODELAY, the
first-message deadline (a new connection that has not delivered one complete message within
``first_message_timeout`` is closed, so idle sockets cannot hold the slots for the whole idle
timeout), the idle timeout of established connections, the message-size bound (through
``mllp.read_messages``), one ACK per message in order, and the graceful stop (stop accepting,
close idle connections, let a message being processed get its ACK, until the deadline). Every
refused or timed-out connection is logged with its source address and counted. A framing
error closes that connection with a log line; nothing half-read reaches the intake. It must not
parse HL7 or touch the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence

from engine.dicom.audit import NODE_AUTHENTICATION
from engine.errors import RadflowError
from engine.hl7.mllp import MllpFramingError, MllpIdleTimeout, frame, read_messages
from engine.ingress.hl7.intake import Hl7Intake
from engine.observability import audit_sink
from engine.observability.logging import get_logger
from engine.observability.metrics import MLLP_CONNECTION_ERRORS, MLLP_CONNECTIONS
from engine.settings import Hl7Listener, Hl7Settings
from engine.tls import handshake_failure_reason, server_ssl_context

log = get_logger("engine.ingress.hl7")


class _Connection:
    __slots__ = ("busy", "task", "writer")

    def __init__(self, writer: asyncio.StreamWriter, task: asyncio.Task[None]) -> None:
        self.writer = writer
        self.task = task
        self.busy = False


class SourceFilter:
    """Which peer addresses may connect: listed addresses and networks, or any when opened
    explicitly. An IPv4 peer seen through an IPv6 socket (``::ffff:a.b.c.d``) is matched as
    IPv4."""

    def __init__(self, allowed: Sequence[str], accept_any: bool) -> None:
        self.accept_any = accept_any
        self._networks = [ipaddress.ip_network(a, strict=False) for a in allowed]

    @classmethod
    def of(cls, settings: Hl7Settings) -> SourceFilter:
        return cls(settings.allowed_sources, settings.accept_any_source)

    @property
    def closed(self) -> bool:
        return not self.accept_any and not self._networks

    def allows(self, host: str) -> bool:
        if self.accept_any:
            return True
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self._networks)


class MllpListener:
    """One MLLP listening socket and its connections."""

    def __init__(self, config: Hl7Listener, intake: Hl7Intake,
                 sources: SourceFilter | None = None, reuse_port: bool = False) -> None:
        self.config = config
        #: other worker processes bind the same port
        self.reuse_port = reuse_port
        self._intake = intake
        self._sources = sources or SourceFilter((), accept_any=False)
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        self._per_source: Counter[str] = Counter()
        self._stopping = False
        self._ssl: ssl.SSLContext | None = None

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def start(self) -> None:
        # TLS is started per connection (start_tls) rather than by the server: a refused source
        # gets no handshake, and a failed handshake is ours to log and audit (asyncio's server
        # drops it silently).
        self._ssl = server_ssl_context(self.config.tls) if self.config.tls else None
        self._server = await asyncio.start_server(
            self._on_connection, self.config.host, self.config.port, reuse_address=True,
            # Several worker processes each bind their own socket on the port (the kernel
            # spreads connections over them).
            reuse_port=self.reuse_port or None)
        log.info("ingress.hl7.listening", listener=self.config.name, host=self.config.host,
                 port=self.config.port, tls=self.config.tls is not None,
                 any_source=self._sources.accept_any)
        if self._sources.closed:
            log.warning("ingress.hl7.no_sources_allowed", listener=self.config.name,
                        detail="hl7.allowed_sources is empty: every connection is refused; "
                               "list the senders' addresses (or set accept_any_source)")

    def _refusal(self, host: str) -> str | None:
        if self._stopping:
            return "shutting_down"
        if not self._sources.allows(host):
            return "source_not_allowed"
        if len(self._connections) >= self.config.max_connections:
            return "too_many_connections"
        if self._per_source[host] >= self.config.max_connections_per_source:
            return "too_many_from_source"
        return None

    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        name = self.config.name
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if peer else "?"
        reason = self._refusal(host)
        if reason is not None:
            MLLP_CONNECTION_ERRORS.labels(name, reason).inc()
            log.warning("ingress.hl7.connection_refused", listener=name, peer_host=host,
                        reason=reason, open_connections=len(self._connections),
                        from_source=self._per_source[host])
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        conn = _Connection(writer, task)
        self._connections[task] = conn
        self._per_source[host] += 1
        MLLP_CONNECTIONS.labels(name).set(len(self._connections))
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Each ACK is one small write; Nagle would hold it back for the peer's delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.debug("ingress.hl7.connection_opened", listener=name, peer_host=host)
        messages = read_messages(reader, max_message_bytes=self.config.max_message_bytes,
                                 idle_timeout=self.config.idle_timeout)
        # One deadline for the TLS handshake and the first message together.
        deadline = asyncio.get_running_loop().time() + self.config.first_message_timeout
        try:
            if self._ssl is not None and not await self._start_tls(writer, host, deadline):
                return
            try:
                async with asyncio.timeout_at(deadline):
                    first = await anext(messages, None)
            except TimeoutError:
                MLLP_CONNECTION_ERRORS.labels(name, "first_message_timeout").inc()
                log.warning("ingress.hl7.first_message_timeout", listener=name, peer_host=host,
                            timeout=self.config.first_message_timeout)
                return
            if first is None:
                return  # connected and left without a message (a port check)
            async for payload in _chain(first, messages):
                conn.busy = True
                ack = await self._intake.handle(payload, host, name)
                writer.write(frame(ack))
                await writer.drain()
                conn.busy = False
                if self._stopping:
                    break
        except MllpIdleTimeout as exc:
            MLLP_CONNECTION_ERRORS.labels(name, "idle_timeout").inc()
            log.info("ingress.hl7.connection_idle_closed", listener=name, peer_host=host,
                     detail=str(exc))
        except MllpFramingError as exc:
            MLLP_CONNECTION_ERRORS.labels(name, exc.reason).inc()
            log.warning("ingress.hl7.framing_error", listener=name, peer_host=host,
                        reason=exc.reason, detail=str(exc))
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            MLLP_CONNECTION_ERRORS.labels(name, "connection_lost").inc()
            log.info("ingress.hl7.connection_lost", listener=name, peer_host=host,
                     detail=str(exc) or type(exc).__name__)
        except RadflowError as exc:
            MLLP_CONNECTION_ERRORS.labels(name, exc.reason).inc()
            log.warning("ingress.hl7.connection_error", listener=name, peer_host=host,
                        reason=exc.reason, detail=str(exc))
        finally:
            await messages.aclose()
            self._connections.pop(task, None)
            self._per_source[host] -= 1
            if self._per_source[host] <= 0:
                del self._per_source[host]
            MLLP_CONNECTIONS.labels(name).set(len(self._connections))
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _start_tls(self, writer: asyncio.StreamWriter, host: str, deadline: float
                         ) -> bool:
        name = self.config.name
        assert self._ssl is not None
        try:
            async with asyncio.timeout_at(deadline):
                await writer.start_tls(self._ssl)
            return True
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            detail = str(exc) or type(exc).__name__
            MLLP_CONNECTION_ERRORS.labels(name, "tls_failed").inc()
            log.warning("ingress.hl7.tls_failed", listener=name, peer_host=host,
                        reason=handshake_failure_reason(exc), detail=detail)
            audit_sink.notify(lambda a: a.security_alert(
                NODE_AUTHENTICATION, f"TLS handshake failed: {detail}", peer_host=host,
                subject=f"mllp-listener:{name}"))
            return False

    async def stop(self, grace: float) -> None:
        """Stop accepting; close idle connections; let busy ones answer until ``grace``."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections.values()):
            if not conn.busy:
                conn.task.cancel()
        deadline = time.monotonic() + grace
        while self._connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self._connections.values()):
            conn.task.cancel()
        if self._connections:
            await asyncio.gather(*(c.task for c in self._connections.values()),
                                 return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()
            self._server = None
        log.info("ingress.hl7.stopped", listener=self.config.name)


async def _chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for payload in rest:
        yield payload
