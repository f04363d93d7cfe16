"""Checks that a received dataset is well-formed and reads the few attributes intake needs.

pydicom silently returns a partial dataset when the bytes end early, so a truncated C-STORE would
be accepted as if whole. :func:`check_structure` walks the element headers (tags, VRs, lengths,
sequences and encapsulated fragments; ``engine.dicom.dataset_walk``) without decoding values, and
rejects anything that does not end exactly at the last byte.
Decoding the values themselves is left to pydicom (:func:`read_keys`). This module is pure: no
I/O, no logging, no engine state.
"""

from __future__ import annotations

import mmap
import zlib
from dataclasses import dataclass

from pydicom.charset import convert_encodings, decode_bytes

from engine.dicom.dataset_walk import Found, Walker, fmt_tag
from engine.errors import MalformedDataset

_SPECIFIC_CHARACTER_SET = 0x00080005
# The identifying attributes intake records, by tag, with the keyword DatasetKeys uses.
_KEYS: dict[int, str] = {
    0x00080016: "sop_class_uid",
    0x00080018: "sop_instance_uid",
    0x00080050: "accession_number",
    0x00080060: "modality",
    0x00100020: "patient_id",
    0x0020000D: "study_instance_uid",
    0x0020000E: "series_instance_uid",
}
_KEY_TAGS = frozenset({*_KEYS, _SPECIFIC_CHARACTER_SET})
# LO/SH values may carry non-ASCII text; UI and CS are ASCII by definition.
_TEXT_TAGS = frozenset({0x00080050, 0x00100020})
#: a deflated dataset may not inflate beyond this (a decompression bomb guard)
MAX_INFLATED_BYTES = 2 * 1024**3

DEFLATED = "1.2.840.10008.1.2.1.99"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"


@dataclass(frozen=True, slots=True)
class DatasetKeys:
    """The identifying attributes intake records in the journal."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    patient_id: str | None
    accession_number: str | None
    modality: str | None


def inflate(data: bytes | mmap.mmap) -> bytes:
    """Inflate a Deflated Explicit VR Little Endian dataset (raw deflate, PS3.5 A.5)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_INFLATED_BYTES)
    except zlib.error as exc:
        raise MalformedDataset(f"deflated dataset does not inflate: {exc}") from exc
    if inflater.unconsumed_tail:
        raise MalformedDataset("deflated dataset inflates beyond the size limit")
    if not inflater.eof:  # a deflate stream ends with its final block: anything else is cut short
        raise MalformedDataset("deflated dataset is truncated (no final deflate block)")
    return out


@dataclass(frozen=True, slots=True)
class Inspected:
    """A dataset whose structure was checked: its plain bytes and where its key values lie."""

    plain: bytes | mmap.mmap
    elements: dict[int, Found]


def check_structure(data: bytes | mmap.mmap, transfer_syntax: str) -> Inspected:
    """Raise :class:`MalformedDataset` unless ``data`` is a whole, well-formed dataset.

    The result holds the bytes to decode (inflated for the deflated transfer syntax) and the
    offsets of the identifying attributes found on the way.
    """
    if not data:
        raise MalformedDataset("the dataset is empty")
    if transfer_syntax == DEFLATED:
        data = inflate(data)
    implicit = transfer_syntax == IMPLICIT_LE
    little = transfer_syntax != EXPLICIT_BE
    walker = Walker(data, implicit, little, wanted=_KEY_TAGS)
    walker.dataset(0, len(data))
    return Inspected(data, walker.found)


def read_keys(inspected: Inspected) -> DatasetKeys:
    """Decode the identifying attributes from the offsets the structure check recorded.

    Reading them straight from the recorded offsets costs a few microseconds, where a pydicom
    parse of the dataset header costs about half a millisecond per instance; text is still
    decoded by pydicom's character-set machinery.
    """
    data, elements = inspected.plain, inspected.elements
    encodings: list[str] = ["iso8859"]
    if _SPECIFIC_CHARACTER_SET in elements:
        offset, length, _ = elements[_SPECIFIC_CHARACTER_SET]
        terms = data[offset:offset + length].decode("ascii", "replace").strip(" \x00")
        try:
            encodings = convert_encodings([t.strip() for t in terms.split("\\")])
        except Exception as exc:
            raise MalformedDataset(f"unknown Specific Character Set {terms!r}") from exc
    values: dict[str, str | None] = dict.fromkeys(_KEYS.values())
    for tag, name in _KEYS.items():
        if tag not in elements:
            continue
        offset, length, _ = elements[tag]
        raw = data[offset:offset + length]
        try:
            text = decode_bytes(raw, encodings, set()) if tag in _TEXT_TAGS else \
                raw.decode("ascii")
        except (UnicodeDecodeError, LookupError) as exc:
            raise MalformedDataset(f"undecodable value in {fmt_tag(tag)}") from exc
        values[name] = text.strip(" \x00").split("\\")[0] or None
    return DatasetKeys(**values)
