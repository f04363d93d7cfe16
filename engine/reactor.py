"""Event-driven run loops for pynetdicom's two per-association threads.

pynetdicom 3.0 drives each association with two polling loops: the DUL thread checks its
socket and its outgoing queue and sleeps 1 ms when both are empty, and the association thread
sleeps 1 ms before every look at its message queue. On this 2-core machine that costs 3-5 ms per
DIMSE exchange (each request waits for a poll to notice it, and each response waits for the
DUL's next poll) and keeps both threads waking a thousand times a second while idle, competing
for the GIL with the intake's own work. This module owns one thing: replacing those two sleeps
with waits that end the moment there is work, while keeping pynetdicom's own per-iteration
logic (state machine, ARTIM and idle timers, release and abort handling) exactly as it is.
It also reads each PDU with as few ``recv`` calls as possible instead of pynetdicom's 4 KiB
ones (see :func:`_recv_exact`), and hands a P-DATA-TF PDU received in Sta6 straight to the
DIMSE layer (see :func:`_read_pdu`).

How: the DUL waits in ``select`` on the peer's socket and on a wake-up socket pair that every
put on its outgoing queue writes to; the association thread waits on an event that every put
on its incoming queues sets. Both waits are bounded (``_IDLE_WAIT``) so flags set from other
threads (kill, timers) are still seen promptly. Installed per association before pynetdicom
starts either thread: on radflow's listeners from the ``EVT_CONN_OPEN`` handler, on its own
outgoing associations (senders) by :class:`EventDrivenAE`.

It must not change what goes on the wire or how pynetdicom negotiates, and it must not hold a
lock while calling back into pynetdicom. Written by hand because pynetdicom offers no hook for
its loop strategy; it is tied to pynetdicom 3.0's reactor attributes, which
``tests/unit/test_reactor.py`` pins so an upgrade that moves them fails loudly.
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

from engine.observability.logging import get_logger

log = get_logger("engine.reactor")

#: Longest a loop sleeps without a wake-up: the granularity of the ARTIM and idle timers and
#: of kill flags set from other threads. Work never waits for it.
_IDLE_WAIT = 0.02


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A FIFO queue that calls ``wake`` after every put."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class _Waker:
    """A socket pair the DUL thread can ``select`` on beside the peer's socket."""

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)

    def wake(self) -> None:
        # Full of wake-ups already (or closed at the end): the reader wakes anyway.
        with contextlib.suppress(OSError):
            self._writer.send(b"\0")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while self.reader.recv(4096):
                pass

    def close(self) -> None:
        self.reader.close()
        self._writer.close()


class EventDrivenAE(AE):
    """pynetdicom's AE whose requested associations run the event-driven loops.

    ``AE.associate`` creates the association's transport socket between building the
    association and starting its DUL thread; that step is the one place to install the loops
    before any thread runs, hence the override of pynetdicom's ``_create_socket``."""

    def _create_socket(self, assoc: Association, address: Any, tls_args: Any) -> Any:
        install(assoc)
        return super()._create_socket(assoc, address, tls_args)


def install(assoc: Association) -> None:
    """Give an association, whose threads have not started yet, the event-driven loops."""
    dul = assoc.dul
    waker = _Waker()
    activity = threading.Event()
    dul.to_provider_queue = _WakingQueue(waker.wake)
    dul.to_user_queue = _WakingQueue(activity.set)
    assoc.dimse.msg_queue = _WakingQueue(activity.set)
    original_kill_dul = dul.kill_dul

    def kill_dul() -> None:
        original_kill_dul()
        waker.wake()

    def stop_dul() -> bool:
        # pynetdicom's version polls ``is_alive`` while the loop may be parked in ``select``.
        if dul.state_machine.current_state != "Sta1":
            return False
        dul._kill_thread = True
        waker.wake()
        if threading.current_thread() is not dul:
            dul.join()
        return True

    dul.kill_dul = kill_dul  # type: ignore[method-assign]
    dul.stop_dul = stop_dul  # type: ignore[method-assign]
    dul._read_pdu_data = lambda: _read_pdu(dul)  # type: ignore[method-assign]
    # ``Thread.run`` is looked up on the instance; pynetdicom bound its own loop as the
    # thread's target, which ``run`` would otherwise call.
    dul.run = lambda: _run_dul(dul, waker)  # type: ignore[method-assign]
    assoc._run_reactor = lambda: _run_association(assoc, activity)  # type: ignore[method-assign]


