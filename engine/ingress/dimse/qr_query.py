"""Query/Retrieve Identifiers in, index constraints and C-FIND answers out (pure).

:func:`parse` reads a Patient Root or Study Root Identifier (PS3.4 C.6.1 / C.6.2): the Query/
Retrieve Level, and for each key the index can match its PS3.4 C.2.2.2 matching (universal when
empty, single value, wildcard ``*``/``?`` except on UIDs, range on dates and times, a list of
UIDs); person names match ignoring case, as Orthanc and most archives do. Keys the index does
not hold (sequences, private or rare attributes) are returned empty. :func:`answer` builds one
answer with exactly the requested keys. It must not touch the store nor the network.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from engine.durable.qr import (
    KEYWORD_COLUMNS,
    LEVELS,
    UNIQUE_KEYS,
    QrLevel,
    QrMatch,
    QrQuery,
    QrRecord,
)
from engine.errors import InvalidInput

_RANGE_VRS = frozenset({"DA", "TM", "DT"})
#: keys answered from the aggregate of a level (PS3.4 C.3.4 - C.3.6)
_COUNTS = {
    "NumberOfPatientRelatedStudies": "studies",
    "NumberOfPatientRelatedSeries": "series",
    "NumberOfPatientRelatedInstances": "instances",
    "NumberOfStudyRelatedSeries": "series",
    "NumberOfStudyRelatedInstances": "instances",
    "NumberOfSeriesRelatedInstances": "instances",
}
_NOT_KEYS = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet"})


class IdentifierError(InvalidInput):
    """The Identifier cannot be answered as it is (missing or unknown level, bad value)."""

    reason = "invalid_identifier"


@dataclass(frozen=True)
class QrRequest:
    """A parsed Identifier: the store query and the keys the answer must carry."""

    query: QrQuery
    keys: tuple[str, ...]  # keywords, in the Identifier's order
    charset: tuple[str, ...]


def _value(ds: Dataset, keyword: str) -> str:
    try:
        value = ds[keyword].value
    except Exception as exc:
        raise IdentifierError(f"{keyword}: undecodable value") from exc
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _match(keyword: str, column: str, value: str) -> QrMatch | None:
    vr = dictionary_VR(keyword)
    if value in ("", "*"):
        return None  # universal
    if vr == "UI":
        uids = tuple(u.strip() for u in value.split("\\") if u.strip())
        if len(uids) > 1:
            return QrMatch(column, "any", uids)
        return QrMatch(column, "equals", uids)
    if vr in _RANGE_VRS and "-" in value:
        low, _, high = value.partition("-")
        return QrMatch(column, "range", (low.strip(), high.strip()))
    fold = vr == "PN"
    if "*" in value or "?" in value:
        return QrMatch(column, "wildcard", (value,), fold)
    return QrMatch(column, "equals", (value,), fold)


def parse(identifier: Dataset, *, limit: int, retrieve: bool = False) -> QrRequest:
    """``retrieve``: a C-MOVE / C-GET Identifier (at least one key must narrow it)."""
    try:
        level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    except Exception as exc:
        raise IdentifierError("undecodable Query/Retrieve Level") from exc
    if level not in LEVELS:
        raise IdentifierError(f"Query/Retrieve Level {level!r} is not one of {list(LEVELS)}")
    qlevel: QrLevel = level
    depth = LEVELS.index(qlevel)
    keys: list[str] = []
    matches: list[QrMatch] = []
    for elem in identifier:
        keyword = elem.keyword or keyword_for_tag(elem.tag)
        if not keyword or keyword in _NOT_KEYS or elem.tag.is_private:
            continue
        keys.append(keyword)
        if keyword == "ModalitiesInStudy":
            mods = tuple(m for m in _value(identifier, keyword).split("\\") if m and m != "*")
            if mods and qlevel == "STUDY":
                matches.append(QrMatch("modality", "modalities", mods))
            continue
        known = KEYWORD_COLUMNS.get(keyword)
        if known is None or elem.VR == "SQ":
            continue
        column, key_level = known
        if LEVELS.index(key_level) > depth:
            continue  # a lower level's key: no matching at this level, returned empty
        match = _match(keyword, column, _value(identifier, keyword))
        if match is not None:
            matches.append(match)
    if retrieve and not matches:
        raise IdentifierError(f"no {UNIQUE_KEYS[qlevel]} (or other key) given: radflow does "
                              "not retrieve everything it holds")
    charset: tuple[str, ...] = ()
    if "SpecificCharacterSet" in identifier:
        raw = identifier.SpecificCharacterSet
        charset = tuple(raw) if isinstance(raw, list) else (str(raw),)
    return QrRequest(QrQuery(qlevel, tuple(matches), limit), tuple(keys), charset)


def answer(request: QrRequest, record: QrRecord, retrieve_ae: str) -> Dataset:
    """One Pending answer with every requested key (empty when the index has no value)."""
    ds = Dataset()
    texts = [v for v in record.values.values() if v]
    if any(not t.isascii() for t in texts):
        ds.SpecificCharacterSet = "ISO_IR 192"
    elif request.charset:
        ds.SpecificCharacterSet = list(request.charset) if len(request.charset) > 1 \
            else request.charset[0]
    ds.QueryRetrieveLevel = request.query.level
    for keyword in request.keys:
        value: object = ""
        if keyword in _COUNTS:
            value = str(getattr(record, _COUNTS[keyword]))
        elif keyword == "ModalitiesInStudy":
            value = list(record.modalities) or ""
        elif keyword == "SOPClassesInStudy":
            value = list(record.sop_classes) or ""
        elif keyword == "RetrieveAETitle":
            value = retrieve_ae
        elif keyword == "InstanceAvailability":
            value = "ONLINE"
        elif keyword in KEYWORD_COLUMNS:
            value = record.values.get(KEYWORD_COLUMNS[keyword][0], "")
        try:
            if dictionary_VR(keyword) == "SQ":
                setattr(ds, keyword, [])
            else:
                setattr(ds, keyword, value)
        except Exception:
            # A value that does not fit its VR as written (a site's odd Series Number): the
            # answer still goes out, with this key empty.
            setattr(ds, keyword, "")
    return ds
