"""Loading the routes folder into a :class:`~engine.rules.ruleset.Ruleset`, or every problem.

Reads ``<routes_dir>/*.yaml`` (route files, in file-name order: ``10-pacs.yaml`` before
``20-ai.yaml``) and ``<routes_dir>/morphs/*.yaml`` (morph profiles) with the safe YAML loader
(a ``!!python/...`` tag is an error, never code), validates their shape, compiles match trees
and morph steps, and checks what needs the site settings: destination names and types, the
site secret for keyed ops, trigger timings, and that a route's predicates and morphs fit its
trigger. Every problem of every file is collected and raised together as a
:class:`~engine.settings.SettingsError` (file, line, key path), like the settings themselves.
Other sub-folders (``routes/worklist/``) belong to other parts and are not read. This module
must not keep state: each call builds a new ruleset.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel, ValidationError

from engine.morph.ops import CompileEnv, MorphStep, compile_step
from engine.rules.match import All, Any_, Node, Not, Predicate, compile_match
from engine.rules.model import CommitmentSpec, ProfileFile, RouteFile, RouteSpec, TriggerSpec
from engine.rules.ruleset import GROUP_LEVELS, Route, RouteCommitment, Ruleset, Trigger
from engine.settings import (
    PathKey,
    SettingsError,
    SettingsProblem,
    _compose_with_lines,
    format_path,
)

PROFILE_DIR: Final = "morphs"
DEFAULT_QUIET_SECONDS: Final = 60.0
DEFAULT_MAX_WAIT_SECONDS: Final = 3600.0
#: destination types that take DICOM objects, and those that take HL7/FHIR messages
DICOM_DESTINATIONS: Final = frozenset({"dimse", "dicomweb"})
_ACCEPTS: Final[dict[str, frozenset[str]]] = {
    "instance": DICOM_DESTINATIONS,
    "series": DICOM_DESTINATIONS,
    "study": DICOM_DESTINATIONS | {"fhir"},
    "order": frozenset({"hl7", "fhir"}),
    "procedure_step": frozenset({"hl7", "fhir", "mpps"}),
}


def yaml_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.suffix in (".yaml", ".yml") and p.is_file() and not p.name.startswith("."))


def watched_files(routes_dir: Path) -> list[Path]:
    """Everything a reload depends on: route and profile files and the CSV tables beside them."""
    if not routes_dir.is_dir():
        return []
    out = yaml_files(routes_dir) + yaml_files(routes_dir / PROFILE_DIR)
    out += sorted(p for p in routes_dir.rglob("*.csv") if p.is_file())
    return out


class _File:
    """One YAML file: its data and the line of every key, for problems."""

    def __init__(self, path: Path, problems: list[SettingsProblem]) -> None:
        self.path = path
        self.source = str(path)
        self.problems = problems
        self.lines: dict[PathKey, int] = {}
        self.data: Any = None
        self.raw = b""
        try:
            self.raw = path.read_bytes()
            text = self.raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.problem((), f"cannot read: {exc}")
            return
        try:
            data, self.lines = _compose_with_lines(text)
        except yaml.MarkedYAMLError as exc:
            line = exc.problem_mark.line + 1 if exc.problem_mark else None
            problems.append(SettingsProblem(self.source, line, "",
                                            f"invalid YAML: {exc.problem}"))
            return
        except yaml.YAMLError as exc:
            self.problem((), f"invalid YAML: {exc}")
            return
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.problem((), "the top level must be a mapping")
            return
        self.data = data

    def line(self, loc: PathKey) -> int | None:
        for cut in range(len(loc), -1, -1):
            if loc[:cut] in self.lines:
                return self.lines[loc[:cut]]
        return None

    def problem(self, loc: PathKey, message: str) -> None:
        self.problems.append(SettingsProblem(self.source, self.line(loc), format_path(loc),
                                             message))

    def validate(self, model: type[BaseModel], data: Any = None, at: PathKey = ()) -> Any:
        try:
            return model.model_validate(self.data if data is None else data)
        except ValidationError as exc:
            for err in exc.errors():
                loc: PathKey = (*at, *err["loc"])
                message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
                if err["type"] == "extra_forbidden" and loc and loc[-1] == "morphs":
                    message = "unknown key (morph profiles are under 'profiles:')"
                self.problem(loc, message)
            return None


def load_ruleset(routes_dir: Path, destinations: Mapping[str, str], *, has_secret: bool,
                 uid_prefix: str) -> Ruleset:
    """Compile every route and profile under ``routes_dir``; raise :class:`SettingsError`
    listing every problem. ``destinations`` maps configured destination names to their type."""
    problems: list[SettingsProblem] = []
    if not routes_dir.is_dir():
        raise SettingsError([SettingsProblem(str(routes_dir), None, "routing.routes_dir",
                                             "the routes folder does not exist")])
    env = CompileEnv(base_dir=routes_dir, has_secret=has_secret, uid_prefix=uid_prefix)
    digest = hashlib.sha256()
    route_files: list[tuple[_File, RouteFile]] = []
    raw_profiles: dict[str, tuple[_File, PathKey, list[Any]]] = {}

    def add_profiles(file: _File, profiles: Mapping[str, list[Any]]) -> None:
        for name, steps in profiles.items():
            if name in raw_profiles:
                other = raw_profiles[name][0]
                file.problem(("profiles", name), f"profile {name!r} is also defined in "
                                                 f"{other.source}")
                continue
            raw_profiles[name] = (file, ("profiles", name), steps)

    for path in yaml_files(routes_dir):
        file = _File(path, problems)
        digest.update(path.name.encode() + b"\x00" + file.raw)
        if file.data is None:
            continue
        spec = file.validate(RouteFile)
        if spec is not None:
            route_files.append((file, spec))
            add_profiles(file, spec.profiles)
    for path in yaml_files(routes_dir / PROFILE_DIR):
        file = _File(path, problems)
        digest.update(b"morphs/" + path.name.encode() + b"\x00" + file.raw)
        if file.data is None:
            continue
        if isinstance(file.data, dict) and "routes" in file.data:
            file.problem(("routes",), "routes belong in the routes folder itself; files under "
                                      f"{PROFILE_DIR}/ hold only profiles")
            continue
        pspec = file.validate(ProfileFile)
        if pspec is not None:
            add_profiles(file, pspec.profiles)

    profiles = _compile_profiles(raw_profiles, env)
    routes: list[Route] = []
    names: dict[str, str] = {}
    for file, spec in route_files:
        for index, raw_route in enumerate(spec.routes):
            where: PathKey = ("routes", index)
            if not isinstance(raw_route, dict):
                file.problem(where, "a route is a mapping (name, match, destinations...)")
                continue
            route_spec = file.validate(RouteSpec, raw_route, where)
            if route_spec is None:
                continue
            if route_spec.name in names:
                file.problem((*where, "name"), f"route {route_spec.name!r} is also defined at "
                                               f"{names[route_spec.name]}")
                continue
            names[route_spec.name] = f"{file.source}:{file.line(where)}"
            route = _compile_route(file, where, route_spec, profiles, destinations, env)
            if route is not None:
                routes.append(route)
    if problems:
        raise SettingsError(problems)
    for route in routes:
        digest.update(json.dumps([s.to_json() for s in route.morph], sort_keys=True).encode())
    return Ruleset(header_tags=_header_tags(routes), routes=tuple(routes),
                   profiles={k: v for k, v in profiles.items() if v is not None},
                   version=digest.hexdigest()[:12],
                   files=tuple(str(f.path) for f, _ in route_files),
                   destination_types=dict(destinations))


def _header_tags(routes: list[Route]) -> frozenset[int] | None:
    """The top-level tags DICOM predicates read; None if any reads deeper or privately."""
    tags: set[int] = set()
    stack: list[Node] = [r.match for r in routes]
    while stack:
        node = stack.pop()
        if isinstance(node, (All, Any_)):
            stack.extend(node.children)
        elif isinstance(node, Not):
            stack.append(node.child)
        elif isinstance(node, Predicate) and node.attr_path is not None:
            path = node.attr_path
            if not path.is_top_level or path.leaf.private is not None or path.leaf.tag is None:
                return None
            tags.add(path.leaf.tag)
    return frozenset(tags)


def _compile_profiles(raw: Mapping[str, tuple[_File, PathKey, list[Any]]], env: CompileEnv
                      ) -> dict[str, tuple[MorphStep, ...] | None]:
    """Profiles may use other profiles by name; a cycle is a problem."""
    done: dict[str, tuple[MorphStep, ...] | None] = {}

    def build(name: str, chain: tuple[str, ...]) -> tuple[MorphStep, ...] | None:
        if name in done:
            return done[name]
        file, where, items = raw[name]
        steps: list[MorphStep] = []
        ok = True
        for i, item in enumerate(items):
            if isinstance(item, str):
                if item in chain or item == name:
                    file.problem((*where, i), f"profile {name!r} uses itself through "
                                              f"{' -> '.join((*chain, name, item))}")
                    ok = False
                    continue
                if item not in raw:
                    file.problem((*where, i), f"unknown morph profile {item!r}"
                                              f"{_known(list(raw))}")
                    ok = False
                    continue
                sub = build(item, (*chain, name))
                if sub is None:
                    ok = False
                    continue
                steps.extend(sub)
                continue
            step = compile_step(item, (*where, i), file.problem, env)
            if step is None:
                ok = False
            else:
                steps.append(step)
        done[name] = tuple(steps) if ok else None
        return done[name]

    for name in raw:
        build(name, ())
    return done


def _known(names: list[str]) -> str:
    return f" (known: {', '.join(sorted(names))})" if names else " (no profiles are defined)"


def _compile_trigger(file: _File, where: PathKey, raw: Any) -> Trigger | None:
    loc = (*where, "trigger")
    if isinstance(raw, str):
        raw = {"on": raw}
    if isinstance(raw, dict) and True in raw and "on" not in raw:
        # YAML 1.1 reads a bare `on:` key as the boolean true; it can only mean "on" here.
        raw = {("on" if k is True else k): v for k, v in raw.items()}
    if not isinstance(raw, dict):
        file.problem(loc, "a trigger is a level name (instance, series, study, order, "
                          "procedure_step) or a mapping with 'on'")
        return None
    try:
        spec = TriggerSpec.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            file.problem((*loc, *err["loc"]), message)
        return None
    if spec.on not in GROUP_LEVELS:
        for key in ("quiet_seconds", "max_wait_seconds"):
            if getattr(spec, key) is not None:
                file.problem((*loc, key), f"impossible trigger: {key} applies only to series "
                                          f"and study triggers, not {spec.on}")
                return None
        return Trigger(spec.on)
    quiet = spec.quiet_seconds or DEFAULT_QUIET_SECONDS
    max_wait = spec.max_wait_seconds or max(DEFAULT_MAX_WAIT_SECONDS, quiet)
    if max_wait < quiet:
        file.problem((*loc, "max_wait_seconds"),
                     f"impossible trigger: max_wait_seconds ({max_wait:g}) is shorter than "
                     f"quiet_seconds ({quiet:g}), so the quiet period could never end it")
        return None
    return Trigger(spec.on, quiet, max_wait)


def _compile_route(file: _File, where: PathKey, spec: RouteSpec,
                   profiles: Mapping[str, tuple[MorphStep, ...] | None],
                   destinations: Mapping[str, str], env: CompileEnv) -> Route | None:
    before = len(file.problems)
    trigger = _compile_trigger(file, where, spec.trigger)
    match = compile_match(spec.match, (*where, "match"), file.problem)
    level = trigger.level if trigger else None
    if match is not None and level is not None:
        uses = match.uses()
        if level in ("order",) and "attr" in uses:
            file.problem((*where, "match"), "order events are HL7 messages: use hl7: paths "
                                            "(PID-3.1), not DICOM attributes")
        if level in ("instance", "series", "study", "procedure_step") and "hl7" in uses:
            file.problem((*where, "match"), f"{level} events are DICOM objects: hl7: paths "
                                            "apply to order triggers")
    for i, name in enumerate(spec.destinations):
        if name not in destinations:
            known = ", ".join(sorted(destinations)) or "none are configured"
            file.problem((*where, "destinations", i),
                         f"unknown destination {name!r} (destinations: {known})")
        elif level is not None and destinations[name] not in _ACCEPTS[level]:
            file.problem((*where, "destinations", i),
                         f"impossible route: a {level} trigger cannot deliver to {name!r}, a "
                         f"{destinations[name]} destination (it takes "
                         f"{', '.join(sorted(_ACCEPTS[level]))})")
    if len(set(spec.destinations)) != len(spec.destinations):
        file.problem((*where, "destinations"), "a destination is listed twice")
    if not spec.destinations and not spec.stop:
        file.problem((*where, "destinations"), "a route without destinations must say "
                                               "stop: true (a discard route)")
    if spec.morph and level in ("order", "procedure_step"):
        file.problem((*where, "morph"), f"morphs change DICOM objects; a {level} route has "
                                        "none to change")
    steps: list[MorphStep] = []
    labels: list[str] = []
    for i, item in enumerate(spec.morph):
        if isinstance(item, str):
            labels.append(item)
            if item not in profiles:
                file.problem((*where, "morph", i),
                             f"unknown morph profile {item!r}{_known(list(profiles))}")
                continue
            compiled = profiles[item]
            if compiled is not None:
                steps.extend(compiled)
            continue
        step = compile_step(item, (*where, "morph", i), file.problem, env)
        if step is not None:
            steps.append(step)
            labels.append(f"inline {step.op}")
    commitment = _compile_commitment(file, where, spec, level, destinations) \
        if spec.commitment is not None else None
    if len(file.problems) != before or trigger is None or match is None:
        return None
    return Route(name=spec.name, description=spec.description,
                 source=f"{file.source}:{file.line(where)}", trigger=trigger, match=match,
                 destinations=tuple(spec.destinations), morph=tuple(steps),
                 morph_labels=tuple(labels), stop=spec.stop, fallback=spec.fallback,
                 enabled=spec.enabled, commitment=commitment)


def _compile_commitment(file: _File, where: PathKey, spec: RouteSpec, level: str | None,
                        destinations: Mapping[str, str]) -> RouteCommitment | None:
    """A route's ``commitment:``; on_archive names archives among the route's own DICOM
    destinations (a route cannot make another route's destination its archive)."""
    loc = (*where, "commitment")
    raw = {"policy": spec.commitment} if isinstance(spec.commitment, str) else spec.commitment
    if not isinstance(raw, dict):
        file.problem(loc, "commitment is on_receipt, on_archive or a mapping with policy "
                          "(and archive)")
        return None
    parsed = file.validate(CommitmentSpec, raw, loc)
    if parsed is None:
        return None
    if level is not None and level not in ("instance", "series", "study"):
        file.problem(loc, f"Storage Commitment concerns DICOM instances; a {level} route "
                          "has none")
        return None
    if not spec.destinations:
        file.problem(loc, "a discard route sends nowhere: the instances it matches follow "
                          "the calling AE's or the site's commitment policy")
        return None
    if parsed.policy == "on_receipt":
        if parsed.archive is not None:
            file.problem((*loc, "archive"), "archive applies to policy on_archive")
            return None
        return RouteCommitment("on_receipt")
    if parsed.archive is None:
        archives = [d for d in spec.destinations if destinations.get(d) in DICOM_DESTINATIONS]
        if not archives:
            file.problem(loc, "on_archive needs an archive: none of this route's destinations "
                              "is a dimse or dicomweb destination that could confirm storage")
            return None
        return RouteCommitment("on_archive", tuple(archives))
    ok = bool(parsed.archive)
    if not ok:
        file.problem((*loc, "archive"), "name at least one of the route's destinations")
    for i, name in enumerate(parsed.archive):
        if name not in spec.destinations:
            file.problem((*loc, "archive", i), f"{name!r} is not one of this route's "
                                               "destinations")
            ok = False
        elif destinations.get(name) not in DICOM_DESTINATIONS:
            file.problem((*loc, "archive", i), f"{name!r} is a {destinations.get(name)} "
                                               "destination: only dimse and dicomweb "
                                               "destinations confirm storage")
            ok = False
    return RouteCommitment("on_archive", tuple(dict.fromkeys(parsed.archive))) if ok else None
