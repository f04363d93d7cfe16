"""Morph operations: their YAML/JSON form, validation, and how each changes a dataset.

Every op is a frozen dataclass compiled from a mapping with an ``op`` key (route files, morph
profiles) and written back by :meth:`to_json` to the same form (outbox payloads freeze it), so
``compile_step(step.to_json())`` gives the same op. :meth:`apply` changes the dataset it is
given in place; callers hand it a copy (the spooled original is never touched). Ops are pure:
the result depends only on the dataset, the op and the site secret — no clock, no randomness,
no file reads (CSV lookup tables are read once when compiled and inlined). Ops that need the
secret (``hash``, ``uid_remap``, per-patient ``date_shift``, ``deidentify``) refuse to compile
without one. This module must not read route files or the store.

Ops: ``set``, ``set_if_absent``, ``delete``, ``copy``, ``regex_replace``, ``map``, ``hash``,
``date_shift``, ``uid_remap``, ``deidentify`` (see :mod:`engine.morph.deid`), ``charset``.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import hmac
import io
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from engine.errors import InvalidInput
from engine.morph import charset
from engine.morph.paths import (
    AttrPath,
    PathError,
    TagPattern,
    find,
    is_private,
    leaf_tag_for_write,
    parent_for_write,
    parse_path,
    parse_pattern,
    text_values,
)
from engine.morph.ps315 import PROFILE_BY_TAG
from engine.morph.safe_regex import RegexError, SafeRegex

PathKey = tuple[str | int, ...]
Report = Callable[[PathKey, str], None]

DEFAULT_UID_PREFIX: Final = "1.2.826.0.1.3680043.8.498."
#: PS3.5 Table 6.2-1 maximum lengths of the text VRs a morph may write
MAX_LENGTH: Final[dict[str, int]] = {
    "AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64, "LT": 10240,
    "PN": 64, "SH": 16, "ST": 1024, "TM": 14, "UC": 0xFFFFFFFE, "UI": 64, "UR": 0xFFFFFFFE,
    "UT": 0xFFFFFFFE,
}
TEXT_VRS: Final = frozenset(MAX_LENGTH)
_INT_VRS: Final = frozenset({"US", "SS", "UL", "SL", "UV", "SV"})
_FLOAT_VRS: Final = frozenset({"FL", "FD"})


class MorphError(InvalidInput):
    """A morph cannot be applied to this dataset (a value invalid for its VR, for instance)."""

    reason = "morph_failed"


class MorphKeys:
    """The site secret and the keys derived from it, one per purpose (never the secret itself)."""

    def __init__(self, secret: bytes | str | None) -> None:
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        self._secret = secret or None

    @property
    def available(self) -> bool:
        return self._secret is not None

    def key(self, purpose: str) -> bytes:
        if self._secret is None:
            raise MorphError("this morph needs routing.secret, which is not set")
        return hmac.new(self._secret, f"radflow/{purpose}".encode(), hashlib.sha256).digest()

    @property
    def fingerprint(self) -> str | None:
        """A short public id of the secret: outbox rows carry it so a sender can tell when the
        secret changed since routing (the bytes would then differ)."""
        if self._secret is None:
            return None
        return self.key("fingerprint")[:8].hex()


@dataclass(frozen=True)
class CompileEnv:
    """What compiling a step may use besides the step itself."""

    base_dir: Path | None = None  # where ``map`` finds its CSV files
    has_secret: bool = True
    uid_prefix: str = DEFAULT_UID_PREFIX


# --- helpers -------------------------------------------------------------------------------
def _text(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.strftime("%Y%m%d%H%M%S")
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    if isinstance(value, bool):
        return "Y" if value else "N"
    return str(value)


def _vr_for(path: AttrPath, given: str | None) -> str | None:
    if given:
        return given
    vr = path.vr()
    if vr is None or " or " in vr:
        return None
    return vr


def _coerce(vr: str, text: str) -> Any:
    if vr in _INT_VRS:
        return int(text)
    if vr in _FLOAT_VRS:
        return float(text)
    return text


def _assign(ds: Dataset, path: AttrPath, vr: str, values: list[str]) -> None:
    """Write ``values`` (text) at ``path`` with ``vr``, switching the dataset to UTF-8 when the
    text does not fit its character set."""
    if vr in charset.CHARSET_VRS:
        charset.ensure_fits(ds, values)
    for text in values:
        limit = MAX_LENGTH.get(vr)
        if limit is not None and vr != "PN" and len(text) > limit:
            raise MorphError(f"{path.text}: {text[:40]!r}... is longer than {vr} allows "
                             f"({limit} characters)")
    parent = parent_for_write(ds, path)
    tag = leaf_tag_for_write(parent, path)
    try:
        converted = [_coerce(vr, v) for v in values]
        value: Any = converted[0] if len(converted) == 1 else converted
        if not converted:
            value = None if vr in _INT_VRS | _FLOAT_VRS else ""
        if tag in parent:
            elem = parent[tag]
            if vr != elem.VR and elem.VR not in ("UN",):
                vr = elem.VR
            parent[tag] = DataElement(tag, vr, value)
        else:
            parent.add_new(tag, vr, value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise MorphError(f"{path.text}: cannot write {values!r} as {vr}: {exc}") from None


def _first(ds: Dataset, path: AttrPath) -> str | None:
    for elem in find(ds, path):
        values = text_values(elem)
        if values:
            return values[0]
    return None


_FIELD = re.compile(r"\{([^{}]+)\}")


@dataclass(frozen=True)
class Template:
    """``"{AccessionNumber}-{Modality}"``: literal text with attribute values filled in
    (the first value, ``""`` when absent). ``{{`` and ``}}`` are literal braces."""

    text: str
    parts: tuple[str | AttrPath, ...]

    @classmethod
    def parse(cls, text: str) -> Template:
        escaped = text.replace("{{", "\x00").replace("}}", "\x01")
        parts: list[str | AttrPath] = []
        pos = 0
        for m in _FIELD.finditer(escaped):
            parts.append(escaped[pos:m.start()])
            parts.append(parse_path(m.group(1).strip()))
            pos = m.end()
        parts.append(escaped[pos:])
        for part in parts:
            if isinstance(part, str) and ("{" in part or "}" in part):
                raise PathError(f"unbalanced brace in template {text!r} (write {{{{ or }}}} "
                                "for a literal brace)")
        return cls(text, tuple(p.replace("\x00", "{").replace("\x01", "}")
                               if isinstance(p, str) else p for p in parts if p != ""))

    def render(self, ds: Dataset) -> str:
        return "".join(p if isinstance(p, str) else (_first(ds, p) or "") for p in self.parts)


class _Fields:
    """Reads one step's mapping, reporting problems with their key path."""

    def __init__(self, raw: Mapping[str, Any], where: PathKey, report: Report,
                 allowed: frozenset[str]) -> None:
        self.raw = raw
        self.where = where
        self.report = report
        self.ok = True
        for key in raw:
            if key not in allowed and key != "op":
                self.problem(key, f"unknown key for op {raw.get('op')!r} (allowed: "
                                  f"{', '.join(sorted(allowed))})")

    def problem(self, key: str | int | None, message: str) -> None:
        self.ok = False
        self.report(self.where if key is None else (*self.where, key), message)

    def path(self, key: str, required: bool = True) -> AttrPath | None:
        value = self.raw.get(key)
        if value is None:
            if required:
                self.problem(None, f"{key!r} is required")
            return None
        try:
            return parse_path(str(value))
        except PathError as exc:
            self.problem(key, str(exc))
            return None

    def paths(self, key: str) -> tuple[AttrPath, ...] | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.problem(key, "expected a list of attribute paths")
            return None
        out = []
        for i, item in enumerate(value):
            try:
                out.append(parse_path(str(item)))
            except PathError as exc:
                self.problem((key, i)[0], f"[{i}]: {exc}")
        return tuple(out)

    def string(self, key: str, default: str | None = None, required: bool = False
               ) -> str | None:
        value = self.raw.get(key, default)
        if value is None:
            if required:
                self.problem(None, f"{key!r} is required")
            return None
        if isinstance(value, (dict, list)):
            self.problem(key, "expected a single value")
            return None
        return _text(value)

    def integer(self, key: str, default: int | None, low: int, high: int) -> int | None:
        value = self.raw.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(key, "expected a whole number")
            return None
        if not low <= value <= high:
            self.problem(key, f"must be between {low} and {high}")
            return None
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw.get(key, default)
        if not isinstance(value, bool):
            self.problem(key, "expected true or false")
            return default
        return value


