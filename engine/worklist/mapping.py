"""The declarative HL7 v2 → worklist mapping: the YAML file, its validation, and ``plan``.

Owns the schema of ``routes/worklist/hl7-mwl.yaml`` (each DICOM target takes an ordered list of
HL7 sources, first non-empty wins, with optional transforms, lookup tables and ``required``),
loading it safely with every problem reported at once (file, line, key path, like the settings),
and :meth:`WorklistMapping.plan`, a pure function from a parsed message to the
:class:`~engine.worklist.model.WorklistChange` it asks for: ORM^O01 / OMI^O23 with ORC-1 NW, XO,
CA, DC, SC; ADT^A08 and ADT^A40. It raises :class:`UnsupportedMessage` for what radflow does not
take and :class:`Hl7ContentError` naming the field for content it cannot use. It must not read
the store or the clock: whether an order exists is the service's question, not the mapping's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR
from pydicom.uid import generate_uid
from pydicom.valuerep import validate_value

from engine.dicom.vr import is_valid_uid
from engine.hl7.ack import Hl7ErrorCode
from engine.hl7.message import Hl7Message, Hl7Segment, unescape
from engine.records.worklist import CodeItem, WorklistItem, WorklistStatus
from engine.settings import (
    PathKey,
    SettingsError,
    SettingsProblem,
    _compose_with_lines,
    format_path,
)
from engine.worklist import charset
from engine.worklist.model import (
    DEMOGRAPHIC_KEYWORDS,
    KEYWORDS,
    Demographics,
    OrderChange,
    OrderChanges,
    OrderControl,
    PatientMerge,
    PatientUpdate,
    WorklistChange,
)
from engine.worklist.types import Hl7ContentError, UnsupportedMessage

DEFAULT_MAPPING_PATH: Final = Path("routes/worklist/hl7-mwl.yaml")

# --- the file's schema ---------------------------------------------------------------------
_PATH_RE: Final = re.compile(
    r"([A-Z][A-Z0-9]{2})(?:\[(\d+)\])?-(\d+)(?:\[(\d+)\])?(?:\.(\d+)(?:\.(\d+))?)?")
#: transforms that read a whole field (every repetition and component), not one leaf value
NAME_TRANSFORMS: Final = frozenset({"person_name", "xcn_name", "cnn_name"})
VALUE_TRANSFORMS: Final = frozenset({"date", "time", "datetime", "upper", "trim", "uid"})
_CODE_TARGETS: Final = frozenset({"RequestedProcedureCodeSequence",
                                  "ScheduledProtocolCodeSequence"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SourceSpec(_Strict):
    """One place to take a value from: an HL7 path, another target's value, or a constant."""

    path: str | None = None
    field: str | None = None  # another target's DICOM keyword, resolved first
    value: str | None = None
    table: str | None = None  # looked up after the transforms; a miss gives ""


Source = str | SourceSpec


class CodeSpec(_Strict):
    value: list[Source] = Field(default_factory=list)
    scheme: list[Source] = Field(default_factory=list)
    meaning: list[Source] = Field(default_factory=list)


class TargetSpec(_Strict):
    """How one DICOM attribute is filled."""

    sources: list[Source] = Field(default_factory=list, alias="from")
    #: one name or a list, applied in order: date, time, datetime, upper, trim, uid,
    #: person_name, xcn_name, cnn_name, or the name of a table
    transform: str | list[str] | None = None
    required: bool = False
    #: StudyInstanceUID only: HL7 paths whose values seed a deterministic UID when ``from`` is
    #: empty (generate_uid with these as entropy sources)
    generate: list[str] | None = None
    #: code sequences only: where value, scheme and meaning come from
    code: CodeSpec | None = None


class PriorPatient(_Strict):
    """ADT^A40: where the merged (prior) patient's identifier is."""

    patient_id: list[str] = Field(default_factory=lambda: ["MRG-1.1"])
    issuer: list[str] = Field(default_factory=lambda: ["MRG-1.4"])


