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

Because every byte from a peer passes through it, it also bounds what a peer can make the
process hold: a PDU longer than radflow advertised (P-DATA-TF) or than
:data:`MAX_ASSOCIATION_PDU` (every other PDU, and any PDU before the association is
negotiated) is answered with an A-ABORT before a byte of its body is read, and every PDU must
arrive whole before a deadline (the ARTIM timer before negotiation, the network timeout after):
pynetdicom allocates whatever a header declares and reads a blocking socket with no time limit.

How: the DUL waits in ``select`` on the peer's socket and on a wake-up socket pair that every
put on its outgoing queue (and every kill) writes to; the association thread waits on an event
that every put on its incoming queues, a pause asked for by a ``send_*``, a kill and the DUL's
end set. Each wait ends at the next deadline of the timers its loop checks (ARTIM, the network
timeout), and at the latest after ``_MAX_IDLE_WAIT``, a safety net for a flag pynetdicom might
set without a wake-up: an idle association costs a few wake-ups a second, not fifty per thread,
which with a hundred modalities holding associations open was enough load to slow every new
association. Installed per association before pynetdicom starts either thread: on radflow's
listeners from the ``EVT_CONN_OPEN`` handler, on its own outgoing associations (senders) by
:class:`EventDrivenAE`.

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
import time
import weakref
from collections.abc import Callable
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

from engine.observability.logging import get_logger
from engine.observability.metrics import DIMSE_REJECTIONS

log = get_logger("engine.reactor")

#: Longest a loop sleeps without a wake-up or a timer falling due. Work never waits for it:
#: it bounds only how late a flag set from another thread without a wake-up would be seen.
_MAX_IDLE_WAIT = 0.5
#: Shortest wait, so a timer that is due but not yet acted on never makes a loop spin.
_MIN_WAIT = 0.001


def _until(*timers: Any) -> float:
    """Seconds until the first of the running ``timers`` (pynetdicom ``Timer``) expires,
    within [_MIN_WAIT, _MAX_IDLE_WAIT]. A timer that is stopped or never started does not
    count; ``Timer.remaining`` alone cannot tell those apart from a running one."""
    wait = _MAX_IDLE_WAIT
    for timer in timers:
        if timer.timeout is not None and timer._start_time is not None \
                and timer._end_time is None:
            wait = min(wait, timer.remaining)
    return max(wait, _MIN_WAIT)


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A FIFO queue that calls ``wake`` after every put."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class _UserQueue(_WakingQueue):
    """The DUL's queue of primitives for the association thread, which stops blocking readers
    once the DUL is gone: pynetdicom's acceptor otherwise waits out the whole ACSE timeout for
    an A-ASSOCIATE-RQ from a connection that is already closed, holding its thread (and a
    pending-connection place) for nothing."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__(wake)
        self.closed = False

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        # queue.Queue.get, plus the ``closed`` check: items already queued are still returned.
        with self.not_empty:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._qsize():
                if not block or self.closed:
                    raise queue.Empty
                if deadline is None:
                    self.not_empty.wait()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise queue.Empty
                self.not_empty.wait(remaining)
            item = self._get()
            self.not_full.notify()
            return item

    def close(self) -> None:
        with self.not_empty:
            self.closed = True
            self.not_empty.notify_all()
        self._wake()  # the association thread sees the DUL gone at once


class _Checkpoint(threading.Event):
    """The association's pause checkpoint, which wakes the association loop when cleared.

    pynetdicom's ``send_*`` and ``release`` (on the calling thread) clear it and then spin
    until the loop parks on it: a loop asleep until its next timer would make every request
    wait for that timer."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self.set()
        self._wake = wake

    def clear(self) -> None:
        super().clear()
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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._requested_lock = threading.Lock()
        self._requested: weakref.WeakSet[Association] = weakref.WeakSet()
        self._refusing = False

    def _create_socket(self, assoc: Association, address: Any, tls_args: Any) -> Any:
        install(assoc)
        with self._requested_lock:
            if self._refusing:  # checked with the registration: abort_all misses none
                raise RuntimeError("radflow is stopping: no new association")
            self._requested.add(assoc)
        return super()._create_socket(assoc, address, tls_args)

    def refuse_new(self) -> None:
        """From now on ``associate`` raises instead of opening a connection: a sender that is
        closing tells a batch still running on its thread not to open another association
        (one cut short by :meth:`abort_all` would otherwise reconnect and wait again)."""
        with self._requested_lock:
            self._refusing = True

    def abort_all(self) -> int:
        """A-ABORT every association this AE requested that has not ended, from any thread:
        also one still negotiating, whose ``associate`` call then returns at once instead of
        after the ACSE timeout (a peer that takes the connection and never answers would hold
        a stopping radflow that long). The number aborted."""
        with self._requested_lock:
            alive = [a for a in self._requested
                     if not (a.is_released or a.is_aborted or a.is_rejected)
                     and a.dul.is_alive()]
        for assoc in alive:
            with contextlib.suppress(Exception):  # it may end by itself meanwhile
                assoc.abort()
        return len(alive)