class MorphStep:
    """Base class of every op."""

    op: ClassVar[str]
    needs_secret: ClassVar[bool] = False

    def apply(self, ds: Dataset, keys: MorphKeys) -> None:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> str:
        return self.op


def _vr_problem(f: _Fields, path: AttrPath | None, given: str | None, key: str = "attr"
                ) -> str | None:
    if path is None:
        return None
    vr = _vr_for(path, given)
    if vr is None:
        f.problem(key, f"{path.text}: give its VR with 'vr:' (private or ambiguous attribute)")
        return None
    if vr == "SQ":
        f.problem(key, f"{path.text} is a sequence; set its items' attributes instead")
        return None
    if vr not in TEXT_VRS | _INT_VRS | _FLOAT_VRS:
        f.problem(key, f"{path.text}: VR {vr} cannot be written by a morph")
        return None
    return vr


# --- set / set_if_absent ------------------------------------------------------------------
@dataclass(frozen=True)
class SetValue(MorphStep):
    """``set`` (always) or ``set_if_absent`` (only when missing or empty): a template per value."""

    attr: AttrPath
    values: tuple[Template, ...]
    vr: str
    only_if_absent: bool = False

    @property
    def op(self) -> str:  # type: ignore[override]
        return "set_if_absent" if self.only_if_absent else "set"

    def apply(self, ds: Dataset, keys: MorphKeys) -> None:
        if self.only_if_absent and any(text_values(e) or (e.VR == "SQ" and e.value)
                                       for e in find(ds, self.attr)):
            return
        _assign(ds, self.attr, self.vr, [t.render(ds) for t in self.values])

    def to_json(self) -> dict[str, Any]:
        value: Any = [t.text for t in self.values]
        return {"op": self.op, "attr": self.attr.text,
                "value": value[0] if len(value) == 1 else value, "vr": self.vr}

    def describe(self) -> str:
        return f"{self.op} {self.attr.text} = {', '.join(t.text for t in self.values)!r}"

    @classmethod
    def compile(cls, raw: Mapping[str, Any], f: _Fields, env: CompileEnv) -> SetValue | None:
        path = f.path("attr")
        if "value" not in raw:
            f.problem(None, "'value' is required (a text, a template like '{PatientID}', or a "
                            "list for several values)")
            return None
        given = f.string("vr")
        vr = _vr_problem(f, path, given)
        value = raw["value"]
        items = value if isinstance(value, list) else [value]
        templates = []
        for item in items:
            if isinstance(item, dict):
                f.problem("value", "expected text, not a mapping")
                continue
            try:
                templates.append(Template.parse("" if item is None else _text(item)))
            except PathError as exc:
                f.problem("value", str(exc))
        if vr is not None and vr in _INT_VRS | _FLOAT_VRS | {"IS", "DS"}:
            for t in templates:
                if all(isinstance(p, str) for p in t.parts):
                    try:
                        int(t.text) if vr in _INT_VRS | {"IS"} else float(t.text)
                    except ValueError:
                        f.problem("value", f"{t.text!r} is not a number ({vr})")
        if not f.ok or path is None or vr is None:
            return None
        return cls(path, tuple(templates), vr, raw.get("op") == "set_if_absent")