def _default_order_status() -> dict[str, WorklistStatus]:
    return {"SC": WorklistStatus.SCHEDULED, "IP": WorklistStatus.IN_PROGRESS,
            "CM": WorklistStatus.COMPLETED, "DC": WorklistStatus.DISCONTINUED,
            "CA": WorklistStatus.CANCELLED}


class MappingFile(_Strict):
    """The whole mapping file."""

    version: Literal[1] = 1
    #: root of generated Study Instance UIDs; give your organisation's root here
    uid_prefix: str = "1.2.826.0.1.3680043.8.498."
    #: ORC-5 (order status, HL7 table 0038) of an SC message → worklist status
    order_status: dict[str, WorklistStatus] = Field(default_factory=_default_order_status)
    tables: dict[str, dict[str, str]] = Field(default_factory=dict)
    fields: dict[str, TargetSpec] = Field(default_factory=dict)
    prior_patient: PriorPatient = Field(default_factory=PriorPatient)


# --- compiled form -------------------------------------------------------------------------
Resolved = dict[str, tuple[str, str]]  # keyword → (value, the path it came from)


@dataclass(frozen=True, slots=True)
class _Step:
    path: str | None
    ref: str | None
    constant: str | None
    transforms: tuple[str, ...]
    table: Mapping[str, str] | None


@dataclass(frozen=True, slots=True)
class _Target:
    keyword: str
    steps: tuple[_Step, ...]
    required: bool
    generate: tuple[str, ...]
    code: tuple[tuple[_Step, ...], tuple[_Step, ...], tuple[_Step, ...]] | None

    @property
    def first_path(self) -> str:
        for step in self.steps:
            if step.path:
                return step.path
        return ""


