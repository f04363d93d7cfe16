"""DIMSE command sets, P-DATA-TF framing and radflow's implementation identity on the wire.

Owns radflow's Implementation Class UID and Version Name (sent in every association request and
written into every stored file's meta header), the byte encoding of the C-STORE-RQ command set
(egress) and of the C-STORE, C-FIND and C-ECHO response command sets (ingress), the framing of a
message into P-DATA-TF PDUs (from memory, or a few megabytes at a time from a file for an object too
large to hold: :class:`FileSpan`), and :func:`fast_responses`, which sends an acceptor's responses
through them. pynetdicom builds every command set through a pydicom Dataset and its generic encoder,
then hands each PDU to its DUL thread: ~0.5 ms of CPU per message, as much as the rest of a small
instance's intake. The shapes here never change (PS3.7 9.3, Implicit VR Little Endian as PS3.7 6.3.1
requires), and unit tests compare every byte with pynetdicom's own encoding. Anything else
(other messages, a status with an Offending Element, TLS sockets, an association other threads
also send on, a bound EVT_DIMSE_SENT handler not marked :func:`blind_to_direct_responses`)
stays on pynetdicom's path. This module must not decide statuses or touch the association's
state machine.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_STORE

from engine import __version__

#: radflow's Implementation Class UID (PS3.7 D.3.3.2), a UUID-derived UID under 2.25
IMPLEMENTATION_CLASS_UID = "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "radflow.engine").int)
IMPLEMENTATION_VERSION_NAME = f"RADFLOW_{__version__}"[:16]

_US = struct.Struct("<H")
_UL = struct.Struct("<I")
_TAG = struct.Struct("<HHI")
_PDATA_HEADER = struct.Struct(">BBIIBB")


def _ui(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw  # UI pads to even length with NUL


def _lo(text: str) -> bytes:
    raw = text.encode("ascii", "replace")[:64]
    return raw + b" " if len(raw) % 2 else raw  # LO pads to even length with a space


def _element(elem: int, value: bytes) -> bytes:
    return _TAG.pack(0x0000, elem, len(value)) + value


def _command(elements: list[bytes]) -> bytes:
    body = b"".join(elements)
    return _element(0x0000, _UL.pack(len(body))) + body  # Command Group Length


def c_store_rq_command(message_id: int, sop_class_uid: str, sop_instance_uid: str,
                       priority: int = 0x0002) -> bytes:
    """The C-STORE-RQ command set (PS3.7 9.3.1.1)."""
    return _command([
        _element(0x0002, _ui(sop_class_uid)),  # Affected SOP Class UID
        _element(0x0100, _US.pack(0x0001)),  # Command Field: C-STORE-RQ
        _element(0x0110, _US.pack(message_id)),  # Message ID
        _element(0x0700, _US.pack(priority)),  # Priority
        _element(0x0800, _US.pack(0x0000)),  # Command Data Set Type: a dataset follows
        _element(0x1000, _ui(sop_instance_uid)),  # Affected SOP Instance UID
    ])


#: Command Field of each response radflow frames itself (PS3.7 E.1)
C_STORE_RSP: Final = 0x8001
C_FIND_RSP: Final = 0x8020
C_ECHO_RSP: Final = 0x8030
_RESPONSE_FIELDS: dict[type, int] = {C_STORE: C_STORE_RSP, C_FIND: C_FIND_RSP,
                                     C_ECHO: C_ECHO_RSP}


def response_command(command_field: int, message_id: int, sop_class_uid: str | None,
                     status: int, *, sop_instance_uid: str | None = None,
                     has_dataset: bool = False, error_comment: str | None = None) -> bytes:
    """A C-STORE, C-FIND or C-ECHO response command set (PS3.7 9.3.1.2, 9.3.2.2, 9.3.5.2),
    elements in tag order as pynetdicom writes them."""
    elements = []
    if sop_class_uid:
        elements.append(_element(0x0002, _ui(sop_class_uid)))  # Affected SOP Class UID
    elements += [
        _element(0x0100, _US.pack(command_field)),  # Command Field
        _element(0x0120, _US.pack(message_id)),  # Message ID Being Responded To
        # Command Data Set Type: 0x0101 when none follows (pynetdicom writes 0x0001 otherwise)
        _element(0x0800, _US.pack(0x0001 if has_dataset else 0x0101)),
        _element(0x0900, _US.pack(status)),  # Status
    ]
    if error_comment:
        elements.append(_element(0x0902, _lo(error_comment)))  # Error Comment
    if sop_instance_uid:
        elements.append(_element(0x1000, _ui(sop_instance_uid)))  # Affected SOP Instance UID
    return _command(elements)


def pdata_pdus(context_id: int, command: bytes, dataset: bytes | memoryview | None,
               max_pdu: int) -> list[bytes | memoryview]:
    """The P-DATA-TF PDUs of one DIMSE message (PS3.8 9.3.5, E.2): each PDU carries one PDV
    item - item length, presentation context id, message control header (bit 0: command,
    bit 1: last fragment), fragment - with at most ``max_pdu`` bytes per PDU (0: no limit).
    ``dataset=None``: the message has none."""
    room = max_pdu - 6 if max_pdu else max(len(command), len(dataset or b""), 1)
    out: list[bytes | memoryview] = []

    def add(data: bytes | memoryview, is_command: bool) -> None:
        view = memoryview(data)
        chunks = [view[i:i + room] for i in range(0, len(view), room)] or [view]
        for n, chunk in enumerate(chunks):
            mch = (0x01 if is_command else 0x00) | (0x02 if n == len(chunks) - 1 else 0x00)
            out.append(_PDATA_HEADER.pack(0x04, 0x00, 6 + len(chunk), 2 + len(chunk),
                                          context_id, mch))
            out.append(chunk)

    add(command, True)
    if dataset is not None:
        add(dataset, False)
    return out


@dataclass(frozen=True, slots=True)
class FileSpan:
    """``length`` bytes of ``path`` from ``offset``: a dataset too large to hold in memory,
    sent from its file a PDU batch at a time."""

    path: Path
    offset: int
    length: int

    def __len__(self) -> int:
        return self.length

    def chunks(self, size: int) -> Iterator[bytes]:
        """Consecutive pieces of exactly ``size`` bytes (the last may be shorter); ``OSError``
        if the file ends early (it was checked against its recorded size before)."""
        with open(self.path, "rb", buffering=0) as fh:
            fh.seek(self.offset)
            left = self.length
            while left > 0:
                want = min(size, left)
                piece = fh.read(want)
                while len(piece) < want:
                    more = fh.read(want - len(piece))
                    if not more:
                        raise OSError(f"{self.path} ended {left - len(piece)} bytes early")
                    piece += more
                left -= want
                yield piece


#: bytes of PDUs joined into one ``sendall`` when a dataset streams from a file
_STREAM_BATCH = 4 * 1024 * 1024
#: fragment size when the peer sets no maximum PDU length
_UNLIMITED_FRAGMENT = 1024 * 1024


def _stream_dataset(sock: socket.socket, context_id: int, span: FileSpan, max_pdu: int) -> None:
    room = max_pdu - 6 if max_pdu else _UNLIMITED_FRAGMENT
    left = len(span)
    batch: list[bytes] = []
    size = 0
    if left == 0:
        sock.sendall(_PDATA_HEADER.pack(0x04, 0x00, 6, 2, context_id, 0x02))
        return
    for piece in span.chunks(room):
        left -= len(piece)
        batch += [_PDATA_HEADER.pack(0x04, 0x00, 6 + len(piece), 2 + len(piece), context_id,
                                     0x02 if left == 0 else 0x00), piece]
        size += len(piece) + 12
        if size >= _STREAM_BATCH:
            sock.sendall(b"".join(batch))
            batch, size = [], 0
    if batch:
        sock.sendall(b"".join(batch))


_BLIND: Final = "_radflow_blind_to_direct_responses"


def blind_to_direct_responses(handler: Any) -> Any:
    """Mark an EVT_DIMSE_SENT handler that looks only at messages this module never writes
    (an N-ACTION response, say), so binding it keeps the direct path. Any other handler is
    taken to expect every message (pynetdicom's debug tracing) and turns the path off."""
    setattr(handler, _BLIND, True)
    return handler


_SHARED: Final = "_radflow_written_by_others"


def written_by_others(assoc: Association) -> None:
    """From now on, other threads may send on ``assoc`` (a Storage Commitment report from a
    delivery thread goes through pynetdicom's DUL thread): its responses go through
    pynetdicom too, whose one writer keeps each PDU whole, instead of this module's writes
    from the association thread, which could interleave with the DUL's bytes. Call it on the
    association's thread."""
    setattr(assoc, _SHARED, True)


def direct_socket(assoc: Association) -> socket.socket | None:
    """The association's TCP socket when radflow may write responses to it itself: plain TCP
    (an SSL socket must not be written by one thread while another reads it), nothing sent
    on it from other threads (:func:`written_by_others`) and no EVT_DIMSE_SENT handler that
    expects to see each message."""
    transport = getattr(getattr(assoc, "dul", None), "socket", None)
    sock = getattr(transport, "socket", None)
    if type(sock) is not socket.socket:  # an SSLSocket is a subclass: excluded on purpose
        return None
    if getattr(assoc, _SHARED, False):
        return None
    # A notification event: a list of (handler, arguments).
    bound = cast(list[tuple[Any, Any]], assoc.get_handlers(evt.EVT_DIMSE_SENT))
    if any(not getattr(handler, _BLIND, False) for handler, _args in bound):
        return None
    return sock


def set_nodelay(assoc: Association) -> None:
    """TCP_NODELAY on the association's socket: with Nagle's algorithm a small PDU written
    after another waits for the peer's delayed ACK (~40 ms per exchange)."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def write_message(assoc: Association, sock: socket.socket, context_id: int, command: bytes,
                  dataset: bytes | memoryview | FileSpan | None = None) -> None:
    """Write one DIMSE message's P-DATA-TF PDUs with one ``sendall``, sized for the peer's
    maximum PDU length, from the calling thread instead of pynetdicom's DUL. The DUL thread
    keeps reading, and its state machine stays in Sta6 (sending P-DATA does not move it).
    A :class:`FileSpan` dataset is read and sent a few megabytes at a time instead.
    Raises ``OSError`` when the connection is gone."""
    peer = assoc.acceptor if assoc.is_requestor else assoc.requestor
    max_pdu = int(peer.maximum_length or 0)
    if isinstance(dataset, FileSpan):
        sock.sendall(b"".join(pdata_pdus(context_id, command, None, max_pdu)))
        _stream_dataset(sock, context_id, dataset, max_pdu)
        return
    sock.sendall(b"".join(pdata_pdus(context_id, command, dataset, max_pdu)))


def send_response(assoc: Association, sock: socket.socket, context_id: int, command: bytes,
                  dataset: bytes | None = None) -> None:
    """:func:`write_message` for a response, from the association thread, where pynetdicom
    would have queued it for the DUL: a release or abort is sent by the DUL only after the
    association thread is back in its loop, so it can never overtake this response."""
    # If the peer went away, the DUL sees the closed connection and ends the association.
    with contextlib.suppress(OSError):
        write_message(assoc, sock, context_id, command, dataset)


def fast_responses(assoc: Association) -> None:
    """Send this acceptor association's plain C-STORE, C-FIND and C-ECHO responses through
    :func:`send_response`; anything else (or a TLS socket) goes through pynetdicom. A C-FIND
    identifier is already encoded by pynetdicom in the negotiated transfer syntax and is sent
    as it is."""
    dimse = assoc.dimse
    pynetdicom_send = dimse.send_msg

    def send_msg(primitive: Any, context_id: int) -> None:
        field = _RESPONSE_FIELDS.get(type(primitive))
        sock = direct_socket(assoc) if field is not None else None
        if (sock is None or field is None or primitive.MessageIDBeingRespondedTo is None
                or getattr(primitive, "OffendingElement", None) is not None):
            pynetdicom_send(primitive, context_id)
            return
        identifier = getattr(primitive, "Identifier", None)
        dataset = identifier.getvalue() if identifier is not None else None
        command = response_command(
            field, int(primitive.MessageIDBeingRespondedTo),
            str(primitive.AffectedSOPClassUID) if primitive.AffectedSOPClassUID else None,
            int(primitive.Status or 0),
            sop_instance_uid=(str(primitive.AffectedSOPInstanceUID)
                              if getattr(primitive, "AffectedSOPInstanceUID", None) else None),
            has_dataset=dataset is not None,
            error_comment=getattr(primitive, "ErrorComment", None))
        send_response(assoc, sock, context_id, command, dataset)

    dimse.send_msg = send_msg  # type: ignore[method-assign]