# --- delete -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Delete(MorphStep):
    """Remove attributes: exact paths, tag patterns (``(0019,xxxx)``), keyword globs, every
    private element, overlay groups (60xx) and curve groups (50xx). Patterns and flags reach
    into sequences unless ``recursive: false``."""

    op: ClassVar[str] = "delete"
    exact: tuple[AttrPath, ...] = ()
    patterns: tuple[TagPattern, ...] = ()
    private: bool = False
    overlays: bool = False
    curves: bool = False
    recursive: bool = True

    def _doomed(self, tag: int) -> bool:
        group = tag >> 16
        if self.private and is_private(tag):
            return True
        if self.overlays and 0x6000 <= group <= 0x601E and group % 2 == 0:
            return True
        if self.curves and 0x5000 <= group <= 0x501E and group % 2 == 0:
            return True
        return any(p.matches(tag) for p in self.patterns)

    def _sweep(self, ds: Dataset, depth: int) -> None:
        for elem in list(ds):
            if self._doomed(int(elem.tag)):
                del ds[elem.tag]
            elif elem.VR == "SQ" and elem.value and self.recursive:
                for item in elem.value:
                    self._sweep(item, depth + 1)

    def apply(self, ds: Dataset, keys: MorphKeys) -> None:
        for path in self.exact:
            if path.is_top_level and path.leaf.private is None:
                assert path.leaf.tag is not None
                if path.leaf.tag in ds:
                    del ds[path.leaf.tag]
                continue
            parents = [ds] if path.is_top_level else _parents(ds, path)
            for parent in parents:
                from engine.morph.paths import _step_tag

                tag = _step_tag(parent, path.leaf)
                if tag is not None and tag in parent:
                    del parent[tag]
        if self.patterns or self.private or self.overlays or self.curves:
            self._sweep(ds, 0)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": "delete",
                               "attrs": [p.text for p in self.exact] +
                                        [p.text for p in self.patterns]}
        for flag in ("private", "overlays", "curves"):
            if getattr(self, flag):
                out[flag] = True
        if not self.recursive:
            out["recursive"] = False
        return out

    def describe(self) -> str:
        what = [p.text for p in self.exact] + [p.text for p in self.patterns]
        what += [flag for flag in ("private", "overlays", "curves") if getattr(self, flag)]
        return f"delete {', '.join(what)}"

    @classmethod
    def compile(cls, raw: Mapping[str, Any], f: _Fields, env: CompileEnv) -> Delete | None:
        entries = raw.get("attrs", raw.get("attr", []))
        if isinstance(entries, str):
            entries = [entries]
        if not isinstance(entries, list):
            f.problem("attrs", "expected a list of attributes or patterns")
            return None
        exact: list[AttrPath] = []
        patterns: list[TagPattern] = []
        for i, entry in enumerate(entries):
            text = str(entry)
            try:
                if "*" in text or "?" in text or _WILDCARD_TAG.fullmatch(text):
                    patterns.append(parse_pattern(text))
                else:
                    path = parse_path(text)
                    if path.is_top_level and path.leaf.private is None and path.leaf.index is None:
                        assert path.leaf.tag is not None
                        # A bare keyword or tag means that attribute wherever it is.
                        patterns.append(TagPattern(text, 0xFFFFFFFF, path.leaf.tag))
                    else:
                        exact.append(path)
            except PathError as exc:
                f.problem("attrs", f"[{i}]: {exc}")
        private = f.boolean("private", False)
        overlays = f.boolean("overlays", False)
        curves = f.boolean("curves", False)
        recursive = f.boolean("recursive", True)
        if not (exact or patterns or private or overlays or curves) and f.ok:
            f.problem(None, "nothing to delete: give attrs, or private/overlays/curves: true")
        if not f.ok:
            return None
        return cls(tuple(exact), tuple(patterns), private, overlays, curves, recursive)


