"""Walking a DICOM dataset's element headers without decoding values (PS3.5 7.1, 7.5, A.4).

One walker serves intake's structure check (``engine.ingress.dimse.encoding``: every header,
sequence item and encapsulated fragment must add up to the last byte) and routing's header
reader (``engine.pipeline.header``: the top-level attributes routes look at, from the start of
a spooled file). It records where the wanted top-level values lie and raises
:class:`MalformedDataset` on anything that does not add up, including a buffer that ends early;
the header reader takes that as "read more, or let pydicom do it". Written by hand because no
library walks a dataset without decoding it: pydicom parses values and returns a partial dataset
when the bytes end early. Pure: no I/O, no logging, no engine state.
"""

from __future__ import annotations

import mmap
import struct

from engine.errors import MalformedDataset

LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
# PS3.5 Table 6.2-1
KNOWN_VRS = frozenset({
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB",
    b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM",
    b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
})
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
UNDEFINED = 0xFFFFFFFF
MAX_DEPTH = 32
_NO_TAG = 1 << 32  # above every tag: no stop

#: a value recorded by the walker: offset, length, VR (``None`` in Implicit VR)
Found = tuple[int, int, bytes | None]


# By byte order: a 32-bit value, a tag, and whole element headers in one unpack each (group,
# element, then VR and short length, or the 32-bit length).
_UNPACK = {little: tuple(struct.Struct(("<" if little else ">") + f).unpack_from
                         for f in ("I", "HH", "HH2sH", "HHI"))
           for little in (True, False)}


def fmt_tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class Walker:
    """Walks ``buf`` in one transfer syntax's encoding, recording the top-level elements in
    ``wanted`` (``found``: tag -> offset, length, VR). With ``stop_after``, the top level ends
    at the first tag above it (that element is not read)."""

    def __init__(self, buf: bytes | mmap.mmap, implicit: bool, little: bool, *,
                 wanted: frozenset[int] = frozenset(), stop_after: int | None = None) -> None:
        self.buf = buf
        self.implicit = implicit
        self.little = little
        self.wanted = wanted
        self.stop_after = stop_after
        self.found: dict[int, Found] = {}
        self.u32, self.tag_fmt, self.explicit_fmt, self.implicit_fmt = _UNPACK[little]

    def _tag(self, pos: int) -> int:
        group, elem = self.tag_fmt(self.buf, pos)
        return int((group << 16) | elem)

    def dataset(self, pos: int, end: int, depth: int = 0, in_item: bool = False) -> int:
        """Walk elements from ``pos`` to ``end`` (or an item delimiter, or past ``stop_after``
        at the top level); return the offset where the walk ended."""
        if depth > MAX_DEPTH:
            raise MalformedDataset("sequences nested too deeply")
        buf, implicit = self.buf, self.implicit
        top = depth == 0
        stop = self.stop_after if top and self.stop_after is not None else _NO_TAG
        wanted = self.wanted if top else frozenset()
        while pos < end:
            if pos + 8 > end:
                raise MalformedDataset(f"truncated element header at offset {pos}")
            vr: bytes | None = None
            if implicit:
                group, elem, length = self.implicit_fmt(buf, pos)
            else:
                group, elem, vr, length = self.explicit_fmt(buf, pos)
            tag = (group << 16) | elem
            if tag > stop:
                return pos
            if tag >= ITEM:
                if tag == ITEM_DELIMITER:
                    if not in_item:
                        raise MalformedDataset(f"unexpected item delimiter at offset {pos}")
                    return pos + 8
                if tag in (ITEM, SEQUENCE_DELIMITER):
                    raise MalformedDataset(f"unexpected item tag {fmt_tag(tag)} at offset {pos}")
            if implicit:
                pos += 8
            elif vr in LONG_VRS:
                if pos + 12 > end:
                    raise MalformedDataset(f"truncated element header {fmt_tag(tag)}")
                length = self.u32(buf, pos + 8)[0]
                pos += 12
            elif vr in KNOWN_VRS:
                pos += 8
            else:
                raise MalformedDataset(f"invalid VR at {fmt_tag(tag)}, offset {pos}")
            if length == UNDEFINED:
                if tag == PIXEL_DATA and vr != b"SQ":
                    pos = self.fragments(pos, end)
                elif vr == b"UN":
                    # PS3.5 6.2.2: an undefined-length UN holds an Implicit VR LE sequence.
                    walker = Walker(self.buf, implicit=True, little=True)
                    pos = walker.sequence(pos, end, depth + 1)
                elif vr in (None, b"SQ"):
                    pos = self.sequence(pos, end, depth + 1)
                else:
                    raise MalformedDataset(f"undefined length on {vr.decode()} {fmt_tag(tag)}")
            else:
                if tag in wanted:
                    self.found[tag] = (pos, length, vr)
                if pos + length > end:
                    raise MalformedDataset(
                        f"truncated: element {fmt_tag(tag)} needs {length} bytes, "
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
            if delimited and tag == SEQUENCE_DELIMITER:
                return pos
            if tag != ITEM:
                raise MalformedDataset(f"expected an item in a sequence, found {fmt_tag(tag)}")
            if length == UNDEFINED:
                pos = self.dataset(pos, end, depth, in_item=True)
            else:
                if pos + length > end:
                    raise MalformedDataset("truncated: sequence item runs past the end")
                self.dataset(pos, pos + length, depth, in_item=False)
                pos += length
        return pos

    def fragments(self, pos: int, end: int) -> int:
        """Encapsulated pixel data's items, up to and past its sequence delimiter."""
        while True:
            if pos + 8 > end:
                raise MalformedDataset("truncated: encapsulated pixel data has no delimiter")
            tag = self._tag(pos)
            length = self.u32(self.buf, pos + 4)[0]
            pos += 8
            if tag == SEQUENCE_DELIMITER:
                return pos
            if tag != ITEM or length == UNDEFINED:
                raise MalformedDataset(f"bad fragment item {fmt_tag(tag)} in pixel data")
            pos += length
            if pos > end:
                raise MalformedDataset("truncated: pixel data fragment runs past the end")
