"""HL7 v2 sender: an MLLP client that sends one message at a time and waits for its ACK.

Owns the connection (opened on demand, optionally TLS, kept while busy, closed after
``idle_close`` seconds or on any protocol doubt), the framing (``engine.hl7.mllp``, the
same code the listener uses), the message's wire form (CR segment separators, encoded in the
character set its MSH-18 names; structured payloads rendered with HL7 escaping) and the reading
of the ACK: MSA-2 must name our MSH-10, and MSA-1 is classified by the destination's policy
(``AA`` delivered, ``AR`` retry and ``AE`` dead letter by default). It must not decide retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from engine.egress.classify import Verdict, classify_hl7_ack
from engine.egress.delivery import Delivery, SendOutcome, failed
from engine.egress.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from engine.errors import InvalidInput
from engine.hl7.message import (
    DEFAULT_ENCODING_CHARS,
    EncodingChars,
    Hl7Message,
    codec_for_msh18,
    escape,
)
from engine.hl7.mllp import MllpFramingError, MllpIdleTimeout, frame, read_messages
from engine.observability.logging import get_logger
from engine.settings import Hl7Destination
from engine.tls import client_ssl_context

log = get_logger("engine.egress.hl7")

FieldValue = str | Sequence[str] | None


def render_segments(segments: Sequence[Sequence[FieldValue]],
                    enc: EncodingChars = DEFAULT_ENCODING_CHARS) -> str:
    """Build a message from values: each segment is ``[name, field1, field2, ...]``; a field
    is plain text (escaped) or a list of component texts (each escaped). MSH's own encoding
    fields are written from ``enc`` (give MSH from MSH-3 on)."""
    lines: list[str] = []
    for segment in segments:
        name = str(segment[0])
        fields = [_render_field(v, enc) for v in segment[1:]]
        if name == "MSH":
            lines.append(f"MSH{enc.field}{enc.msh2}{enc.field}" + enc.field.join(fields))
        else:
            lines.append(enc.field.join([name, *fields]))
    return "\r".join(lines) + "\r"


def _render_field(value: FieldValue, enc: EncodingChars) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return escape(value, enc)
    return enc.component.join(escape(str(c), enc) for c in value)


def control_id_of(data: bytes, charset: str = "ASCII") -> str:
    """MSH-10 of ``data``, read with ``charset`` when its MSH-18 is empty."""
    try:
        return Hl7Message.parse(data, charset).control_id
    except InvalidInput as exc:
        raise PermanentDeliveryError(f"not a sendable HL7 message: {exc}",
                                     reason="bad_payload") from exc


def wire_bytes(delivery: Delivery) -> tuple[bytes, str]:
    """The message's bytes and its MSH-10, from the payload's ``message`` (text) or
    ``segments`` (values, escaped here). Permanent error if neither makes an HL7 message."""
    payload: Mapping[str, Any] = delivery.payload
    text = payload.get("message")
    if text is None and isinstance(payload.get("segments"), list):
        text = render_segments(payload["segments"])
    if not isinstance(text, str) or not text.startswith("MSH"):
        raise PermanentDeliveryError(f"outbox row {delivery.row_id}: no HL7 message",
                                     reason="bad_payload")
    # Routers and files use LF or CRLF between segments; HL7 uses CR alone.
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    if not text.endswith("\r"):
        text += "\r"
    try:
        charset, codec = _charset_of(text)
        data = text.encode(codec)
        control_id = Hl7Message.parse(data, charset).control_id
    except UnicodeEncodeError as exc:
        raise PermanentDeliveryError(
            f"outbox row {delivery.row_id}: {_unfit(text, exc, charset)}",
            reason="charset") from exc
    except (InvalidInput, ValueError, UnicodeError) as exc:
        raise PermanentDeliveryError(f"outbox row {delivery.row_id}: not a sendable HL7 "
                                     f"message: {exc}", reason="bad_payload") from exc
    if b"\x0b" in data or b"\x1c" in data:
        raise PermanentDeliveryError("the message holds an MLLP block character",
                                     reason="bad_payload")
    return data, control_id


def _charset_of(text: str) -> tuple[str, str]:
    """(character set, codec) the text's MSH-18 names; Latin-1 when it names none (what this
    sender has always written then, and a superset of ASCII)."""
    msh = text.split("\r", 1)[0]
    if len(msh) < 8:
        raise InvalidInput("no MSH segment")
    fields = msh.split(msh[3])
    msh18 = fields[17] if len(fields) > 17 else ""
    repetition = fields[1][1] if len(fields[1]) > 1 else "~"
    return codec_for_msh18(msh18, repetition, "8859/1")


def _unfit(text: str, exc: UnicodeEncodeError, charset: str) -> str:
    """Which field holds the character the character set cannot write, for the dead letter:
    radflow never sends '?' in place of a patient's name."""
    char = text[exc.start]
    line_start = text.rfind("\r", 0, exc.start) + 1
    segment = text[line_start:line_start + 3]
    field_sep = text[3] if len(text) > 3 else "|"
    field_no = text.count(field_sep, line_start, exc.start) + (1 if segment == "MSH" else 0)
    return (f"{segment}-{field_no}: character {char!r} (U+{ord(char):04X}) cannot be written "
            f"in {charset}; set the destination's charset to one that holds it (e.g. "
            f"UNICODE UTF-8)")