_WILDCARD_TAG = re.compile(r"\(?(?=[0-9A-Fa-fXx,]*[Xx])[0-9A-Fa-fXx]{4},?[0-9A-Fa-fXx]{4}\)?")


def _parents(ds: Dataset, path: AttrPath) -> list[Dataset]:
    parent_path = AttrPath(path.steps[:-1], path.text)
    out: list[Dataset] = []
    for elem in find(ds, parent_path):
        if elem.VR == "SQ" and elem.value:
            idx = path.steps[-2].index
            items = list(elem.value)
            out.extend(items if idx is None else items[idx:idx + 1])
    return out


# --- copy -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Copy(MorphStep):
    """Copy the values of one attribute into another (nothing happens when the source is absent
    or empty)."""

    op: ClassVar[str] = "copy"
    source: AttrPath
    target: AttrPath
    vr: str

    def apply(self, ds: Dataset, keys: MorphKeys) -> None:
        for elem in find(ds, self.source):
            values = text_values(elem)
            if values:
                _assign(ds, self.target, self.vr, values)
                return

    def to_json(self) -> dict[str, Any]:
        return {"op": "copy", "from": self.source.text, "to": self.target.text, "vr": self.vr}

    def describe(self) -> str:
        return f"copy {self.source.text} -> {self.target.text}"

    @classmethod
    def compile(cls, raw: Mapping[str, Any], f: _Fields, env: CompileEnv) -> Copy | None:
        source = f.path("from")
        target = f.path("to")
        vr = _vr_problem(f, target, f.string("vr"), "to")
        if not f.ok or source is None or target is None or vr is None:
            return None
        return cls(source, target, vr)


# --- regex_replace ------------------------------------------------------------------------
@dataclass(frozen=True)
class RegexReplace(MorphStep):
    """Replace matches of an RE2 pattern in every value of an attribute (``\\1`` refers to
    groups)."""

    op: ClassVar[str] = "regex_replace"
    attr: AttrPath
    pattern: SafeRegex
    replacement: str
    count: int = 0

    def apply(self, ds: Dataset, keys: MorphKeys) -> None:
        for elem in find(ds, self.attr):
            values = text_values(elem)
            if not values:
                continue
            new = [self.pattern.sub(self.replacement, v, self.count) for v in values]
            if new != values:
                _replace_values(ds, elem, new, self.attr)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": "regex_replace", "attr": self.attr.text,
                               "pattern": self.pattern.pattern, "replacement": self.replacement}
        if self.pattern.ignore_case:
            out["ignore_case"] = True
        if self.count:
            out["count"] = self.count
        return out

    def describe(self) -> str:
        return f"regex_replace {self.attr.text} /{self.pattern.pattern}/ -> {self.replacement!r}"

    @classmethod
    def compile(cls, raw: Mapping[str, Any], f: _Fields, env: CompileEnv) -> RegexReplace | None:
        path = f.path("attr")
        pattern_text = f.string("pattern", required=True)
        replacement = f.string("replacement", default="")
        ignore_case = f.boolean("ignore_case", False)
        count = f.integer("count", 0, 0, 1_000_000)
        regex = None
        if pattern_text is not None:
            try:
                regex = SafeRegex(pattern_text, ignore_case)
                regex.check_replacement(replacement or "")
            except RegexError as exc:
                f.problem("pattern", str(exc))
        if not f.ok or path is None or regex is None:
            return None
        return cls(path, regex, replacement or "", count or 0)


