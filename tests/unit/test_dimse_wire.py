"""The DIMSE bytes radflow writes itself: the C-STORE-RQ command set, the C-STORE, C-FIND and
C-ECHO response command sets and P-DATA-TF framing, each checked byte for byte against
pynetdicom's own encoder."""

from __future__ import annotations

import socket
import struct
from io import BytesIO
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.uid import CTImageStorage
from pynetdicom.dimse_messages import C_ECHO_RSP, C_FIND_RSP, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_STORE
from pynetdicom.dsutils import encode

from engine.dicom import wire
from engine.dicom.wire import c_store_rq_command, pdata_pdus, response_command

UID = "1.2.826.0.1.3680043.8.498.1234567"  # odd length: padded with NUL


def _pynetdicom_bytes(primitive: C_STORE | C_FIND | C_ECHO, message: type) -> bytes:
    msg = message()
    msg.primitive_to_message(primitive)
    return bytes(encode(msg.command_set, True, True))


def test_request_command_set_matches_pynetdicom() -> None:
    req = C_STORE()
    req.MessageID = 7
    req.AffectedSOPClassUID = CTImageStorage
    req.AffectedSOPInstanceUID = UID
    req.Priority = 2
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    msg.command_set.CommandDataSetType = 0x0000  # pynetdicom sets it when a dataset is attached
    theirs = encode(msg.command_set, True, True)
    assert c_store_rq_command(7, CTImageStorage, UID) == theirs


@pytest.mark.parametrize(("status", "comment"), [
    (0x0000, None),
    (0xB007, None),  # warning: data set does not match SOP class
    (0xA700, "spool below its free-space threshold (12 MiB free)"),  # odd length: space pad
    (0xC211, "x" * 80),  # longer than LO's 64 characters: cut as pynetdicom's encoder would
])
def test_response_command_set_matches_pynetdicom(status: int, comment: str | None) -> None:
    rsp = C_STORE()
    rsp.MessageID = 65535
    rsp.MessageIDBeingRespondedTo = 65535
    rsp.AffectedSOPClassUID = CTImageStorage
    rsp.AffectedSOPInstanceUID = UID
    rsp.Status = status
    if comment is not None:
        rsp.ErrorComment = comment[:64]
    theirs = _pynetdicom_bytes(rsp, C_STORE_RSP)
    ours = response_command(0x8001, 65535, CTImageStorage, status, sop_instance_uid=UID,
                            error_comment=comment)
    assert ours == theirs


def test_response_without_uids_matches_pynetdicom() -> None:
    # A request that carried no UIDs is answered without them (both are conditional).
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 3
    rsp.Status = 0xC000
    theirs = _pynetdicom_bytes(rsp, C_STORE_RSP)
    assert response_command(0x8001, 3, None, 0xC000) == theirs


@pytest.mark.parametrize(("status", "identifier"), [(0xFF00, b"\x08\x00\x50\x00\x00\x00\x00\x00"),
                                                    (0x0000, None), (0xFE00, None)])
def test_find_response_command_set_matches_pynetdicom(status: int, identifier: bytes | None
                                                      ) -> None:
    rsp = C_FIND()
    rsp.MessageID = 9
    rsp.MessageIDBeingRespondedTo = 9
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.31"
    rsp.Status = status
    if identifier is not None:
        rsp.Identifier = BytesIO(identifier)
    theirs = _pynetdicom_bytes(rsp, C_FIND_RSP)
    ours = response_command(0x8020, 9, "1.2.840.10008.5.1.4.31", status,
                            has_dataset=identifier is not None)
    assert ours == theirs


def test_echo_response_command_set_matches_pynetdicom() -> None:
    rsp = C_ECHO()
    rsp.MessageID = 1
    rsp.MessageIDBeingRespondedTo = 1
    rsp.AffectedSOPClassUID = "1.2.840.10008.1.1"
    rsp.Status = 0
    theirs = _pynetdicom_bytes(rsp, C_ECHO_RSP)
    assert response_command(0x8030, 1, "1.2.840.10008.1.1", 0) == theirs


def test_pdata_fragments_respect_the_peer_maximum() -> None:
    command, data = b"C" * 10, bytes(range(256)) * 100  # 25,600 bytes
    pdus = pdata_pdus(3, command, data, max_pdu=4096)
    headers = [bytes(p) for p in pdus[0::2]]
    chunks = [bytes(p) for p in pdus[1::2]]
    assert b"".join(chunks[1:]) == data and chunks[0] == command
    for header, chunk in zip(headers, chunks, strict=True):
        kind, _r, pdu_len, item_len, cid, _mch = struct.unpack(">BBIIBB", header)
        assert (kind, cid) == (0x04, 3)
        assert item_len == len(chunk) + 2 and pdu_len == item_len + 4
        assert pdu_len <= 4096
    mchs = [h[-1] for h in headers]
    assert mchs[0] == 0x03  # command, last fragment
    assert mchs[1:-1] == [0x00] * (len(mchs) - 2) and mchs[-1] == 0x02


def test_a_message_without_dataset_is_one_command_pdu() -> None:
    command = response_command(0x8001, 1, CTImageStorage, 0, sop_instance_uid=UID)
    pdus = pdata_pdus(5, command, None, max_pdu=16384)
    assert len(pdus) == 2 and bytes(pdus[1]) == command
    assert bytes(pdus[0])[-1] == 0x03  # command, last fragment


class _Assoc:
    """Just what ``direct_socket`` reads of an association."""

    def __init__(self, sock: socket.socket, handlers: list[tuple[Any, list[Any]]]) -> None:
        self.dul = SimpleNamespace(socket=SimpleNamespace(socket=sock))
        self._handlers = handlers

    def get_handlers(self, _event: Any) -> list[tuple[Any, list[Any]]]:
        return self._handlers


def test_the_commitment_handler_keeps_the_direct_path_until_a_report_may_share_it() -> None:
    # Binding Storage Commitment's EVT_DIMSE_SENT handler on every listener once sent every
    # C-STORE and C-FIND response through pynetdicom's encoder (an "all CT today" worklist
    # query took 6x longer); only an association that asked for commitment needs that.
    from engine.ingress.dimse.commitment import handle_dimse_sent

    a, b = socket.socketpair()
    try:
        assoc = _Assoc(a, [(handle_dimse_sent, [])])
        assert wire.direct_socket(assoc) is a  # type: ignore[arg-type]
        wire.written_by_others(assoc)  # type: ignore[arg-type]
        assert wire.direct_socket(assoc) is None  # type: ignore[arg-type]
        tracing = _Assoc(a, [(lambda _e: None, [])])  # a handler that wants every message
        assert wire.direct_socket(tracing) is None  # type: ignore[arg-type]
    finally:
        a.close()
        b.close()