class WorklistMapping:
    """A validated mapping, ready to :meth:`plan` messages. Immutable; share it freely."""

    def __init__(self, spec: MappingFile, source: str = "<mapping>") -> None:
        self.spec = spec
        self.source = source
        tables = spec.tables
        self._uid_prefix = spec.uid_prefix if spec.uid_prefix.endswith(".") \
            else spec.uid_prefix + "."
        targets: list[_Target] = []
        for keyword, target in spec.fields.items():
            chain = _as_list(target.transform)
            code = None
            if target.code is not None:
                code = (self._steps(target.code.value, (), tables),
                        self._steps(target.code.scheme, (), tables),
                        self._steps(target.code.meaning, (), tables))
            targets.append(_Target(keyword, self._steps(target.sources, chain, tables),
                                   target.required, tuple(target.generate or ()), code))
        # Targets that read another target's value go last (one level deep, checked at load).
        targets.sort(key=lambda t: any(s.ref for s in t.steps))
        self._targets = tuple(targets)
        self._by_keyword = {t.keyword: t for t in targets}

    def with_tables(self, overrides: Mapping[str, Mapping[str, str]]) -> WorklistMapping:
        """A copy whose tables named in ``overrides`` are replaced (site settings win)."""
        if not overrides:
            return self
        tables = {**self.spec.tables, **{k: dict(v) for k, v in overrides.items()}}
        return WorklistMapping(self.spec.model_copy(update={"tables": tables}), self.source)

    @staticmethod
    def _steps(sources: list[Source], chain: tuple[str, ...],
               tables: dict[str, dict[str, str]]) -> tuple[_Step, ...]:
        steps = []
        for src in sources:
            spec = SourceSpec(path=src) if isinstance(src, str) else src
            steps.append(_Step(spec.path, spec.field, spec.value, chain,
                               tables[spec.table] if spec.table else None))
        return tuple(steps)

    # --- planning ------------------------------------------------------------------------
    def plan(self, msg: Hl7Message) -> WorklistChange:
        """The change ``msg`` asks for; pure (no store, no clock).

        Raises :class:`UnsupportedMessage` (→ AR) or :class:`Hl7ContentError` (→ AE).
        """
        kind = (msg.message_type, msg.trigger_event)
        if kind in (("ORM", "O01"), ("OMI", "O23")):
            return self._plan_orders(msg)
        if kind == ("ADT", "A08"):
            return PatientUpdate(self._demographics(_Scope(msg, msg)))
        if kind == ("ADT", "A40"):
            return self._plan_merge(msg)
        if msg.message_type in ("ORM", "OMI", "ADT"):
            raise UnsupportedMessage(
                f"event {msg.message_type}^{msg.trigger_event} is not handled", "MSH-9.2",
                Hl7ErrorCode.UNSUPPORTED_EVENT_CODE)
        raise UnsupportedMessage(f"message type {msg.message_type or '(empty)'} is not handled",
                                 "MSH-9.1", Hl7ErrorCode.UNSUPPORTED_MESSAGE_TYPE)

    def _plan_orders(self, msg: Hl7Message) -> OrderChanges:
        groups = _order_groups(msg)
        if not groups:
            raise Hl7ContentError("ORC", Hl7ErrorCode.SEGMENT_SEQUENCE_ERROR,
                                  "an order message needs at least one ORC segment")
        return OrderChanges(tuple(self._plan_order(msg, scope, n)
                                  for n, scope in enumerate(groups, start=1)))

    def _plan_order(self, msg: Hl7Message, scope: _Scope, group: int) -> OrderChange:
        control_text = scope.get("ORC-1")
        if not control_text:
            raise scope.error("ORC-1", Hl7ErrorCode.REQUIRED_FIELD_MISSING,
                              "order control (ORC-1) is empty")
        try:
            control = OrderControl(control_text)
        except ValueError:
            raise scope.error("ORC-1", Hl7ErrorCode.TABLE_VALUE_NOT_FOUND,
                              f"order control {control_text!r} is not one of NW, XO, CA, DC, "
                              "SC") from None
        resolved: Resolved = {}
        for keyword in ("PlacerOrderNumberImagingServiceRequest",
                        "FillerOrderNumberImagingServiceRequest"):
            target = self._by_keyword.get(keyword)
            if target is not None:
                self._resolve(target, scope, resolved)
        placer = resolved.get("PlacerOrderNumberImagingServiceRequest", ("", ""))[0]
        filler = resolved.get("FillerOrderNumberImagingServiceRequest", ("", ""))[0]
        placer_target = self._by_keyword.get("PlacerOrderNumberImagingServiceRequest")
        order_path = (placer_target.first_path if placer_target else "") or "ORC-2"
        if not placer and not filler:
            raise scope.error(order_path, Hl7ErrorCode.REQUIRED_FIELD_MISSING,
                              "the order has neither a placer (ORC-2) nor a filler (ORC-3) "
                              "order number")
        if control in (OrderControl.NEW, OrderControl.CHANGE):
            item, generated = self._item(msg, scope)
            return OrderChange(control, placer, filler, item=item, study_uid_generated=generated,
                               order_path=scope.message_path(order_path), group=group,
                               source=msg.sending_facility)
        if control is OrderControl.STATUS_CHANGE:
            status_text = scope.get("ORC-5")
            if not status_text:
                raise scope.error("ORC-5", Hl7ErrorCode.REQUIRED_FIELD_MISSING,
                                  "a status change (SC) needs the order status in ORC-5")
            new_status = self.spec.order_status.get(status_text)
            if new_status is None:
                raise scope.error("ORC-5", Hl7ErrorCode.TABLE_VALUE_NOT_FOUND,
                                  f"order status {status_text!r} is not mapped "
                                  f"({', '.join(sorted(self.spec.order_status))})")
        elif control is OrderControl.CANCEL:
            new_status = WorklistStatus.CANCELLED
        else:
            new_status = WorklistStatus.DISCONTINUED
        return OrderChange(control, placer, filler, new_status=new_status,
                           order_path=scope.message_path(order_path), group=group,
                           source=msg.sending_facility)

    def _item(self, msg: Hl7Message, scope: _Scope) -> tuple[WorklistItem, bool]:
        resolved: Resolved = {}
        codes: dict[str, tuple[CodeItem, ...]] = {}
        generated = False
        for target in self._targets:
            if target.code is not None:
                codes[target.keyword] = self._code(target, scope)
                continue
            self._resolve(target, scope, resolved)
            if target.keyword == "StudyInstanceUID" and not resolved.get(target.keyword, ("",))[0] \
                    and target.generate:
                resolved[target.keyword] = (self._generate_uid(target, scope), "")
                generated = True
            self._check(target, resolved, scope)
        values: dict[str, Any] = {KEYWORDS[k]: v for k, (v, _) in resolved.items()}
        values.update({KEYWORDS[k]: v for k, v in codes.items()})
        texts = [v for v in values.values() if isinstance(v, str)]
        texts += [c.meaning for seq in codes.values() for c in seq]
        values["specific_character_set"] = charset.choose(msg.charset, texts)
        values["source"] = msg.sending_facility
        values["source_application"] = msg.sending_application
        values["source_charset"] = msg.charset
        values.setdefault("patient_id", "")
        return WorklistItem(**values), generated

    def _demographics(self, scope: _Scope) -> Demographics:
        resolved: Resolved = {}
        for keyword in DEMOGRAPHIC_KEYWORDS:
            target = self._by_keyword.get(keyword)
            if target is None:
                continue
            self._resolve(target, scope, resolved)
            self._check(target, resolved, scope)
        patient_id = resolved.get("PatientID", ("", ""))[0]
        if not patient_id:
            target = self._by_keyword.get("PatientID")
            raise scope.error((target.first_path if target else "") or "PID-3",
                              Hl7ErrorCode.REQUIRED_FIELD_MISSING, "PatientID is empty")
        present = frozenset(KEYWORDS[k] for k, (v, path) in resolved.items() if v or path)
        values = {KEYWORDS[k]: v for k, (v, _) in resolved.items()}
        return Demographics(
            patient_id=patient_id,
            issuer_of_patient_id=values.get("issuer_of_patient_id", ""),
            patient_name=values.get("patient_name", ""),
            patient_birth_date=values.get("patient_birth_date", ""),
            patient_sex=values.get("patient_sex", ""),
            specific_character_set=charset.choose(scope.msg.charset, list(values.values())),
            present=present)

    def _plan_merge(self, msg: Hl7Message) -> PatientMerge:
        scope = _Scope(msg, msg)
        if msg.segment("MRG") is None:
            raise Hl7ContentError("MRG", Hl7ErrorCode.SEGMENT_SEQUENCE_ERROR,
                                  "ADT^A40 needs an MRG segment")
        prior = _first(scope, self.spec.prior_patient.patient_id)
        if not prior:
            raise Hl7ContentError(self.spec.prior_patient.patient_id[0],
                                  Hl7ErrorCode.REQUIRED_FIELD_MISSING,
                                  "the prior patient identifier (MRG-1) is empty")
        issuer = _first(scope, self.spec.prior_patient.issuer)
        return PatientMerge(prior, issuer, self._demographics(scope))

    # --- resolving one target ----------------------------------------------------------
    def _resolve(self, target: _Target, scope: _Scope, resolved: Resolved) -> None:
        for step in target.steps:
            if step.constant is not None:
                raw, path = step.constant, ""
            elif step.ref is not None:
                raw, path = resolved.get(step.ref, ("", ""))
            elif step.path is not None:
                path = step.path
                raw = "" if any(t in NAME_TRANSFORMS for t in step.transforms) \
                    else scope.get(path)
            else:
                continue
            value = self._transform(target.keyword, step, raw, path, scope)
            if value:
                resolved[target.keyword] = (value, path)
                return
        resolved.setdefault(target.keyword, ("", ""))

    def _transform(self, keyword: str, step: _Step, raw: str, path: str,
                   scope: _Scope) -> str:
        value = raw
        for name in step.transforms:
            if name in NAME_TRANSFORMS:
                value = _NAME_READERS[name](scope, path) if path else value
            elif name in VALUE_TRANSFORMS:
                if not value or value == '""':
                    return ""
                try:
                    value = _VALUE_TRANSFORMS[name](value)
                except ValueError as exc:
                    raise scope.error(path, Hl7ErrorCode.DATA_TYPE_ERROR,
                                      f"{keyword}: {exc}") from None
            else:
                value = self.spec.tables[name].get(value, "")
        if value == '""':
            # HL7's explicit null: "no value" for a worklist, nothing to delete yet.
            return ""
        if step.table is not None:
            value = step.table.get(value, "")
        return value.strip()

    def _check(self, target: _Target, resolved: Resolved, scope: _Scope) -> None:
        value, path = resolved.get(target.keyword, ("", ""))
        if not value:
            if target.required:
                where = target.first_path
                raise scope.error(where, Hl7ErrorCode.REQUIRED_FIELD_MISSING,
                                  f"{target.keyword} is required but "
                                  f"{where or 'its source'} is empty")
            return
        vr = _VR.get(target.keyword)
        if vr is None:
            return
        try:
            validate_value(vr, value, pydicom_config.RAISE)
        except ValueError as exc:
            raise scope.error(path or target.first_path, Hl7ErrorCode.DATA_TYPE_ERROR,
                              f"{target.keyword}: {exc}") from None

    def _code(self, target: _Target, scope: _Scope) -> tuple[CodeItem, ...]:
        assert target.code is not None
        parts: list[str] = []
        for steps in target.code:
            probe = _Target(target.keyword, steps, False, (), None)
            found: Resolved = {}
            self._resolve(probe, scope, found)
            parts.append(found[target.keyword][0])
        value, scheme, meaning = parts
        if not value:
            return ()
        return (CodeItem(value[:16], scheme[:16], meaning[:64]),)

    def _generate_uid(self, target: _Target, scope: _Scope) -> str:
        # The same order always gets the same UID (a resent NW or a rebuilt database agrees
        # with what the modality already used); path names keep "A"+"" apart from ""+"A".
        entropy = [f"{p}={scope.get(p)}" for p in target.generate]
        return str(generate_uid(prefix=self._uid_prefix, entropy_srcs=entropy))


