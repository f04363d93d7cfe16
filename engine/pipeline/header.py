"""Reading the attributes routes look at from a spooled file, fast.

pydicom's ``dcmread`` of a header costs 0.5 to 0.9 ms per instance here, a fifth of what intake
itself costs; routing must add less than a tenth. The routes of a ruleset name a small, known
set of top-level attributes, so :func:`read_header` walks the element headers of the file
(Explicit or Implicit VR Little Endian, the syntaxes nearly every modality sends), skips
everything else without decoding it — sequences included — and hands pydicom a dataset made of
just the wanted raw elements, which pydicom decodes on access as usual (VRs, and the character
set recorded as the dataset's original one, as ``dcmread`` does, so no access looks it up again).
Anything unusual (deflate, big endian, a ruleset that reads sequences or private attributes,
a structure this walker does not expect) goes to ``dcmread``. It reads files and nothing else.
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from typing import Final

import pydicom
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

_EXPLICIT_LE: Final = "1.2.840.10008.1.2.1"
_IMPLICIT_LE: Final = "1.2.840.10008.1.2"
_LONG_VRS: Final = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC",
                              b"UN", b"UR", b"UT", b"UV"})
_ITEM: Final = 0xFFFEE000
_ITEM_END: Final = 0xFFFEE00D
_SEQ_END: Final = 0xFFFEE0DD
_PIXEL_DATA: Final = 0x7FE00010
_UNDEFINED: Final = 0xFFFFFFFF
_CHARSET: Final = 0x00080005
_HEAD: Final = 64 * 1024
_U32 = struct.Struct("<I").unpack_from
_EXPLICIT = struct.Struct("<HH2sH").unpack_from  # group, element, VR, short value length
_IMPLICIT = struct.Struct("<HHI").unpack_from  # group, element, value length
#: Specific Character Set value as read -> its encodings (nearly every file of a site says the
#: same thing: convert it once)
_ENCODINGS: dict[bytes, str | list[str]] = {}


class _Unusual(Exception):
    """Something this walker leaves to pydicom."""


def read_full_header(path: str) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def read_header(path: str, tags: Collection[int] | None = None) -> Dataset:
    """A dataset holding (at least) the top-level ``tags`` of the file at ``path``; every
    attribute up to Pixel Data when ``tags`` is None."""
    if tags is None:
        return read_full_header(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(_HEAD)
            try:
                return _walk(data, frozenset(tags) | {_CHARSET})
            except _Unusual:
                if len(data) < _HEAD:
                    raise
                data += fh.read()  # a header larger than the first read
                return _walk(data, frozenset(tags) | {_CHARSET})
    except (_Unusual, struct.error, IndexError):
        return read_full_header(path)


def _header(buf: bytes, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """The tag, VR (None when implicit), value length and value offset of the element at
    ``pos`` (item headers read the same as implicit ones)."""
    if implicit:
        group, elem, length = _IMPLICIT(buf, pos)
        return (group << 16) | elem, None, length, pos + 8
    group, elem, vr, length = _EXPLICIT(buf, pos)
    if vr in _LONG_VRS:
        if pos + 12 > len(buf):
            raise _Unusual  # the header continues past what was read
        return (group << 16) | elem, vr, _U32(buf, pos + 8)[0], pos + 12
    return (group << 16) | elem, vr, length, pos + 8


def _walk(buf: bytes, wanted: frozenset[int]) -> Dataset:
    if buf[128:132] != b"DICM":
        raise _Unusual
    pos = 132
    syntax = ""
    while pos + 8 <= len(buf):
        tag, _, length, start = _header(buf, pos, implicit=False)
        if tag >> 16 != 0x0002:
            break
        if tag == 0x00020010:
            syntax = buf[start:start + length].decode("ascii", "replace").strip(" \x00")
        pos = start + length
    if syntax not in (_EXPLICIT_LE, _IMPLICIT_LE):
        raise _Unusual
    implicit = syntax == _IMPLICIT_LE
    found: dict[BaseTag, DataElement | RawDataElement] = {}
    highest = min(max(wanted), _PIXEL_DATA - 1)
    end = len(buf)
    while pos < end:
        if pos + 8 > end:
            raise _Unusual  # the header continues past what was read
        tag, vr, length, start = _header(buf, pos, implicit)
        if tag > highest:
            break
        if length == _UNDEFINED:
            pos = _skip_sequence(buf, start, implicit or vr == b"UN", 0)
            continue
        pos = start + length
        if pos > end:
            raise _Unusual
        if tag in wanted:
            key = BaseTag(tag)
            found[key] = RawDataElement(key, vr.decode("ascii") if vr else None, length,
                                        buf[start:pos], start, implicit, True)
    ds = Dataset(found)
    ds.set_original_encoding(implicit, True, _encoding(found.get(BaseTag(_CHARSET))))
    return ds


def _encoding(charset: DataElement | RawDataElement | None) -> str | list[str]:
    """The encodings of a Specific Character Set element, as ``dcmread`` records them."""
    if not isinstance(charset, RawDataElement):
        return default_encoding  # absent (the walker keeps every element raw)
    raw = charset.value or b""
    found = _ENCODINGS.get(raw)
    if found is None:
        found = convert_encodings(convert_raw_data_element(charset).value)
        if len(_ENCODINGS) < 64:
            _ENCODINGS[raw] = found
    # a copy: a caller may extend the list (pydicom never does, but it is not ours to share)
    return list(found) if isinstance(found, list) else found


def _skip_sequence(buf: bytes, pos: int, implicit: bool, depth: int) -> int:
    """The offset after an undefined-length sequence starting at ``pos`` (its first item)."""
    if depth > 16:
        raise _Unusual
    end = len(buf)
    while True:
        if pos + 8 > end:
            raise _Unusual
        group, elem, length = _IMPLICIT(buf, pos)
        tag = (group << 16) | elem
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise _Unusual
        if length != _UNDEFINED:
            pos += length
            continue
        pos = _skip_item(buf, pos, implicit, depth)


def _skip_item(buf: bytes, pos: int, implicit: bool, depth: int) -> int:
    end = len(buf)
    while True:
        if pos + 8 > end:
            raise _Unusual
        tag, item_vr, length, start = _header(buf, pos, implicit)
        if tag == _ITEM_END:
            return pos + 8
        if length == _UNDEFINED:
            pos = _skip_sequence(buf, start, implicit or item_vr == b"UN", depth + 1)
        else:
            pos = start + length
