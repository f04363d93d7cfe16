"""A compiled ruleset and its pure evaluation: an event and its context in, decisions out.

:meth:`Ruleset.evaluate` walks the routes in their visible order (file names, then position in
the file) with the semantics users know from mercure: every matching route fires (fan-out); a
matching route with ``stop: true`` ends the walk (with no destinations it is a discard rule);
``fallback: true`` routes are looked at only when no other route matched; when nothing matches
the result is empty and the caller keeps the object as *unmatched*. :meth:`Ruleset.explain` is
the same walk with a reason for every predicate (dry runs). A Ruleset is immutable: a reload
builds a new one and swaps the reference; building it also prepares the walk of each event kind
(the routes that apply, their decisions, and each route's guard: a first membership test on an
attribute, checked before the rest of its match). This module must not read files, the store
or the clock (the time is in the :class:`RoutingContext`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.valuerep import AMBIGUOUS_VR

from engine.hl7.message import Hl7Message
from engine.morph.ops import MorphStep
from engine.morph.paths import AttrPath, find, text_values
from engine.rules.match import Node, Outcome, split_guard
from engine.rules.model import TriggerLevel

EventKind = Literal["dicom", "order", "procedure_step"]
#: which trigger levels an event kind can fire
LEVELS_OF: dict[EventKind, tuple[TriggerLevel, ...]] = {
    "dicom": ("instance", "series", "study"),
    "order": ("order",),
    "procedure_step": ("procedure_step",),
}
GROUP_LEVELS: frozenset[str] = frozenset({"series", "study"})
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class RoutingContext:
    """Where an event came from and when it is evaluated."""

    calling_ae: str = ""
    called_ae: str = ""
    source_ip: str = ""
    listener: str = ""
    #: procedure_step events: the MPPS status (IN PROGRESS, COMPLETED, DISCONTINUED)
    state: str = ""
    #: local wall-clock time of the evaluation (time-of-day and weekday windows read it)
    now: dt.datetime = field(default_factory=lambda: dt.datetime(2000, 1, 3, 12, 0))


def _context_values(ctx: RoutingContext, name: str, event: str) -> list[str] | None:
    if name == "time":
        return [ctx.now.strftime("%H:%M")]
    if name == "weekday":
        return [_WEEKDAYS[ctx.now.weekday()]]
    if name == "event":
        return [event]
    value = {"calling_ae": ctx.calling_ae, "called_ae": ctx.called_ae,
             "source_ip": ctx.source_ip, "listener": ctx.listener,
             "state": ctx.state}.get(name, "")
    return [value] if value else None


class DicomSubject:
    """A DICOM object as predicates see it; the dataset is loaded on the first attribute read
    (routes that only look at the context never parse the file)."""

    def __init__(self, dataset: Dataset | Callable[[], Dataset], context: RoutingContext,
                 event: str = "instance") -> None:
        self._dataset = dataset if isinstance(dataset, Dataset) else None
        self._loader = None if isinstance(dataset, Dataset) else dataset
        self.context_ = context
        self._event = event
        self._cache: dict[str, list[str] | None] = {}

    @property
    def dataset(self) -> Dataset:
        if self._dataset is None:
            assert self._loader is not None
            self._dataset = self._loader()
        return self._dataset

    def attr(self, path: AttrPath) -> list[str] | None:
        # Many routes read the same few attributes: decode each once per event.
        try:
            return self._cache[path.text]
        except KeyError:
            values = self._cache[path.text] = self._attr(path)
            return values

    def _attr(self, path: AttrPath) -> list[str] | None:
        elems = _elements(self.dataset, path)
        if not elems:
            return None
        values: list[str] = []
        for elem in elems:
            if elem.VR == "SQ":
                if elem.value:
                    values.append(f"<{len(elem.value)} item(s)>")
            else:
                values.extend(v.strip() for v in text_values(elem))
                if not values and isinstance(elem.value, bytes | bytearray) and elem.value:
                    values.append(f"<{len(elem.value)} bytes>")
        return values or None

    def hl7(self, path: str) -> list[str] | None:
        return None

    def context(self, name: str) -> list[str] | None:
        return _context_values(self.context_, name, self._event)


def _elements(ds: Dataset, path: AttrPath) -> list[DataElement]:
    """``find(ds, path)``; a top-level public element still raw is converted as ``ds[tag]``
    would convert it, without the per-access costs of Dataset (it stays raw in ``ds``)."""
    leaf = path.steps[0]
    encoding = ds.original_character_set
    if len(path.steps) > 1 or leaf.tag is None or leaf.private is not None or not encoding:
        return find(ds, path)
    elem = ds.get_item(leaf.tag)
    if elem is None:
        return []
    if not isinstance(elem, RawDataElement):
        return [elem]
    if elem.VR == "SQ":
        return find(ds, path)
    converted = convert_raw_data_element(elem, encoding=encoding, ds=ds)
    if converted.VR == "SQ" or converted.VR in AMBIGUOUS_VR:
        return find(ds, path)  # Dataset fixes these up with the rest of the dataset
    return [converted]


class Hl7Subject:
    """An HL7 v2 message as predicates see it (``hl7:`` paths; any repetition matches unless
    the path names one)."""

    def __init__(self, message: Hl7Message, context: RoutingContext) -> None:
        self.message = message
        self.context_ = context

    def attr(self, path: AttrPath) -> list[str] | None:
        return None

    def hl7(self, path: str) -> list[str] | None:
        try:
            if "[" in path.split("-", 1)[-1]:
                values = [self.message.get(path)]
            else:
                values = self.message.get_all(path)
        except ValueError:
            return None
        found = [v for v in values if v]
        return found or None

    def context(self, name: str) -> list[str] | None:
        return _context_values(self.context_, name, "order")


@dataclass(frozen=True)
class Trigger:
    level: TriggerLevel
    quiet_seconds: float | None = None
    max_wait_seconds: float | None = None

    @property
    def is_group(self) -> bool:
        return self.level in GROUP_LEVELS

    def describe(self) -> str:
        if not self.is_group:
            return self.level
        return (f"{self.level} (complete after {self.quiet_seconds:g} s quiet, at most "
                f"{self.max_wait_seconds:g} s)")


@dataclass(frozen=True)
class RouteCommitment:
    """What a route asks of Storage Commitment for the instances it matches: committed on
    receipt, or once each of ``archives`` (destinations of the route) confirmed them."""

    policy: Literal["on_receipt", "on_archive"]
    archives: tuple[str, ...] = ()


def commitment_of(decisions: Sequence[Decision]) -> RouteCommitment | None:
    """The Storage Commitment the matched routes ask for together: None when none says;
    ``on_archive`` with every archive any of them names (the strictest wins: an instance one
    route sends to an archive is committed only once that archive confirmed it), else
    ``on_receipt``."""
    said = [d.commitment for d in decisions if d.commitment is not None]
    if not said:
        return None
    archives = tuple(dict.fromkeys(a for c in said if c.policy == "on_archive"
                                   for a in c.archives))
    return RouteCommitment("on_archive", archives) if archives \
        else RouteCommitment("on_receipt")


@dataclass(frozen=True)
class Route:
    """One compiled route."""

    name: str
    description: str
    source: str  # file:line
    trigger: Trigger
    match: Node
    destinations: tuple[str, ...]
    morph: tuple[MorphStep, ...]
    morph_labels: tuple[str, ...]  # as written: profile names and inline op names
    stop: bool
    fallback: bool
    enabled: bool = True
    commitment: RouteCommitment | None = None

    def applies_to(self, kind: EventKind) -> bool:
        return self.enabled and self.trigger.level in LEVELS_OF[kind]


@dataclass(frozen=True)
class Decision:
    """A route that fired: where the object goes and how it is changed on the way."""

    route: str
    trigger: Trigger
    destinations: tuple[str, ...]
    morph: tuple[MorphStep, ...]
    stop: bool
    fallback: bool
    commitment: RouteCommitment | None = None

    @property
    def discard(self) -> bool:
        return not self.destinations


@dataclass(frozen=True, slots=True)
class _Step:
    """A route as :meth:`Ruleset.evaluate` walks it."""

    route: Route
    decision: Decision
    #: the match's first test when it is "some value of this attribute is one of ``allowed``"
    guard: AttrPath | None
    allowed: frozenset[str]
    rest: Node | None  # what must hold besides the guard (None: nothing)

    @classmethod
    def of(cls, route: Route) -> _Step:
        split = split_guard(route.match)
        if split is None:
            return cls(route, _decision(route), None, frozenset(), route.match)
        guard, rest = split
        assert guard.attr_path is not None and guard.choices is not None
        return cls(route, _decision(route), guard.attr_path, guard.choices, rest)

    def fires(self, subject: DicomSubject | Hl7Subject) -> bool:
        if self.guard is not None:
            # Most routes fail on their first test (Modality, say): a set lookup on the
            # subject's cached values instead of a walk through the match tree.
            values = subject.attr(self.guard)
            if values is None or self.allowed.isdisjoint(values):
                return False
        return self.rest is None or self.rest.test(subject)


@dataclass(frozen=True)
class RouteTrace:
    """One route's part in a dry run."""

    route: Route
    considered: bool  # False: skipped (other trigger, disabled, after a stop, fallback unused)
    matched: bool
    reasons: tuple[Outcome, ...]
    note: str = ""


