"""HL7 v2 intake: parse, commit durably (group commit), then build the acknowledgement.

:class:`Hl7Intake` turns one MLLP payload into one ACK payload. The message and its outcome are
journaled by the worklist service in a batched transaction before the answer is built; ``AA``
therefore always means committed. A repeated MSH-10 from the same sender gets the original
outcome back from the journal, and the ACK is built deterministically from it. When nothing can
be committed (store full, shutdown, commit timeout) the answer is ``AR`` and the sender keeps the
message. It owns no sockets (see ``listener``) and no SQL (see ``engine.worklist``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

from engine.bus import EventBus
from engine.durable.group_commit import GroupCommit
from engine.errors import TransientError
from engine.events import OrderReceived
from engine.hl7.ack import AckError, Hl7ErrorCode, ack_code_for, build_ack
from engine.hl7.message import Hl7Message, Hl7ParseError, escape
from engine.observability.logging import get_logger
from engine.observability.metrics import (
    HL7_COMMIT_BATCH,
    HL7_COMMIT_SECONDS,
    HL7_MESSAGE_SECONDS,
    HL7_MESSAGES,
)
from engine.settings import Hl7Settings
from engine.worklist.service import WorklistService
from engine.worklist.types import Hl7Outcome, Hl7Received

log = get_logger("engine.ingress.hl7")


class Hl7Intake:
    """Answers each received HL7 message, durably."""

    def __init__(self, worklist: WorklistService, settings: Hl7Settings,
                 has_room: Callable[[], bool], bus: EventBus | None = None) -> None:
        self._settings = settings
        self._has_room = has_room
        self._bus = bus
        self._group: GroupCommit[Hl7Received, Hl7Outcome] = GroupCommit(
            "hl7", worklist.accept_hl7_batch, batch_sizes=HL7_COMMIT_BATCH,
            commit_seconds=HL7_COMMIT_SECONDS)

    async def start(self) -> None:
        await self._group.start()

    async def stop(self) -> None:
        await self._group.stop()

    async def handle(self, raw: bytes, peer_host: str, listener: str) -> bytes:
        """The ACK payload (unframed) for one received payload."""
        started = time.perf_counter()
        now = datetime.now(UTC)
        message: Hl7Message | None = None
        parse_error: str | None = None
        parse_error_at: str | None = None
        try:
            message = Hl7Message.parse(raw, self._settings.default_charset)
        except Hl7ParseError as exc:
            parse_error, parse_error_at = str(exc), exc.field_path
        message_type = f"{message.message_type}^{message.trigger_event}" if message else "?"
        if not self._has_room():
            outcome = Hl7Outcome(code="AR", errors=(AckError(
                code=Hl7ErrorCode.APPLICATION_INTERNAL_ERROR,
                text="radflow cannot store messages now (disk nearly full); resend later"),),
                text=None, duplicate=False, journal_id=None, worklist_item_ids=())
        else:
            outcome = await self._commit(Hl7Received(
                raw=raw, message=message, parse_error=parse_error, peer_host=peer_host,
                listener=listener, received_at=now.isoformat(), parse_error_at=parse_error_at))
        ack = self._ack(message, outcome, now)
        # The code on the wire: enhanced mode (MSH-15 valued) turns AA/AE/AR into CA/CE/CR.
        # Logs and metrics name this one, so they agree with what the sender saw.
        sent_code = ack_code_for(message, outcome.code).value if message else outcome.code
        if self._bus is not None and outcome.code == "AA" and not outcome.duplicate and \
                outcome.journal_id is not None:
            # After the commit (D1): routing picks the message up; if the bus drops the
            # event, routing's sweep finds the unrouted journal row.
            self._bus.publish(OrderReceived(
                occurred_at=now, journal_id=outcome.journal_id, message_type=message_type,
                control_id=message.control_id if message else "", peer_host=peer_host,
                listener=listener, worklist_item_ids=tuple(outcome.worklist_item_ids),
                **outcome.keys))
        HL7_MESSAGES.labels(message_type, sent_code).inc()
        HL7_MESSAGE_SECONDS.observe(time.perf_counter() - started)
        log_fn = log.info if outcome.code == "AA" else log.warning
        log_fn("ingress.hl7.ack_sent", listener=listener, peer_host=peer_host,
               message_type=message_type, control_id=message.control_id if message else None,
               ack_code=sent_code, duplicate=outcome.duplicate,
               reason=(outcome.errors[0].text if outcome.errors else outcome.text) or None,
               journal_id=outcome.journal_id, **outcome.keys)
        return ack

    async def _commit(self, item: Hl7Received) -> Hl7Outcome:
        try:
            async with asyncio.timeout(self._settings.commit_timeout):
                return await self._group.submit(item)
        except (TimeoutError, TransientError) as exc:
            # Not known to be committed: AR tells the sender to keep the message and resend;
            # if it did commit meanwhile, the resend is answered from the journal.
            text = "radflow cannot take the message now; resend later"
            if isinstance(exc, TransientError):
                text = f"{text} ({exc.reason})"
            return Hl7Outcome(code="AR", errors=(AckError(
                code=Hl7ErrorCode.APPLICATION_INTERNAL_ERROR, text=text),), text=None,
                duplicate=False, journal_id=None, worklist_item_ids=())

    def _ack(self, message: Hl7Message | None, outcome: Hl7Outcome, now: datetime) -> bytes:
        app, facility = self._settings.sending_application, self._settings.sending_facility
        if message is None:
            return _ack_without_header(outcome, app, facility, now)
        return build_ack(message, outcome.code, text=outcome.text, errors=outcome.errors,
                         sending_application=app, sending_facility=facility, now=now)


def _ack_without_header(outcome: Hl7Outcome, app: str, facility: str, now: datetime) -> bytes:
    """An AR for a payload whose MSH could not be read: default delimiters, no MSA-2.

    build_ack needs the original's delimiters and control id, which such a payload lacks.
    ERR-3 is the code the outcome (and so the journal) holds: one source for both.
    """
    error = outcome.errors[0] if outcome.errors else AckError(
        code=Hl7ErrorCode.SEGMENT_SEQUENCE_ERROR, text=outcome.text or "unreadable message")
    text = error.text or outcome.text or "unreadable message"
    stamp = now.strftime("%Y%m%d%H%M%S")
    location = "^".join([error.segment or "MSH", str(error.sequence),
                         str(error.field or 1)])
    segments = [
        f"MSH|^~\\&|{escape(app)}|{escape(facility)}|||{stamp}||ACK|ACK{stamp}|P|2.5",
        f"MSA|AR||{escape(text[:80])}",
        f"ERR||{location}|{int(error.code)}|E",
    ]
    return ("\r".join(segments) + "\r").encode("ascii", errors="replace")
