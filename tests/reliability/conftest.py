"""Fixtures of the reliability suite: DCMTK storescp sinks as destinations, and a radflow whose
one route sends every instance to each of them, with retries fast enough for a test run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.peers import Storescp, have_storescp
from tests.helpers.proc import HOST, RadflowFactory, RadflowProcess

#: retries in fractions of a second, so a destination that comes back is used at once
FAST_DELIVERY = {
    "retry": {"initial_delay": 0.2, "max_delay": 1.0, "jitter": 0.2,
              "circuit_failures": 3, "circuit_cooldown": 0.5},
    "poll_interval": 0.1, "stats_interval": 0.5,
}


def routed_config(sinks: dict[str, Storescp], **extra: Any) -> dict[str, Any]:
    """Destinations named after ``sinks`` (DIMSE, on loopback) and fast delivery retries."""
    config: dict[str, Any] = {
        "destinations": {name: {"type": "dimse", "host": HOST, "ae_title": sink.ae_title,
                                "port": sink.port, "idle_close": 0.5, "timeout": 10}
                         for name, sink in sinks.items()},
        "delivery": FAST_DELIVERY,
    }
    config.update(extra)
    return config


def write_fanout_route(rf: RadflowProcess, destinations: list[str]) -> None:
    """One route: every instance to every destination named."""
    routes = Path(rf.config["routing"]["routes_dir"])
    (routes / "10-all.yaml").write_text(
        "version: 1\nroutes:\n  - name: everything\n    fallback: true\n"
        f"    destinations: [{', '.join(destinations)}]\n", encoding="utf-8")


SinkFactory = Callable[..., Storescp]


@pytest.fixture
def sinks(tmp_path: Path) -> Iterator[SinkFactory]:
    """Factory of started storescp sinks (``sinks("PACS")``), stopped at teardown."""
    if not have_storescp():
        pytest.skip("DCMTK storescp is not installed")
    started: list[Storescp] = []

    def make(ae_title: str) -> Storescp:
        sink = Storescp(tmp_path / f"sink-{ae_title.lower()}", ae_title=ae_title).start()
        started.append(sink)
        return sink

    yield make
    for sink in started:
        sink.kill()


@pytest.fixture
def fanout(radflow: RadflowFactory, sinks: SinkFactory
           ) -> Callable[..., tuple[RadflowProcess, dict[str, Storescp]]]:
    """``fanout(start=True, **config)``: radflow routing everything to two storescp sinks,
    ``pacs`` and ``ai``."""

    def make(start: bool = True, **extra: Any) -> tuple[RadflowProcess, dict[str, Storescp]]:
        dests = {"pacs": sinks("PACS"), "ai": sinks("AI")}
        rf = radflow(routed_config(dests, **extra), start=False)
        write_fanout_route(rf, list(dests))
        if start:
            rf.start()
        return rf, dests

    return make
