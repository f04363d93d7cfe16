"""The event-driven association loops (engine.reactor) on a real pynetdicom acceptor and requestor.

The first test pins the pynetdicom internals the loops rely on, so an upgrade that moves them
fails here rather than in production. The others drive an in-process acceptor with the loops
installed through EVT_CONN_OPEN, as radflow's listener does, with a pynetdicom requestor:
echo, release, a peer abort, an abort from another thread, and the network timeout.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from engine import reactor
from tests.helpers.proc import free_port


def test_the_pynetdicom_internals_it_relies_on_are_there() -> None:
    for name in ("_process_recv_primitive", "_is_transport_event", "kill_dul", "stop_dul",
                 "idle_timer_expired", "receive_pdu"):
        assert callable(getattr(DULServiceProvider, name)), name
    for name in ("_run_reactor", "_serve_request", "kill", "abort", "release"):
        assert callable(getattr(Association, name)), name
    assert callable(AE._create_socket)  # EventDrivenAE's hook
    ae = AE()
    assoc = Association(ae, "acceptor")
    dul = assoc.dul
    for name in ("to_provider_queue", "to_user_queue", "event_queue", "artim_timer",
                 "state_machine", "_idle_timer", "_kill_thread"):
        assert hasattr(dul, name), name
    for name in ("_reactor_checkpoint", "_dul_ready", "_kill", "_is_paused"):
        assert hasattr(assoc, name), name
    assert hasattr(assoc.dimse, "msg_queue")


class _Server:
    def __init__(self, network_timeout: float = 30.0) -> None:
        self.events: list[str] = []
        self.port = free_port()
        ae = AE(ae_title="REACTOR")
        ae.add_supported_context(Verification)
        ae.network_timeout = network_timeout
        handlers = [
            (evt.EVT_CONN_OPEN, lambda e: reactor.install(e.assoc)),
            (evt.EVT_RELEASED, lambda e: self.events.append("released")),
            (evt.EVT_ABORTED, lambda e: self.events.append("aborted")),
            (evt.EVT_CONN_CLOSE, lambda e: self.events.append("closed")),
        ]
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=handlers)

    def wait_for(self, event: str, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if event in self.events:
                return True
            time.sleep(0.01)
        return False


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.server.shutdown()


def _associate(port: int) -> Association:
    ae = reactor.EventDrivenAE(ae_title="SCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="REACTOR")
    assert assoc.is_established
    return assoc


def _accepted(server: _Server) -> Association:
    """The acceptor's side of the one association just made."""
    deadline = time.monotonic() + 5
    while not server.server.active_associations and time.monotonic() < deadline:
        time.sleep(0.01)
    return server.server.active_associations[0]


def test_echoes_then_release(server: _Server) -> None:
    assoc = _associate(server.port)
    for _ in range(50):
        status = assoc.send_c_echo()
        assert status.Status == 0x0000
    assoc.release()
    assert assoc.is_released
    assert server.wait_for("released") and server.wait_for("closed")


class _LingeringCheckpoint(reactor._Checkpoint):
    """A pause checkpoint whose waiter lingers after it is let through, as a thread does when
    it loses the GIL at that instant: the window in which a ``send_*`` can clear the
    checkpoint and see the loop still paused."""

    def wait(self, timeout: float | None = None) -> bool:
        passed = super().wait(timeout)
        time.sleep(0.01)
        return passed


class _LingeringAE(reactor.EventDrivenAE):
    """Widens both sides of the race so it shows every time: the loop lingers in the pause,
    and the requestor is slow to pick its response up, as when the GIL goes elsewhere."""

    def _create_socket(self, assoc: Association, address: object, tls_args: object) -> object:
        sock = super()._create_socket(assoc, address, tls_args)
        assoc._reactor_checkpoint = _LingeringCheckpoint(
            assoc._reactor_checkpoint._wake)  # type: ignore[attr-defined]
        messages = assoc.dimse.msg_queue
        get = messages.get

        def slow_blocking_get(block: bool = True, timeout: float | None = None) -> object:
            if block:
                time.sleep(0.03)
            return get(block, timeout)

        messages.get = slow_blocking_get  # type: ignore[method-assign]
        return sock