def _replace_values(ds: Dataset, elem: DataElement, values: list[str], where: AttrPath) -> None:
    if elem.VR in charset.CHARSET_VRS:
        charset.ensure_fits(ds, values)
    limit = MAX_LENGTH.get(elem.VR)
    for v in values:
        if limit is not None and elem.VR != "PN" and len(v) > limit:
            raise MorphError(f"{where.text}: {v[:40]!r}... is longer than {elem.VR} allows")
    try:
        converted = [_coerce(elem.VR, v) for v in values]
        elem.value = converted[0] if len(converted) == 1 else converted
    except (ValueError, TypeError) as exc:
        raise MorphError(f"{where.text}: cannot write {values!r} as {elem.VR}: {exc}") from None


# --- map ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MapValues(MorphStep):
    """Map each value through a lookup table (inline, or a two-column CSV read when the route
    file is loaded). A value not in the table is kept, or replaced by ``default``."""

    op: ClassVar[str] = "map"
    attr: AttrPath
    table: tuple[tuple[str, str], ...]
    default: str | None = None
    ignore_case: bool = False
    source: str | None = None  # the CSV file the table came from (display only)
    _lookup: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for k, v in self.table:
            self._lookup[k.upper() if self.ignore_case else k] = v

    def apply(self, ds: Dataset, keys: MorphKeys) -> None:
        for elem in find(ds, self.attr):
            values = text_values(elem)
            if not values:
                continue
            new = []
            for v in values:
                hit = self._lookup.get(v.upper() if self.ignore_case else v)
                new.append(hit if hit is not None else (v if self.default is None
                                                        else self.default))
            if new != values:
                _replace_values(ds, elem, new, self.attr)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": "map", "attr": self.attr.text, "table": dict(self.table)}
        if self.default is not None:
            out["default"] = self.default
        if self.ignore_case:
            out["ignore_case"] = True
        if self.source:
            out["source"] = self.source
        return out

    def describe(self) -> str:
        where = f" from {self.source}" if self.source else ""
        return f"map {self.attr.text} through {len(self.table)} entries{where}"

    @classmethod
    def compile(cls, raw: Mapping[str, Any], f: _Fields, env: CompileEnv) -> MapValues | None:
        path = f.path("attr")
        table: dict[str, str] = {}
        source = None
        if "table" in raw and "table_file" in raw:
            f.problem(None, "give either 'table' (inline) or 'table_file' (CSV), not both")
        elif isinstance(raw.get("table"), dict):
            table = {_text(k): _text(v) for k, v in raw["table"].items()}
        elif "table" in raw:
            f.problem("table", "expected a mapping of value: replacement")
        elif "table_file" in raw:
            source = _text(raw["table_file"])
            table = _read_csv(source, env, f)
        else:
            f.problem(None, "'table' or 'table_file' is required")
        default = f.string("default")
        ignore_case = f.boolean("ignore_case", False)
        if not f.ok or path is None:
            return None
        return cls(path, tuple(table.items()), default, ignore_case,
                   source or (_text(raw["source"]) if raw.get("source") else None))


def _read_csv(name: str, env: CompileEnv, f: _Fields) -> dict[str, str]:
    if env.base_dir is None:
        f.problem("table_file", "CSV tables are read when route files load; a frozen step "
                                "carries its table inline")
        return {}
    path = (env.base_dir / name).resolve()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        f.problem("table_file", f"cannot read {path}: {exc.strerror or exc}")
        return {}
    table: dict[str, str] = {}
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or (len(row) == 1 and not row[0].strip()) or row[0].startswith("#"):
            continue
        if len(row) != 2:
            f.problem("table_file", f"{name}:{lineno}: expected two columns (value,replacement)")
            continue
        key, value = row[0].strip(), row[1].strip()
        if lineno == 1 and key.lower() in ("from", "key", "value", "source"):
            continue  # a header row
        if key in table and table[key] != value:
            f.problem("table_file", f"{name}:{lineno}: {key!r} appears twice")
        table[key] = value
    return table


