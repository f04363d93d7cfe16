"""Stopping radflow while a destination hangs: SIGTERM ends the process within its shutdown
grace (plus a moment), even when a destination took the TCP connection and never answers the
association request, and the row it was sending stays queued for the next start."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.dicomgen import write_instance
from tests.helpers.proc import HOST, RadflowProcess, free_port, storescu

pytestmark = pytest.mark.dcmtk

ROUTES = """\
version: 1
routes:
  - name: everything
    fallback: true
    destinations: [pacs]
"""


class BlackHole:
    """Takes TCP connections and never says a word (a hung PACS)."""

    def __init__(self) -> None:
        self.port = free_port()
        self._sock = socket.create_server((HOST, self.port))
        self._sock.settimeout(0.2)
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.connections.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in [*self.connections, self._sock]:
            conn.close()


@pytest.fixture
def hung_pacs() -> Iterator[BlackHole]:
    hole = BlackHole()
    try:
        yield hole
    finally:
        hole.close()


def test_sigterm_ends_an_association_request_a_destination_never_answers(
        hung_pacs: BlackHole, tmp_path: Path) -> None:
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "10.yaml").write_text(ROUTES)
    grace = 3.0
    rf = RadflowProcess(tmp_path / "radflow", {
        "routing": {"routes_dir": str(routes)},
        # The destination's own timeout is far beyond the grace: only giving up the
        # association request at shutdown lets radflow stop in time.
        "destinations": {"pacs": {"type": "dimse", "ae_title": "PACS", "host": HOST,
                                  "port": hung_pacs.port, "timeout": 300}},
        "engine": {"shutdown_grace": grace}})
    rf.start()
    try:
        inst = write_instance(tmp_path / "in")
        assert storescu(rf, [inst.path]).returncode == 0
        deadline = time.monotonic() + 30
        while not hung_pacs.connections:
            assert time.monotonic() < deadline, "radflow never tried the destination"
            time.sleep(0.1)
        started = time.monotonic()
        rf.stop(timeout=grace + 12)  # exit code 0, long before the destination's 300 s
        assert time.monotonic() - started < grace + 12
        (aborted,) = rf.events("egress.dimse.aborted")
        assert aborted["destination"] == "pacs" and aborted["associations"] == 1
        # Nothing lost: the row is still queued, and the next start tries it again.
        (row,) = rf.outbox_rows()
        assert row["destination"] == "pacs" and row["state"] in ("pending", "leased")
        tried = len(hung_pacs.connections)
        rf.start()
        deadline = time.monotonic() + 30
        while len(hung_pacs.connections) == tried:
            assert time.monotonic() < deadline, "the queued row was not tried after the restart"
            time.sleep(0.1)
    finally:
        rf.close()
