"""The MLLP listener: asyncio TCP (optionally TLS) server feeding :class:`Hl7Intake`.

Owns connections: the connection limit, TCP_NODELAY, the idle timeout, the message-size bound
(through ``mllp.read_messages``), one ACK per message in order, and the graceful stop (stop
accepting, close idle connections, let a message being processed get its ACK, until the
deadline). A framing error closes that connection with a log line; nothing half-read reaches the
intake. It must not parse HL7 or touch the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

from engine.errors import RadflowError
from engine.hl7.mllp import MllpFramingError, MllpIdleTimeout, frame, read_messages
from engine.ingress.hl7.intake import Hl7Intake
from engine.observability.logging import get_logger
from engine.observability.metrics import MLLP_CONNECTION_ERRORS, MLLP_CONNECTIONS
from engine.settings import Hl7Listener
from engine.tls import server_ssl_context

log = get_logger("engine.ingress.hl7")


class _Connection:
    __slots__ = ("busy", "task", "writer")

    def __init__(self, writer: asyncio.StreamWriter, task: asyncio.Task[None]) -> None:
        self.writer = writer
        self.task = task
        self.busy = False


class MllpListener:
    """One MLLP listening socket and its connections."""

    def __init__(self, config: Hl7Listener, intake: Hl7Intake) -> None:
        self.config = config
        self._intake = intake
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        self._stopping = False

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connection, self.config.host, self.config.port,
            ssl=server_ssl_context(self.config.tls) if self.config.tls else None,
            reuse_address=True)
        log.info("ingress.hl7.listening", listener=self.config.name, host=self.config.host,
                 port=self.config.port, tls=self.config.tls is not None)

    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        name = self.config.name
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if peer else "?"
        if self._stopping or len(self._connections) >= self.config.max_connections:
            reason = "shutting_down" if self._stopping else "too_many_connections"
            MLLP_CONNECTION_ERRORS.labels(name, reason).inc()
            log.warning("ingress.hl7.connection_refused", listener=name, peer_host=host,
                        reason=reason, open_connections=len(self._connections))
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        conn = _Connection(writer, task)
        self._connections[task] = conn
        MLLP_CONNECTIONS.labels(name).set(len(self._connections))
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Each ACK is one small write; Nagle would hold it back for the peer's delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.debug("ingress.hl7.connection_opened", listener=name, peer_host=host)
        try:
            async for payload in read_messages(
                    reader, max_message_bytes=self.config.max_message_bytes,
                    idle_timeout=self.config.idle_timeout):
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
            self._connections.pop(task, None)
            MLLP_CONNECTIONS.labels(name).set(len(self._connections))
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

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
