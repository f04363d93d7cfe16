"""MLLP connection limits against a running radflow, from outside: raw sockets play the idle or
abusive client (bound to a second loopback address, 127.0.0.2) and the ``hl7`` package's MLLP
client plays the hospital's RIS on 127.0.0.1. Idle sockets no longer lock senders out, one
source address cannot take every slot, a connection must deliver a first message in time, and
senders outside ``hl7.allowed_sources`` are refused, logged and counted."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest

from tests.helpers.proc import HOST, RadflowFactory, RadflowProcess
from tests.integration.test_hl7_ingress import mllp_port, msa, order, send

OTHER = "127.0.0.2"  # another loopback address: another source, same machine


def connect_from(rf: RadflowProcess, source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.bind((source, 0))
    sock.connect((HOST, mllp_port(rf)))
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether radflow closed this connection (waits, bounded by the socket's timeout)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def wait_for_count(rf: RadflowProcess, event: str, count: int, timeout: float = 30.0,
                   **fields: str) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        found = rf.events(event, **fields)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@contextlib.contextmanager
def sockets(rf: RadflowProcess, n: int, source: str) -> Iterator[list[socket.socket]]:
    opened = [connect_from(rf, source) for _ in range(n)]
    try:
        yield opened
    finally:
        for s in opened:
            s.close()


def limits(**listener: object) -> dict[str, object]:
    return {"hl7": {"listeners": [listener]}}


def test_64_idle_sockets_no_longer_refuse_a_new_sender(radflow: RadflowFactory) -> None:
    rf = radflow(limits(max_connections=64, max_connections_per_source=8,
                        first_message_timeout=60))
    with sockets(rf, 64, OTHER):
        refused = wait_for_count(rf, "ingress.hl7.connection_refused", 56, peer_host=OTHER)
        assert len(refused) == 56
        assert {e["reason"] for e in refused} == {"too_many_from_source"}
        # The RIS on another address still gets in, while all 64 sockets are open.
        assert msa(send(rf, order("LIMIT001")))[0] == "AA"
    assert rf.metric("radflow_mllp_connection_errors_total", listener="mllp",
                     reason="too_many_from_source") == 56


def raw_send(sock: socket.socket, message: str) -> bytes:
    """One framed message on a raw socket; the ACK's bytes (b"" if radflow closed instead)."""
    sock.sendall(b"\x0b" + message.encode("latin-1") + b"\x1c\r")
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while not answer.endswith(b"\x1c\r"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def test_per_source_limit_frees_its_slot_when_a_connection_ends(radflow: RadflowFactory
                                                                ) -> None:
    rf = radflow(limits(max_connections_per_source=2, first_message_timeout=60))
    with sockets(rf, 2, OTHER) as held:
        assert b"|AA|" in raw_send(held[0], order("SLOT0001", placer="S1"))
        with sockets(rf, 1, OTHER) as (third,):
            assert raw_send(third, order("SLOT0002", placer="S2")) == b""  # refused
        held[0].close()
        for attempt in range(100):  # bounded: until radflow has seen the close
            with sockets(rf, 1, OTHER) as (again,):
                answer = raw_send(again, order(f"SLOT1{attempt:03d}", placer=f"T{attempt}"))
            if answer:
                assert b"|AA|" in answer
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the freed slot was never given again")


def test_a_connection_without_a_first_message_is_closed(radflow: RadflowFactory) -> None:
    rf = radflow(limits(first_message_timeout=1, idle_timeout=300))
    with sockets(rf, 1, OTHER) as (silent,), sockets(rf, 1, OTHER) as (partial,):
        partial.sendall(b"\x0bMSH|^~\\&|")  # a frame begun, never finished
        assert closed_by_peer(silent)
        assert closed_by_peer(partial)
    events = wait_for_count(rf, "ingress.hl7.first_message_timeout", 2, peer_host=OTHER)
    assert len(events) == 2
    assert rf.metric("radflow_mllp_connection_errors_total", listener="mllp",
                     reason="first_message_timeout") == 2
    assert rf.journal_rows() == [] and rf.hl7_rows() == []  # nothing half-read committed


def test_an_established_connection_keeps_the_idle_timeout(radflow: RadflowFactory) -> None:
    from hl7.client import MLLPClient

    rf = radflow(limits(first_message_timeout=1, idle_timeout=300))
    with MLLPClient(HOST, mllp_port(rf)) as client:
        assert "|AA|" in str(client.send_message(order("IDLE0001", placer="I1")))
        time.sleep(1.5)  # past the first-message deadline: no longer applies
        assert "|AA|" in str(client.send_message(order("IDLE0002", placer="I2")))
    assert rf.events("ingress.hl7.first_message_timeout") == []


def test_a_source_not_allowed_is_refused_logged_and_counted(radflow: RadflowFactory) -> None:
    rf = radflow({"hl7": {"allowed_sources": ["127.0.0.1"]}})
    with sockets(rf, 1, OTHER) as (stranger,):
        stranger.sendall(b"\x0b" + order("NOPE0001").encode() + b"\x1c\r")
        assert closed_by_peer(stranger)  # no ACK: closed
    (event,) = wait_for_count(rf, "ingress.hl7.connection_refused", 1, peer_host=OTHER)
    assert event["reason"] == "source_not_allowed"
    assert rf.metric("radflow_mllp_connection_errors_total", listener="mllp",
                     reason="source_not_allowed") == 1
    assert rf.hl7_rows() == []
    assert msa(send(rf, order("YES00001")))[0] == "AA"  # the listed RIS gets in


@pytest.mark.parametrize("opened", [False, True], ids=["closed_by_default", "accept_any"])
def test_no_allowed_sources_means_nobody_unless_opened(radflow: RadflowFactory,
                                                       opened: bool) -> None:
    rf = radflow({"hl7": {"allowed_sources": [], "accept_any_source": opened}})
    if opened:
        assert msa(send(rf, order("ANY00001")))[0] == "AA"
        assert rf.events("ingress.hl7.no_sources_allowed") == []
        return
    assert rf.events("ingress.hl7.no_sources_allowed")
    with sockets(rf, 1, HOST) as (sock,):
        assert closed_by_peer(sock)
    (event,) = wait_for_count(rf, "ingress.hl7.connection_refused", 1)
    assert (event["reason"], event["peer_host"]) == ("source_not_allowed", HOST)
