"""Bare pynetdicom 3 Storage SCP: the "plain Python" reference point for C-STORE intake.

It owns nothing but this: accept associations for every storage SOP class (Explicit or
Implicit VR Little Endian), set TCP_NODELAY on each accepted socket, and in the C-STORE
handler write the received bytes unchanged as a Part 10 file (128-byte preamble, ``DICM``,
file meta, then the dataset bytes as received — no decoding), optionally fsyncing each file.

Run as a subprocess by ``bench/bench_cstore.py``::

    python bench/bare_pynetdicom_scp.py --port 11112 --out-dir /tmp/out [--fsync]

SIGTERM/SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any, NoReturn, cast

from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
PREAMBLE = b"\x00" * 128 + b"DICM"


def make_store_handler(out_dir: Path, fsync: bool) -> Callable[[Event], int]:
    """EVT_C_STORE handler writing ``<out_dir>/<SOP Instance UID>.dcm`` from raw bytes."""

    def handle_store(event: Event) -> int:
        request = cast(C_STORE, event.request)
        dataset = cast(BytesIO, request.DataSet)
        path = out_dir / f"{request.AffectedSOPInstanceUID}.dcm"
        with open(path, "wb") as fh:
            fh.write(PREAMBLE)
            write_file_meta_info(fh, event.file_meta, enforce_standard=True)  # type: ignore[arg-type]
            fh.write(dataset.getvalue())
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        return 0x0000

    return handle_store


def handle_conn_open(event: Event) -> None:
    """Disable Nagle on the accepted socket (otherwise each exchange can wait ~40 ms)."""
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _raise_exit(signum: int, _frame: object) -> NoReturn:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--ae-title", default="BARESCP")
    parser.add_argument("--fsync", action="store_true", help="fsync each file before answering")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    ae = AE(ae_title=args.ae_title)
    for cx in AllStoragePresentationContexts:
        if cx.abstract_syntax is not None:
            ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)

    handlers: list[Any] = [
        (evt.EVT_CONN_OPEN, handle_conn_open),
        (evt.EVT_C_STORE, make_store_handler(args.out_dir, args.fsync)),
    ]
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGINT, _raise_exit)
    server = ae.start_server((args.host, args.port), block=False, evt_handlers=handlers)
    assert server is not None  # block=False returns the running server
    try:
        signal.pause()
    except SystemExit:
        pass
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
