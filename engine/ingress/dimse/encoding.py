"""Checks that a received dataset is well-formed and reads the few attributes intake needs.

pydicom silently returns a partial dataset when the bytes end early, so a truncated C-STORE would
be accepted as if whole. :func:`check_structure` walks the element headers (tags, VRs, lengths,
sequences and encapsulated fragments; ``engine.dicom.dataset_walk``) without decoding values, and
rejects anything that does not end exactly at the last byte.
Decoding the values themselves is left to pydicom (:func:`read_keys`). This module is pure: no
I/O, no logging; its one piece of state is the budget of memory that deflated datasets being
inflated may hold together (:data:`INFLATE_BUDGET`), shared by every association's thread so
that concurrent decompression bombs cannot add up.
"""

from __future__ import annotations

import mmap
import threading
import zlib
from dataclasses import dataclass

from pydicom.charset import convert_encodings, decode_bytes, python_encoding

from engine.dicom.dataset_walk import Found, Walker, fmt_tag
from engine.errors import MalformedDataset, OutOfResources

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
#: a deflated dataset may not inflate beyond this (a decompression bomb guard): a 1 MB bomb
#: inflating to gigabytes is refused once it reaches it, having cost no more than this
MAX_INFLATED_BYTES = 256 * 1024**2
#: what all deflated datasets being inflated at one time may hold together; a dataset that
#: finds it used up by others is refused as Out of Resources (the sender retries later)
INFLATE_BUDGET = 256 * 1024**2
#: inflated in steps of this size, each one reserved from the budget first
_INFLATE_STEP = 8 * 1024**2
#: compressed input is handed to zlib in pieces of this size
_INPUT_STEP = 1024**2


class _Budget:
    """Bytes reserved by the inflates in progress, across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.used = 0

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > INFLATE_BUDGET:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


_BUDGET = _Budget()

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
    #: Specific Character Set terms that are not DICOM defined terms (e.g. ``ISO IR 192``):
    #: accepted as pydicom reads them, and worth a warning naming the instance
    unknown_charset_terms: tuple[str, ...] = ()


def inflate(data: bytes | mmap.mmap) -> bytearray:
    """Inflate a Deflated Explicit VR Little Endian dataset (raw deflate, PS3.5 A.5).

    Step by step, each step's memory reserved from the shared budget first: the caller gives
    the result's size back with :func:`release` when done with it (as :func:`check_structure`
    does). The input is fed in pieces too, so a large one held in a file map is never copied
    whole. Raises :class:`MalformedDataset` past :data:`MAX_INFLATED_BYTES` and
    :class:`OutOfResources` when other inflates hold the budget.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    held = 0
    pos = 0
    tail = b""

    def feed() -> bool:
        """The next piece of input into ``tail``, unless what is left is still there."""
        nonlocal pos, tail
        if not tail and pos < len(data):
            tail = bytes(data[pos:pos + _INPUT_STEP])
            pos += len(tail)
        return bool(tail)

    try:
        while not inflater.eof and feed():
            step = min(_INFLATE_STEP, MAX_INFLATED_BYTES - len(out))
            if step == 0:
                # At the limit: one byte more means beyond it; none, and the stream ended
                # exactly there (or is cut short, checked below).
                while not inflater.eof and feed():
                    if inflater.decompress(tail, 1):
                        raise MalformedDataset(
                            f"deflated dataset inflates beyond the size limit "
                            f"({MAX_INFLATED_BYTES // 1024**2} MiB)")
                    tail = inflater.unconsumed_tail
                break
            if not _BUDGET.take(step):
                raise OutOfResources("other deflated datasets are being inflated; retry later")
            held += step
            try:
                piece = inflater.decompress(tail, step)
            except zlib.error as exc:
                raise MalformedDataset(f"deflated dataset does not inflate: {exc}") from exc
            _BUDGET.give(step - len(piece))
            held -= step - len(piece)
            out += piece
            tail = inflater.unconsumed_tail
    except BaseException:
        _BUDGET.give(held)
        raise
    if not inflater.eof:  # a deflate stream ends with its final block: anything else is cut short
        release(out)
        raise MalformedDataset("deflated dataset is truncated (no final deflate block)")
    return out


def release(inflated: bytearray) -> None:
    """Give the memory of an :func:`inflate` result back to the shared budget."""
    _BUDGET.give(len(inflated))


@dataclass(frozen=True, slots=True)
class Inspected:
    """A dataset whose structure was checked: its plain bytes and where its key values lie."""

    plain: bytes | bytearray | mmap.mmap
    elements: dict[int, Found]


def check_structure(data: bytes | mmap.mmap, transfer_syntax: str) -> Inspected:
    """Raise :class:`MalformedDataset` unless ``data`` is a whole, well-formed dataset.

    The result holds the bytes to decode (inflated for the deflated transfer syntax) and the
    offsets of the identifying attributes found on the way.
    """
    if not data:
        raise MalformedDataset("the dataset is empty")
    if transfer_syntax != DEFLATED:
        return _walk(data, transfer_syntax)
    plain = inflate(data)
    try:
        # The budget is given back once the walk is done: read_keys, right after, only
        # slices the few values it wants.
        return _walk(plain, transfer_syntax)
    finally:
        release(plain)


def _walk(data: bytes | bytearray | mmap.mmap, transfer_syntax: str) -> Inspected:
    implicit = transfer_syntax == IMPLICIT_LE
    little = transfer_syntax != EXPLICIT_BE
    walker = Walker(data, implicit, little, wanted=_KEY_TAGS)  # type: ignore[arg-type]
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
    unknown: tuple[str, ...] = ()
    if _SPECIFIC_CHARACTER_SET in elements:
        offset, length, _ = elements[_SPECIFIC_CHARACTER_SET]
        terms = bytes(data[offset:offset + length]).decode("ascii", "replace").strip(" \x00")
        unknown = tuple(t.strip() for t in terms.split("\\")
                        if t.strip() and t.strip() not in python_encoding)
        try:
            encodings = convert_encodings([t.strip() for t in terms.split("\\")])
        except Exception as exc:
            raise MalformedDataset(f"unknown Specific Character Set {terms!r}") from exc
    values: dict[str, str | None] = dict.fromkeys(_KEYS.values())
    for tag, name in _KEYS.items():
        if tag not in elements:
            continue
        offset, length, _ = elements[tag]
        raw = bytes(data[offset:offset + length])
        try:
            text = decode_bytes(raw, encodings, set()) if tag in _TEXT_TAGS else \
                raw.decode("ascii")
        except (UnicodeDecodeError, LookupError) as exc:
            raise MalformedDataset(f"undecodable value in {fmt_tag(tag)}") from exc
        values[name] = text.strip(" \x00").split("\\")[0] or None
    return DatasetKeys(**values, unknown_charset_terms=unknown)