# --- scopes: one ORC group plus the message-level segments ------------------------------------
class _Scope:
    """Path lookups for one order group, with error paths translated back to the message."""

    def __init__(self, msg: Hl7Message, view: Hl7Message) -> None:
        self.msg = msg
        self.view = view

    def get(self, path: str) -> str:
        return self.view.get(path)

    def segment(self, path: str) -> tuple[Hl7Segment | None, int, int]:
        m = _PATH_RE.fullmatch(path)
        if m is None:
            return None, 0, 0
        seg = self.view.segment(m.group(1), int(m.group(2) or 1))
        return seg, int(m.group(3)), int(m.group(4) or 1)

    def message_path(self, path: str) -> str:
        """``path`` of the view as a path of the whole message (``OBR-4`` → ``OBR[2]-4``)."""
        m = _PATH_RE.fullmatch(path)
        if m is None or self.view is self.msg:
            return path
        seg = self.view.segment(m.group(1), int(m.group(2) or 1))
        if seg is None:
            return path
        same = self.msg.segments(m.group(1))
        occurrence = next((i for i, s in enumerate(same, start=1) if s is seg), 1)
        rest = path[m.end(2) + 1 if m.group(2) else m.end(1):]
        return f"{m.group(1)}[{occurrence}]{rest}" if occurrence > 1 else f"{m.group(1)}{rest}"

    def error(self, path: str, code: Hl7ErrorCode, text: str) -> Hl7ContentError:
        return Hl7ContentError(self.message_path(path), code, text)


