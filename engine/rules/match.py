"""Match trees: compiled once from a route's ``match``, then tested against a subject.

A node is a combinator (``all: [...]``, ``any: [...]``, ``not: {...}``) or a predicate with one
subject and one operator::

    {attr: Modality, equals: CT}                  # DICOM keyword, tag, sequence path, private
    {attr: "(0009,\\"ACME 1.1\\",10)", exists: true}
    {context: calling_ae, in: [CT_1, CT_2]}       # calling_ae, called_ae, source_ip, listener,
                                                  # time, weekday, event, state
    {context: source_ip, cidr: [10.20.0.0/16]}
    {context: time, between: ["22:00", "06:00"]}  # wraps midnight
    {hl7: PID-3.1, regex: "^MRN"}                 # HL7 field paths, order events
    {attr: SliceThickness, le: 2.5}               # lt le gt ge: numbers
    {attr: StudyDate, after: 2024-01-01}          # before after: dates (DA, DT)

A subject with several values (multi-valued attributes, every item of a sequence) matches when
any value does; ``exists`` means present with a non-empty value. ``ignore_case: true`` applies
to equals, in and regex. Compiling reports every problem with its key path; testing is pure
(the clock comes in through the context). :func:`split_guard` exposes a tree's first test when
it is a plain membership test on an attribute, so a ruleset can check it cheaply before the
rest. This module must not touch files or the store.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from engine.morph.paths import AttrPath, PathError, parse_path
from engine.morph.safe_regex import RegexError, SafeRegex

PathKey = tuple[str | int, ...]
Report = Callable[[PathKey, str], None]
SubjectKind = Literal["attr", "context", "hl7"]

CONTEXT_NAMES: Final = ("calling_ae", "called_ae", "source_ip", "listener", "time", "weekday",
                        "event", "state")  # state: a procedure step's MPPS status
OPERATORS: Final = ("equals", "in", "regex", "exists", "lt", "le", "gt", "ge", "before",
                    "after", "between", "cidr")
WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: distinct values a regex predicate remembers its answer for (the values of a study repeat),
#: and the longest one worth keeping
_REGEX_MEMO: Final = 256
_REGEX_MEMO_CHARS: Final = 256


class Subject(Protocol):
    """What a predicate reads: values by DICOM path, HL7 path or context name (None: absent)."""

    def attr(self, path: AttrPath) -> list[str] | None: ...

    def hl7(self, path: str) -> list[str] | None: ...

    def context(self, name: str) -> list[str] | None: ...


@dataclass(frozen=True)
class Outcome:
    """A node's result with the reason a dry run shows."""

    matched: bool
    reason: str


class Node:
    label: str

    def test(self, subject: Subject) -> bool:
        raise NotImplementedError

    def explain(self, subject: Subject) -> list[Outcome]:
        """The outcome of this node and, for combinators, of each child (indented)."""
        raise NotImplementedError

    def uses(self) -> set[SubjectKind]:
        raise NotImplementedError


@dataclass(frozen=True)
class All(Node):
    children: tuple[Node, ...]
    label: str = "all"

    def test(self, subject: Subject) -> bool:
        return all(c.test(subject) for c in self.children)

    def explain(self, subject: Subject) -> list[Outcome]:
        rows: list[Outcome] = []
        ok = True
        for child in self.children:
            sub = child.explain(subject)
            ok = ok and sub[0].matched
            rows.extend(Outcome(o.matched, "  " + o.reason) for o in sub)
        return [Outcome(ok, f"all of ({'matched' if ok else 'not matched'})"), *rows]

    def uses(self) -> set[SubjectKind]:
        return set().union(*(c.uses() for c in self.children)) if self.children else set()


@dataclass(frozen=True)
class Any_(Node):
    children: tuple[Node, ...]
    label: str = "any"

    def test(self, subject: Subject) -> bool:
        return any(c.test(subject) for c in self.children)

    def explain(self, subject: Subject) -> list[Outcome]:
        rows: list[Outcome] = []
        ok = False
        for child in self.children:
            sub = child.explain(subject)
            ok = ok or sub[0].matched
            rows.extend(Outcome(o.matched, "  " + o.reason) for o in sub)
        return [Outcome(ok, f"any of ({'matched' if ok else 'not matched'})"), *rows]

    def uses(self) -> set[SubjectKind]:
        return set().union(*(c.uses() for c in self.children)) if self.children else set()


