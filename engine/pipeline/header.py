"""Reading the attributes routes look at from a spooled file, fast.

pydicom's ``dcmread`` of a header costs 0.5 to 0.9 ms per instance here, a fifth of what intake
itself costs; routing must add less than a tenth. The routes of a ruleset name a small, known
set of top-level attributes, so :func:`read_header` walks the element headers of the file
(Explicit or Implicit VR Little Endian, the syntaxes nearly every modality sends) with intake's
walker (``engine.dicom.dataset_walk``), skips everything else without decoding it — sequences
included — and hands pydicom a dataset made of
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

from engine.dicom.dataset_walk import PIXEL_DATA, Walker
from engine.errors import MalformedDataset

_EXPLICIT_LE: Final = "1.2.840.10008.1.2.1"
_IMPLICIT_LE: Final = "1.2.840.10008.1.2"
_TRANSFER_SYNTAX: Final = 0x00020010
_CHARSET: Final = 0x00080005
_HEAD: Final = 64 * 1024
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
            except (_Unusual, MalformedDataset):
                if len(data) < _HEAD:
                    raise
                data += fh.read()  # a header larger than the first read
                return _walk(data, frozenset(tags) | {_CHARSET})
    except (_Unusual, MalformedDataset, struct.error, IndexError):
        return read_full_header(path)


def _walk(buf: bytes, wanted: frozenset[int]) -> Dataset:
    """The ``wanted`` top-level elements of a Part 10 file's first bytes, as raw elements.
    Raises :class:`MalformedDataset` when ``buf`` ends before them (or is not sound)."""
    if buf[128:132] != b"DICM":
        raise _Unusual
    meta = Walker(buf, implicit=False, little=True, wanted=frozenset({_TRANSFER_SYNTAX}),
                  stop_after=0x0002FFFF)
    pos = meta.dataset(132, len(buf))
    syntax = ""
    if _TRANSFER_SYNTAX in meta.found:
        offset, length, _ = meta.found[_TRANSFER_SYNTAX]
        syntax = buf[offset:offset + length].decode("ascii", "replace").strip(" \x00")
    if syntax not in (_EXPLICIT_LE, _IMPLICIT_LE):
        raise _Unusual
    implicit = syntax == _IMPLICIT_LE
    walker = Walker(buf, implicit, little=True, wanted=wanted,
                    stop_after=min(max(wanted), PIXEL_DATA - 1))
    walker.dataset(pos, len(buf))
    found: dict[BaseTag, DataElement | RawDataElement] = {}
    for tag, (offset, length, vr) in walker.found.items():
        key = BaseTag(tag)
        found[key] = RawDataElement(key, vr.decode("ascii") if vr else None, length,
                                    buf[offset:offset + length], offset, implicit, True)
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
