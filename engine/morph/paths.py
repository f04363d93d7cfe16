"""Attribute paths: how route files and morph steps name a DICOM attribute, and how a path is
found in (or written into) a pydicom dataset.

Owns the small path language shared by rules and morphs:

* a keyword (``PatientID``), a tag (``(0010,0020)`` or ``00100020``), or a private attribute
  by its creator (``(0009,"ACME 1.1",10)``: group, private creator, element offset);
* sequence steps joined by dots, each optionally indexed: ``ReferencedStudySequence[0].
  ReferencedSOPInstanceUID``; ``[*]`` (or no index) means "any item" when reading;
* tag patterns with ``x`` wildcards for deletions: ``(0019,xxxx)``, ``(60xx,xxxx)``, and
  keyword globs: ``*Comments``.

Parsing never touches a dataset; errors are :class:`PathError` with a message a route author
can act on. It must not decide what to do with the values (rules and morphs do).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from pydicom.datadict import dictionary_VR, keyword_dict, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import Tag


class PathError(ValueError):
    """A path or pattern that cannot be understood."""


_TAG = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")
_PRIVATE = re.compile(r'^\(([0-9A-Fa-f]{4}),\s*"([^"\\]{1,64})",\s*([0-9A-Fa-f]{2})\)$')
_PATTERN = re.compile(r"^\(?([0-9A-Fa-fXx]{4}),?([0-9A-Fa-fXx]{4})\)?$")
_INDEX = re.compile(r"^(.*?)\[(\d+|\*)\]$")
_KEYWORD = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")


@dataclass(frozen=True, slots=True)
class Step:
    """One level of a path: a public tag, or a private (group, creator, offset)."""

    tag: int | None
    private: tuple[int, str, int] | None = None
    index: int | None = None  # None: any item (reading) / the first item (writing)

    def label(self) -> str:
        if self.private is not None:
            group, creator, offset = self.private
            base = f'({group:04X},"{creator}",{offset:02X})'
        else:
            assert self.tag is not None
            base = keyword_for_tag(self.tag) or f"({self.tag >> 16:04X},{self.tag & 0xFFFF:04X})"
        return base if self.index is None else f"{base}[{self.index}]"


@dataclass(frozen=True, slots=True)
class AttrPath:
    """A parsed attribute path."""

    steps: tuple[Step, ...]
    text: str

    @property
    def leaf(self) -> Step:
        return self.steps[-1]

    @property
    def is_top_level(self) -> bool:
        return len(self.steps) == 1

    def vr(self) -> str | None:
        """The dictionary VR of the leaf (None for private or unknown attributes)."""
        tag = self.leaf.tag
        if tag is None:
            return None
        try:
            return str(dictionary_VR(tag))
        except KeyError:
            return None

    def __str__(self) -> str:
        return self.text


def suggest_keyword(name: str) -> str:
    close = difflib.get_close_matches(name, _all_keywords(), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


@lru_cache(maxsize=1)
def _all_keywords() -> list[str]:
    return list(keyword_dict)


def _parse_step(text: str, full: str) -> Step:
    index: int | None = None
    m = _INDEX.match(text)
    if m:
        text = m.group(1)
        index = None if m.group(2) == "*" else int(m.group(2))
    private = _PRIVATE.match(text)
    if private:
        group = int(private.group(1), 16)
        if group % 2 == 0:
            raise PathError(f"{full!r}: private attributes live in odd groups, not {group:04X}")
        return Step(None, (group, private.group(2), int(private.group(3), 16)), index)
    tag = _TAG.match(text)
    if tag:
        return Step(int(tag.group(1) + tag.group(2), 16), None, index)
    if _KEYWORD.match(text):
        value = tag_for_keyword(text)
        if value is None:
            raise PathError(f"unknown DICOM keyword {text!r}{suggest_keyword(text)}")
        return Step(int(value), None, index)
    raise PathError(f"{full!r}: {text!r} is not a keyword, a tag like (0010,0020) or a private "
                    'attribute like (0009,"CREATOR",10)')


_SPLIT = re.compile(r'\.(?=(?:[^"]*"[^"]*")*[^"]*$)')  # dots outside quoted creators


@lru_cache(maxsize=4096)
def parse_path(text: str) -> AttrPath:
    """Parse an attribute path; raise :class:`PathError`."""
    if not isinstance(text, str) or not text.strip():
        raise PathError("an attribute path must be a non-empty string")
    text = text.strip()
    parts = _SPLIT.split(text)
    steps = tuple(_parse_step(p.strip(), text) for p in parts)
    for step in steps[:-1]:
        if step.tag is not None and _vr_of(step.tag) not in ("SQ", None):
            raise PathError(f"{text!r}: {step.label()} is not a sequence")
    return AttrPath(steps, text)


def _vr_of(tag: int) -> str | None:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


# --- resolving ---------------------------------------------------------------------------
def _private_tag(ds: Dataset, step: Step, create: bool = False) -> int | None:
    assert step.private is not None
    group, creator, offset = step.private
    try:
        block = ds.private_block(group, creator, create=create)
    except KeyError:
        return None
    return int(block.get_tag(offset))


def _step_tag(ds: Dataset, step: Step) -> int | None:
    return step.tag if step.private is None else _private_tag(ds, step)


def find(ds: Dataset, path: AttrPath) -> list[DataElement]:
    """Every element the path names (several when a step reads any sequence item)."""
    current = [ds]
    for depth, step in enumerate(path.steps):
        last = depth == len(path.steps) - 1
        found: list[DataElement] = []
        for item in current:
            tag = _step_tag(item, step)
            if tag is None or tag not in item:
                continue
            found.append(item[tag])
        if last:
            return found
        nxt: list[Dataset] = []
        for elem in found:
            if elem.VR != "SQ" or not elem.value:
                continue
            items = list(elem.value)
            if step.index is None:
                nxt.extend(items)
            elif step.index < len(items):
                nxt.append(items[step.index])
        current = nxt
    return []


def parent_for_write(ds: Dataset, path: AttrPath) -> Dataset:
    """The dataset the leaf of ``path`` is written into, creating sequences and items (the
    index of each step, the first item when none is given)."""
    current = ds
    for step in path.steps[:-1]:
        if step.private is not None:
            raise PathError(f"{path.text!r}: writing into private sequences is not supported")
        assert step.tag is not None
        if step.tag not in current:
            current.add_new(step.tag, "SQ", Sequence())
        seq = current[step.tag].value
        index = step.index or 0
        while len(seq) <= index:
            seq.append(Dataset())
        current = seq[index]
    return current


def leaf_tag_for_write(parent: Dataset, path: AttrPath) -> int:
    leaf = path.leaf
    if leaf.private is None:
        assert leaf.tag is not None
        return leaf.tag
    tag = _private_tag(parent, leaf, create=True)
    assert tag is not None
    return tag


def text_values(elem: DataElement) -> list[str]:
    """An element's values as strings (none for empty elements, sequences and binary data)."""
    if elem.VR == "SQ":
        return []
    value = elem.value
    if value is None or value == "" or isinstance(value, bytes | bytearray):
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value if v is not None and str(v) != ""]
    return [str(value)]


