"""Checks that a received dataset is well-formed and reads the few attributes intake needs.

pydicom silently returns a partial dataset when the bytes end early, so a truncated C-STORE would
be accepted as if whole. :func:`check_structure` walks the element headers (tags, VRs, lengths,
sequences and encapsulated fragments) without decoding values, and rejects anything that does not
end exactly at the last byte; it is written by hand because no library offers this check.
Decoding the values themselves is left to pydicom (:func:`read_keys`). This module is pure: no
I/O, no logging, no engine state.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from pydicom.charset import convert_encodings, decode_bytes

from engine.errors import MalformedDataset

_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
# PS3.5 Table 6.2-1
_KNOWN_VRS = frozenset({
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB",
    b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM",
    b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
})
_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
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
_UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 32
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


def _fmt(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Walker:
    def __init__(self, buf: bytes, implicit: bool, little: bool) -> None:
        self.buf = buf
        self.implicit = implicit
        #: top-level elements intake reads: tag -> (value offset, value length)
        self.found: dict[int, tuple[int, int]] = {}
        self.u16 = struct.Struct("<H" if little else ">H").unpack_from
        self.u32 = struct.Struct("<I" if little else ">I").unpack_from
        self.tag_fmt = struct.Struct("<HH" if little else ">HH").unpack_from

    def _tag(self, pos: int) -> int:
        group, elem = self.tag_fmt(self.buf, pos)
        return int((group << 16) | elem)

    def dataset(self, pos: int, end: int, depth: int, in_item: bool) -> int:
        """Walk elements from ``pos`` to ``end`` (or an item delimiter); return the end offset."""
        if depth > _MAX_DEPTH:
            raise MalformedDataset("sequences nested too deeply")
        buf = self.buf
        while pos < end:
            if pos + 8 > end:
                raise MalformedDataset(f"truncated element header at offset {pos}")
            tag = self._tag(pos)
            if tag == _ITEM_DELIMITER:
                if not in_item:
                    raise MalformedDataset(f"unexpected item delimiter at offset {pos}")
                return pos + 8
            if tag in (_ITEM, _SEQUENCE_DELIMITER):
                raise MalformedDataset(f"unexpected item tag {_fmt(tag)} at offset {pos}")
            vr: bytes | None = None
            if self.implicit:
                length = self.u32(buf, pos + 4)[0]
                pos += 8
            else:
                vr = bytes(buf[pos + 4 : pos + 6])
                if vr not in _KNOWN_VRS:
                    raise MalformedDataset(f"invalid VR at {_fmt(tag)}, offset {pos}")
                if vr in _LONG_VRS:
                    if pos + 12 > end:
                        raise MalformedDataset(f"truncated element header {_fmt(tag)}")
                    length = self.u32(buf, pos + 8)[0]
                    pos += 12
                else:
                    length = self.u16(buf, pos + 6)[0]
                    pos += 8
            if length == _UNDEFINED:
                if tag == _PIXEL_DATA and vr != b"SQ":
                    pos = self.fragments(pos, end)
                elif vr == b"UN":
                    # PS3.5 6.2.2: an undefined-length UN holds an Implicit VR LE sequence.
                    walker = _Walker(self.buf, implicit=True, little=True)
                    pos = walker.sequence(pos, end, depth + 1)
                elif vr in (None, b"SQ"):
                    pos = self.sequence(pos, end, depth + 1)
                else:
                    raise MalformedDataset(f"undefined length on {vr.decode()} {_fmt(tag)}")
            else:
                if depth == 0 and tag in _KEY_TAGS:
                    self.found[tag] = (pos, length)
                if pos + length > end:
                    raise MalformedDataset(
                        f"truncated: element {_fmt(tag)} needs {length} bytes, "
                        f"{end - pos} present")
                if vr == b"SQ":
                    self.defined_sequence(pos, pos + length, depth + 1)
                pos += length
        if in_item:
            raise MalformedDataset("truncated: item has no delimiter")
        return pos

    def sequence(self, pos: int, end: int, depth: int) -> int:
        """Items of an undefined-length sequence, up to and past its delimiter."""
        return self._items(pos, end, depth, delimited=True)

    def defined_sequence(self, pos: int, end: int, depth: int) -> None:
        """The items of a sequence with a defined length must fill it exactly."""
        self._items(pos, end, depth, delimited=False)

    def _items(self, pos: int, end: int, depth: int, *, delimited: bool) -> int:
        while delimited or pos < end:
            if pos + 8 > end:
                raise MalformedDataset("truncated: sequence has no delimiter" if delimited
                                       else "truncated item header inside a sequence")
            tag = self._tag(pos)
            length = self.u32(self.buf, pos + 4)[0]
            pos += 8
            if delimited and tag == _SEQUENCE_DELIMITER:
                return pos
            if tag != _ITEM:
                raise MalformedDataset(f"expected an item in a sequence, found {_fmt(tag)}")
            if length == _UNDEFINED:
                pos = self.dataset(pos, end, depth, in_item=True)
            else:
                if pos + length > end:
                    raise MalformedDataset("truncated: sequence item runs past the end")
                self.dataset(pos, pos + length, depth, in_item=False)
                pos += length
        return pos

    def fragments(self, pos: int, end: int) -> int:
        while True:
            if pos + 8 > end:
                raise MalformedDataset("truncated: encapsulated pixel data has no delimiter")
            tag = self._tag(pos)
            length = self.u32(self.buf, pos + 4)[0]
            pos += 8
            if tag == _SEQUENCE_DELIMITER:
                return pos
            if tag != _ITEM or length == _UNDEFINED:
                raise MalformedDataset(f"bad fragment item {_fmt(tag)} in pixel data")
            pos += length
            if pos > end:
                raise MalformedDataset("truncated: pixel data fragment runs past the end")


def inflate(data: bytes) -> bytes:
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

    plain: bytes
    elements: dict[int, tuple[int, int]]


def check_structure(data: bytes, transfer_syntax: str) -> Inspected:
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
    walker = _Walker(data, implicit, little)
    walker.dataset(0, len(data), 0, in_item=False)
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
        offset, length = elements[_SPECIFIC_CHARACTER_SET]
        terms = data[offset:offset + length].decode("ascii", "replace").strip(" \x00")
        try:
            encodings = convert_encodings([t.strip() for t in terms.split("\\")])
        except Exception as exc:
            raise MalformedDataset(f"unknown Specific Character Set {terms!r}") from exc
    values: dict[str, str | None] = dict.fromkeys(_KEYS.values())
    for tag, name in _KEYS.items():
        if tag not in elements:
            continue
        offset, length = elements[tag]
        raw = data[offset:offset + length]
        try:
            text = decode_bytes(raw, encodings, set()) if tag in _TEXT_TAGS else \
                raw.decode("ascii")
        except (UnicodeDecodeError, LookupError) as exc:
            raise MalformedDataset(f"undecodable value in {_fmt(tag)}") from exc
        values[name] = text.strip(" \x00").split("\\")[0] or None
    return DatasetKeys(**values)