def _order_groups(msg: Hl7Message) -> list[_Scope]:
    """One scope per ORC: the segments before the first ORC plus that ORC's own segments."""
    segments = msg.segments()
    head: list[Hl7Segment] = []
    groups: list[list[Hl7Segment]] = []
    for seg in segments:
        if seg.name == "ORC":
            groups.append([seg])
        elif groups:
            groups[-1].append(seg)
        else:
            head.append(seg)
    if len(groups) == 1:
        return [_Scope(msg, msg)]
    return [_Scope(msg, Hl7Message(head + g, msg.encoding_chars, msg.charset, msg.codec))
            for g in groups]


def _first(scope: _Scope, paths: list[str]) -> str:
    for path in paths:
        value = scope.get(path)
        if value and value != '""':
            return value
    return ""


# --- value transforms ----------------------------------------------------------------------
_DTM: Final = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?"
                         r"([+-]\d{4})?")


def _parse_dtm(text: str) -> tuple[str, str]:
    m = _DTM.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not an HL7 date/time (YYYYMMDD[HHMM[SS]])")
    year, month, day, hour, minute, second, frac, _tz = m.groups()
    if month is None or day is None:
        raise ValueError(f"{text!r} has no day (YYYYMMDD needed)")
    try:
        date(int(year), int(month), int(day))
    except ValueError:
        raise ValueError(f"{text!r} is not a calendar date") from None
    if hour is None:
        return f"{year}{month}{day}", ""
    if int(hour) > 23 or int(minute or 0) > 59 or int(second or 0) > 59:
        raise ValueError(f"{text!r} is not a valid time of day")
    tm = f"{hour}{minute or '00'}{second or '00'}{frac or ''}"
    return f"{year}{month}{day}", tm


