"""Who may connect to the MLLP listener: listed addresses and networks, nobody when the list is
empty, everybody only when opened explicitly."""

from __future__ import annotations

import pytest

from engine.ingress.hl7.listener import SourceFilter


@pytest.mark.parametrize(("host", "allowed"), [
    ("10.20.30.4", True), ("10.20.31.4", False), ("192.168.1.7", True),
    ("192.168.1.8", False), ("::ffff:10.20.30.9", True), ("fd00::1", True),
    ("not-an-address", False), ("", False)])
def test_listed_addresses_and_networks(host: str, allowed: bool) -> None:
    sources = SourceFilter(["10.20.30.0/24", "192.168.1.7", "fd00::/8"], accept_any=False)
    assert sources.allows(host) is allowed


def test_empty_means_nobody_and_accept_any_means_everybody() -> None:
    closed = SourceFilter([], accept_any=False)
    assert closed.closed and not closed.allows("127.0.0.1")
    opened = SourceFilter([], accept_any=True)
    assert not opened.closed and opened.allows("203.0.113.5")