@dataclass(frozen=True)
class Not(Node):
    child: Node
    label: str = "not"

    def test(self, subject: Subject) -> bool:
        return not self.child.test(subject)

    def explain(self, subject: Subject) -> list[Outcome]:
        sub = self.child.explain(subject)
        ok = not sub[0].matched
        return [Outcome(ok, f"not ({'matched' if ok else 'not matched'})"),
                *(Outcome(o.matched, "  " + o.reason) for o in sub)]

    def uses(self) -> set[SubjectKind]:
        return self.child.uses()


@dataclass(frozen=True)
class Always(Node):
    label: str = "always"

    def test(self, subject: Subject) -> bool:
        return True

    def explain(self, subject: Subject) -> list[Outcome]:
        return [Outcome(True, "no match conditions: every event of this trigger")]

    def uses(self) -> set[SubjectKind]:
        return set()


@dataclass(frozen=True)
class Predicate(Node):
    kind: SubjectKind
    name: str  # the subject as written
    attr_path: AttrPath | None
    op: str
    check: Callable[[list[str] | None], bool]
    shown: str  # the operator and operand as written, for reasons
    label: str = "predicate"
    #: equals/in without ignore_case: the check is exactly "some value is one of these"
    choices: frozenset[str] | None = None

    def _values(self, subject: Subject) -> list[str] | None:
        if self.attr_path is not None:
            return subject.attr(self.attr_path)
        if self.kind == "hl7":
            return subject.hl7(self.name)
        return subject.context(self.name)

    def test(self, subject: Subject) -> bool:
        return self.check(self._values(subject))

    def explain(self, subject: Subject) -> list[Outcome]:
        values = self._values(subject)
        ok = self.check(values)
        seen = "absent" if not values else \
            ("'" + "\\".join(values)[:80] + "'") if len(values) == 1 else repr(values[:8])
        where = self.name if self.kind != "context" else f"context.{self.name}"
        return [Outcome(ok, f"{where} {self.shown}: {seen} -> "
                            f"{'matched' if ok else 'not matched'}")]

    def uses(self) -> set[SubjectKind]:
        return {self.kind}


def split_guard(node: Node) -> tuple[Predicate, Node | None] | None:
    """``(guard, rest)`` when the first thing ``node`` tests is a :attr:`Predicate.choices`
    test on an attribute: ``node`` matches exactly when the guard does and then ``rest`` does
    (None: nothing more). Only the first test qualifies, so checking the guard first reads no
    attribute the tree would not have read first itself."""
    if isinstance(node, Predicate):
        first, rest = node, None
    elif isinstance(node, All) and node.children and isinstance(node.children[0], Predicate):
        first = node.children[0]
        others = node.children[1:]
        rest = None if not others else others[0] if len(others) == 1 else All(others)
    else:
        return None
    if first.kind != "attr" or first.choices is None:
        return None
    return first, rest


# --- operators ------------------------------------------------------------------------------
def _number(text: str) -> float | None:
    try:
        return float(text.strip())
    except ValueError:
        return None


def _date(value: Any) -> str | None:
    """YYYYMMDD from a YAML date, ``2024-01-31`` or ``20240131``."""
    if isinstance(value, dt.datetime):
        return value.strftime("%Y%m%d")
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    text = str(value).strip().replace("-", "")
    if len(text) == 8 and text.isdigit():
        try:
            dt.datetime.strptime(text, "%Y%m%d")
        except ValueError:
            return None
        return text
    return None