# --- hash ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class HashValue(MorphStep):
    """Replace each value by a keyed hash (HMAC-SHA256 with the site secret): the same input
    always gives the same pseudonym, and nobody without the secret can reverse or recompute
    it. ``namespace`` separates pseudonym spaces (one per research project, say)."""

    op: ClassVar[str] = "hash"
    needs_secret: ClassVar[bool] = True
    attr: AttrPath
    length: int = 16
    prefix: str = ""
    namespace: str = ""

    def pseudonym(self, value: str, keys: MorphKeys) -> str:
        digest = hmac.new(keys.key("hash"), f"{self.namespace}\x00{value}".encode(),
                          hashlib.sha256).hexdigest().upper()
        return self.prefix + digest[: self.length]

    def apply(self, ds: Dataset, keys: MorphKeys) -> None:
        for elem in find(ds, self.attr):
            values = text_values(elem)
            if values:
                _replace_values(ds, elem, [self.pseudonym(v, keys) for v in values], self.attr)

    def to_json(self) -> dict[str, Any]:
        return {"op": "hash", "attr": self.attr.text, "length": self.length,
                "prefix": self.prefix, "namespace": self.namespace}

    def describe(self) -> str:
        return f"hash {self.attr.text} (HMAC, {self.length} hex digits)"

    @classmethod
    def compile(cls, raw: Mapping[str, Any], f: _Fields, env: CompileEnv) -> HashValue | None:
        path = f.path("attr")
        length = f.integer("length", 16, 4, 64)
        prefix = f.string("prefix", default="") or ""
        namespace = f.string("namespace", default="") or ""
        if path is not None:
            vr = path.vr()
            if vr == "UI":
                f.problem("attr", f"{path.text} is a UID: use uid_remap, a hash is not a UID")
            elif vr in ("SQ", "DA", "DT", "TM", "US", "SS", "UL", "SL", "FL", "FD", "IS", "DS"):
                f.problem("attr", f"{path.text} ({vr}) cannot hold a hexadecimal pseudonym")
            elif vr in MAX_LENGTH and length is not None and \
                    len(prefix) + length > MAX_LENGTH[vr] and vr != "PN":
                f.problem("length", f"prefix plus {length} digits exceed the {MAX_LENGTH[vr]} "
                                    f"characters {vr} allows")
        if not env.has_secret:
            f.problem(None, "hash needs routing.secret (set it in the config or "
                            "RADFLOW_ROUTING__SECRET)")
        if not f.ok or path is None or length is None:
            return None
        return cls(path, length, prefix, namespace)


# --- date_shift ---------------------------------------------------------------------------
def patient_key(ds: Dataset) -> str:
    return f"{ds.get('PatientID', '') or ''}^{ds.get('IssuerOfPatientID', '') or ''}"


def patient_offset(ds: Dataset, keys: MorphKeys, max_days: int) -> int:
    """A shift of 1 to max_days days, earlier or later (never 0), the same for every object of
    a patient."""
    digest = hmac.new(keys.key("date-shift"), patient_key(ds).encode("utf-8"),
                      hashlib.sha256).digest()
    n = int.from_bytes(digest[:8], "big") % (2 * max_days)
    return n - max_days if n < max_days else n - max_days + 1


def shift_da(value: str, days: int) -> str | None:
    try:
        day = dt.datetime.strptime(value.strip(), "%Y%m%d").date()
    except ValueError:
        return None
    try:
        return (day + dt.timedelta(days=days)).strftime("%Y%m%d")
    except OverflowError:
        return None


def shift_dt(value: str, days: int) -> str | None:
    value = value.strip()
    if len(value) < 8:
        return None  # a year or year-month alone cannot be shifted by days
    head = shift_da(value[:8], days)
    return None if head is None else head + value[8:]


def shift_element(elem: DataElement, days: int) -> None:
    """Shift every value of a DA or DT element; a value that is not a date is emptied (it could
    not be shifted, and keeping it would leak the real date)."""
    values = text_values(elem)
    if not values:
        return
    fn = shift_da if elem.VR == "DA" else shift_dt
    out = []
    for v in values:
        if "-" in v and elem.VR == "DA":
            out.append("")  # a date range (query syntax) has no place in a stored object
            continue
        shifted = fn(v, days)
        out.append(shifted if shifted is not None else "")
    out = [v for v in out if v]
    elem.value = (out[0] if len(out) == 1 else out) if out else ""


