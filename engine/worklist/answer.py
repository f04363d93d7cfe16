"""The shape of a Modality Worklist answer, compiled once per query, and its two renderings.

Owns :func:`compile_answer` (from the request identifier to the list of elements every answer
of that query holds: the requested keys with their nesting, in tag order, each with its VR and
where its value comes from), :func:`to_dataset` (a pydicom Dataset, what pynetdicom sends on
its own path) and :func:`to_bytes` (the encoded identifier, Implicit or Explicit VR Little
Endian). pydicom's generic writer costs ~230 µs per answer and building the Dataset another
~115 µs; an "all CT today" query answers hundreds of items, so the bytes are written here, by
hand, from the compiled shape (~20 µs). Unit tests check, item by item and in both transfer
syntaxes and several character sets, that the bytes equal pydicom's encoding of the Dataset.
Text goes through pydicom's own codecs (``encode_string``, ``PersonName.encode``), so
character-set handling is pydicom's. A value this writer does not handle plainly (a backslash
inside a value, an unusual VR) makes :func:`to_bytes` return None, and the caller sends the
Dataset instead. It must not decide matching, read the store or touch the network.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydicom.charset import convert_encodings, encode_string
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.valuerep import PersonName

#: Where a value comes from: the item (or, inside a code sequence, the code) → its text
Getter = Callable[[Any], str | None]


@dataclass(frozen=True, slots=True)
class Leaf:
    tag: int
    vr: str
    value: Getter


@dataclass(frozen=True, slots=True)
class Seq:
    tag: int
    #: source → one (element list, source) per sequence item
    items: Callable[[Any], Sequence[tuple[Sequence[Node], Any]]]


Node = Leaf | Seq

#: VRs written as pydicom's ``write_text`` does: through the Specific Character Set
_TEXT_VRS: Final = frozenset({"SH", "LO", "ST", "LT", "UT", "UC"})
#: VRs written as pydicom's ``write_string`` does: ASCII (Latin-1) with a space (UI: NUL) pad
_STRING_VRS: Final = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "DS", "IS", "UR"})
#: Explicit VR Little Endian: VRs with a reserved field and a 4-byte length (PS3.5 7.1.2)
_LONG_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN",
                              "UR", "UT", "UV"})
_ITEM: Final = struct.pack("<HH", 0xFFFE, 0xE000)
_TAG_LEN: Final = struct.Struct("<HHI")
_TAG_VR_SHORT: Final = struct.Struct("<HH2sH")
_TAG_VR_LONG: Final = struct.Struct("<HH2sHI")


def element_order(nodes: Sequence[Node]) -> list[Node]:
    """Nodes in tag order, the order a dataset is written in (PS3.5 7.1)."""
    return sorted(nodes, key=lambda n: n.tag)


# --- the Dataset rendering -----------------------------------------------------------------
def to_dataset(nodes: Sequence[Node], source: Any, charset: Sequence[str]) -> Dataset:
    """The answer as a pydicom Dataset, Specific Character Set first."""
    ds = Dataset()
    ds.add_new(0x00080005, "CS", list(charset) or "")
    _fill(ds, nodes, source)
    return ds


def _fill(ds: Dataset, nodes: Sequence[Node], source: Any) -> None:
    for node in nodes:
        if isinstance(node, Leaf):
            value = node.value(source)
            ds.add_new(node.tag, node.vr, value if value not in (None, "") else None)
        else:
            items = []
            for children, child_source in node.items(source):
                item = Dataset()
                _fill(item, children, child_source)
                items.append(item)
            ds.add_new(node.tag, "SQ", DicomSequence(items))


# --- the bytes rendering -------------------------------------------------------------------
class _Unplain(Exception):
    """A value the hand writer leaves to pydicom."""


def to_bytes(nodes: Sequence[Node], source: Any, charset: Sequence[str],
             implicit: bool) -> bytes | None:
    """The answer encoded as pydicom would encode :func:`to_dataset`'s Dataset (Little
    Endian, ``implicit`` or explicit VR), or None when a value needs pydicom's writer."""
    encodings = convert_encodings(list(charset) or None)
    out: list[bytes] = []
    try:
        cs_value = "\\".join(charset).encode("latin-1")
        _put(out, 0x00080005, "CS", cs_value + b" " * (len(cs_value) % 2), implicit)
        _write(out, nodes, source, encodings, implicit)
    except (_Unplain, UnicodeError, ValueError, LookupError):
        return None
    return b"".join(out)


def _write(out: list[bytes], nodes: Sequence[Node], source: Any, encodings: list[str],
           implicit: bool) -> None:
    for node in nodes:
        if isinstance(node, Leaf):
            _put(out, node.tag, node.vr, _value_bytes(node.vr, node.value(source), encodings),
                 implicit)
            continue
        body: list[bytes] = []
        for children, child_source in node.items(source):
            item: list[bytes] = []
            _write(item, children, child_source, encodings, implicit)
            content = b"".join(item)
            body.append(_ITEM + struct.pack("<I", len(content)) + content)
        _put(out, node.tag, "SQ", b"".join(body), implicit)


def _value_bytes(vr: str, value: str | None, encodings: list[str]) -> bytes:
    if value is None or value == "":
        return b""
    if "\\" in value:
        raise _Unplain  # pydicom would split it into several values
    if vr == "PN":
        raw = PersonName(value).encode(encodings)
    elif vr in _TEXT_VRS:
        raw = encode_string(value, encodings)
    elif vr in _STRING_VRS:
        raw = value.encode("latin-1")
        if len(raw) % 2:
            raw += b"\x00" if vr == "UI" else b" "
        return raw
    else:
        raise _Unplain
    return raw + b" " if len(raw) % 2 else raw


def _put(out: list[bytes], tag: int, vr: str, value: bytes, implicit: bool) -> None:
    group, elem = tag >> 16, tag & 0xFFFF
    if len(value) > 0xFFFF and vr not in _LONG_VRS:
        raise _Unplain  # too long for its VR: pydicom's validation decides
    if implicit:
        out.append(_TAG_LEN.pack(group, elem, len(value)))
    elif vr in _LONG_VRS:
        out.append(_TAG_VR_LONG.pack(group, elem, vr.encode("ascii"), 0, len(value)))
    elif len(vr) == 2 and vr.isalpha() and vr.isupper():
        out.append(_TAG_VR_SHORT.pack(group, elem, vr.encode("ascii"), len(value)))
    else:
        raise _Unplain  # "US or SS" and the like: pydicom resolves those
    out.append(value)
