"""Route guards (a match's first membership test, checked before the rest) and the remembered
regex answers: evaluation gives the same decisions as a plain walk of every match tree."""

from __future__ import annotations

import datetime as dt
import itertools
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from engine.hl7.message import Hl7Message
from engine.rules.loader import load_ruleset
from engine.rules.match import All, Predicate, compile_match, split_guard
from engine.rules.ruleset import (
    LEVELS_OF,
    Decision,
    DicomSubject,
    EventKind,
    Hl7Subject,
    RoutingContext,
    Ruleset,
)
from tests.helpers import dicomgen

DESTINATIONS = {"pacs": "dimse", "ai": "dicomweb", "ris": "hl7"}
NOW = dt.datetime(2026, 1, 5, 9)


def compiled(raw: Any) -> Any:
    problems: list[str] = []
    node = compile_match(raw, ("match",), lambda w, m: problems.append(m))
    assert problems == [] and node is not None
    return node


@pytest.mark.parametrize("raw, path, choices, rest", [
    ({"attr": "Modality", "equals": "CT"}, "Modality", {"CT"}, None),
    ({"attr": "Modality", "in": ["CT", "MR"]}, "Modality", {"CT", "MR"}, None),
    ({"attr": "SliceThickness", "equals": 2.0}, "SliceThickness", {"2"}, None),
    ({"all": [{"attr": "Modality", "equals": "CT"}, {"attr": "PatientID", "regex": "^Q"}]},
     "Modality", {"CT"}, Predicate),
    ({"all": [{"attr": "Modality", "equals": "CT"}, {"attr": "PatientID", "regex": "^Q"},
              {"context": "calling_ae", "equals": "X"}]}, "Modality", {"CT"}, All),
    ([{"attr": "Modality", "in": ["US"]}, {"attr": "PatientID", "exists": True}],
     "Modality", {"US"}, Predicate),
])
def test_split_guard_takes_the_first_membership_test(raw: Any, path: str, choices: set[str],
                                                     rest: type | None) -> None:
    split = split_guard(compiled(raw))
    assert split is not None
    guard, remainder = split
    assert guard.attr_path is not None and guard.attr_path.text == path
    assert guard.choices == frozenset(choices)
    assert remainder is None if rest is None else isinstance(remainder, rest)


@pytest.mark.parametrize("raw", [
    None,                                                          # always
    {"attr": "Modality", "equals": "ct", "ignore_case": True},     # not plain membership
    {"attr": "Modality", "regex": "^CT$"},
    {"context": "calling_ae", "equals": "CT_1"},                   # not an attribute
    {"hl7": "MSH-9.1", "in": ["ORM"]},
    {"not": {"attr": "Modality", "equals": "CT"}},
    {"any": [{"attr": "Modality", "equals": "CT"}, {"attr": "Modality", "equals": "MR"}]},
    # the attribute test comes second: guarding on it would read it before the context
    {"all": [{"context": "calling_ae", "equals": "CT_1"}, {"attr": "Modality", "equals": "CT"}]},
    {"all": [{"all": [{"attr": "Modality", "equals": "CT"}]}]},
])
def test_split_guard_leaves_other_trees_alone(raw: Any) -> None:
    assert split_guard(compiled(raw)) is None


RULES = """\
    version: 1
    routes:
      - name: qa
        match: {all: [{attr: PatientID, equals: QA}, {context: calling_ae, equals: CT_1}]}
        destinations: []
        stop: true
      - {name: ct, match: {attr: Modality, equals: CT}, destinations: [pacs]}
      - {name: ct-mr, match: {attr: Modality, in: [CT, MR]}, destinations: [ai]}
      - name: ct-thin
        match: {all: [{attr: Modality, equals: CT}, {attr: SliceThickness, le: 2},
                      {not: {attr: ImageType, equals: LOCALIZER}}]}
        destinations: [pacs]
      - name: ct-study
        trigger: {on: study, quiet_seconds: 5}
        match: [{attr: Modality, equals: CT}, {attr: StudyDescription, regex: "(?i)chest"}]
        destinations: [ai]
      - {name: mr-stop, match: {attr: Modality, equals: MR}, destinations: [pacs], stop: true}
      - name: ct-ae
        match: {all: [{context: calling_ae, equals: CT_2}, {attr: Modality, equals: CT}]}
        destinations: [pacs]
      - {name: any-desc, match: {any: [{attr: StudyDescription, regex: "^Head"},
                                       {attr: InstitutionName, equals: "Site 7"}]},
         destinations: [ai]}
      - {name: ct-off, enabled: false, match: {attr: Modality, equals: CT}, destinations: [pacs]}
      - {name: steps, trigger: procedure_step, match: {attr: Modality, equals: CT},
         destinations: [ris]}
      - {name: orm, trigger: order, match: {hl7: MSH-9.1, in: [ORM]}, destinations: [ris]}
      - {name: fb-us, fallback: true, match: {attr: Modality, in: [US, XA]}, destinations: [pacs],
         stop: true}
      - {name: fb-xa, fallback: true, match: {attr: Modality, equals: XA}, destinations: [ai]}
      - {name: fb-dx, fallback: true, match: {attr: Modality, equals: DX}, destinations: [pacs]}
      - {name: fb-all, fallback: true, match: {attr: PatientID, regex: "^P"}, destinations: [ai]}
    """


def ruleset(tmp_path: Path) -> Ruleset:
    (tmp_path / "10.yaml").write_text(textwrap.dedent(RULES), encoding="utf-8")
    return load_ruleset(tmp_path, DESTINATIONS, has_secret=True,
                        uid_prefix="1.2.826.0.1.3680043.8.498.")


