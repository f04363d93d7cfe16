"""The DICOM listener under abuse, from outside: raw sockets where DCMTK and pynetdicom would
not send what it takes, DCMTK's echoscu / storescu for the modality that must keep working.

A PDU header declaring more than radflow will read is an A-ABORT (service provider, invalid
PDU parameter) before any of the body is buffered, and the process does not grow; a partial
PDU is closed when its deadline passes; silent or half-open connections cannot take the places
of modalities; every refusal is logged with the peer and counted; a malformed request gets a
failure status with an Error Comment, or an A-ABORT with a logged reason; and an empty
allow-list lets nobody in.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import decode

from engine.dicom import wire as dimse_wire
from tests.helpers import dicomgen
from tests.helpers.dicomgen import dataset_bytes
from tests.helpers.proc import (
    HOST,
    RadflowFactory,
    RadflowProcess,
    echoscu,
    store_responses,
    storescu,
)

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(180)]

CT = dicomgen.CT_IMAGE_STORAGE
VERIFICATION = "1.2.840.10008.1.1"
MPPS = "1.2.840.10008.3.1.2.3.3"
MWL_FIND = "1.2.840.10008.5.1.4.31"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
#: A-ABORT from the service provider, reason "invalid PDU parameter value" (PS3.8 9.3.8)
ABORT_INVALID_PDU_PARAMETER = (0x02, 0x06)
#: How long a test waits for something radflow should do at once (a bound on the test, far
#: beyond any deadline configured here, not a measure of speed)
PATIENCE = 20.0


# --- a raw DICOM upper layer client ---------------------------------------------------------
def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _uid(uid: str) -> bytes:
    return uid.encode("ascii")


def associate_rq(called: str, calling: str, contexts: list[tuple[int, str, list[str]]], *,
                 max_pdu: int = 16384, extra_user_items: bytes = b"",
                 raw_contexts: bytes = b"") -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2), built by hand so it can be made wrong."""
    items = _item(0x10, _uid(APPLICATION_CONTEXT))
    for context_id, abstract, syntaxes in contexts:
        sub = _item(0x30, _uid(abstract)) + b"".join(_item(0x40, _uid(ts)) for ts in syntaxes)
        items += _item(0x20, struct.pack(">BBBB", context_id, 0, 0, 0) + sub)
    items += raw_contexts
    user = _item(0x51, struct.pack(">L", max_pdu)) + _item(0x52, b"1.2.3.4") + extra_user_items
    items += struct.pack(">BBH", 0x50, 0, len(user)) + user
    body = (struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode()
            + bytes(32) + items)
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


class RawPeer:
    """A TCP connection to radflow speaking (or mis-speaking) PDUs."""

    def __init__(self, rf: RadflowProcess) -> None:
        self.sock = socket.create_connection((HOST, rf.port), timeout=PATIENCE)
        self.max_pdu = 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _exact(self, n: int) -> bytes | None:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                return None
            out += chunk
        return out

    def read_pdu(self) -> tuple[int, bytes] | None:
        """The next PDU, or ``None`` when radflow closed the connection."""
        header = self._exact(6)
        if header is None:
            return None
        pdu_type, _, length = struct.unpack(">BBL", header)
        body = self._exact(length)
        assert body is not None, "closed in the middle of a PDU"
        return pdu_type, body

    def closed(self) -> bool:
        """Read until radflow closes; ``True`` if it did (``False`` if the wait ran out)."""
        try:
            while self.sock.recv(4096):
                pass
            return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def associate(self, called: str, contexts: list[tuple[int, str, list[str]]],
                  calling: str = "RAWSCU") -> tuple[int, bytes]:
        self.send(associate_rq(called, calling, contexts))
        answer = self.read_pdu()
        assert answer is not None
        if answer[0] == 0x02:
            self.max_pdu = _max_length(answer[1])
        return answer

    def request(self, context_id: int, command: bytes, dataset: bytes | None = None
                ) -> Dataset:
        """Send one DIMSE request; return the response's command set."""
        for part in dimse_wire.pdata_pdus(context_id, command, dataset, self.max_pdu):
            self.send(bytes(part))
        fragments = b""
        while True:
            pdu = self.read_pdu()
            assert pdu is not None, "radflow closed the connection instead of answering"
            assert pdu[0] == 0x04, f"expected P-DATA-TF, got PDU type 0x{pdu[0]:02X}"
            body = pdu[1]
            offset = 0
            while offset < len(body):
                (length,) = struct.unpack_from(">L", body, offset)
                header = body[offset + 5]
                fragments += body[offset + 6:offset + 4 + length]
                offset += 4 + length
                if header & 0x03 == 0x03:  # last fragment of a command
                    return decode(BytesIO(fragments), True, True)


