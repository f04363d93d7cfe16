"""The router's metric children, taken once per label set: counts stay those of labels()."""

from __future__ import annotations

from engine.observability.metrics import REGISTRY, ROUTING_ENTRIES, ROUTING_ROUTE_MATCHES
from engine.pipeline.router import _count


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_counts_go_to_the_labelled_children() -> None:
    matches = {"route": "unit-counter-route"}
    entries = {"source": "instances", "outcome": "routed"}
    before = sample("radflow_routing_route_matches_total", matches)
    before_entries = sample("radflow_routing_entries_total", entries)
    for _ in range(3):
        _count(ROUTING_ROUTE_MATCHES, "unit-counter-route")
    ROUTING_ROUTE_MATCHES.labels("unit-counter-route").inc()  # the same child either way
    _count(ROUTING_ENTRIES, "instances", "routed")
    assert sample("radflow_routing_route_matches_total", matches) == before + 4
    assert sample("radflow_routing_entries_total", entries) == before_entries + 1
