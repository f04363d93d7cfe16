"""pynetdicom as a (mis)behaving SCU, for what DCMTK's tools will not send.

DCMTK's ``storescu`` parses and re-encodes what it sends, so it cannot send a truncated or
malformed dataset, nor stop halfway through one. These helpers use pynetdicom instead:
:func:`send_raw_file` streams a file's bytes after its meta group as they are (pynetdicom's
``STORE_SEND_CHUNKED_DATASET`` mode takes the command's UIDs from the file meta, unchecked), and
:func:`send_partial_then_quit` sends a C-STORE command and only the first fragments of its
dataset, then aborts the association (A-ABORT) or just closes the TCP connection.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Literal

from pydicom.dataset import Dataset
from pynetdicom import _config
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE

from engine.reactor import EventDrivenAE
from tests.helpers.dicomgen import dataset_bytes
from tests.helpers.proc import HOST, RadflowProcess

Context = tuple[str, Sequence[str]]  # (abstract syntax, transfer syntaxes)


@contextmanager
def association(rf: RadflowProcess, contexts: Sequence[Context], *,
                calling_ae: str = "PYSCU", called_ae: str | None = None,
                max_pdu: int = 16384) -> Iterator[Association]:
    """An association with ``rf`` proposing ``contexts``; released (or aborted) on exit."""
    # Stock pynetdicom requestors race their own reactor for a fast peer's first response
    # (see engine.reactor); the event-driven one does not.
    ae = EventDrivenAE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.maximum_pdu_size = max_pdu
    for abstract_syntax, syntaxes in contexts:
        ae.add_requested_context(abstract_syntax, list(syntaxes))
    assoc = ae.associate(HOST, rf.port, ae_title=called_ae or rf.ae_title)
    try:
        if assoc.is_established:
            sock = assoc.dul.socket
            if sock is not None and sock.socket is not None:
                sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def send_raw_file(assoc: Association, path: Path) -> Dataset:
    """C-STORE the bytes of ``path`` after its meta group, unchanged; return the status."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        return assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def send_partial_then_quit(assoc: Association, path: Path, sop_class_uid: str,
                           sop_instance_uid: str, *, fragments: int,
                           how: Literal["abort", "close"]) -> int:
    """Send the C-STORE command and the first ``fragments`` P-DATA fragments of ``path``'s
    dataset, never its last one, then A-ABORT or drop the connection. Returns how many dataset
    fragments the whole message would have had."""
    context = next(cx for cx in assoc.accepted_contexts
                   if cx.abstract_syntax == sop_class_uid)
    req = C_STORE()
    req.MessageID = 1
    req.Priority = 2
    req.AffectedSOPClassUID = sop_class_uid
    req.AffectedSOPInstanceUID = sop_instance_uid
    req.DataSet = BytesIO(dataset_bytes(path))
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    assert context.context_id is not None
    pdus = list(msg.encode_msg(context.context_id, assoc.acceptor.maximum_length or 0))
    # The command set travels in the first P-DATA(s); everything after it is the dataset.
    command = [p for p in pdus if p.presentation_data_value_list[0][1][0] & 0x01]
    data = [p for p in pdus if not p.presentation_data_value_list[0][1][0] & 0x01]
    if fragments >= len(data):
        raise ValueError(f"the dataset has only {len(data)} fragments; send fewer")
    for pdu in [*command, *data[:fragments]]:
        assoc.dul.send_pdu(pdu)
    _wait_sent(assoc)
    if how == "abort":
        assoc.abort()
    else:
        sock = assoc.dul.socket
        assert sock is not None and sock.socket is not None
        sock.socket.shutdown(socket.SHUT_RDWR)
        sock.socket.close()
        assoc.kill()
    return len(data)


def _wait_sent(assoc: Association, timeout: float = 10.0) -> None:
    """Wait (bounded) until the DUL has written everything queued to the socket."""
    deadline = time.monotonic() + timeout
    while not assoc.dul.to_provider_queue.empty() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # the last PDU left the queue; give the DUL thread time to write it