def _minutes(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 22:00 as the sexagesimal number 1320.
        return value if 0 <= value < 24 * 60 else None
    text = str(value).strip()
    try:
        t = dt.datetime.strptime(text, "%H:%M")
    except ValueError:
        return None
    return t.hour * 60 + t.minute


def _any(values: list[str] | None, fn: Callable[[str], bool]) -> bool:
    return bool(values) and any(fn(v) for v in values or ())


def _choices(op: str, operand: Any, name: str, ignore_case: bool) -> frozenset[str] | None:
    """The values an equals/in predicate accepts as they are (None: another kind of test)."""
    if ignore_case or op not in ("equals", "in"):
        return None
    if op == "equals":
        return frozenset({_scalar(operand, name)})
    return frozenset(_scalar(o, name) for o in operand)


def _memo(search: Callable[[str], bool]) -> Callable[[str], bool]:
    """``search`` remembering its answers: instances of a study repeat their descriptions."""
    seen: dict[str, bool] = {}

    def remembered(text: str) -> bool:
        found = seen.get(text)
        if found is None:
            found = search(text)
            if len(text) <= _REGEX_MEMO_CHARS:
                if len(seen) >= _REGEX_MEMO:
                    seen.clear()
                seen[text] = found
        return found

    return remembered


def _compile_operator(op: str, operand: Any, kind: SubjectKind, name: str, ignore_case: bool,
                      where: PathKey, report: Report) -> Callable[[list[str] | None], bool] | None:
    fold: Callable[[str], str] = (lambda s: s.casefold()) if ignore_case else (lambda s: s)
    if op == "exists":
        if not isinstance(operand, bool):
            report((*where, op), "exists takes true or false")
            return None
        return (lambda v: bool(v)) if operand else (lambda v: not v)
    if op == "equals":
        if isinstance(operand, (list, dict)) or operand is None:
            report((*where, op), "equals takes one value (use 'in' for a list)")
            return None
        target = fold(_scalar(operand, name))
        if not ignore_case:
            # The hot path of most routes: a set-free membership test, no closures per value
            # (split_guard relies on equals and in being exactly membership of _choices).
            return lambda v: v is not None and target in v
        return lambda v: _any(v, lambda x: fold(x.strip()) == target)
    if op == "in":
        if not isinstance(operand, list) or not operand:
            report((*where, op), "in takes a non-empty list")
            return None
        choices = frozenset(fold(_scalar(o, name)) for o in operand)
        if kind == "context" and name == "weekday":
            bad = [c for c in choices if c.lower() not in WEEKDAYS]
            if bad:
                report((*where, op), f"weekdays are {', '.join(WEEKDAYS)}; not {bad}")
                return None
        if not ignore_case:
            return lambda v: v is not None and not choices.isdisjoint(v)
        return lambda v: _any(v, lambda x: fold(x.strip()) in choices)
    if op == "regex":
        try:
            regex = SafeRegex(str(operand), ignore_case)
        except RegexError as exc:
            report((*where, op), str(exc))
            return None
        search = _memo(regex.search)
        return lambda v: _any(v, search)
    if op in ("lt", "le", "gt", "ge"):
        if isinstance(operand, bool) or not isinstance(operand, (int, float)):
            report((*where, op), f"{op} takes a number (use before/after for dates)")
            return None
        bound = float(operand)
        cmp: Callable[[float], bool] = {
            "lt": lambda x: x < bound, "le": lambda x: x <= bound,
            "gt": lambda x: x > bound, "ge": lambda x: x >= bound}[op]

        def numeric(v: list[str] | None) -> bool:
            return _any(v, lambda x: (n := _number(x)) is not None and cmp(n))

        return numeric
    if op in ("before", "after"):
        day = _date(operand)
        if day is None:
            report((*where, op), f"{op} takes a date (2024-01-31 or 20240131)")
            return None
        if op == "before":
            return lambda v: _any(v, lambda x: len(x) >= 8 and x[:8].isdigit() and x[:8] < day)
        return lambda v: _any(v, lambda x: len(x) >= 8 and x[:8].isdigit() and x[:8] > day)
    if op == "between":
        if kind != "context" or name != "time":
            report((*where, op), "between applies to context: time (\"HH:MM\" window)")
            return None
        if not isinstance(operand, list) or len(operand) != 2:
            report((*where, op), 'between takes two times: ["08:00", "18:00"]')
            return None
        start, end = _minutes(operand[0]), _minutes(operand[1])
        if start is None or end is None:
            report((*where, op), 'times are "HH:MM" (quote them in YAML)')
            return None

        def window(v: list[str] | None) -> bool:
            now = _minutes((v or [""])[0])
            if now is None:
                return False
            return start <= now < end if start <= end else (now >= start or now < end)

        return window
    if op == "cidr":
        if kind != "context" or name != "source_ip":
            report((*where, op), "cidr applies to context: source_ip")
            return None
        items = operand if isinstance(operand, list) else [operand]
        nets = []
        for item in items:
            try:
                nets.append(ipaddress.ip_network(str(item), strict=False))
            except ValueError:
                report((*where, op), f"{item!r} is not an address or network")
                return None

        def inside(v: list[str] | None) -> bool:
            for x in v or ():
                try:
                    addr = ipaddress.ip_address(x)
                except ValueError:
                    continue
                if any(addr in n for n in nets):
                    return True
            return False

        return inside
    report(where, f"unknown operator {op!r}")
    return None


def _scalar(value: Any, name: str) -> str:
    if isinstance(value, bool):
        return "Y" if value else "N"
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


#: HL7 field paths as Hl7Message.get reads them (HAPI Terser style)
_HL7_PATH: Final = re.compile(
    r"[A-Z][A-Z0-9]{2}(?:\[\d+\])?-\d+(?:\[\d+\])?(?:\.\d+(?:\.\d+)?)?")


def _show(operand: Any) -> str:
    if isinstance(operand, list):
        return "[" + ", ".join(_show(o) for o in operand) + "]"
    if isinstance(operand, str):
        return f"'{operand}'"
    return _scalar(operand, "")


def _check_hl7_path(text: str) -> str | None:
    if not _HL7_PATH.fullmatch(text):
        return (f"{text!r} is not an HL7 field path like PID-3, PID-3.1, OBR-4.2 or "
                "PID-3[2].1")
    return None


def compile_match(raw: Any, where: PathKey, report: Report) -> Node | None:
    """Compile a match tree; every problem goes to ``report``; None when any was found."""
    if raw is None:
        return Always()
    problems_before = [0]

    def counting(w: PathKey, m: str) -> None:
        problems_before[0] += 1
        report(w, m)

    node = _compile(raw, where, counting)
    return node if problems_before[0] == 0 else None


def _compile(raw: Any, where: PathKey, report: Report) -> Node | None:
    if isinstance(raw, list):
        children = [_compile(item, (*where, i), report) for i, item in enumerate(raw)]
        return All(tuple(c for c in children if c is not None))
    if not isinstance(raw, Mapping):
        report(where, "a match is a mapping (all/any/not or a predicate) or a list of them")
        return None
    combinators = [k for k in ("all", "any", "not") if k in raw]
    if combinators:
        if len(raw) != 1:
            report(where, f"'{combinators[0]}' must be alone in its mapping; nest predicates "
                          "inside it")
            return None
        key = combinators[0]
        value = raw[key]
        if key == "not":
            child = _compile(value, (*where, key), report)
            return Not(child) if child is not None else None
        if not isinstance(value, list) or not value:
            report((*where, key), f"{key} takes a non-empty list")
            return None
        children = [_compile(item, (*where, key, i), report) for i, item in enumerate(value)]
        kept = tuple(c for c in children if c is not None)
        return All(kept) if key == "all" else Any_(kept)
    return _predicate(raw, where, report)


def _predicate(raw: Mapping[str, Any], where: PathKey, report: Report) -> Node | None:
    subjects = [k for k in ("attr", "context", "hl7") if k in raw]
    ops = [k for k in raw if k in OPERATORS]
    unknown = [k for k in raw if k not in OPERATORS and k not in ("attr", "context", "hl7",
                                                                    "ignore_case")]
    for key in unknown:
        report((*where, key), f"unknown key (a predicate has one of attr/context/hl7 and one "
                              f"of {', '.join(OPERATORS)})")
    if len(subjects) != 1:
        report(where, "a predicate needs exactly one of attr, context, hl7")
        return None
    if len(ops) != 1:
        report(where, f"a predicate needs exactly one operator ({', '.join(OPERATORS)})"
               if not ops else f"one operator per predicate, not {', '.join(ops)}")
        return None
    if unknown:
        return None
    kind: SubjectKind = subjects[0]  # type: ignore[assignment]
    name = raw[kind]
    if not isinstance(name, str) or not name.strip():
        report((*where, kind), "expected a name")
        return None
    name = name.strip()
    attr_path = None
    if kind == "attr":
        try:
            attr_path = parse_path(name)
        except PathError as exc:
            report((*where, kind), str(exc))
            return None
    elif kind == "context" and name not in CONTEXT_NAMES:
        report((*where, kind), f"unknown context {name!r} (one of {', '.join(CONTEXT_NAMES)})")
        return None
    elif kind == "hl7":
        problem = _check_hl7_path(name)
        if problem:
            report((*where, kind), problem)
            return None
    ignore_case = raw.get("ignore_case", False)
    if not isinstance(ignore_case, bool):
        report((*where, "ignore_case"), "expected true or false")
        return None
    op = ops[0]
    check = _compile_operator(op, raw[op], kind, name, ignore_case, where, report)
    if check is None:
        return None
    operand = raw[op]
    shown = f"{op} {_show(operand)}"
    return Predicate(kind=kind, name=name, attr_path=attr_path, op=op, check=check,
                     shown=shown + (" (ignore case)" if ignore_case else ""),
                     choices=_choices(op, operand, name, ignore_case))