def install(assoc: Association, listener: str | None = None) -> None:
    """Give an association, whose threads have not started yet, the event-driven loops.
    ``listener``: the name of the radflow listener that accepted it, for the rejection
    counters (``None`` on radflow's own outgoing associations)."""
    dul = assoc.dul
    waker = _Waker()
    activity = threading.Event()
    dul.to_provider_queue = _WakingQueue(waker.wake)
    dul.to_user_queue = _UserQueue(activity.set)
    dul._radflow_listener = listener  # type: ignore[attr-defined]
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

    original_kill = assoc.kill

    def kill() -> None:
        # From another thread, the association loop must see ``_kill`` now, not at its next
        # timer: pynetdicom's kill waits for the DUL, which may wait for that loop to end.
        assoc._kill = True
        activity.set()
        original_kill()

    dul.kill_dul = kill_dul  # type: ignore[method-assign]
    dul.stop_dul = stop_dul  # type: ignore[method-assign]
    assoc.kill = kill  # type: ignore[method-assign]
    dul._read_pdu_data = lambda: _read_pdu(dul)  # type: ignore[method-assign]
    # ``Thread.run`` is looked up on the instance; pynetdicom bound its own loop as the
    # thread's target, which ``run`` would otherwise call.
    dul.run = lambda: _run_dul(dul, waker)  # type: ignore[method-assign]
    assoc._reactor_checkpoint = _Checkpoint(activity.set)
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
        select.select(watched, [], [], _until(dul.artim_timer))
    waker.drain()


#: The longest PDU radflow reads before an association is negotiated, and the longest
#: A-ASSOCIATE-RQ/AC, A-ASSOCIATE-RJ, A-RELEASE or A-ABORT PDU at any time (PS3.8 9.3). A
#: request with all 128 presentation contexts a peer may propose, each with five transfer
#: syntaxes of 64-character UIDs, is 128 * (8 + 68 + 5 * 68) = 53,248 bytes; real ones (DCMTK's
#: storescu proposing everything it knows) are a fraction of that. A user-information item
#: carrying a 64 KB identity token does not fit, and is refused as the abuse it almost always
#: is. The four fixed-size PDUs are 4 bytes long.
MAX_ASSOCIATION_PDU = 65_536
#: The most a P-DATA-TF may hold when the local side advertised no maximum (0, "unlimited"):
#: radflow's listeners always advertise one; this only bounds a requestor configured without.
_UNLIMITED_PDATA = 128 * 1024 * 1024
#: Buffers grow by at most this much ahead of the bytes actually received, so a header that
#: declares a large (but allowed) length and then stalls costs little.
_READ_CHUNK = 1024 * 1024

#: The most presentation context items an A-ASSOCIATE-RQ/AC can carry: context ids are the
#: odd numbers 1-255 (PS3.8 9.3.2.2).
MAX_PRESENTATION_CONTEXTS = 128
#: The longest user information item radflow reads. What legitimately goes there is small
#: (maximum length, implementation identity, asynchronous operations, a username and passcode -
#: the only identities radflow checks) except role selection and extended negotiation, one
#: sub-item per SOP class: about 10 KiB for all 128 contexts. Twice that is room enough.
MAX_USER_INFORMATION = 32 * 1024
#: PS3.5 9.1: a UID is at most 64 bytes.
_MAX_UID = 64
_UID_ITEMS = frozenset({0x10, 0x30, 0x40})  # application context, abstract and transfer syntax