def _to_date(text: str) -> str:
    return _parse_dtm(text)[0]


def _to_time(text: str) -> str:
    return _parse_dtm(text)[1]


def _to_datetime(text: str) -> str:
    da, tm = _parse_dtm(text)
    return da + tm


def _to_uid(text: str) -> str:
    if not is_valid_uid(text):
        raise ValueError(f"{text!r} is not a valid DICOM UID")
    return text


_VALUE_TRANSFORMS: Final[dict[str, Callable[[str], str]]] = {
    "date": _to_date, "time": _to_time, "datetime": _to_datetime,
    "upper": str.upper, "trim": str.strip, "uid": _to_uid,
}


# --- person names --------------------------------------------------------------------------
def _clean(component: str) -> str:
    # PN's own delimiters must not appear inside a component; HL7 may have escaped them.
    return component.replace("^", " ").replace("=", " ").replace("\\", " ").strip()


def _pn(family: str, given: str, middle: str, prefix: str, suffix: str) -> str:
    return "^".join(_clean(p) for p in (family, given, middle, prefix, suffix)).rstrip("^")


def _split(raw: str, sep: str, n: int) -> list[str]:
    parts = raw.split(sep)
    return parts + [""] * (n - len(parts))


def _leaf(scope: _Scope, raw: str, sub_sep: str | None = None) -> str:
    enc = scope.msg.encoding_chars
    if sub_sep is not None and sub_sep in raw:
        raw = raw.split(sub_sep)[0]
    return unescape(raw, enc, scope.msg.codec)


def _xpn_group(scope: _Scope, raw: str) -> str:
    enc = scope.msg.encoding_chars
    c = _split(raw, enc.component, 8)
    # XPN: family (FN: surname&prefix...) ^ given ^ middle ^ suffix ^ prefix; PN swaps the last
    # two (family^given^middle^prefix^suffix).
    return _pn(_leaf(scope, c[0], enc.subcomponent), _leaf(scope, c[1]), _leaf(scope, c[2]),
               _leaf(scope, c[4]), _leaf(scope, c[3]))


def _join_groups(groups: list[str]) -> str:
    return "=".join(groups).rstrip("=")


def _person_name(scope: _Scope, path: str) -> str:
    """PID-5 (XPN, repeating) → one DICOM PN with component groups.

    Two conventions give several groups: one repetition holding ``=``-separated groups (how
    Japanese senders write ``ヤマダ^タロウ=山田^太郎``), or repetitions whose XPN-8 name
    representation code says A (alphabetic), I (ideographic) or P (phonetic). Otherwise the
    first legal name (XPN-7 ``L``), else the first repetition, is the patient's name.
    """
    seg, field_no, rep = scope.segment(path)
    if seg is None:
        return ""
    enc = scope.msg.encoding_chars
    reps = seg.repetitions(field_no)
    if not reps:
        return ""
    if "[" in path:
        reps = reps[rep - 1:rep]
    by_repr: dict[str, str] = {}
    legal: str | None = None
    for raw in reps:
        if "=" in raw:
            return _join_groups([_xpn_group(scope, g) for g in raw.split("=")][:3])
        comps = _split(raw, enc.component, 8)
        code = comps[7].strip().upper()
        if code in ("A", "I", "P") and code not in by_repr:
            by_repr[code] = _xpn_group(scope, raw)
        if legal is None and comps[6].strip().upper() == "L":
            legal = raw
    if len(by_repr) > 1 or (by_repr and "A" not in by_repr):
        return _join_groups([by_repr.get("A", ""), by_repr.get("I", ""), by_repr.get("P", "")])
    return _xpn_group(scope, legal if legal is not None else reps[0])