def _max_length(ac_body: bytes) -> int:
    offset = 68  # fixed part of the A-ASSOCIATE-AC
    while offset < len(ac_body):
        item_type, _, length = struct.unpack_from(">BBH", ac_body, offset)
        if item_type == 0x50:
            sub = offset + 4
            while sub < offset + 4 + length:
                sub_type, _, sub_len = struct.unpack_from(">BBH", ac_body, sub)
                if sub_type == 0x51:
                    return int(struct.unpack_from(">L", ac_body, sub + 4)[0])
                sub += 4 + sub_len
        offset += 4 + length
    return 0


@contextlib.contextmanager
def raw_peer(rf: RadflowProcess) -> Iterator[RawPeer]:
    peer = RawPeer(rf)
    try:
        yield peer
    finally:
        peer.close()


def abort_fields(pdu: tuple[int, bytes] | None) -> tuple[int, int]:
    assert pdu is not None, "radflow closed without an A-ABORT"
    assert pdu[0] == 0x07, f"expected A-ABORT, got PDU type 0x{pdu[0]:02X}"
    return pdu[1][2], pdu[1][3]


def rss_kib(rf: RadflowProcess) -> int:
    assert rf.proc is not None
    for line in Path(f"/proc/{rf.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def c_store_rq(message_id: int, sop_instance_uid: str, sop_class_uid: str = CT) -> bytes:
    return dimse_wire.c_store_rq_command(message_id, sop_class_uid, sop_instance_uid)


def c_echo_rq(message_id: int) -> bytes:
    return dimse_wire._command([
        dimse_wire._element(0x0002, dimse_wire._ui(VERIFICATION)),
        dimse_wire._element(0x0100, struct.pack("<H", 0x0030)),
        dimse_wire._element(0x0110, struct.pack("<H", message_id)),
        dimse_wire._element(0x0800, struct.pack("<H", 0x0101)),
    ])


def assert_echo_works(rf: RadflowProcess) -> None:
    result = echoscu(rf)
    assert result.returncode == 0, result.stdout


# --- 1. PDU lengths -------------------------------------------------------------------------
@pytest.mark.parametrize("pdu_type", [0x01, 0x04, 0x07], ids=["associate_rq", "p_data", "abort"])
def test_a_header_declaring_4_gib_is_aborted_before_its_body(radflow: RadflowFactory,
                                                            pdu_type: int) -> None:
    rf = radflow({"dicom": {"listeners": [{"acse_timeout": 60}]}})
    before = rss_kib(rf)
    peers = [RawPeer(rf) for _ in range(4)]
    try:
        for peer in peers:
            peer.send(struct.pack(">BBL", pdu_type, 0, 0xFFFFFFF0) + b"\x00" * 64)
        # Answered long before the 60 s ACSE timeout could have closed them.
        for peer in peers:
            assert abort_fields(peer.read_pdu()) == ABORT_INVALID_PDU_PARAMETER
            assert peer.closed()
        # Another association meanwhile, and the process did not grow.
        assert_echo_works(rf)
        assert rss_kib(rf) - before < 50 * 1024
    finally:
        for peer in peers:
            peer.close()
    events = rf.events("dimse.dul.pdu_too_large")
    assert len(events) == 4
    assert {e["declared_length"] for e in events} == {0xFFFFFFF0}
    assert {e["limit"] for e in events} == {65536}
    assert {e["peer_host"] for e in events} == {HOST}
    assert rf.metric("radflow_dimse_rejections_total", reason="pdu_too_large") == 4


def test_a_64_mib_pdata_is_aborted_and_earlier_instances_are_kept(
        radflow: RadflowFactory, tmp_path: Path) -> None:
    rf = radflow({"dicom": {"listeners": [{"max_pdu_size": 262144}]}})
    before = rss_kib(rf)
    first = dicomgen.write_instance(tmp_path / "first")
    with raw_peer(rf) as peer:
        answer = peer.associate(rf.ae_title, [(1, CT, [ExplicitVRLittleEndian])])
        assert answer[0] == 0x02 and peer.max_pdu == 262144
        rsp = peer.request(1, c_store_rq(1, first.sop_instance_uid), dataset_bytes(first.path))
        assert rsp.Status == 0x0000
        # A P-DATA-TF declaring 64 MiB against the 256 KiB radflow advertised, and the first
        # megabyte of it.
        peer.send(struct.pack(">BBL", 0x04, 0, 64 * 1024 * 1024) + bytes(1024 * 1024))
        assert abort_fields(peer.read_pdu()) == ABORT_INVALID_PDU_PARAMETER
        assert peer.closed()
    assert rss_kib(rf) - before < 50 * 1024
    event = rf.wait_for_event("dimse.dul.pdu_too_large")
    assert event["declared_length"] == 64 * 1024 * 1024 and event["limit"] == 262144
    assert event["calling_ae"] == "RAWSCU" and event["peer_host"] == HOST
    rf.wait_for_event("ingress.dimse.association.aborted")
    assert [r["sop_instance_uid"] for r in rf.journal_rows()] == [first.sop_instance_uid]
    assert_echo_works(rf)


def test_a_pdata_of_exactly_the_advertised_size_is_read(radflow: RadflowFactory,
                                                        tmp_path: Path) -> None:
    """The bound is the advertised maximum itself: storescu fills every PDU to it."""
    rf = radflow({"dicom": {"listeners": [{"max_pdu_size": 16384}]}})
    big = dicomgen.write_instance(tmp_path, size=256)
    result = storescu(rf, big.path, "-xs")
    assert store_responses(result.stdout) == ["Success"], result.stdout
    assert rf.events("dimse.dul.pdu_too_large") == []


# --- association request abuse --------------------------------------------------------------
def _refused_request(rf: RadflowProcess, rq: bytes) -> dict[str, object]:
    """Send ``rq``; expect an A-ABORT (invalid PDU parameter) and a logged reason."""
    with raw_peer(rf) as peer:
        peer.send(rq)
        assert abort_fields(peer.read_pdu()) == ABORT_INVALID_PDU_PARAMETER
        assert peer.closed()
    event = rf.wait_for_event("dimse.dul.invalid_association_pdu")
    assert event["peer_host"] == HOST and event["pdu_type"] == "0x01"
    assert rf.metric("radflow_dimse_rejections_total", reason="invalid_association_pdu") == 1
    assert_echo_works(rf)
    return event


def test_more_than_128_presentation_contexts_are_refused(radflow: RadflowFactory) -> None:
    rf = radflow()
    contexts = [(i % 256 | 1, VERIFICATION, [ImplicitVRLittleEndian]) for i in range(0, 400, 2)]
    event = _refused_request(rf, associate_rq(rf.ae_title, "RAWSCU", contexts))
    assert "128 presentation contexts" in str(event["detail"])


def test_all_128_presentation_contexts_are_fine(radflow: RadflowFactory) -> None:
    rf = radflow()
    contexts = [(i, VERIFICATION, [ImplicitVRLittleEndian]) for i in range(1, 256, 2)]
    with raw_peer(rf) as peer:
        assert peer.associate(rf.ae_title, contexts)[0] == 0x02


def test_a_uid_item_longer_than_the_bytes_present_is_refused(radflow: RadflowFactory) -> None:
    rf = radflow()
    # An abstract syntax sub-item declaring 200 bytes, with 17 present before its item ends.
    broken = _item(0x20, struct.pack(">BBBB", 1, 0, 0, 0)
                   + struct.pack(">BBH", 0x30, 0, 200) + _uid(VERIFICATION))
    event = _refused_request(rf, associate_rq(rf.ae_title, "RAWSCU", [], raw_contexts=broken))
    assert "runs past the end" in str(event["detail"])


def test_a_64_kb_user_information_item_is_refused(radflow: RadflowFactory) -> None:
    rf = radflow()
    identity = b"\x01\x00" + struct.pack(">H", 65000) + b"u" * 65000 + b"\x00\x00"
    rq = associate_rq(rf.ae_title, "RAWSCU", [(1, VERIFICATION, [ImplicitVRLittleEndian])],
                      extra_user_items=_item(0x58, identity))
    event = _refused_request(rf, rq)
    assert "user information" in str(event["detail"])


# --- 2. deadlines and places ----------------------------------------------------------------
@pytest.mark.parametrize("sent", [b"", b"\x01", b"\xff" * 10, b"\x01\x00\x00\x00\x01\x00\x00"],
                         ids=["nothing", "one_byte", "ten_ff", "partial_body"])
def test_a_stalled_connection_is_closed_at_the_acse_deadline(radflow: RadflowFactory,
                                                             sent: bytes) -> None:
    rf = radflow({"dicom": {"listeners": [{"acse_timeout": 2}]}})
    with raw_peer(rf) as peer:
        peer.send(sent)
        assert peer.closed()
    if not sent:
        event = rf.wait_for_event("ingress.dimse.connection.timed_out")
        assert event["peer_host"] == HOST
        assert rf.metric("radflow_dimse_rejections_total", reason="acse_timeout") == 1
    elif sent[0] != 0xFF:
        event = rf.wait_for_event("dimse.dul.read_timeout")
        assert event["peer_host"] == HOST and event["negotiated"] is False
    assert_echo_works(rf)


def test_a_stalled_pdu_on_an_association_is_aborted_at_the_network_deadline(
        radflow: RadflowFactory) -> None:
    rf = radflow({"dicom": {"listeners": [{"network_timeout": 2}]}})
    with raw_peer(rf) as peer:
        assert peer.associate(rf.ae_title, [(1, VERIFICATION, [ImplicitVRLittleEndian])]
                              )[0] == 0x02
        peer.send(struct.pack(">BBL", 0x04, 0, 1000) + b"\x00" * 10)
        assert abort_fields(peer.read_pdu())[0] == 0x02
        assert peer.closed()
    event = rf.wait_for_event("dimse.dul.read_timeout")
    assert event["negotiated"] is True and event["calling_ae"] == "RAWSCU"


def test_silent_connections_never_take_a_modalitys_place(radflow: RadflowFactory,
                                                         tmp_path: Path) -> None:
    rf = radflow({"dicom": {"listeners": [{"max_associations": 16, "acse_timeout": 60}]}})
    silent = [RawPeer(rf) for _ in range(16)]
    half = [RawPeer(rf) for _ in range(8)]
    try:
        for peer in half:
            peer.send(b"\x01\x00")
        assert_echo_works(rf)
        inst = dicomgen.write_instance(tmp_path)
        assert store_responses(storescu(rf, inst.path).stdout) == ["Success"]
    finally:
        for peer in silent + half:
            peer.close()
    assert rf.events("ingress.dimse.association.rejected") == []


def test_connections_beyond_the_pending_budget_are_closed_and_logged(
        radflow: RadflowFactory) -> None:
    rf = radflow({"dicom": {"listeners": [{"max_pending_connections": 4, "acse_timeout": 60}]}})
    silent = [RawPeer(rf) for _ in range(4)]
    try:
        with raw_peer(rf) as fifth:
            assert fifth.closed()
        event = rf.wait_for_event("ingress.dimse.connection.refused")
        assert event["reason"] == "too_many_pending" and event["peer_host"] == HOST
        assert rf.metric("radflow_dimse_rejections_total", reason="too_many_pending") >= 1
    finally:
        for peer in silent:
            peer.close()
    # Closing them gives their places back at once, not at the ACSE timeout.
    assert_echo_works(rf)


def test_associations_beyond_the_limit_are_refused_and_logged(radflow: RadflowFactory) -> None:
    rf = radflow({"dicom": {"listeners": [{"max_associations": 1}]}})
    with raw_peer(rf) as holder:
        assert holder.associate(rf.ae_title, [(1, VERIFICATION, [ImplicitVRLittleEndian])]
                                )[0] == 0x02
        refused = echoscu(rf)
        assert refused.returncode != 0
        assert "Local Limit Exceeded" in refused.stdout, refused.stdout
    event = rf.wait_for_event("ingress.dimse.association.rejected")
    assert event["reason"] == "too_many_associations"
    assert (event["calling_ae"], event["called_ae"], event["peer_host"]) == \
        ("ECHOSCU", rf.ae_title, HOST)
    assert rf.metric("radflow_dimse_rejections_total", reason="too_many_associations") == 1
    assert_echo_works(rf)


def test_a_burst_of_connections_waits_in_the_kernel_queue_not_in_tcp_backoff(
        radflow: RadflowFactory) -> None:
    # socketserver's listen backlog of 5 made the kernel drop the SYNs of a burst (200
    # modalities at once waited up to a minute in TCP's retransmission backoff). ``ss`` shows
    # a listening socket's backlog in its Send-Q column, as an operator would look it up.
    rf = radflow()
    out = subprocess.run(["ss", "-Hltn", f"sport = :{rf.port}"], capture_output=True,
                         text=True, check=True).stdout.split()
    assert int(out[2]) >= 128, out


# --- 3. every request gets an answer --------------------------------------------------------
def test_an_empty_affected_sop_instance_uid_gets_a_failure_with_a_comment(
        radflow: RadflowFactory, tmp_path: Path) -> None:
    rf = radflow()
    inst = dicomgen.write_instance(tmp_path)
    with raw_peer(rf) as peer:
        assert peer.associate(rf.ae_title, [(1, CT, [ExplicitVRLittleEndian])])[0] == 0x02
        rsp = peer.request(1, c_store_rq(7, ""), dataset_bytes(inst.path))
        assert rsp.MessageIDBeingRespondedTo == 7
        assert rsp.Status == 0xC000
        assert "Affected SOP Instance UID" in rsp.ErrorComment
        # The association goes on.
        rsp = peer.request(1, c_store_rq(8, inst.sop_instance_uid), dataset_bytes(inst.path))
        assert rsp.Status == 0x0000
    event = rf.wait_for_event("ingress.dimse.request.invalid")
    assert event["request"] == "C-STORE-RQ" and event["missing"] == ["AffectedSOPInstanceUID"]
    assert event["calling_ae"] == "RAWSCU" and event["peer_host"] == HOST
    assert [r["sop_instance_uid"] for r in rf.journal_rows()] == [inst.sop_instance_uid]


def test_an_overlong_sop_instance_uid_gets_a_failure_and_the_association_goes_on(
        radflow: RadflowFactory, tmp_path: Path) -> None:
    rf = radflow()
    inst = dicomgen.write_instance(tmp_path)
    with raw_peer(rf) as peer:
        assert peer.associate(rf.ae_title, [(1, CT, [ExplicitVRLittleEndian])])[0] == 0x02
        rsp = peer.request(1, c_store_rq(7, "1." * 40 + "1"), dataset_bytes(inst.path))
        assert rsp.MessageIDBeingRespondedTo == 7 and rsp.Status == 0xC000
        assert rsp.ErrorComment == \
            "Invalid Affected SOP Instance UID: must not exceed 64 characters"
        rsp = peer.request(1, c_store_rq(8, inst.sop_instance_uid), dataset_bytes(inst.path))
        assert rsp.Status == 0x0000
    event = rf.wait_for_event("ingress.dimse.request.invalid")
    assert event["request"] == "C-STORE-RQ" and event["message_id"] == 7
    assert event["invalid"] == {"AffectedSOPInstanceUID": "must not exceed 64 characters"}
    assert event["calling_ae"] == "RAWSCU" and event["peer_host"] == HOST
    assert rf.metric("radflow_dimse_rejections_total", reason="invalid_request") == 1
    assert [r["sop_instance_uid"] for r in rf.journal_rows()] == [inst.sop_instance_uid]


def test_an_overlong_uid_without_a_message_id_is_a_logged_abort(radflow: RadflowFactory,
                                                                tmp_path: Path) -> None:
    # No Message ID: there is nothing a response could name, so the association ends.
    rf = radflow()
    inst = dicomgen.write_instance(tmp_path)
    command = _command([(0x0002, dimse_wire._ui(CT)), (0x0100, _us(0x0001)),
                        (0x0700, _us(2)), (0x0800, _us(0x0000)),
                        (0x1000, dimse_wire._ui("1." * 40 + "1"))])
    with raw_peer(rf) as peer:
        assert peer.associate(rf.ae_title, [(1, CT, [ExplicitVRLittleEndian])])[0] == 0x02
        for part in dimse_wire.pdata_pdus(1, command, dataset_bytes(inst.path), peer.max_pdu):
            peer.send(bytes(part))
        assert abort_fields(peer.read_pdu())[0] == 0x02
    event = rf.wait_for_event("ingress.dimse.request.aborted")
    assert event["reason"] == "invalid_command" and event["peer_host"] == HOST
    assert event["calling_ae"] == "RAWSCU"
    assert rf.journal_rows() == []
    assert_echo_works(rf)


def _command(elements: list[tuple[int, bytes]]) -> bytes:
    return dimse_wire._command([dimse_wire._element(tag, value) for tag, value in elements])


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


@pytest.mark.parametrize(("abstract", "command", "status"), [
    # C-ECHO-RQ without its Affected SOP Class UID
    (VERIFICATION, [(0x0100, _us(0x0030)), (0x0110, _us(5)), (0x0800, _us(0x0101))], 0x0110),
    # N-SET-RQ without its Requested SOP Instance UID
    (MPPS, [(0x0003, dimse_wire._ui(MPPS)), (0x0100, _us(0x0120)), (0x0110, _us(5)),
            (0x0800, _us(0x0102))], 0x0110),
    # C-FIND-RQ without its Affected SOP Class UID
    (MWL_FIND, [(0x0100, _us(0x0020)), (0x0110, _us(5)), (0x0700, _us(0)),
                (0x0800, _us(0x0102))], 0xC000),
    # N-CREATE-RQ without its Affected SOP Class UID
    (MPPS, [(0x0100, _us(0x0140)), (0x0110, _us(5)), (0x0800, _us(0x0102))], 0x0110),
], ids=["c_echo", "n_set", "c_find", "n_create"])
def test_other_malformed_requests_get_a_failure_too(radflow: RadflowFactory, abstract: str,
                                                    command: list[tuple[int, bytes]],
                                                    status: int) -> None:
    rf = radflow()
    dataset = None
    if command[-1][1] != _us(0x0101):  # a data set follows: an empty one
        dataset = b""
    with raw_peer(rf) as peer:
        assert peer.associate(rf.ae_title, [(1, abstract, [ImplicitVRLittleEndian])])[0] == 0x02
        rsp = peer.request(1, _command(command), dataset)
        assert rsp.MessageIDBeingRespondedTo == 5
        assert rsp.Status == status
        assert rsp.ErrorComment.startswith("Missing or empty")
    assert rf.wait_for_event("ingress.dimse.request.invalid")["message_id"] == 5


# --- 4. closed by default -------------------------------------------------------------------
def test_an_empty_allow_list_lets_nobody_in(radflow: RadflowFactory) -> None:
    rf = radflow({"dicom": {"listeners": [{"accept_any_calling": False}]}})
    refused = echoscu(rf)
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout, refused.stdout
    event = rf.wait_for_event("ingress.dimse.association.rejected")
    assert event["reason"] == "calling_ae_not_allowed"
    assert (event["calling_ae"], event["called_ae"], event["peer_host"]) == \
        ("ECHOSCU", rf.ae_title, HOST)
    assert rf.metric("radflow_dimse_rejections_total", reason="calling_ae_not_allowed") == 1