def test_a_response_goes_to_the_request_not_the_loop(server: _Server) -> None:
    # pynetdicom's own loop lost about one response in 400 this way, each a DIMSE timeout.
    ae = _LingeringAE(ae_title="SCU")
    ae.add_requested_context(Verification)
    ae.dimse_timeout = 2
    assoc = ae.associate("127.0.0.1", server.port, ae_title="REACTOR")
    assert assoc.is_established
    statuses = [assoc.send_c_echo().get("Status") for _ in range(10)]
    assoc.release()
    assert statuses == [0x0000] * 10


def test_peer_abort_ends_the_association(server: _Server) -> None:
    assoc = _associate(server.port)
    assoc.abort()
    assert server.wait_for("aborted") and server.wait_for("closed")


def test_abort_from_another_thread(server: _Server) -> None:
    assoc = _associate(server.port)
    ours = _accepted(server)
    threading.Thread(target=ours.abort).start()
    assert server.wait_for("closed")
    deadline = time.monotonic() + 5
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.01)
    assert assoc.is_aborted


def test_network_timeout_ends_an_idle_association() -> None:
    s = _Server(network_timeout=0.3)
    try:
        assoc = _associate(s.port)
        assert s.wait_for("closed", timeout=5.0)
        deadline = time.monotonic() + 5
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not assoc.is_established
    finally:
        s.server.shutdown()