def _wait_for_socket(dul: DULServiceProvider, waker: _Waker) -> None:
    transport = dul.socket
    sock = getattr(transport, "socket", None)
    watched: list[Any] = [waker.reader]
    if sock is not None and getattr(transport, "_is_connected", False):
        # Data already decrypted into the TLS buffer is invisible to select.
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return
        watched.append(sock)
    # A socket closed under us raises: the next pass of the loop sees it closed.
    with contextlib.suppress(OSError, ValueError):
        select.select(watched, [], [], _IDLE_WAIT)
    waker.drain()


def _recv_exact(transport: AssociationSocket, nr_bytes: int) -> bytearray:
    """pynetdicom's ``AssociationSocket.recv``: ``nr_bytes`` read, or fewer if the peer closed.

    pynetdicom reads 4 KiB per ``recv`` call, so a 512 KiB CT image is 128 calls, each of which
    lets go of the GIL and must win it back from whichever thread took it meanwhile: with the
    delivery workers busy that wait dominated intake. One buffer filled by ``recv_into`` takes
    as few calls as the kernel's socket buffer allows."""
    sock = transport.socket
    buf = bytearray(nr_bytes)
    got = 0
    with memoryview(buf) as view:
        while got < nr_bytes:
            n = sock.recv_into(view[got:], nr_bytes - got)  # type: ignore[union-attr]
            if not n:
                break
            got += n
    if got < nr_bytes:
        del buf[got:]
    return buf


_PDU_HEADER = struct.Struct(">BBL")
_PDV_LENGTH = struct.Struct(">L")
_KNOWN_PDU_TYPES = frozenset(range(0x01, 0x08))


def _pdvs(body: bytearray) -> list[tuple[int, memoryview]] | None:
    """The presentation data value items of a P-DATA-TF PDU's body (PS3.8 9.3.5.1): each is a
    4-byte length, the presentation context id, then the message control header and fragment.
    ``None`` if the items do not add up to the body."""
    out: list[tuple[int, memoryview]] = []
    view = memoryview(body)
    offset, end = 0, len(body)
    while offset < end:
        if end - offset < 6:
            return None
        (length,) = _PDV_LENGTH.unpack_from(body, offset)
        if length < 2 or offset + 4 + length > end:
            return None
        out.append((body[offset + 4], view[offset + 5:offset + 4 + length]))
        offset += 4 + length
    return out


def _read_pdu(dul: DULServiceProvider) -> None:
    """pynetdicom's ``DULServiceProvider._read_pdu_data``, but a P-DATA-TF PDU that arrives in
    Sta6 (where its only action, DT-2, hands the data to DIMSE and stays in Sta6) goes to the
    DIMSE layer at once, its fragments as views of the received buffer. pynetdicom copies a
    PDU's bytes four times on the way (buffer, ``bytes``, PDU items, primitive) and runs the
    state machine for it: for a CT image that is several megabytes of copying per instance on
    the thread whose GIL time the whole association waits on. Every other PDU, a P-DATA-TF in
    any other state, and any association with handlers bound to ``EVT_DATA_RECV`` or
    ``EVT_PDU_RECV`` (which expect pynetdicom's objects) take pynetdicom's own path, with the
    same events for the same failures."""
    transport = dul.socket
    assert transport is not None
    try:
        header = transport.recv(6)
        pdu_type, _, length = _PDU_HEADER.unpack(header)
    except (OSError, TimeoutError, struct.error):
        # The connection closed before a whole header: Evt17, as pynetdicom raises it.
        dul.event_queue.put("Evt17")
        return
    if pdu_type not in _KNOWN_PDU_TYPES:
        log.error("dimse.dul.unknown_pdu", pdu_type=f"0x{pdu_type:02X}")
        dul.event_queue.put("Evt19")
        return
    try:
        body = transport.recv(length)
    except (OSError, TimeoutError):
        dul.event_queue.put("Evt17")
        return
    if len(body) != length:
        dul.event_queue.put("Evt17")  # closed in the middle of the PDU
        return
    assoc = dul.assoc
    if (pdu_type == 0x04 and dul.state_machine.current_state == "Sta6"
            and not assoc.get_handlers(evt.EVT_DATA_RECV)
            and not assoc.get_handlers(evt.EVT_PDU_RECV)):
        items = _pdvs(body)
        if items is None:
            log.error("dimse.dul.invalid_pdu", pdu_type="0x04", length=length)
            dul.event_queue.put("Evt19")
            return
        primitive = P_DATA()
        # The setter insists on ``bytes`` (a copy per fragment); DIMSE only slices and writes.
        primitive._presentation_data_value_list = items  # type: ignore[assignment]
        assoc.dimse.receive_primitive(primitive)
        return
    try:
        pdu, event = dul._decode_pdu(bytearray(header) + body)
    except Exception as exc:  # pynetdicom's policy: an undecodable PDU is Evt19
        log.error("dimse.dul.invalid_pdu", pdu_type=f"0x{pdu_type:02X}", detail=str(exc))
        dul.event_queue.put("Evt19")
        return
    dul.event_queue.put(event)
    dul._recv_pdu.put(pdu)