@dataclass(frozen=True)
class Ruleset:
    routes: tuple[Route, ...]
    profiles: Mapping[str, tuple[MorphStep, ...]]
    version: str  # a digest of every file's bytes
    files: tuple[str, ...]
    destination_types: Mapping[str, str]
    #: the top-level tags the routes' predicates read (a reader may parse only these); None
    #: when some predicate reads a sequence or private attribute (parse everything)
    header_tags: frozenset[int] | None = None
    #: per destination, the options messages rendered at routing time need (an ``hl7``
    #: destination's ``charset``, ``receiving_application``, ``receiving_facility``)
    destination_options: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: per event kind: the (ordinary, fallback) routes that apply, in order
    _walks: Mapping[EventKind, tuple[tuple[_Step, ...], tuple[_Step, ...]]] = field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        walks = {}
        for kind in LEVELS_OF:
            steps = [_Step.of(r) for r in self.routes if r.applies_to(kind)]
            walks[kind] = (tuple(s for s in steps if not s.route.fallback),
                           tuple(s for s in steps if s.route.fallback))
        object.__setattr__(self, "_walks", walks)

    def evaluate(self, kind: EventKind, subject: DicomSubject | Hl7Subject) -> list[Decision]:
        """The decisions for one event (empty: unmatched)."""
        ordinary, fallbacks = self._walks[kind]
        decisions: list[Decision] = []
        for step in ordinary:
            if step.fires(subject):
                decisions.append(step.decision)
                if step.route.stop:
                    return decisions
        if decisions:
            return decisions
        for step in fallbacks:
            if step.fires(subject):
                decisions.append(step.decision)
                if step.route.stop:
                    break
        return decisions

    def explain(self, kind: EventKind, subject: DicomSubject | Hl7Subject
                ) -> tuple[list[Decision], list[RouteTrace]]:
        """:meth:`evaluate` with the reasons: the decisions and a trace for every route."""
        traces: list[RouteTrace] = []
        decisions: list[Decision] = []
        stopped_by: str | None = None
        for route in self.routes:
            if route.fallback:
                continue
            if not route.enabled:
                traces.append(RouteTrace(route, False, False, (), "disabled"))
                continue
            if not route.applies_to(kind):
                traces.append(RouteTrace(route, False, False, (),
                                         f"trigger {route.trigger.level} does not apply to "
                                         f"this event"))
                continue
            if stopped_by is not None:
                traces.append(RouteTrace(route, False, False, (), f"after stop in {stopped_by}"))
                continue
            reasons = route.match.explain(subject)
            matched = reasons[0].matched
            traces.append(RouteTrace(route, True, matched, tuple(reasons)))
            if matched:
                decisions.append(_decision(route))
                if route.stop:
                    stopped_by = route.name
        use_fallback = not decisions and stopped_by is None
        fallback_stopped = False
        for route in self.routes:
            if not route.fallback:
                continue
            if not use_fallback or not route.applies_to(kind) or fallback_stopped:
                note = "fallback: another route matched" if not use_fallback else \
                    ("disabled" if not route.enabled else "after stop" if fallback_stopped
                     else f"trigger {route.trigger.level} does not apply to this event")
                traces.append(RouteTrace(route, False, False, (), note))
                continue
            reasons = route.match.explain(subject)
            matched = reasons[0].matched
            traces.append(RouteTrace(route, True, matched, tuple(reasons), "fallback"))
            if matched:
                decisions.append(_decision(route))
                fallback_stopped = route.stop
        return decisions, traces

    @property
    def has_commitment(self) -> bool:
        """Some enabled route says how its instances are committed (Storage Commitment)."""
        return any(r.enabled and r.commitment is not None for r in self.routes)

    def route(self, name: str) -> Route | None:
        for route in self.routes:
            if route.name == name:
                return route
        return None


def _decision(route: Route) -> Decision:
    return Decision(route.name, route.trigger, route.destinations, route.morph, route.stop,
                    route.fallback, route.commitment)


EMPTY_RULESET = Ruleset((), {}, "empty", (), {})
