"""HL7 v2 over MLLP against a running radflow, sent with the ``hl7`` package's MLLP client.

The ``hl7`` package (not radflow's parser) frames, sends and parses the ACKs, so the tests see
what a RIS would see. Raw sockets are used only for faults the client cannot produce (framing
errors, byte-by-byte writes, oversize messages).
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import hl7
import pytest
from hl7.client import MLLPClient

from tests.helpers.proc import HOST, RadflowProcess

SB, EB = b"\x0b", b"\x1c\x0d"


def order(control_id: str, *, placer: str = "PL1", accession: str = "ACC1", pid: str = "PID1",
          control: str = "NW", name: str = "DOE^JOHN", msh18: str = "",
          msg_type: str = "ORM^O01^ORM_O01", extra: str = "") -> str:
    segments = [
        f"MSH|^~\\&|RIS|HOSP|RADFLOW|HOSP|20261125120000||{msg_type}|{control_id}|P|2.5.1|||||"
        f"|{msh18}",
        f"PID|1||{pid}^^^HOSP^MR||{name}||19700101|M",
        "PV1|1|O",
        f"ORC|{control}|{placer}^RIS|FL-{placer}^RADFLOW||SC||^^^20261125120000",
        f"OBR|1|{placer}^RIS|FL-{placer}^RADFLOW|CTHEAD^CT Head^LOCAL|||20261125115500|||||||||"
        f"||{accession}|RP-{placer}|||||CT||||||||||||||20261125120000",
    ]
    if extra:
        segments.append(extra)
    return "\r".join(segments) + "\r"


def mllp_port(rf: RadflowProcess) -> int:
    return int(rf.config["hl7"]["listeners"][0]["port"])


def send(rf: RadflowProcess, message: str, encoding: str = "latin-1") -> hl7.Message:
    with MLLPClient(HOST, mllp_port(rf), encoding=encoding) as client:
        answer = client.send_message(message)
    text = answer.decode(encoding) if isinstance(answer, bytes) else answer
    return hl7.parse(text.strip("\x0b\x1c\r\n"))


def msa(ack: hl7.Message) -> tuple[str, str]:
    segment = ack.segment("MSA")
    return str(segment[1]), str(segment[2])


def worklist(rf: RadflowProcess) -> list[dict[str, Any]]:
    status, body = rf.http_get("/api/v1/worklist?limit=1000")
    assert status == 200, body
    data = json.loads(body)
    items: list[dict[str, Any]] = data["items"] if isinstance(data, dict) else data
    return items


def raw_exchange(rf: RadflowProcess, chunks: list[bytes], *, expect_acks: int,
                 timeout: float = 10.0) -> list[bytes]:
    """Write ``chunks`` as separate sends; read until ``expect_acks`` frames or EOF."""
    with socket.create_connection((HOST, mllp_port(rf)), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for chunk in chunks:
            sock.sendall(chunk)
        data = b""
        deadline = time.monotonic() + timeout
        while data.count(EB) < expect_acks and time.monotonic() < deadline:
            try:
                piece = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not piece:
                break
            data += piece
    return [f.lstrip(SB) for f in data.split(EB) if f.strip()]


def connection_closed_by_peer(rf: RadflowProcess, payload: bytes, timeout: float = 10.0) -> bool:
    with socket.create_connection((HOST, mllp_port(rf)), timeout=timeout) as sock:
        try:
            sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if sock.recv(65536) == b"":
                    return True
            except ConnectionResetError:
                return True
            except TimeoutError:
                return False
    return False


def test_new_order_is_acknowledged_after_commit(
        radflow: Any, storage_overrides: dict[str, Any]) -> None:
    rf = radflow({"storage": storage_overrides})
    ack = send(rf, order("MSG0001"))
    assert msa(ack) == ("AA", "MSG0001")
    assert str(ack.segment("MSH")[9][0][0]) == "ACK"
    items = worklist(rf)
    assert len(items) == 1
    assert rf.events("ingress.hl7.ack_sent", ack_code="AA", control_id="MSG0001")


def test_duplicate_control_id_gets_the_original_answer_and_changes_nothing(
        radflow: Any, storage_overrides: dict[str, Any]) -> None:
    rf = radflow({"storage": storage_overrides})
    first = send(rf, order("DUP1", placer="P-DUP", accession="A-DUP"))
    again = send(rf, order("DUP1", placer="P-DUP", accession="A-DUP"))
    assert msa(first) == msa(again) == ("AA", "DUP1")
    assert len(worklist(rf)) == 1
    assert rf.events("ingress.hl7.ack_sent", control_id="DUP1", duplicate=True)


def test_missing_patient_id_is_an_application_error_naming_the_field(radflow: Any) -> None:
    rf = radflow()
    ack = send(rf, order("NOPID", pid=""))
    assert msa(ack) == ("AE", "NOPID")
    err = str(ack.segment("ERR"))
    assert "PID" in err and "101" in err
    assert worklist(rf) == []


def test_unsupported_message_type_is_rejected(radflow: Any) -> None:
    rf = radflow()
    ack = send(rf, order("ORU1", msg_type="ORU^R01^ORU_R01"))
    assert msa(ack)[0] == "AR"
    assert msa(ack)[1] == "ORU1"


def test_cancel_of_unknown_order_is_an_application_error(radflow: Any) -> None:
    rf = radflow()
    ack = send(rf, order("CA1", placer="NEVER-SEEN", control="CA"))
    assert msa(ack) == ("AE", "CA1")


def test_two_messages_in_one_write_get_two_acks_in_order(radflow: Any) -> None:
    rf = radflow()
    payload = (SB + order("TWO1", placer="P21", accession="A21").encode() + EB
               + SB + order("TWO2", placer="P22", accession="A22").encode() + EB)
    acks = raw_exchange(rf, [payload], expect_acks=2)
    assert len(acks) == 2
    assert b"MSA|AA|TWO1" in acks[0] and b"MSA|AA|TWO2" in acks[1]


def test_message_split_into_one_byte_writes(radflow: Any) -> None:
    rf = radflow()
    framed = SB + order("SPLIT1", placer="PS", accession="AS").encode() + EB
    acks = raw_exchange(rf, [framed[i:i + 1] for i in range(len(framed))], expect_acks=1,
                        timeout=20)
    assert len(acks) == 1 and b"MSA|AA|SPLIT1" in acks[0]


def test_unframed_data_closes_the_connection_and_the_next_one_works(radflow: Any) -> None:
    rf = radflow()
    assert connection_closed_by_peer(rf, b"GET / HTTP/1.0\r\n\r\n")
    assert rf.wait_for_event("ingress.hl7.framing_error", reason="mllp_unframed")
    assert msa(send(rf, order("AFTER1")))[0] == "AA"


def test_message_over_the_size_limit_closes_the_connection(radflow: Any) -> None:
    rf = radflow()
    big = SB + order("BIG1").encode() + b"NTE|1||" + b"x" * (10 * 1024 * 1024) + b"\r" + EB
    assert connection_closed_by_peer(rf, big, timeout=30)
    assert rf.wait_for_event("ingress.hl7.framing_error", reason="mllp_too_large")
    assert worklist(rf) == []
    assert msa(send(rf, order("AFTER2")))[0] == "AA"


def test_kill_between_receipt_and_ack_then_resend_gives_exactly_one_item(
        radflow: Any, storage_overrides: dict[str, Any]) -> None:
    rf = radflow({"storage": storage_overrides})
    message = order("KILL1", placer="P-KILL", accession="A-KILL").encode()
    with socket.create_connection((HOST, mllp_port(rf)), timeout=10) as sock:
        sock.sendall(SB + message + EB)
        rf.kill()  # no ACK read: the sender cannot know whether it was committed
    rf.restart()
    ack = send(rf, message.decode())
    assert msa(ack) == ("AA", "KILL1")
    items = worklist(rf)
    assert len(items) == 1


def test_rejected_messages_are_kept_and_listed(radflow: Any) -> None:
    rf = radflow()
    send(rf, order("BAD1", pid=""))
    send(rf, order("BAD2", msg_type="ORU^R01^ORU_R01"))
    status, body = rf.http_get("/api/v1/hl7/messages?ack=AE")
    assert status == 200
    assert "BAD1" in body.decode()
    status, body = rf.http_get("/api/v1/hl7/messages?ack=AR")
    assert status == 200
    assert "BAD2" in body.decode()


@pytest.mark.parametrize("charset,encoding,name", [
    ("8859/1", "latin-1", "MÜLLER^JÜRGEN"),
    ("UNICODE UTF-8", "utf-8", "ŁUKASZ^ŻÓŁW"),
])
def test_character_sets_are_acknowledged(radflow: Any, charset: str, encoding: str,
                                         name: str) -> None:
    rf = radflow()
    ack = send(rf, order(f"CS-{encoding}", name=name, msh18=charset), encoding=encoding)
    assert msa(ack)[0] == "AA"
    assert str(ack.segment("MSH")[18]) == charset