def _xcn_name(scope: _Scope, path: str) -> str:
    """ORC-12 / OBR-16 (XCN: id^family^given^middle^suffix^prefix) → PN."""
    seg, field_no, rep = scope.segment(path)
    if seg is None:
        return ""
    enc = scope.msg.encoding_chars
    reps = seg.repetitions(field_no)
    if len(reps) < rep:
        return ""
    c = _split(reps[rep - 1], enc.component, 7)
    return _pn(_leaf(scope, c[1], enc.subcomponent), _leaf(scope, c[2]), _leaf(scope, c[3]),
               _leaf(scope, c[5]), _leaf(scope, c[4]))


def _cnn_name(scope: _Scope, path: str) -> str:
    """OBR-34 (NDL whose first component is a CNN in subcomponents: id&family&given...) → PN."""
    seg, field_no, rep = scope.segment(path)
    if seg is None:
        return ""
    enc = scope.msg.encoding_chars
    reps = seg.repetitions(field_no)
    if len(reps) < rep:
        return ""
    first = reps[rep - 1].split(enc.component)[0]
    s = _split(first, enc.subcomponent, 7)
    return _pn(*(_leaf(scope, s[i]) for i in (1, 2, 3, 5, 4)))


_NAME_READERS: Final[dict[str, Callable[[_Scope, str], str]]] = {
    "person_name": _person_name, "xcn_name": _xcn_name, "cnn_name": _cnn_name,
}

# VRs checked before a value is accepted, so a C-FIND answer never carries what pydicom would
# refuse to encode (too long, bad date).
_VR: Final[dict[str, str]] = {k: str(dictionary_VR(k)) for k in KEYWORDS if k not in _CODE_TARGETS}


def check_item(item: WorklistItem) -> list[str]:
    """What is wrong with an item given directly (HTTP API, CLI), as ``keyword: problem``."""
    problems = []
    if not item.patient_id:
        problems.append("PatientID: required")
    for keyword, vr in _VR.items():
        value = getattr(item, KEYWORDS[keyword])
        if not value:
            continue
        try:
            validate_value(vr, value, pydicom_config.RAISE)
        except ValueError as exc:
            problems.append(f"{keyword}: {exc}")
    for keyword in ("PatientBirthDate", "ScheduledProcedureStepStartDate"):
        value = getattr(item, KEYWORDS[keyword])
        if value:
            try:
                _parse_dtm(value)
            except ValueError as exc:
                problems.append(f"{keyword}: {exc}")
    if not charset.is_known_dicom_charset(item.specific_character_set):
        problems.append("SpecificCharacterSet: unknown defined term")
    return problems