def plain_walk(rs: Ruleset, kind: EventKind, subject: DicomSubject | Hl7Subject
               ) -> list[Decision]:
    """Evaluation as it was before guards: every route's whole match tree, in order."""
    def decision(r: Any) -> Decision:
        return Decision(r.name, r.trigger, r.destinations, r.morph, r.stop, r.fallback)

    decisions: list[Decision] = []
    for route in rs.routes:
        if not route.fallback and route.applies_to(kind) and route.match.test(subject):
            decisions.append(decision(route))
            if route.stop:
                return decisions
    if decisions:
        return decisions
    for route in rs.routes:
        if route.fallback and route.applies_to(kind) and route.match.test(subject):
            decisions.append(decision(route))
            if route.stop:
                break
    return decisions


def instance(modality: str | list[str] | None, patient: str, description: str | None,
             thickness: str, image_type: list[str]) -> Dataset:
    ds = dicomgen.new_dataset("CT", patient_id=patient)
    if modality is None:
        del ds.Modality
    else:
        ds.Modality = modality
    if description is not None:
        ds.StudyDescription = description
    ds.SliceThickness = thickness
    ds.ImageType = image_type
    return ds


CASES = list(itertools.product(
    ["CT", "MR", "US", "XA", "DX", "OT", "", None, ["CT", "MR"]],
    ["QA", "P1", "X9"],
    ["Chest CT", "Head MR", None],
    ["1.0", "3"],
    [["ORIGINAL", "PRIMARY"], ["DERIVED", "LOCALIZER"]],
    ["CT_1", "CT_2"],
))


def test_guards_give_the_decisions_of_a_plain_walk(tmp_path: Path) -> None:
    rs = ruleset(tmp_path)
    seen: set[tuple[str, ...]] = set()
    for modality, patient, description, thickness, image_type, ae in CASES:
        ds = instance(modality, patient, description, thickness, image_type)
        ctx = RoutingContext(calling_ae=ae, now=NOW)
        for kind in ("dicom", "procedure_step"):
            expected = plain_walk(rs, kind, DicomSubject(ds, ctx))
            assert rs.evaluate(kind, DicomSubject(ds, ctx)) == expected
            decisions, _ = rs.explain(kind, DicomSubject(ds, ctx))
            assert decisions == expected
            seen.add(tuple(d.route for d in expected))
    # the cases reach fan-out, both stops, each fallback outcome and unmatched
    assert ("qa",) in seen and ("mr-stop",) not in seen
    assert ("ct-mr", "mr-stop") in seen
    assert ("fb-us",) in seen and ("fb-xa",) not in seen and ("fb-dx", "fb-all") in seen
    assert ("fb-all",) in seen and () in seen
    assert any(len(s) >= 4 and s[0] == "ct" for s in seen)


def test_guards_on_order_events(tmp_path: Path) -> None:
    rs = ruleset(tmp_path)
    for text in ("MSH|^~\\&|HIS|H|RIS|R|20260105||ORM^O01|1|P|2.5\r",
                 "MSH|^~\\&|HIS|H|RIS|R|20260105||ADT^A01|1|P|2.5\r"):
        subject = Hl7Subject(Hl7Message.parse(text.encode()), RoutingContext(now=NOW))
        assert rs.evaluate("order", subject) == plain_walk(rs, "order", subject)


def test_a_guard_reads_nothing_the_tree_would_not_read_first(tmp_path: Path) -> None:
    """A stop route on the context alone ends the walk before any attribute is read: the file
    is never opened, so an unreadable one still routes."""
    (tmp_path / "10.yaml").write_text(textwrap.dedent("""\
        version: 1
        routes:
          - {name: by-ae, match: {context: calling_ae, equals: CT_9}, destinations: [pacs],
             stop: true}
          - {name: ct, match: {attr: Modality, equals: CT}, destinations: [pacs]}
        """), encoding="utf-8")
    rs = load_ruleset(tmp_path, DESTINATIONS, has_secret=True,
                      uid_prefix="1.2.826.0.1.3680043.8.498.")

    def unreadable() -> Dataset:
        raise OSError("no such file")

    ctx = RoutingContext(calling_ae="CT_9", now=NOW)
    assert [d.route for d in rs.evaluate("dicom", DicomSubject(unreadable, ctx))] == ["by-ae"]


def test_walks_cover_every_applicable_route_once(tmp_path: Path) -> None:
    rs = ruleset(tmp_path)
    for kind in LEVELS_OF:
        ordinary, fallbacks = rs._walks[kind]
        assert [s.route.name for s in ordinary + fallbacks] == [
            r.name for r in rs.routes if r.applies_to(kind) and not r.fallback] + [
            r.name for r in rs.routes if r.applies_to(kind) and r.fallback]


def test_regex_answers_are_remembered_without_changing_them() -> None:
    node = compiled({"attr": "ImageComments", "regex": "(?i)^chest"})
    ctx = RoutingContext(now=NOW)

    def test(value: str) -> bool:
        ds = Dataset()
        ds.ImageComments = value
        return bool(node.test(DicomSubject(ds, ctx)))

    for _ in range(2):  # the second round answers from memory (or after a clear)
        for i in range(600):
            assert test(f"Chest {i}") and not test(f"Head {i}")
    long = "chest " + "x" * 5000  # too long to keep: searched every time
    assert test(long) and test(long)