# A-ABORT reasons when the source is the service provider (PS3.8 Table 9-26)
_ABORT_REASON_NOT_SPECIFIED = 0x00
_ABORT_INVALID_PDU_PARAMETER = 0x06
# States in which the association is not negotiated yet (PS3.8 Table 9-10): Sta2 waits for the
# A-ASSOCIATE-RQ, Sta13 for the transport to close after an A-ABORT or A-ASSOCIATE-RJ.
_UNNEGOTIATED_STATES = frozenset({"Sta1", "Sta2", "Sta3", "Sta4", "Sta5", "Sta13"})


def _recv_exact(transport: AssociationSocket, nr_bytes: int,
                deadline: float | None = None) -> bytearray:
    """pynetdicom's ``AssociationSocket.recv``: ``nr_bytes`` read, or fewer if the peer closed;
    ``TimeoutError`` if ``deadline`` (``time.monotonic``) passes first.

    pynetdicom reads 4 KiB per ``recv`` call, so a 512 KiB CT image is 128 calls, each of which
    lets go of the GIL and must win it back from whichever thread took it meanwhile: with the
    delivery workers busy that wait dominated intake. The buffer is filled by ``recv_into``
    with as few calls as the kernel's socket buffer allows, and grows at most
    :data:`_READ_CHUNK` ahead of what arrived."""
    sock = transport.socket
    assert sock is not None
    buf = bytearray(min(nr_bytes, _READ_CHUNK))
    got = 0
    while got < nr_bytes:
        if got == len(buf):
            buf.extend(bytes(min(_READ_CHUNK, nr_bytes - got)))
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
        with memoryview(buf) as view:
            n = sock.recv_into(view[got:], len(buf) - got)
        if not n:
            break
        got += n
    if got < len(buf):
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


def association_items_problem(body: bytes | bytearray) -> str | None:
    """What is wrong with the items of an A-ASSOCIATE-RQ or -AC PDU's body, or ``None``.

    pynetdicom's decoder takes an item's declared length on trust (a sub-item longer than its
    item is read from whatever follows), accepts any number of presentation contexts and any
    size of user information: it decoded 200 contexts and a 64 KB identity without complaint.
    This walk checks only framing and sizes, in one pass over a body already bounded by
    :data:`MAX_ASSOCIATION_PDU`; pynetdicom still decodes and negotiates."""
    offset, end = 68, len(body)  # protocol version, reserved, AE titles, reserved (PS3.8 9.3.2)
    if end < offset:
        return "shorter than its fixed fields"
    contexts = 0
    while offset < end:
        if end - offset < 4:
            return "an item header is cut short"
        item_type, _, length = struct.unpack_from(">BBH", body, offset)
        start, offset = offset + 4, offset + 4 + length
        if offset > end:
            return f"item 0x{item_type:02X} declares {length} bytes, {end - start} are left"
        if item_type in _UID_ITEMS and length > _MAX_UID:
            return f"item 0x{item_type:02X} holds a UID of {length} bytes"
        if item_type in (0x20, 0x21):
            contexts += 1
            if contexts > MAX_PRESENTATION_CONTEXTS:
                return f"more than {MAX_PRESENTATION_CONTEXTS} presentation contexts"
            problem = _sub_items_problem(body, start + 4, offset, item_type)
        elif item_type == 0x50:
            if length > MAX_USER_INFORMATION:
                return f"a user information item of {length} bytes"
            problem = _sub_items_problem(body, start, offset, item_type)
        else:
            problem = None
        if problem:
            return problem
    return None


def _sub_items_problem(body: bytes | bytearray, offset: int, end: int, parent: int
                       ) -> str | None:
    if offset > end:
        return f"item 0x{parent:02X} is shorter than its fixed fields"
    while offset < end:
        if end - offset < 4:
            return f"a sub-item header in item 0x{parent:02X} is cut short"
        sub_type, _, length = struct.unpack_from(">BBH", body, offset)
        offset += 4 + length
        if offset > end:
            return f"sub-item 0x{sub_type:02X} runs past the end of item 0x{parent:02X}"
        if parent != 0x50 and sub_type in _UID_ITEMS and length > _MAX_UID:
            return f"sub-item 0x{sub_type:02X} holds a UID of {length} bytes"
    return None