def is_present(elem: DataElement) -> bool:
    """Present with a value: a non-empty sequence, non-empty bytes or at least one value."""
    if elem.VR == "SQ":
        return bool(elem.value)
    value = elem.value
    if isinstance(value, bytes | bytearray):
        return len(value) > 0
    return bool(text_values(elem))


# --- patterns (for delete) ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TagPattern:
    """A tag with wildcard hex digits, or a keyword glob."""

    text: str
    mask: int = 0  # bits that must equal ``value``
    value: int = 0
    glob: str | None = None  # keyword glob, e.g. ``*Comments``

    def matches(self, tag: int) -> bool:
        if self.glob is not None:
            keyword = keyword_for_tag(tag)
            return bool(keyword) and fnmatch.fnmatchcase(keyword, self.glob)
        return (tag & self.mask) == self.value


def parse_pattern(text: str) -> TagPattern:
    """``(0019,xxxx)``, ``60xx3000``, ``*Comments`` or ``Patient*``; raise :class:`PathError`."""
    if not isinstance(text, str) or not text.strip():
        raise PathError("a tag pattern must be a non-empty string")
    text = text.strip()
    m = _PATTERN.match(text)
    if m:
        digits = (m.group(1) + m.group(2)).upper()
        mask = value = 0
        for ch in digits:
            mask <<= 4
            value <<= 4
            if ch != "X":
                mask |= 0xF
                value |= int(ch, 16)
        return TagPattern(text, mask, value)
    if re.fullmatch(r"[A-Za-z0-9*?]+", text) and ("*" in text or "?" in text):
        if not any(fnmatch.fnmatchcase(k, text) for k in _all_keywords()):
            raise PathError(f"keyword pattern {text!r} matches no DICOM keyword")
        return TagPattern(text, glob=text)
    raise PathError(f"{text!r} is not a tag pattern like (0019,xxxx) or a keyword glob like "
                    "*Comments")




def walk(ds: Dataset) -> Iterator[tuple[Dataset, DataElement]]:
    """Every (dataset, element) pair, depth first, sequences' items included."""
    for elem in list(ds):
        yield ds, elem
        if elem.VR == "SQ" and elem.value:
            for item in elem.value:
                yield from walk(item)


PRIVATE_CREATOR_RANGE: Final = range(0x0010, 0x0100)


def is_private(tag: int) -> bool:
    return bool((tag >> 16) & 1)


def tag_label(tag: int) -> str:
    t = Tag(tag)
    keyword = keyword_for_tag(t)
    return keyword or f"({t.group:04X},{t.element:04X})"