@dataclass(frozen=True)
class DateShift(MorphStep):
    """Shift dates (DA, DT) by a fixed number of days, or by a per-patient offset derived from
    Patient ID and Issuer with the site secret (``max_days``), so intervals within a patient's
    history survive while the real dates do not."""

    op: ClassVar[str] = "date_shift"
    days: int | None = None
    max_days: int | None = None
    attrs: tuple[AttrPath, ...] | None = None  # None: every DA and DT, sequences included

    @property
    def needs_secret(self) -> bool:  # type: ignore[override]
        return self.days is None

    def apply(self, ds: Dataset, keys: MorphKeys) -> None:
        days = self.days if self.days is not None else patient_offset(
            ds, keys, self.max_days or 365)
        if self.attrs is None:
            from engine.morph.paths import walk

            for _parent, elem in list(walk(ds)):
                if elem.VR in ("DA", "DT"):
                    shift_element(elem, days)
            return
        for path in self.attrs:
            for elem in find(ds, path):
                if elem.VR in ("DA", "DT"):
                    shift_element(elem, days)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": "date_shift"}
        if self.days is not None:
            out["days"] = self.days
        else:
            out["max_days"] = self.max_days
        if self.attrs is not None:
            out["attrs"] = [p.text for p in self.attrs]
        return out

    def describe(self) -> str:
        how = f"{self.days:+d} days" if self.days is not None else \
            f"per patient, up to {self.max_days} days"
        return f"date_shift {how}"

    @classmethod
    def compile(cls, raw: Mapping[str, Any], f: _Fields, env: CompileEnv) -> DateShift | None:
        days = f.integer("days", None, -36500, 36500)
        max_days = f.integer("max_days", None, 1, 36500)
        attrs = f.paths("attrs")
        if ("days" in raw) == ("max_days" in raw):
            f.problem(None, "give either 'days' (a fixed shift) or 'max_days' (per patient)")
        if attrs:
            for p in attrs:
                if p.vr() not in ("DA", "DT"):
                    f.problem("attrs", f"{p.text} is not a date (DA or DT)")
        if "max_days" in raw and not env.has_secret:
            f.problem(None, "a per-patient date_shift needs routing.secret")
        if not f.ok:
            return None
        return cls(days, max_days, attrs)


# --- uid_remap ------------------------------------------------------------------------------
def remap_uid(uid: str, keys: MorphKeys, prefix: str) -> str:
    """The replacement of ``uid``: deterministic, keyed by the site secret, under ``prefix``."""
    return str(generate_uid(prefix, entropy_srcs=[keys.key("uid").hex(), "/", uid.strip()]))


def _default_uid_tags() -> frozenset[int]:
    out = set()
    for tag, row in PROFILE_BY_TAG.items():
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "UI" if row.action == "U" else ""
        if vr == "UI" and (row.action in ("U", "D") or row.option("U") == "K"):
            out.add(tag)
    return frozenset(out)


DEFAULT_UID_TAGS: Final = _default_uid_tags()


def remap_element(elem: DataElement, keys: MorphKeys, prefix: str) -> None:
    values = text_values(elem)
    if not values:
        return
    new = [remap_uid(v, keys, prefix) for v in values]
    elem.value = new[0] if len(new) == 1 else new


@dataclass(frozen=True)
class UidRemap(MorphStep):
    """Replace instance UIDs (by default every UID attribute PS3.15 lists, in sequences too) by
    UIDs derived from the original and the site secret with ``generate_uid(prefix,
    entropy_srcs=...)``: references between objects stay consistent, a retry gives the same
    UIDs, and class UIDs (SOP Class, Transfer Syntax) are never touched."""

    op: ClassVar[str] = "uid_remap"
    needs_secret: ClassVar[bool] = True
    prefix: str = DEFAULT_UID_PREFIX
    attrs: tuple[AttrPath, ...] | None = None

    def apply(self, ds: Dataset, keys: MorphKeys) -> None:
        if self.attrs is None:
            from engine.morph.paths import walk

            for _parent, elem in list(walk(ds)):
                if elem.VR == "UI" and int(elem.tag) in DEFAULT_UID_TAGS:
                    remap_element(elem, keys, self.prefix)
            return
        for path in self.attrs:
            for elem in find(ds, path):
                if elem.VR == "UI":
                    remap_element(elem, keys, self.prefix)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": "uid_remap", "prefix": self.prefix}
        if self.attrs is not None:
            out["attrs"] = [p.text for p in self.attrs]
        return out

    def describe(self) -> str:
        return f"uid_remap under {self.prefix}"

    @classmethod
    def compile(cls, raw: Mapping[str, Any], f: _Fields, env: CompileEnv) -> UidRemap | None:
        prefix = f.string("prefix", default=env.uid_prefix) or env.uid_prefix
        if not _valid_prefix(prefix):
            f.problem("prefix", "a UID root of digits and dots, ending with a dot, at most 40 "
                                "characters")
        attrs = f.paths("attrs")
        for p in attrs or ():
            if p.vr() != "UI":
                f.problem("attrs", f"{p.text} is not a UID attribute")
        if not env.has_secret:
            f.problem(None, "uid_remap needs routing.secret (set it in the config or "
                            "RADFLOW_ROUTING__SECRET)")
        if not f.ok:
            return None
        return cls(prefix, attrs)