def pdu_limit(dul: DULServiceProvider, pdu_type: int) -> int:
    """The longest PDU of ``pdu_type`` the peer may send now: for a P-DATA-TF on a negotiated
    association, the maximum length the local side advertised (PS3.8 D.1); otherwise
    :data:`MAX_ASSOCIATION_PDU`."""
    if pdu_type == 0x04 and dul.state_machine.current_state not in _UNNEGOTIATED_STATES:
        assoc = dul.assoc
        local = assoc.acceptor if assoc.is_acceptor else assoc.requestor
        return int(local.maximum_length or _UNLIMITED_PDATA)
    return MAX_ASSOCIATION_PDU


def _read_deadline(dul: DULServiceProvider) -> float | None:
    """When the PDU now arriving must be complete (``time.monotonic``): before negotiation the
    ARTIM timer's end (PS3.8 9.1.5: the peer gets that long to send its A-ASSOCIATE-RQ, or to
    close after an abort), after it the network timeout from the PDU's first byte."""
    artim = dul.artim_timer
    if dul.state_machine.current_state in _UNNEGOTIATED_STATES and artim.timeout is not None:
        # ``remaining`` is the full timeout while the timer is not running (Sta3-Sta5).
        return time.monotonic() + max(0.0, artim.remaining)
    timeout = dul.assoc.network_timeout
    return None if timeout is None else time.monotonic() + timeout


def _peer_context(dul: DULServiceProvider) -> dict[str, Any]:
    assoc = dul.assoc
    remote = assoc.requestor if assoc.is_acceptor else assoc.acceptor
    primitive = assoc.requestor.primitive
    calling = str(primitive.calling_ae_title).strip() if primitive is not None else ""
    state = dul.state_machine.current_state
    return {"peer_host": str(remote.address), "calling_ae": calling, "state": state,
            "negotiated": state not in _UNNEGOTIATED_STATES}


def _give_up(dul: DULServiceProvider, reason: str, abort_reason: int | None,
             **context: Any) -> None:
    """Refuse the rest of the connection: log and count ``reason``, send an A-ABORT (service
    provider, ``abort_reason``) unless ``None``, and let the state machine close the transport
    (Evt17), which ends the association (A-P-ABORT indication) or the unnegotiated
    connection. The A-ABORT goes straight to the socket, as pynetdicom's own hard abort does:
    the state machine has no transition for "the peer broke the PDU framing"."""
    listener: str | None = getattr(dul, "_radflow_listener", None)
    dul._radflow_refused = reason  # type: ignore[attr-defined]
    if listener is not None:
        DIMSE_REJECTIONS.labels(listener, reason).inc()
    log.warning(f"dimse.dul.{reason}", listener=listener, **_peer_context(dul), **context)
    transport = dul.socket
    sock = getattr(transport, "socket", None)
    if abort_reason is not None and sock is not None:
        abort_pdu = A_ABORT_RQ()
        abort_pdu.source = 0x02
        abort_pdu.reason_diagnostic = abort_reason
        with contextlib.suppress(OSError, ValueError):
            sock.settimeout(1.0)  # ten bytes; a peer that reads nothing must not hold us
            sock.sendall(abort_pdu.encode())
    _transport_closed(dul)


def _transport_closed(dul: DULServiceProvider) -> None:
    """Evt17, and, before negotiation, no more waiting for an A-ASSOCIATE primitive: the
    state machine goes back to Sta1 without ending the DUL, and the association thread would
    otherwise sit out its whole ACSE timeout on a connection that is gone."""
    dul.event_queue.put("Evt17")
    queue_ = dul.to_user_queue
    if isinstance(queue_, _UserQueue) and dul.state_machine.current_state in _UNNEGOTIATED_STATES:
        queue_.close()