def test_a_requested_association_runs_the_loops_too(server: _Server) -> None:
    ae = reactor.EventDrivenAE(ae_title="SCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="REACTOR")
    assert assoc.is_established
    assert "run" in vars(assoc.dul)  # the event-driven loop, not pynetdicom's polling one
    for _ in range(20):
        assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert assoc.is_released
    assoc.dul.join(5)
    assert not assoc.dul.is_alive()
    assert server.wait_for("released")


def test_a_wait_ends_at_the_first_running_timer_and_never_spins() -> None:
    from pynetdicom.timer import Timer

    never, idle, stopped = Timer(None), Timer(30.0), Timer(0.05)
    idle.start()
    stopped.start()
    stopped.stop()
    assert reactor._until(never, idle, stopped) == reactor._MAX_IDLE_WAIT
    due = Timer(0.2)
    due.start()
    assert 0.0 < reactor._until(idle, due) <= 0.2
    overdue = Timer(0.0)
    overdue.start()
    assert reactor._until(overdue) == reactor._MIN_WAIT


def test_an_idle_association_sleeps_until_there_is_work(server: _Server,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    # Fifty passes a second per thread, times a hundred held associations, was enough load on
    # two cores to slow every association being set up meanwhile.
    passes = {"dul": 0}
    real_select = reactor.select.select

    def counting_select(*args: Any) -> object:
        if args[3]:  # a wait, not pynetdicom's own readiness poll (timeout 0)
            passes["dul"] += 1
        return real_select(*args)

    assoc = _associate(server.port)
    time.sleep(0.2)
    monkeypatch.setattr(reactor.select, "select", counting_select)
    time.sleep(2.0)
    monkeypatch.setattr(reactor.select, "select", real_select)
    # Both ends' DUL loops run here; each may wake about twice a second at most.
    assert passes["dul"] <= 10, passes
    assert assoc.send_c_echo().Status == 0x0000  # and work is still answered at once
    assoc.release()
    assert server.wait_for("released")


def test_nothing_waits_for_the_safety_net(monkeypatch: pytest.MonkeyPatch) -> None:
    # With the loops' longest sleep far beyond every timeout used here, each step that
    # relied on it instead of a wake-up would time out: requests from the requestor side
    # (which pause its loop), responses, release, and the network timeout.
    monkeypatch.setattr(reactor, "_MAX_IDLE_WAIT", 60.0)
    s = _Server(network_timeout=1.0)
    try:
        ae = reactor.EventDrivenAE(ae_title="SCU")
        ae.add_requested_context(Verification)
        ae.dimse_timeout = ae.acse_timeout = 5
        assoc = ae.associate("127.0.0.1", s.port, ae_title="REACTOR")
        assert assoc.is_established
        for _ in range(3):
            time.sleep(0.1)  # both loops asleep
            assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        assert assoc.is_released and s.wait_for("released")
        idle = _associate(s.port)
        assert s.wait_for("aborted", timeout=5.0) or s.wait_for("closed", timeout=5.0)
        idle.abort()
    finally:
        s.server.shutdown()


def test_a_kill_from_another_thread_ends_the_loop_at_once(server: _Server) -> None:
    assoc = _associate(server.port)
    ours = _accepted(server)
    killer = threading.Thread(target=ours.kill)
    killer.start()
    killer.join(5)
    assert not killer.is_alive()
    ours.join(reactor._MAX_IDLE_WAIT)
    assert not ours.is_alive()
    assoc.abort()


class _Transport:
    def __init__(self, sock: object) -> None:
        self.socket = sock


def test_whole_pdu_reads_return_exactly_what_was_asked_or_what_came_before_close() -> None:
    import socket

    a, b = socket.socketpair()
    payload = bytes(range(256)) * 2048  # 512 KiB, more than one socket buffer
    sender = threading.Thread(target=lambda: (a.sendall(payload + b"tail"), a.close()))
    sender.start()
    transport = _Transport(b)
    assert reactor._recv_exact(transport, len(payload)) == payload  # type: ignore[arg-type]
    # The peer closed after four more bytes: pynetdicom's contract is "what there was".
    assert reactor._recv_exact(transport, 10) == b"tail"  # type: ignore[arg-type]
    sender.join()
    b.close()


def test_pdv_items_are_read_as_views_of_the_pdu_body() -> None:
    first = b"\x03" + b"command"  # message control header: command, last fragment
    second = b"\x00" + bytes(300)  # dataset, not the last fragment
    # each item's length counts its presentation context id, then the fragment
    body = bytearray(struct.pack(">L", 1 + len(first)) + b"\x01" + first
                     + struct.pack(">L", 1 + len(second)) + b"\x03" + second)
    items = reactor._pdvs(body)
    assert items is not None
    assert [(ctx, bytes(data)) for ctx, data in items] == [(1, first), (3, second)]
    assert all(isinstance(data, memoryview) for _, data in items)  # no copies
    # Items that do not add up to the body are an invalid PDU (Evt19), never a guess.
    assert reactor._pdvs(body[:-1]) is None
    assert reactor._pdvs(bytearray(struct.pack(">L", 1) + b"\x01\x03")) is None
    assert reactor._pdvs(bytearray()) == []


def test_the_pynetdicom_internals_the_pdata_path_relies_on_are_there() -> None:
    from pynetdicom.pdu_primitives import P_DATA

    assert callable(DULServiceProvider._read_pdu_data)
    assert callable(DULServiceProvider._decode_pdu)
    dul = Association(AE(), "acceptor").dul
    assert hasattr(dul, "_recv_pdu")
    primitive = P_DATA()
    assert primitive._presentation_data_value_list == []
    primitive._presentation_data_value_list = [(1, memoryview(b"\x03x"))]  # type: ignore[list-item]
    assert primitive.presentation_data_value_list[0][0] == 1


def test_a_bound_pdu_handler_still_sees_every_pdata_pdu() -> None:
    """Debug tracing binds EVT_PDU_RECV: those associations keep pynetdicom's own path."""
    from pynetdicom.pdu import P_DATA_TF

    seen: list[str] = []
    port = free_port()
    ae = AE(ae_title="REACTOR")
    ae.add_supported_context(Verification)

    def on_pdu(event: evt.Event) -> None:
        seen.append(type(event.pdu).__name__)

    handlers = [(evt.EVT_CONN_OPEN, lambda e: reactor.install(e.assoc)),
                (evt.EVT_PDU_RECV, on_pdu)]
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    try:
        assoc = _associate(port)
        for _ in range(3):
            assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        assert seen.count(P_DATA_TF.__name__) == 3
    finally:
        server.shutdown()


# --- bounds ------------------------------------------------------------------------------------
def test_the_pynetdicom_internals_the_bounds_rely_on_are_there() -> None:
    from pynetdicom.timer import Timer

    timer = Timer(5)
    assert timer.remaining == 5  # not started: the whole timeout
    timer.start()
    assert 0 < timer.remaining <= 5
    dul = Association(AE(), "acceptor").dul
    assert dul.artim_timer.timeout is not None
    assert dul.state_machine.current_state == "Sta1"
    assoc = Association(AE(), "acceptor")
    assert assoc.acceptor.maximum_length is not None and assoc.requestor.primitive is None


def test_a_read_past_its_deadline_raises_and_a_stalled_body_costs_one_chunk() -> None:
    import socket

    a, b = socket.socketpair()
    try:
        a.sendall(b"\x04\x00")
        transport = _Transport(b)
        with pytest.raises(TimeoutError):
            # A declared length far beyond what arrives: the buffer never grows past a chunk.
            reactor._recv_exact(transport, 1 << 30, time.monotonic() + 0.2)  # type: ignore[arg-type]
        a.sendall(b"x" * 10)
        assert reactor._recv_exact(transport, 10, time.monotonic() + 5) == b"x" * 10  # type: ignore[arg-type]
        # More than one chunk, delivered whole.
        payload = bytes(range(256)) * (reactor._READ_CHUNK // 256 + 3)
        sender = threading.Thread(target=a.sendall, args=(payload,))
        sender.start()
        assert reactor._recv_exact(transport, len(payload), time.monotonic() + 30) == payload  # type: ignore[arg-type]
        sender.join()
    finally:
        a.close()
        b.close()


def _rq_body(items: bytes) -> bytes:
    return bytes(68) + items


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _context(context_id: int, *subs: bytes) -> bytes:
    return _item(0x20, bytes([context_id, 0, 0, 0]) + b"".join(subs))


VERIFICATION_UID = b"1.2.840.10008.1.1"
IMPLICIT = b"1.2.840.10008.1.2"


@pytest.mark.parametrize(("items", "problem"), [
    (b"", None),
    (_context(1, _item(0x30, VERIFICATION_UID), _item(0x40, IMPLICIT))
     + _item(0x50, _item(0x51, b"\x00\x00\x40\x00")), None),
    (b"".join(_context(i, _item(0x30, VERIFICATION_UID)) for i in range(1, 256, 2)), None),
    (b"".join(_context(1, _item(0x30, VERIFICATION_UID)) for _ in range(129)),
     "more than 128 presentation contexts"),
    (_item(0x10, b"1" * 65), "a UID of 65 bytes"),
    (_context(1, _item(0x30, b"1" * 65)), "a UID of 65 bytes"),
    (_context(1, struct.pack(">BBH", 0x30, 0, 200) + VERIFICATION_UID), "runs past the end"),
    (struct.pack(">BBH", 0x20, 0, 500) + b"\x01\x00\x00\x00", "declares 500 bytes"),
    (b"\x20\x00", "cut short"),
    (_item(0x50, _item(0x58, bytes(33 * 1024))), "user information item of"),
    (_item(0x20, b"\x01"), "shorter than its fixed fields"),
], ids=["none", "one_context", "128_contexts", "129_contexts", "long_app_context",
        "long_abstract", "sub_item_past_end", "item_past_end", "cut_header", "big_user_info",
        "short_context"])
def test_association_items_are_checked_for_framing_and_size(items: bytes,
                                                            problem: str | None) -> None:
    found = reactor.association_items_problem(_rq_body(items))
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_a_closed_user_queue_stops_blocking_but_returns_what_it_holds() -> None:
    import queue as queue_module

    q = reactor._UserQueue(lambda: None)
    q.put("a")
    waiter_done = threading.Event()

    def wait_for_more() -> None:
        with pytest.raises(queue_module.Empty):
            q.get(timeout=60)
        waiter_done.set()

    assert q.get(timeout=1) == "a"
    waiter = threading.Thread(target=wait_for_more)
    waiter.start()
    q.close()
    waiter.join(10)
    assert waiter_done.is_set()
    q.put("b")
    assert q.get(timeout=1) == "b"  # what arrives is still delivered
