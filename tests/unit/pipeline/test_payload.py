"""Outbox payloads assembled from pre-serialized parts: the same text as one ``json.dumps`` of
the whole payload (keys sorted), for instance rows, fired groups and group decisions."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from engine.durable.routing import OpenGroup
from engine.durable.store import StoredInstance
from engine.pipeline import payload
from engine.rules.loader import load_ruleset
from engine.rules.ruleset import Decision, Ruleset
from tests.unit.journal_samples import record

DESTINATIONS = {"pacs": "dimse", "ai": "dicomweb", "archive": "dimse"}
ROUTES = """\
    version: 1
    routes:
      - {name: plain, destinations: [pacs]}
      - name: morphed
        destinations: [pacs, ai, archive]
        morph:
          - {op: set, attr: InstitutionName, value: "Hôpital Süd"}
          - {op: regex_replace, attr: AccessionNumber, pattern: '^(\\d+)$', replacement: 'EX\\1'}
      - name: study
        trigger: {on: study, quiet_seconds: 5}
        destinations: [archive, ai]
        morph: [{op: set_if_absent, attr: StationName, value: "ST-1"}]
    """


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


@pytest.fixture
def ruleset(tmp_path: Path) -> Ruleset:
    (tmp_path / "10.yaml").write_text(textwrap.dedent(ROUTES), encoding="utf-8")
    return load_ruleset(tmp_path, DESTINATIONS, has_secret=True,
                        uid_prefix="1.2.826.0.1.3680043.8.498.")


def decision(rs: Ruleset, name: str) -> Decision:
    route = rs.route(name)
    assert route is not None
    return Decision(route.name, route.trigger, route.destinations, route.morph, route.stop,
                    route.fallback)


def stored(n: int) -> StoredInstance:
    rec = dataclasses.replace(record(n), spool_path=f"objects/é/{n}.dcm", object_id=f"ö{n}")
    return StoredInstance(id=n, version=2, record=rec, routed_at=None, superseded=False)


def expected_payload(stored: StoredInstance, route: str, ruleset: str, dest: dict[str, str],
                     morph: list[dict[str, Any]], fingerprint: str | None,
                     trigger: dict[str, Any]) -> str:
    """The payload as one json.dumps of the whole object (what routing always wrote)."""
    return dumps({"v": 1, "kind": "dicom", "route": route, "ruleset": ruleset,
                  "trigger": trigger, "destination": dest, "object": payload.object_json(stored),
                  "morph": morph, "secret_fingerprint": fingerprint if morph else None})


@pytest.mark.parametrize("value", [
    {"v": 1, "object": 0, "a": [1, "x"], "z": {"b": 2, "a": 1}},
    {"object": 0},                        # nothing before or after
    {"object": 0, "zz": "ü"},             # nothing before
    {"a": None, "object": 0},             # nothing after
])
def test_around_splits_the_sorted_json_at_a_key(value: dict[str, Any]) -> None:
    head, tail = payload._around(value, "object")
    assert head + dumps({"q": [1, 2]}) + tail == dumps({**value, "object": {"q": [1, 2]}})


@pytest.mark.parametrize("route", ["plain", "morphed"])
def test_instance_rows_match_one_dumps_of_the_payload(ruleset: Ruleset, route: str) -> None:
    d = decision(ruleset, route)
    cache = payload.PayloadCache(ruleset.version, ruleset.destination_types, "f1ng3rpr1nt")
    morph = [s.to_json() for s in d.morph]
    for n in (1, 2, 3):
        rows = cache.rows(d).rows(stored(n))
        assert [r.destination for r in rows] == list(d.destinations)
        for row in rows:
            dest = {"name": row.destination,
                    "type": ruleset.destination_types.get(row.destination, "")}
            assert row.payload == expected_payload(stored(n), route, ruleset.version, dest,
                                                   morph, "f1ng3rpr1nt", {"level": "instance"})
            assert (row.kind, row.source_table, row.source_id, row.route) == (
                "dicom", "instances", n, route)
            assert row.study_instance_uid == stored(n).record.study_instance_uid
        # the object part serialized once by the caller gives the same rows
        assert cache.rows(d).rows(stored(n), payload.object_text(stored(n))) == rows
    assert cache.rows(d) is cache.rows(d)  # made once per route


def test_group_decision_and_fired_rows(ruleset: Ruleset) -> None:
    d = decision(ruleset, "study")
    cache = payload.PayloadCache(ruleset.version, ruleset.destination_types, None)
    frozen = cache.decision_json(d)
    assert frozen == payload.decision_json(d, ruleset.version, ruleset.destination_types, None)
    assert cache.decision_json(d) is frozen
    group = OpenGroup(id=7, route="study", level="study", key="1.2.3", study_instance_uid="1.2.3",
                      first_at=0.0, last_at=1.0, quiet_seconds=5.0, max_wait_seconds=60.0,
                      members=2)
    members = [stored(1), stored(2)]
    rows = payload.group_rows(frozen, members, "quiet", group)
    trigger = {"level": "study", "group_id": 7, "key": "1.2.3", "reason": "quiet",
               "instances": 2}
    loaded = json.loads(frozen)
    assert [r.payload for r in rows] == [
        expected_payload(m, "study", ruleset.version, dest, loaded["morph"], None, trigger)
        for m in members for dest in loaded["destinations"]]