def _valid_prefix(prefix: str) -> bool:
    return bool(re.fullmatch(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))*\.", prefix)) and len(prefix) <= 40


# --- charset ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Charset(MorphStep):
    """Re-declare the dataset's text in UTF-8 (every text value decoded with the old set)."""

    op: ClassVar[str] = "charset"
    to: str = charset.UTF8_TERM

    def apply(self, ds: Dataset, keys: MorphKeys) -> None:
        if charset.declared_terms(ds) != (self.to,):
            charset.to_utf8(ds)

    def to_json(self) -> dict[str, Any]:
        return {"op": "charset", "to": self.to}

    @classmethod
    def compile(cls, raw: Mapping[str, Any], f: _Fields, env: CompileEnv) -> Charset | None:
        to = f.string("to", default=charset.UTF8_TERM)
        if to not in (charset.UTF8_TERM, "utf-8", "UTF-8"):
            f.problem("to", "only conversion to UTF-8 ('ISO_IR 192') is supported: it holds "
                            "every character of every other set")
        return cls(charset.UTF8_TERM) if f.ok else None


# --- registry -----------------------------------------------------------------------------
_ALLOWED: Final[dict[str, frozenset[str]]] = {
    "set": frozenset({"attr", "value", "vr"}),
    "set_if_absent": frozenset({"attr", "value", "vr"}),
    "delete": frozenset({"attrs", "attr", "private", "overlays", "curves", "recursive"}),
    "copy": frozenset({"from", "to", "vr"}),
    "regex_replace": frozenset({"attr", "pattern", "replacement", "ignore_case", "count"}),
    "map": frozenset({"attr", "table", "table_file", "default", "ignore_case", "source"}),
    "hash": frozenset({"attr", "length", "prefix", "namespace"}),
    "date_shift": frozenset({"days", "max_days", "attrs"}),
    "uid_remap": frozenset({"prefix", "attrs"}),
    "charset": frozenset({"to"}),
}


def _compilers() -> dict[str, Callable[[Mapping[str, Any], _Fields, CompileEnv],
                                       MorphStep | None]]:
    from engine.morph.deid import DEID_KEYS, Deidentify

    _ALLOWED.setdefault("deidentify", DEID_KEYS)
    return {
        "set": SetValue.compile, "set_if_absent": SetValue.compile, "delete": Delete.compile,
        "copy": Copy.compile, "regex_replace": RegexReplace.compile, "map": MapValues.compile,
        "hash": HashValue.compile, "date_shift": DateShift.compile,
        "uid_remap": UidRemap.compile, "charset": Charset.compile,
        "deidentify": Deidentify.compile,
    }


OP_NAMES: Final = ("set", "set_if_absent", "delete", "copy", "regex_replace", "map", "hash",
                   "date_shift", "uid_remap", "deidentify", "charset")


def compile_step(raw: Any, where: PathKey, report: Report, env: CompileEnv) -> MorphStep | None:
    """One op from its mapping; problems go to ``report`` with their key path."""
    if not isinstance(raw, Mapping):
        report(where, "a morph step is a mapping with an 'op' key")
        return None
    op = raw.get("op")
    compilers = _compilers()
    if op not in compilers:
        report((*where, "op") if "op" in raw else where,
               f"unknown op {op!r} (one of: {', '.join(OP_NAMES)})" if op is not None
               else "'op' is required")
        return None
    f = _Fields(raw, where, report, _ALLOWED[str(op)])
    step = compilers[str(op)](raw, f, env)
    return step if f.ok else None


def steps_from_json(items: list[dict[str, Any]], uid_prefix: str = DEFAULT_UID_PREFIX
                    ) -> tuple[MorphStep, ...]:
    """Frozen steps (an outbox payload's ``morph``) back into ops; :class:`MorphError` when a
    payload does not describe valid steps."""
    problems: list[str] = []

    def report(where: PathKey, message: str) -> None:
        keys = "".join(f"[{w}]" if isinstance(w, int) else f".{w}" for w in where)
        problems.append(f"morph{keys}: {message}")

    env = CompileEnv(base_dir=None, has_secret=True, uid_prefix=uid_prefix)
    steps = [compile_step(item, (i,), report, env) for i, item in enumerate(items)]
    if problems:
        raise MorphError("; ".join(problems))
    return tuple(s for s in steps if s is not None)