def _as_list(value: str | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


# --- loading -------------------------------------------------------------------------------
def load_mapping(path: Path | str | None = None) -> WorklistMapping:
    """Read and validate a mapping file; raise :class:`SettingsError` listing every problem."""
    file = Path(path) if path is not None else DEFAULT_MAPPING_PATH
    source = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError([SettingsProblem(source, None, "", f"cannot read: {exc}")]) from exc
    return parse_mapping(text, source)


def parse_mapping(text: str, source: str = "<mapping>") -> WorklistMapping:
    """Validate mapping YAML ``text`` (``source`` names it in errors)."""
    try:
        data, lines = _compose_with_lines(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise SettingsError(
            [SettingsProblem(source, line, "", f"invalid YAML: {exc.problem}")]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingsError([SettingsProblem(source, 1, "", "the top level must be a mapping")])

    def problem(loc: PathKey, message: str) -> SettingsProblem:
        line = None
        for cut in range(len(loc), -1, -1):
            if loc[:cut] in lines:
                line = lines[loc[:cut]]
                break
        return SettingsProblem(source, line, format_path(loc), message)

    try:
        spec = MappingFile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc: PathKey = tuple(err["loc"])
            message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(problem(loc, message))
        raise SettingsError(problems) from exc
    problems = [problem(loc, msg) for loc, msg in _cross_check(spec)]
    if problems:
        raise SettingsError(problems)
    return WorklistMapping(spec, source)


def _cross_check(spec: MappingFile) -> list[tuple[PathKey, str]]:
    """Problems pydantic cannot see: keywords, paths, transform and table names, references."""
    out: list[tuple[PathKey, str]] = []
    if not is_valid_uid(spec.uid_prefix.rstrip(".")) or len(spec.uid_prefix) > 40:
        out.append((("uid_prefix",), "must be a UID root of at most 40 characters"))

    def check_sources(base: PathKey, sources: list[Source], chain: tuple[str, ...],
                      keyword: str) -> None:
        for i, src in enumerate(sources):
            spec_ = SourceSpec(path=src) if isinstance(src, str) else src
            where: PathKey = (*base, i)
            given = [x for x in (spec_.path, spec_.field, spec_.value) if x is not None]
            if len(given) != 1:
                out.append((where, "give exactly one of path, field, value"))
            if spec_.path is not None and not _PATH_RE.fullmatch(spec_.path):
                out.append((where, f"bad HL7 path {spec_.path!r} (e.g. PID-3.1, OBR[2]-4)"))
            if spec_.path is not None and any(t in NAME_TRANSFORMS for t in chain):
                m = _PATH_RE.fullmatch(spec_.path)
                if m is not None and m.group(5) is not None:
                    out.append((where, "a name transform reads a whole field: drop the "
                                       "component (PID-5, not PID-5.1)"))
            if spec_.field is not None:
                ref = spec.fields.get(spec_.field)
                if ref is None:
                    out.append((where, f"field {spec_.field!r} is not mapped here"))
                elif spec_.field == keyword or any(
                        isinstance(s, SourceSpec) and s.field for s in ref.sources):
                    out.append((where, f"field {spec_.field!r} must be a plain target "
                                       "(one level of reference)"))
            if spec_.table is not None and spec_.table not in spec.tables:
                out.append((where, f"unknown table {spec_.table!r}"))

    for keyword, target in spec.fields.items():
        base: PathKey = ("fields", keyword)
        if keyword not in KEYWORDS:
            out.append((base, f"{keyword!r} is not a worklist attribute "
                              f"({', '.join(sorted(KEYWORDS))})"))
            continue
        chain = _as_list(target.transform)
        for name in chain:
            if name not in NAME_TRANSFORMS | VALUE_TRANSFORMS and name not in spec.tables:
                out.append(((*base, "transform"),
                            f"unknown transform or table {name!r}"))
        check_sources((*base, "from"), target.sources, chain, keyword)
        if keyword in _CODE_TARGETS:
            if target.code is None:
                out.append((base, "a code sequence is mapped with code: {value, scheme, "
                                  "meaning}"))
            else:
                for part in ("value", "scheme", "meaning"):
                    check_sources((*base, "code", part), getattr(target.code, part), (),
                                  keyword)
        elif target.code is not None:
            out.append(((*base, "code"), "only code sequences take code:"))
        if target.generate is not None:
            if keyword != "StudyInstanceUID":
                out.append(((*base, "generate"), "only StudyInstanceUID can be generated"))
            for i, p in enumerate(target.generate):
                if not _PATH_RE.fullmatch(p):
                    out.append(((*base, "generate", i), f"bad HL7 path {p!r}"))
    for part in ("patient_id", "issuer"):
        for i, p in enumerate(getattr(spec.prior_patient, part)):
            if not _PATH_RE.fullmatch(p):
                out.append((("prior_patient", part, i), f"bad HL7 path {p!r}"))
    if "PatientID" not in spec.fields:
        out.append((("fields",), "PatientID must be mapped"))
    return out
