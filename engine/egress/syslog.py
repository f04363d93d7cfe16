"""Audit record senders: a syslog client (RFC 5424 messages over TLS with RFC 5425 octet
counting, or over UDP per RFC 5426) for the audit repository, and the local audit file.

Senders only classify (the dispatcher owns retries): a repository that cannot be reached, a
TLS handshake that fails or a connection lost while writing is transient; a message that cannot
be sent at all (bad payload, larger than a UDP datagram may be) is permanent. Syslog has no
acknowledgement: a batch counts as delivered once the kernel took every byte (TLS: after
``drain``); a connection that breaks right after that can lose what was in flight, which is
RFC 5425's own limit. The file sender appends one line per record and fsyncs before answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from engine.dicom.audit import octet_counted, syslog_message
from engine.egress.delivery import Delivery, SendOutcome, failed
from engine.egress.errors import PermanentDeliveryError, TransientDeliveryError
from engine.observability.logging import get_logger
from engine.settings import AuditFile, AuditRepository
from engine.tls import client_ssl_context

log = get_logger("engine.egress.syslog")


def _message(delivery: Delivery, app_name: str) -> bytes:
    """The row's RFC 5424 message; the same bytes on every attempt (time from the row)."""
    xml = delivery.payload.get("xml")
    when = delivery.payload.get("time")
    if not isinstance(xml, str) or not xml.startswith("<AuditMessage") or \
            not isinstance(when, str):
        raise PermanentDeliveryError(f"outbox row {delivery.row_id}: not an audit record",
                                     reason="bad_payload")
    try:
        moment = datetime.fromisoformat(when)
    except ValueError as exc:
        raise PermanentDeliveryError(f"outbox row {delivery.row_id}: bad time {when!r}",
                                     reason="bad_payload") from exc
    return syslog_message(xml, moment, socket.gethostname(), app_name, str(os.getpid()))


class SyslogSender:
    """One worker's connection to the audit repository."""

    max_batch = 100

    def __init__(self, name: str, config: AuditRepository) -> None:
        self.name = name
        self.config = config
        self._ssl: ssl.SSLContext | None = None
        if config.transport == "tls":
            from engine.settings import ClientTlsSettings

            self._ssl = client_ssl_context(config.tls or ClientTlsSettings())
        self._writer: asyncio.StreamWriter | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._last_used = 0.0

    async def send(self, batch: Sequence[Delivery]) -> list[SendOutcome]:
        outcomes: list[SendOutcome] = []
        frames: list[bytes] = []
        positions: list[int] = []
        for i, delivery in enumerate(batch):
            try:
                message = _message(delivery, self.config.app_name)
                if self.config.transport == "udp" and len(message) > self.config.max_udp_bytes:
                    raise PermanentDeliveryError(
                        f"audit record of {len(message)} bytes is larger than "
                        f"audit.repository.max_udp_bytes ({self.config.max_udp_bytes})",
                        reason="too_large")
            except PermanentDeliveryError as exc:
                outcomes.append(failed(exc))
                continue
            outcomes.append(SendOutcome())
            frames.append(message)
            positions.append(i)
        if not frames:
            return outcomes
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.config.timeout):
                if self.config.transport == "udp":
                    await self._send_udp(frames)
                else:
                    await self._send_tls(frames)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            await self.close()
            error = TransientDeliveryError(
                f"audit repository {self.config.host}:{self.config.port} "
                f"({self.config.transport}): {exc or type(exc).__name__}",
                reason="tls_failed" if isinstance(exc, ssl.SSLError) else "unreachable")
            for i in positions:
                outcomes[i] = failed(error, time.perf_counter() - started)
            return outcomes
        seconds = time.perf_counter() - started
        for i in positions:
            outcomes[i].seconds = seconds
        self._last_used = time.monotonic()
        return outcomes

    async def _send_tls(self, frames: list[bytes]) -> None:
        if self._writer is None or self._writer.is_closing():
            _reader, self._writer = await asyncio.open_connection(
                self.config.host, self.config.port, ssl=self._ssl,
                server_hostname=(self.config.tls.server_hostname if self.config.tls else None)
                or self.config.host)
            log.info("egress.syslog.connected", destination=self.name, host=self.config.host,
                     port=self.config.port)
        self._writer.write(b"".join(octet_counted(f) for f in frames))
        await self._writer.drain()

    async def _send_udp(self, frames: list[bytes]) -> None:
        if self._udp is None or self._udp.is_closing():
            loop = asyncio.get_running_loop()
            self._udp, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=(self.config.host, self.config.port))
        for frame in frames:
            self._udp.sendto(frame)

    async def idle(self) -> None:
        if self.config.idle_close and time.monotonic() - self._last_used > \
                self.config.idle_close:
            await self.close()

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                async with asyncio.timeout(2.0):
                    await writer.wait_closed()
        udp, self._udp = self._udp, None
        if udp is not None:
            udp.close()


class AuditFileSender:
    """Appends records to the local audit file, one RFC 5424 line each, fsync'd per batch."""

    max_batch = 500

    def __init__(self, name: str, config: AuditFile) -> None:
        self.name = name
        self.path = Path(config.path)

    async def send(self, batch: Sequence[Delivery]) -> list[SendOutcome]:
        outcomes: list[SendOutcome] = []
        lines: list[bytes] = []
        for delivery in batch:
            try:
                lines.append(_message(delivery, "radflow") + b"\n")
                outcomes.append(SendOutcome())
            except PermanentDeliveryError as exc:
                outcomes.append(failed(exc))
        if lines:
            started = time.perf_counter()
            try:
                await asyncio.to_thread(self._append, b"".join(lines))
            except OSError as exc:
                error = TransientDeliveryError(f"audit file {self.path}: {exc}",
                                               reason="file_error")
                return [o if o.error else failed(error) for o in outcomes]
            seconds = time.perf_counter() - started
            for o in outcomes:
                o.seconds = seconds
        return outcomes

    def _append(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    async def idle(self) -> None:
        return None

    async def close(self) -> None:
        return None
