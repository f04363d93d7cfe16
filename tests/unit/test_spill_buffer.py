"""Objects too large to hold in memory: the spilling receive buffer and the file-backed send.

The intake buffer keeps a C-STORE dataset in memory up to its threshold and moves it to a file
past it, byte for byte; a message that may not spill (not a C-STORE) stays in memory. A dataset
sent from its file (:class:`FileSpan`) goes on the wire as exactly the PDUs the in-memory path
makes from the same bytes.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engine.dicom.wire import FileSpan, pdata_pdus, write_message
from engine.ingress.dimse.spill import SpillingBuffer, SpillPolicy, file_chunks, opened


def _fill(buffer: SpillingBuffer, data: bytes, piece: int) -> None:
    view = memoryview(data)
    for start in range(0, len(data), piece):
        buffer.write(view[start:start + piece])


def test_a_small_dataset_stays_in_memory(tmp_path: Path) -> None:
    buffer = SpillingBuffer(SpillPolicy(1000, tmp_path), lambda: True)
    _fill(buffer, b"x" * 900, 100)
    assert not buffer.spilled and buffer.getvalue() == b"x" * 900
    assert list(tmp_path.iterdir()) == []


def test_a_large_dataset_moves_to_a_file_byte_for_byte(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    buffer = SpillingBuffer(SpillPolicy(1000, tmp_path), lambda: True)
    _fill(buffer, data, 333)
    assert buffer.spilled and buffer.size == len(data)
    assert len(buffer.getbuffer()) == 0  # the memory went back
    with opened(buffer) as (mapped, path):
        assert mapped[:] == data
        assert b"".join(file_chunks(path, 4096)) == data
    buffer.discard()
    assert list(tmp_path.iterdir()) == []


def test_a_message_that_may_not_spill_stays_in_memory(tmp_path: Path) -> None:
    buffer = SpillingBuffer(SpillPolicy(10, tmp_path), lambda: False)
    _fill(buffer, b"y" * 100, 7)
    assert not buffer.spilled and buffer.getvalue() == b"y" * 100


@pytest.mark.parametrize("max_pdu", [0, 4096, 16384])
@pytest.mark.parametrize("length", [0, 1, 4090, 4096 * 5 + 3])
def test_a_file_backed_dataset_is_framed_like_the_same_bytes_in_memory(
        tmp_path: Path, max_pdu: int, length: int) -> None:
    data = os.urandom(length)
    path = tmp_path / "object.dcm"
    path.write_bytes(b"HEADER" + data)
    command = b"\x08\x00" * 20
    assoc: Any = SimpleNamespace(is_requestor=True,
                                 acceptor=SimpleNamespace(maximum_length=max_pdu))
    left, right = socket.socketpair()
    received = bytearray()

    def drain() -> None:
        while chunk := right.recv(65536):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        write_message(assoc, left, 1, command, FileSpan(path, 6, length))
    finally:
        left.close()
        reader.join(10)
        right.close()
    expected = b"".join(bytes(p) for p in pdata_pdus(1, command, data, max_pdu))
    if max_pdu == 0 and length > 0:
        # No peer limit: the in-memory path sends one fragment; the file one 1 MiB pieces.
        expected = b"".join(bytes(p) for p in pdata_pdus(1, command, data, 1024 * 1024 + 6))
    assert bytes(received) == expected
