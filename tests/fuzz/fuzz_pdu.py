"""Fuzz harness: radflow's PDU reader (``engine.reactor._read_pdu`` and its P-DATA-TF item
parser ``_pdvs``) over a byte stream, with pynetdicom's PDU decoding and DIMSE message
assembly behind it, as an association in Sta6 (established) uses them.

The reader runs on a stand-in for pynetdicom's DUL: a transport that serves the input's bytes,
an event queue, and a DIMSE layer that assembles P-DATA into messages with pynetdicom's own
``DIMSEMessage``. The reader must turn any byte stream into PDUs and events (``Evt17`` closed,
``Evt19`` invalid PDU) without raising; an exception out of it would kill the association's DUL
thread (radflow's DUL loop turns it into an A-ABORT with a log line, but a failure in radflow's
own reading code is a bug). An exception raised inside pynetdicom's DIMSE assembly (e.g. a
command set without Command Field) ends the association the same way, by design, and ends the
run of that input; it is not a crash. After each PDU read whole, the reader must have consumed
exactly its header and declared length, so the stream stays in step, and that length must be
within what the reader allows (:func:`engine.reactor.pdu_limit`): a longer PDU is an A-ABORT
and Evt17 before any of its body is read.
"""

from __future__ import annotations

import contextlib
import queue
from typing import Any

from tests.fuzz._common import fuzz, instrumented

with instrumented():
    from pynetdicom.dimse_messages import DIMSEMessage
    from pynetdicom.dul import _PDU_TYPES

    from engine import reactor

_MAX_PDUS = 256


class _PynetdicomRefused(Exception):
    """pynetdicom's DIMSE layer raised: the association is aborted (radflow's DUL loop)."""


class _Transport:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0
        self.socket = self
        self.sent = b""

    def recv_into(self, buffer: Any, n: int) -> int:
        # A socket's contract as radflow's reader uses it: up to ``n`` bytes, 0 at EOF.
        chunk = self.data[self.pos:self.pos + n]
        buffer[:len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)

    def sendall(self, data: bytes) -> None:
        self.sent += data  # the A-ABORT for a PDU longer than advertised

    def settimeout(self, _: Any) -> None:
        pass

    def gettimeout(self) -> float:
        return 30.0


class _StateMachine:
    current_state = "Sta6"


class _Timer:
    timeout = 30.0
    remaining = 30.0


class _ServiceUser:
    maximum_length = 262_144  # the listener's default max_pdu_size
    primitive = None
    address = "127.0.0.1"


class _Dimse:
    def __init__(self) -> None:
        self.message: DIMSEMessage | None = None

    def receive_primitive(self, primitive: Any) -> None:
        if self.message is None:
            self.message = DIMSEMessage()
        try:
            complete = self.message.decode_msg(primitive, None)
        except Exception as exc:
            raise _PynetdicomRefused from exc
        if complete:
            # pynetdicom's own policy for an undecodable message here: Evt19
            with contextlib.suppress(Exception):
                self.message.message_to_primitive()
            self.message = None


class _Assoc:
    def __init__(self) -> None:
        self.dimse = _Dimse()
        self.is_acceptor = True
        self.network_timeout = 30.0
        self.acceptor = self.requestor = _ServiceUser()

    def get_handlers(self, _: Any) -> list[Any]:
        return []

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)


class _Dul:
    def __init__(self, data: bytes) -> None:
        self.socket = _Transport(data)
        self.event_queue: queue.Queue[str] = queue.Queue()
        self._recv_pdu: queue.Queue[Any] = queue.Queue()
        self.state_machine = _StateMachine()
        self.artim_timer = _Timer()
        self.to_user_queue: queue.Queue[Any] = queue.Queue()
        self.assoc = _Assoc()

    def _decode_pdu(self, b: bytearray) -> tuple[Any, str]:
        # pynetdicom's DULServiceProvider._decode_pdu without its event triggers
        pdu_cls, event = _PDU_TYPES[bytes(b[0:1])]
        pdu = pdu_cls()
        pdu.decode(bytes(b))
        return pdu, event


def one_input(data: bytes) -> None:
    dul = _Dul(data)
    for _ in range(_MAX_PDUS):
        start = dul.socket.pos
        try:
            reactor._read_pdu(dul)  # type: ignore[arg-type]
        except _PynetdicomRefused:
            return
        events = list(dul.event_queue.queue)
        if "Evt17" in events or "Evt19" in events:
            return
        declared = int.from_bytes(data[start + 2:start + 6], "big")
        assert dul.socket.pos == start + 6 + declared, (start, dul.socket.pos, declared)
        assert declared <= reactor.pdu_limit(dul, data[start])  # type: ignore[arg-type]
        if dul.socket.pos >= len(data):
            return


if __name__ == "__main__":
    fuzz(one_input)