def _read_pdu(dul: DULServiceProvider) -> None:
    """pynetdicom's ``DULServiceProvider._read_pdu_data``, bounded, and with a fast path.

    Bounded: the declared length is checked against :func:`pdu_limit` before any of the body
    is read, and the whole PDU must arrive before :func:`_read_deadline`; either failure is an
    A-ABORT (or, before negotiation on a timeout, a close, as ARTIM expiry is) with a log line
    and a count, never a buffer of the declared size or a thread parked on a silent peer.

    Fast path: a P-DATA-TF PDU that arrives in Sta6 (where its only action, DT-2, hands the
    data to DIMSE and stays in Sta6) goes to the DIMSE layer at once, its fragments as views
    of the received buffer. pynetdicom copies a PDU's bytes four times on the way (buffer,
    ``bytes``, PDU items, primitive) and runs the state machine for it: for a CT image that is
    several megabytes of copying per instance on the thread whose GIL time the whole
    association waits on. Every other PDU, a P-DATA-TF in any other state, and any association
    with handlers bound to ``EVT_DATA_RECV`` or ``EVT_PDU_RECV`` (which expect pynetdicom's
    objects) take pynetdicom's own path, with the same events for the same failures."""
    transport = dul.socket
    assert transport is not None
    sock = transport.socket
    if sock is None:
        _transport_closed(dul)
        return
    previous_timeout = sock.gettimeout()
    deadline = _read_deadline(dul)
    try:
        _read_bounded_pdu(dul, transport, deadline)
    except TimeoutError:
        negotiated = dul.state_machine.current_state not in _UNNEGOTIATED_STATES
        _give_up(dul, "read_timeout",
                 _ABORT_REASON_NOT_SPECIFIED if negotiated else None)
        return
    finally:
        if transport.socket is not None:
            with contextlib.suppress(OSError, ValueError):
                transport.socket.settimeout(previous_timeout)


def _read_bounded_pdu(dul: DULServiceProvider, transport: AssociationSocket,
                      deadline: float | None) -> None:
    try:
        header = _recv_exact(transport, 6, deadline)
        pdu_type, _, length = _PDU_HEADER.unpack(header)
    except TimeoutError:
        raise
    except (OSError, struct.error):
        # The connection closed before a whole header: Evt17, as pynetdicom raises it.
        _transport_closed(dul)
        return
    if pdu_type not in _KNOWN_PDU_TYPES:
        log.error("dimse.dul.unknown_pdu", pdu_type=f"0x{pdu_type:02X}")
        dul.event_queue.put("Evt19")
        return
    limit = pdu_limit(dul, pdu_type)
    if length > limit:
        _give_up(dul, "pdu_too_large", _ABORT_INVALID_PDU_PARAMETER,
                 pdu_type=f"0x{pdu_type:02X}", declared_length=length, limit=limit)
        return
    try:
        body = _recv_exact(transport, length, deadline)
    except TimeoutError:
        raise
    except OSError:
        _transport_closed(dul)
        return
    if len(body) != length:
        _transport_closed(dul)  # closed in the middle of the PDU
        return
    if pdu_type in (0x01, 0x02):
        problem = association_items_problem(body)
        if problem is not None:
            _give_up(dul, "invalid_association_pdu", _ABORT_INVALID_PDU_PARAMETER,
                     pdu_type=f"0x{pdu_type:02X}", detail=problem)
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
    sock = getattr(dul.socket, "socket", None)
    if sock is not None and sock.gettimeout() is None:
        # Each PDU read sets its own deadline as the socket's timeout. Starting from a timeout
        # rather than none keeps the descriptor non-blocking throughout: switching it while
        # another thread sends a response (engine.dicom.wire writes them from the
        # association thread) would make that blocking send fail with EAGAIN. Sends are then
        # bounded by the network timeout too.
        with contextlib.suppress(OSError):
            sock.settimeout(dul.assoc.network_timeout or dul.assoc.acse_timeout or 60.0)
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
        if isinstance(dul.to_user_queue, _UserQueue):
            dul.to_user_queue.close()


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
        # A pause asked for after the look above set ``activity`` before it was cleared
        # there: seen here instead, or the caller would spin until the timer.
        if not msg and assoc._reactor_checkpoint.is_set():
            activity.wait(_until(assoc.dul._idle_timer))


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
