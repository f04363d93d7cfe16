"""HL7 orders forwarded end to end, and what radflow records about the answers it sends.

The ``hl7`` package's MLLP client plays the HIS, a running radflow routes every accepted order
to an ``hl7`` destination, and a byte-exact MLLP sink plays the RIS: every character set the
intake accepts must reach the RIS unchanged. The log line ``ingress.hl7.ack_sent``, the metric
``radflow_hl7_messages_total`` and the journal must name the acknowledgement that went out on
the wire, not the one radflow decided before the sender's acknowledgement mode applied.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import hl7
import pytest
from hl7.client import MLLPClient

from tests.helpers.peers import MllpSink
from tests.helpers.proc import HOST, RadflowFactory, RadflowProcess

pytestmark = pytest.mark.timeout(120)

ROUTES = """\
version: 1
routes:
  - name: orders-to-ris
    trigger: order
    match: {hl7: MSH-9.1, in: [ORM]}
    destinations: [ris]
"""


def order(control_id: str, name: str, msh18: str = "", msh15: str = "") -> str:
    segments = [
        f"MSH|^~\\&|HIS|HOSP|RADFLOW|RAD|20261125120000||ORM^O01^ORM_O01|{control_id}|P|2.5.1"
        f"|||{msh15}|||{msh18}",
        f"PID|1||{control_id}^^^HOSP^MR||{name}||19700101|F",
        f"ORC|NW|PL-{control_id}|FL-{control_id}||SC||^^^20261125083000",
        f"OBR|1|PL-{control_id}|FL-{control_id}|CTHEAD^CT Head^LOCAL|||||||||||||||"
        f"ACC-{control_id}|RP-{control_id}|||||CT",
    ]
    return "\r".join(segments) + "\r"


def mllp_port(rf: RadflowProcess) -> int:
    return int(rf.config["hl7"]["listeners"][0]["port"])


def send_bytes(rf: RadflowProcess, data: bytes) -> bytes:
    with MLLPClient(HOST, mllp_port(rf)) as client:
        answer = client.send_message(data)
    assert isinstance(answer, bytes)
    return answer.strip(b"\x0b\x1c\r\n")


@pytest.fixture
def sink() -> Iterator[MllpSink]:
    receiver = MllpSink().start()
    yield receiver
    receiver.stop()


def forwarding_radflow(radflow: RadflowFactory, sink: MllpSink, tmp_path: Path
                       ) -> RadflowProcess:
    rf = radflow({"destinations": {"ris": {"type": "hl7", "host": HOST, "port": sink.port}},
                  "hl7": {"default_charset": "8859/1"}}, start=False)
    (Path(rf.config["routing"]["routes_dir"]) / "orders.yaml").write_text(ROUTES)
    rf.start()
    return rf


@pytest.mark.parametrize(("msh18", "codec", "name"), [
    ("", "ascii", "Doe^John"),
    ("8859/1", "latin-1", "Jäger^Jürgen"),
    ("", "latin-1", "Jäger^Jürgen"),  # no MSH-18: the site's hl7.default_charset (8859/1)
    ("UNICODE UTF-8", "utf-8", "Łukasz^Żółw"),
    ("~ISO IR87", "iso2022_jp", "ヤマダ^タロウ=山田^太郎=やまだ^たろう"),
], ids=["ascii", "latin1-declared", "latin1-default", "utf8", "iso-ir87"])
def test_every_accepted_charset_is_forwarded_byte_identical(
        radflow: RadflowFactory, sink: MllpSink, tmp_path: Path, msh18: str, codec: str,
        name: str) -> None:
    rf = forwarding_radflow(radflow, sink, tmp_path)
    sent = order("FWD1", name, msh18).encode(codec)
    ack = send_bytes(rf, sent)
    assert b"MSA|AA|FWD1" in ack
    received = sink.wait_for(1)
    rows = rf._table("outbox")
    assert [(r["state"], r["last_error"]) for r in rows if r["state"] == "dead"] == []
    assert received == [sent]


def ack_of(raw: bytes) -> hl7.Message:
    return hl7.parse(raw.decode("latin-1"))


def test_enhanced_mode_ack_code_is_logged_and_counted_as_sent(radflow: RadflowFactory) -> None:
    rf = radflow()
    answer = ack_of(send_bytes(rf, order("ENH1", "Doe^Jane", msh15="AL").encode()))
    assert str(answer.segment("MSA")[1]) == "CA"
    (logged,) = rf.events("ingress.hl7.ack_sent", control_id="ENH1")
    assert logged["ack_code"] == "CA"
    assert rf.metric("radflow_hl7_messages_total", ack_code="CA") == 1
    assert rf.metric("radflow_hl7_messages_total", ack_code="AA") == 0


def test_non_hl7_input_is_journalled_with_the_error_code_it_was_answered_with(
        radflow: RadflowFactory) -> None:
    rf = radflow()
    answer = ack_of(send_bytes(rf, b"hello, this is not HL7\r"))
    assert str(answer.segment("MSA")[1]) == "AR"
    wire_code = str(answer.segment("ERR")[3]).split("^")[0]
    (row,) = rf.hl7_rows()
    assert row["ack_code"] == "AR"
    (error,) = json.loads(row["errors_json"])
    assert str(error["code"]) == wire_code
    (logged,) = rf.events("ingress.hl7.ack_sent")
    assert logged["ack_code"] == "AR"
