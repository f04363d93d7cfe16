"""Modality Worklist C-FIND semantics: from an Identifier to criteria, matches and answers.

Owns PS3.4 C.2.2.2 matching for the Modality Worklist Information Model (K.6.1.2): single value,
wildcard (``*``, ``?``), date and time ranges (combined DA+TM on the Scheduled Procedure Step
start), universal (empty) matching, list-of-UID matching, sequence matching inside the Scheduled
Procedure Step Sequence and the code sequences, and PN matching per component group,
case-insensitive as an option. :meth:`MwlQuery.parse` splits a request into backend-neutral
constraints on indexed columns (:mod:`engine.records.worklist_criteria`; the store turns them into
SQL, a superset of the answer) and an exact check in Python; :meth:`MwlQuery.response` builds one
answer holding only the requested keys plus Specific Character Set. It must not touch the store,
the network or the event loop: it runs on association threads.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from engine.errors import InvalidInput
from engine.records.worklist import CodeItem, WorklistItem, WorklistStatus, fold_case, name_groups
from engine.records.worklist_criteria import AnyOf, Column, Constraint, Criterion
from engine.worklist.answer import Getter, Leaf, Node, Seq, element_order, to_bytes, to_dataset
from engine.worklist.keys import RETURN_KEYS, SPS_RETURN_KEYS
from engine.worklist.model import KEYWORDS, SPS_KEYWORDS


class InvalidQuery(InvalidInput):
    """The Identifier cannot be understood (e.g. a malformed date range)."""

    reason = "invalid_query"


_NAME_COLUMNS: Final = (Column.NAME_ALPHA, Column.NAME_IDEO, Column.NAME_PHON)
Check = Callable[[WorklistItem], bool]

# --- the information model -----------------------------------------------------------------
# Keys matched on the item's attributes; everything in KEYWORDS can also be returned.
_SPS_STATUS: Final = {WorklistStatus.SCHEDULED: "SCHEDULED",
                      WorklistStatus.IN_PROGRESS: "STARTED"}
_EXTRA_RETURN: Final = frozenset({"ScheduledProcedureStepStatus", "SpecificCharacterSet"})
_COLUMNS: Final[dict[str, Column]] = {
    "PatientID": Column.PATIENT_ID,
    "IssuerOfPatientID": Column.ISSUER,
    "AccessionNumber": Column.ACCESSION,
    "RequestedProcedureID": Column.REQUESTED_PROCEDURE_ID,
    "StudyInstanceUID": Column.STUDY_UID,
    "PlacerOrderNumberImagingServiceRequest": Column.PLACER,
    "FillerOrderNumberImagingServiceRequest": Column.FILLER,
    "Modality": Column.MODALITY,
    "ScheduledStationAETitle": Column.STATION_AE,
}
_CODE_KEYWORDS: Final = {"RequestedProcedureCodeSequence": "requested_procedure_code",
                         "ScheduledProtocolCodeSequence": "scheduled_protocol_code"}
_SPS_SEQUENCE: Final = "ScheduledProcedureStepSequence"
_SPS_ORDER: Final = ("Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
                     "ScheduledProcedureStepStartTime", "ScheduledPerformingPhysicianName",
                     "ScheduledProcedureStepDescription", "ScheduledProtocolCodeSequence",
                     "ScheduledProcedureStepID", "ScheduledStationName",
                     "ScheduledProcedureStepStatus")
_VR: Final[dict[str, str]] = {
    k: str(dictionary_VR(k)) for k in (*KEYWORDS, *_EXTRA_RETURN, _SPS_SEQUENCE,
                                       "CodeValue", "CodingSchemeDesignator", "CodeMeaning")}


# --- value matching ------------------------------------------------------------------------
def is_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)


def _text_matcher(pattern: str) -> Callable[[str], bool]:
    if is_wildcard(pattern):
        rx = _wildcard_regex(pattern)
        return lambda v: rx.fullmatch(v) is not None
    return lambda v: v == pattern


def pn_matches(pattern: str, value: str, case_insensitive: bool) -> bool:
    """PN matching (PS3.4 C.2.2.2.1): a pattern with ``=`` is matched group by group (an
    empty pattern group matches anything); one without is matched against each group."""
    return _pn_matcher(pattern, case_insensitive)(value)


def _pn_matcher(pattern: str, case_insensitive: bool) -> Callable[[str], bool]:
    norm: Callable[[str], str] = fold_case if case_insensitive else str
    pattern = norm(pattern)
    if "=" in pattern:
        pgroups = [(i, _text_matcher(g)) for i, g in enumerate(pattern.split("=")[:3])
                   if g and g != "*"]

        def by_group(value: str) -> bool:
            groups = name_groups(norm(value))
            return all(m(groups[i]) for i, m in pgroups)
        return by_group
    single = _text_matcher(pattern)

    def any_group(value: str) -> bool:
        return any(single(g) for g in name_groups(norm(value)) if g) or \
            (value == "" and single(""))
    return any_group


_DA: Final = re.compile(r"\d{8}")
_TM: Final = re.compile(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?")


def _date_bound(text: str, what: str) -> str:
    text = text.strip().replace(".", "")  # ACR-NEMA dates (YYYY.MM.DD) still occur
    if not _DA.fullmatch(text):
        raise InvalidQuery(f"{what}: {text!r} is not a date (YYYYMMDD)")
    return text


def parse_date_range(value: str, what: str = "date") -> tuple[str | None, str | None]:
    """``D``, ``D-``, ``-D`` or ``D1-D2`` → inclusive (low, high); None is open."""
    if "-" not in value:
        d = _date_bound(value, what)
        return d, d
    low, _, high = value.partition("-")
    lo = _date_bound(low, what) if low.strip() else None
    hi = _date_bound(high, what) if high.strip() else None
    if lo is None and hi is None:
        raise InvalidQuery(f"{what}: {value!r} is an empty range")
    return lo, hi


def norm_time(text: str, upper: bool = False) -> str:
    """TM → ``HHMMSS.FFFFFF``; the missing parts are the earliest (or, ``upper``, the latest)
    instant they stand for, so ``0800`` as an upper bound includes 08:00:59."""
    text = text.strip().replace(":", "")
    m = _TM.fullmatch(text)
    if m is None:
        raise InvalidQuery(f"time {text!r} is not HHMM[SS[.FFFFFF]]")
    hh, mm, ss, frac = m.groups()
    fill = "59" if upper else "00"
    digits = (frac or ".")[1:]
    frac_out = digits.ljust(6, "9" if upper and (frac is None or len(digits) < 6) else "0")
    if frac is None and not upper:
        frac_out = "000000"
    return f"{hh}{mm or fill}{ss or fill}.{frac_out}"


def parse_time_range(value: str) -> tuple[str | None, str | None]:
    if "-" not in value:
        return norm_time(value), norm_time(value, upper=True)
    low, _, high = value.partition("-")
    lo = norm_time(low) if low.strip() else None
    hi = norm_time(high, upper=True) if high.strip() else None
    if lo is None and hi is None:
        raise InvalidQuery(f"time {value!r} is an empty range")
    return lo, hi


def _in_range(value: str, low: str | None, high: str | None) -> bool:
    if not value:
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def _as_values(value: Any) -> list[str]:
    if isinstance(value, MultiValue | list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    text = "" if value is None else str(value).strip()
    return [v.strip() for v in text.split("\\") if v.strip()] if text else []


# --- the query -----------------------------------------------------------------------------
@dataclass
class MwlQuery:
    """One Modality Worklist C-FIND request, ready for the store and for exact matching."""

    identifier: Dataset
    case_insensitive_pn: bool = False
    constraints: list[Constraint] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    #: keys with a value radflow does not match on (answer with Pending Warning 0xFF01)
    unsupported: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, identifier: Dataset, *, case_insensitive_pn: bool = False) -> MwlQuery:
        """Read the matching keys of ``identifier``; :class:`InvalidQuery` if malformed."""
        q = cls(identifier, case_insensitive_pn)
        date_q: str = ""
        time_q: str = ""
        try:
            for elem in identifier:
                kw = elem.keyword
                if kw == _SPS_SEQUENCE:
                    for sps in elem.value or ():
                        for sub in sps:
                            if sub.keyword == "ScheduledProcedureStepStartDate":
                                date_q = _as_text(sub.value).strip()
                            elif sub.keyword == "ScheduledProcedureStepStartTime":
                                time_q = _as_text(sub.value).strip()
                            else:
                                q._key(sub, SPS_RETURN_KEYS)
                        break  # one SPS item is the query (PS3.4 C.2.2.2.6)
                    continue
                if kw in SPS_KEYWORDS:
                    # Not a top-level key of this model: some SCUs send it flat anyway.
                    if elem.value not in (None, ""):
                        q.unsupported.append(kw)
                    continue
                q._key(elem, RETURN_KEYS)
        except InvalidQuery:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidQuery(f"unreadable identifier: {exc}") from exc
        q._start(date_q, time_q)
        return q

    # --- per key ---------------------------------------------------------------------------
    def _key(self, elem: DataElement, standard: frozenset[str]) -> None:
        kw = elem.keyword
        if kw in ("SpecificCharacterSet", "QueryRetrieveLevel") or not kw:
            return
        if elem.VR == "SQ":
            if kw in _CODE_KEYWORDS:
                self._code_key(kw, elem)
            return
        values = _as_values(elem.value)
        if not values or values == ["*"]:
            return  # universal matching
        if kw == "PatientName":
            self._name_key(values[0])
            return
        if kw in ("PatientBirthDate",):
            low, high = parse_date_range(values[0], kw)
            self.checks.append(_attr_check("patient_birth_date",
                                           lambda v: _in_range(v, low, high)))
            return
        if kw == "ScheduledProcedureStepStatus":
            statuses = frozenset(values)
            self.checks.append(lambda i: _SPS_STATUS.get(i.status, "") in statuses)
            return
        attr = KEYWORDS.get(kw)
        if attr is None or kw in _CODE_KEYWORDS:
            if kw not in standard:
                self.unsupported.append(kw)
            # else: a standard return key radflow keeps no value for: universal match, empty
            # in the answer (see engine.worklist.keys for why not a Pending Warning)
            return
        vr = _VR.get(kw, "")
        if vr == "PN":
            pattern = values[0]
            m = _pn_matcher(pattern, self.case_insensitive_pn)
            self.checks.append(_attr_check(attr, m))
            return
        column = _COLUMNS.get(kw)
        if len(values) > 1 or vr == "UI":
            # List matching (PS3.4 C.2.2.2.2), defined for UIDs; any listed value matches.
            if vr == "UI" and any(is_wildcard(v) for v in values):
                raise InvalidQuery(f"{kw}: wildcards are not allowed in UIDs")
            wanted = frozenset(values)
            if column is not None:
                self.constraints.append(
                    Criterion(column, "eq", value=values[0]) if len(values) == 1
                    else Criterion(column, "in", values=tuple(sorted(wanted))))
            self.checks.append(_attr_check(attr, wanted.__contains__))
            return
        value = values[0]
        if column is not None:
            self.constraints.append(Criterion(column, "wildcard" if is_wildcard(value) else "eq",
                                              value=value))
        self.checks.append(_attr_check(attr, _text_matcher(value)))

    def _name_key(self, pattern: str) -> None:
        folded = fold_case(pattern)
        if "=" in pattern:
            for column, group in zip(_NAME_COLUMNS, folded.split("=")[:3], strict=False):
                if group and group != "*":
                    self.constraints.append(_glob_or_eq(column, group))
        else:
            self.constraints.append(AnyOf(tuple(_glob_or_eq(c, folded) for c in _NAME_COLUMNS)))
        m = _pn_matcher(pattern, self.case_insensitive_pn)
        self.checks.append(lambda i: m(i.patient_name))

    def _code_key(self, kw: str, elem: DataElement) -> None:
        attr = _CODE_KEYWORDS[kw]
        for request in elem.value or ():
            wanted: list[tuple[str, Callable[[str], bool]]] = []
            for name, code_attr in (("CodeValue", "value"), ("CodingSchemeDesignator", "scheme"),
                                    ("CodeMeaning", "meaning")):
                text = _as_text(request.get(name, "")).strip()
                if text and text != "*":
                    wanted.append((code_attr, _text_matcher(text)))
            if wanted:
                def check(item: WorklistItem, a: str = attr,
                          w: list[tuple[str, Callable[[str], bool]]] = wanted) -> bool:
                    codes: tuple[CodeItem, ...] = getattr(item, a)
                    return any(all(m(getattr(c, f)) for f, m in w) for c in codes)
                self.checks.append(check)
            break

    def _start(self, date_q: str, time_q: str) -> None:
        """Scheduled Procedure Step Start Date/Time: ranges, combined when both are given."""
        if date_q in ("", "*"):
            date_q = ""
        if time_q in ("", "*"):
            time_q = ""
        if not date_q and not time_q:
            return
        if date_q and not time_q:
            lo, hi = parse_date_range(date_q, "ScheduledProcedureStepStartDate")
            self.constraints.append(Criterion(Column.SPS_DATE, "range", low=lo, high=hi))
            self.checks.append(
                lambda i: _in_range(i.scheduled_procedure_step_start_date, lo, hi))
            return
        t_lo, t_hi = parse_time_range(time_q)
        if not date_q:
            self.checks.append(
                lambda i: _in_range(_item_time(i), t_lo, t_hi))
            return
        d_lo, d_hi = parse_date_range(date_q, "ScheduledProcedureStepStartDate")
        self.constraints.append(Criterion(Column.SPS_DATE, "range", low=d_lo, high=d_hi))
        # Combined date-time matching (PS3.4 C.2.2.2.5.1): the range runs from the low date at
        # the low time to the high date at the high time, not "each day between t1 and t2".
        low = None if d_lo is None else d_lo + (t_lo or "000000.000000")
        high = None if d_hi is None else d_hi + (t_hi or "235959.999999")
        self.checks.append(lambda i: _in_range(
            i.scheduled_procedure_step_start_date + _item_time(i), low, high)
            if i.scheduled_procedure_step_start_date else False)

    # --- matching and answering ------------------------------------------------------------
    def matches(self, item: WorklistItem) -> bool:
        """The exact PS3.4 check (the store's candidates are a superset)."""
        return all(check(item) for check in self.checks)

    def response(self, item: WorklistItem, charset: Sequence[str] | None = None) -> Dataset:
        """The answer for ``item``: the requested keys (and their requested nesting) only,
        declaring ``charset`` (default: the item's own Specific Character Set)."""
        return to_dataset(self.answer_shape, item,
                          item.specific_character_set if charset is None else charset)

    def response_bytes(self, item: WorklistItem, charset: Sequence[str], implicit: bool
                       ) -> bytes | None:
        """:meth:`response` already encoded (Little Endian), or None: send the Dataset."""
        return to_bytes(self.answer_shape, item, charset, implicit)

    @functools.cached_property
    def answer_shape(self) -> list[Node]:
        """Every answer's elements, compiled once from the identifier."""
        nodes: list[Node] = []
        for elem in self.identifier:
            tag = elem.tag
            if tag == 0x00080005 or tag.is_private or tag.element == 0:
                continue
            kw = elem.keyword
            if kw == _SPS_SEQUENCE:
                sps = _sps_shape(elem.value[0] if elem.value else None)
                nodes.append(Seq(tag, functools.partial(_one_item, sps)))
            elif kw in _CODE_KEYWORDS:
                nodes.append(_codes_shape(tag, _CODE_KEYWORDS[kw],
                                          elem.value[0] if elem.value else None))
            else:
                nodes.append(_leaf(tag, kw, elem.VR))
        return element_order(nodes)


def _attr_check(attr: str, test: Callable[[str], bool]) -> Check:
    def check(item: WorklistItem) -> bool:
        return test(getattr(item, attr))
    return check


def _glob_or_eq(column: Column, value: str) -> Criterion:
    return Criterion(column, "wildcard" if is_wildcard(value) else "eq", value=value)


def _item_time(item: WorklistItem) -> str:
    t = item.scheduled_procedure_step_start_time
    return norm_time(t) if t else "000000.000000"


def _no_value(_: Any) -> None:
    return None


def _no_items(_: Any) -> tuple[()]:
    return ()


def _one_item(nodes: list[Node], item: WorklistItem) -> tuple[tuple[list[Node], Any]]:
    return ((nodes, item),)


def _getter(kw: str) -> Getter | None:
    """Where ``kw``'s value comes from, or None for a key radflow does not keep."""
    if kw == "ScheduledProcedureStepStatus":
        return lambda item: _SPS_STATUS.get(item.status, "")
    attr = KEYWORDS.get(kw)
    if attr is None:
        return None
    return operator.attrgetter(attr)


def _leaf(tag: int, kw: str, vr: str) -> Node:
    if vr == "SQ":
        return Seq(tag, _no_items)
    getter = _getter(kw)
    if getter is None:
        # A key radflow does not keep: returned empty (zero length), as PS3.4 allows.
        return Leaf(tag, vr, _no_value)
    return Leaf(tag, _VR.get(kw, vr), getter)


def _sps_shape(requested: Dataset | None) -> list[Node]:
    nodes: list[Node] = []
    if requested is None or len(requested) == 0:
        # An empty sequence item asks for everything the step has (PS3.4 C.2.2.2.6).
        for kw in _SPS_ORDER:
            tag = int(tag_for_keyword(kw) or 0)
            if kw in _CODE_KEYWORDS:
                nodes.append(_codes_shape(tag, _CODE_KEYWORDS[kw], None))
            else:
                nodes.append(Leaf(tag, _VR[kw], _getter(kw) or _no_value))
        return element_order(nodes)
    for elem in requested:
        if elem.tag.is_private or elem.tag.element == 0:
            continue
        kw = elem.keyword
        if kw in _CODE_KEYWORDS:
            nodes.append(_codes_shape(elem.tag, _CODE_KEYWORDS[kw],
                                      elem.value[0] if elem.value else None))
        else:
            nodes.append(_leaf(elem.tag, kw, elem.VR))
    return element_order(nodes)


_CODE_PARTS: Final = {"CodeValue": operator.attrgetter("value"),
                      "CodingSchemeDesignator": operator.attrgetter("scheme"),
                      "CodeMeaning": operator.attrgetter("meaning")}


def _codes_shape(tag: int, attr: str, requested: Dataset | None) -> Seq:
    wanted = ([e.keyword for e in requested] if requested is not None and len(requested)
              else ["CodeValue", "CodingSchemeDesignator", "CodeMeaning"])
    parts = element_order([Leaf(int(tag_for_keyword(kw) or 0), _VR[kw],
                                _CODE_PARTS.get(kw, _no_value))
                           for kw in dict.fromkeys(wanted) if kw in _VR])
    source = operator.attrgetter(attr)
    return Seq(tag, lambda item: tuple((parts, code) for code in source(item)))


def item_texts(item: WorklistItem) -> list[str]:
    """The item's free texts (names, descriptions, code meanings): what may need more than
    ASCII. Checked per answer instead of walking the answer dataset, which costs more."""
    texts = [item.patient_name, item.referring_physician_name,
             item.scheduled_performing_physician_name, item.requested_procedure_description,
             item.scheduled_procedure_step_description, item.scheduled_station_name,
             item.patient_id, item.accession_number]
    texts += [c.meaning for c in item.requested_procedure_code]
    texts += [c.meaning for c in item.scheduled_protocol_code]
    return texts