#: the raw bytes of a journalled HL7 message (``hl7_messages.raw``), None if unknown
JournalLoader = Callable[[int], Awaitable[bytes | None]]


class MllpSender:
    """One worker's MLLP connection to one destination."""

    max_batch = 16

    def __init__(self, name: str, config: Hl7Destination,
                 journal: JournalLoader | None = None) -> None:
        self.name = name
        self.config = config
        self._journal = journal
        self._ssl: ssl.SSLContext | None = (client_ssl_context(config.tls)
                                            if config.tls else None)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._last_used = 0.0

    async def idle(self) -> None:
        if self._writer is not None and \
                time.monotonic() - self._last_used >= self.config.idle_close:
            await self.close()

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def check(self) -> str:
        """Open the connection as for a delivery (TCP, then the TLS handshake when configured),
        then close it. Nothing is sent: MLLP has no harmless message every receiver answers."""
        await self.close()
        try:
            _reader, writer = await self._connect()
            tls = writer.get_extra_info("ssl_object")
            how = f"TLS {tls.version()}" if tls is not None else "plain TCP"
        finally:
            await self.close()
        return f"MLLP connection to {self.config.host}:{self.config.port} ({how})"

    async def send(self, batch: Sequence[Delivery]) -> list[SendOutcome]:
        out: list[SendOutcome] = []
        for i, delivery in enumerate(batch):
            outcome = await self._send_one(delivery)
            out.append(outcome)
            if outcome.error is not None and outcome.error.transient:
                # The peer is in trouble: the rest of the batch waits for the backoff too,
                # so a patient's later message never overtakes an earlier one here.
                err = TransientDeliveryError("not sent: an earlier message of the batch "
                                             "failed", reason="held_back")
                out += [failed(err) for _ in batch[i + 1:]]
                break
        self._last_used = time.monotonic()
        return out

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is not None and self._writer is not None and \
                not self._writer.is_closing():
            return self._reader, self._writer
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self.config.host, self.config.port, ssl=self._ssl,
                    server_hostname=(self.config.tls.server_hostname or self.config.host)
                    if self.config.tls else None,
                    limit=self.config.max_ack_bytes + 3)
        except ssl.SSLError as exc:
            raise TransientDeliveryError(
                f"TLS handshake with {self.config.host}:{self.config.port} failed: {exc}",
                reason="tls_failed") from exc
        except TimeoutError as exc:
            what = "connection and TLS handshake" if self._ssl is not None else "connection"
            raise TransientDeliveryError(
                f"cannot connect to {self.config.host}:{self.config.port}: no {what} within "
                f"{self.config.connect_timeout:g} s", reason="unreachable") from exc
        except OSError as exc:
            raise TransientDeliveryError(
                f"cannot connect to {self.config.host}:{self.config.port}: {exc}",
                reason="unreachable") from exc
        self._reader, self._writer = reader, writer
        return reader, writer

    async def _send_one(self, delivery: Delivery) -> SendOutcome:
        started = time.perf_counter()
        try:
            data, control_id = await self._message(delivery)
            reader, writer = await self._connect()
            try:
                writer.write(frame(data))
                await writer.drain()
                ack = await self._read_ack(reader)
            except (OSError, MllpFramingError, MllpIdleTimeout, TransientDeliveryError) as exc:
                await self.close()  # a half-read or unanswered exchange poisons the stream
                if isinstance(exc, TransientDeliveryError):
                    raise
                raise TransientDeliveryError(f"MLLP exchange failed: {exc}",
                                             reason="connection") from exc
            try:
                outcome = self._classify(ack, control_id)
            except TransientDeliveryError:
                await self.close()
                raise
        except DeliveryError as exc:
            return failed(exc, time.perf_counter() - started)
        outcome.seconds = time.perf_counter() - started
        return outcome

    async def _message(self, delivery: Delivery) -> tuple[bytes, str]:
        ref = delivery.payload.get("message")
        if isinstance(ref, dict):
            # The router's reference to the journal: forward the bytes exactly as received.
            journal_id = ref.get("journal_id")
            if not isinstance(journal_id, int) or self._journal is None:
                raise PermanentDeliveryError(f"outbox row {delivery.row_id}: unusable message "
                                             "reference", reason="bad_payload")
            raw = await self._journal(journal_id)
            if raw is None:
                raise PermanentDeliveryError(f"HL7 journal entry {journal_id} is gone",
                                             reason="journal_missing")
            data = raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
            if b"\x0b" in data or b"\x1c" in data:
                raise PermanentDeliveryError("the message holds an MLLP block character",
                                             reason="bad_payload")
            # Read with the character set intake used: a message without MSH-18 was accepted
            # in the site's hl7.default_charset. Rows routed before the payload named it
            # fall back to Latin-1, which decodes any byte: only MSH-10 is needed here.
            charset = ref.get("charset")
            return data, control_id_of(data, charset if isinstance(charset, str) and charset
                                       else "8859/1")
        return wire_bytes(delivery)

    async def _read_ack(self, reader: asyncio.StreamReader) -> Hl7Message:
        frames = read_messages(reader, max_message_bytes=self.config.max_ack_bytes,
                               idle_timeout=self.config.ack_timeout)
        try:
            async for payload in frames:
                try:
                    return Hl7Message.parse(payload)
                except InvalidInput as exc:
                    raise TransientDeliveryError(f"unreadable ACK: {exc}",
                                                 reason="bad_ack") from exc
        except MllpIdleTimeout as exc:
            raise TransientDeliveryError(f"no ACK within {self.config.ack_timeout:g} s",
                                         reason="ack_timeout") from exc
        finally:
            aclose = getattr(frames, "aclose", None)
            if aclose is not None:
                await aclose()
        raise TransientDeliveryError("the receiver closed the connection without an ACK",
                                     reason="no_ack")

    def _classify(self, ack: Hl7Message, control_id: str) -> SendOutcome:
        msa = ack.segment("MSA")
        if msa is None:
            raise TransientDeliveryError("the answer has no MSA segment", reason="bad_ack")
        code = msa.component(1)
        if msa.component(2) != control_id:
            # An answer to another message: the stream is out of step; start afresh.
            raise TransientDeliveryError(
                f"ACK for {msa.component(2)!r}, expected {control_id!r}", reason="ack_mismatch")
        verdict = classify_hl7_ack(code, on_application_error=self.config.on_application_error,
                                   on_application_reject=self.config.on_application_reject)
        notes: dict[str, Any] = {"ack": code, "control_id": control_id}
        if verdict is Verdict.DELIVERED:
            return SendOutcome(None, 0.0, notes)
        err_segment = ack.segment("ERR")
        text = msa.component(3) or (err_segment.field(8) if err_segment else "")
        cls = PermanentDeliveryError if verdict is Verdict.PERMANENT else TransientDeliveryError
        return SendOutcome(cls(f"ACK {code}: {text}".strip(), reason=f"ack_{code.lower()}",
                               status=code), 0.0, notes)