def _run_dul(dul: DULServiceProvider, waker: _Waker) -> None:
    """pynetdicom's ``DULServiceProvider.run_reactor``, with the idle sleep replaced by a wait
    on the socket and the wake-up pair, and whole-PDU reads."""
    if isinstance(dul.socket, AssociationSocket):
        transport = dul.socket
        transport.recv = lambda nr_bytes: _recv_exact(transport, nr_bytes)  # type: ignore[method-assign]
    dul._idle_timer.start()
    try:
        while True:
            if not dul.assoc._dul_ready.is_set():
                dul.assoc._dul_ready.set()
            if dul._kill_thread:
                break
            if dul.artim_timer.expired:
                dul.event_queue.put("Evt18")
            try:
                if dul._process_recv_primitive():
                    pass
                elif dul._is_transport_event():
                    dul._idle_timer.restart()
            except Exception as exc:  # pynetdicom's own policy: any failure aborts
                log.error("dimse.dul.failed", error=str(exc), exc_info=True)
                _abort_hard(dul)
                return
            try:
                event = dul.event_queue.get(block=False)
            except queue.Empty:
                if dul.to_provider_queue.empty():
                    _wait_for_socket(dul, waker)
                continue
            dul.state_machine.do_action(event)
    finally:
        waker.close()


def _abort_hard(dul: DULServiceProvider) -> None:
    """Bypass the state machine, as pynetdicom does, so the A-ABORT is sent whatever its state."""
    abort_pdu = A_ABORT_RQ()
    abort_pdu.source = 0x02
    abort_pdu.reason_diagnostic = 0x00
    if dul.socket is not None:
        with contextlib.suppress(OSError):
            dul.socket.send(abort_pdu.encode())
    dul.assoc.is_aborted = True
    dul.assoc.is_established = False
    dul.assoc._kill = True
    dul._kill_thread = True


def _run_association(assoc: Association, activity: threading.Event) -> None:
    """pynetdicom's ``Association._run_reactor`` (acceptor), waiting on ``activity`` instead of
    sleeping 1 ms before every look at the queues."""
    assoc._is_paused = False
    while not assoc._kill:
        # The pause checkpoint, as in pynetdicom: ``send_*`` calls from handlers stop the loop.
        assoc._is_paused = True
        assoc._reactor_checkpoint.wait()
        assoc._is_paused = False
        # pynetdicom's handshake has a window: a ``send_*`` that clears the checkpoint just
        # after ``wait`` returned still saw ``_is_paused`` true and goes on, and this thread
        # would then take its response off the queue ("unexpected C-ECHO service message",
        # then a DIMSE timeout). Looking again after leaving the pause closes it: a clear that
        # comes later sees ``_is_paused`` false and waits for the next pause.
        if not assoc._reactor_checkpoint.is_set():
            continue
        # Cleared before looking, so a put that lands after the look still ends the wait.
        activity.clear()
        context_id, msg = assoc.dimse.get_msg(block=False)
        if msg:
            assoc._serve_request(msg, context_id)  # type: ignore[arg-type]
        if _finished(assoc):
            return
        if not msg:
            activity.wait(_IDLE_WAIT)


def _finished(assoc: Association) -> bool:
    """Release, abort, a dead DUL or the network timeout: pynetdicom's end-of-loop checks."""
    if assoc.is_established and assoc.acse.is_release_requested():
        assoc.acse.send_release(is_response=True)
        assoc.is_released = True
        assoc.is_established = False
        evt.trigger(assoc, evt.EVT_RELEASED, {})
        assoc.kill()
        return True
    if assoc.acse.is_aborted():
        assoc.dul.receive_pdu(wait=False)  # so EVT_ACSE_RECV fires for subscribers
        assoc.is_aborted = True
        assoc.is_established = False
        evt.trigger(assoc, evt.EVT_ABORTED, {})
        assoc.kill()
        return True
    if not assoc.dul.is_alive():
        assoc.kill()
        return True
    if assoc.dul.idle_timer_expired():
        log.error("dimse.association.network_timeout")
        if assoc.network_timeout_response == "A-RELEASE":
            assoc._is_paused = True
            assoc._reactor_checkpoint.wait()
            assoc.release()
            assoc._is_paused = False
        else:
            assoc.abort()
        assoc.kill()
        return True
    return False
