"""Morphs (stage 5): pure, deterministic changes to copies of DICOM objects.

Owns the ops (:mod:`engine.morph.ops`, :mod:`engine.morph.deid`), the attribute path language
(:mod:`engine.morph.paths`), safe regexes (:mod:`engine.morph.safe_regex`), the PS3.15 table
(:mod:`engine.morph.ps315`) and, here, what callers use: :func:`apply_steps` (a dataset in, the
same dataset changed), :func:`morph_bytes` (spooled Part 10 bytes in, the bytes to send out)
and :func:`diff` (what a morph changed, for dry runs). The same bytes and steps and secret
always give the same bytes out: a retry sends what the first attempt sent. With no steps the
input bytes are returned untouched (never re-encoded). It must not read the spool, the store
or the clock; callers hand it bytes and a :class:`~engine.morph.ops.MorphKeys`.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from engine.morph.ops import (
    DEFAULT_UID_PREFIX,
    OP_NAMES,
    CompileEnv,
    MorphError,
    MorphKeys,
    MorphStep,
    compile_step,
    steps_from_json,
)
from engine.morph.paths import tag_label, text_values

__all__ = [
    "DEFAULT_UID_PREFIX",
    "OP_NAMES",
    "Change",
    "CompileEnv",
    "MorphError",
    "MorphKeys",
    "MorphStep",
    "apply_steps",
    "compile_step",
    "diff",
    "morph_bytes",
    "read_dataset",
    "steps_from_json",
    "steps_to_json",
    "write_dataset",
]


def steps_to_json(steps: Iterable[MorphStep]) -> list[dict[str, Any]]:
    return [s.to_json() for s in steps]


def apply_steps(ds: Dataset, steps: Sequence[MorphStep], keys: MorphKeys) -> Dataset:
    """Apply ``steps`` in order to ``ds`` (changed in place and returned)."""
    for index, step in enumerate(steps):
        try:
            step.apply(ds, keys)
        except MorphError as exc:
            raise MorphError(f"step {index + 1} ({step.op}): {exc}") from None
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            raise MorphError(f"step {index + 1} ({step.op}): {exc}") from exc
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in ds:
        # The file meta must name the instance the dataset now is (a remapped UID).
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def read_dataset(data: bytes) -> Dataset:
    """A Part 10 file's bytes as a dataset (pixel data included)."""
    try:
        return pydicom.dcmread(io.BytesIO(data), force=False)
    except Exception as exc:
        raise MorphError(f"cannot read the object: {exc}") from exc


def write_dataset(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    try:
        ds.save_as(buf, enforce_file_format=True)
    except Exception as exc:
        raise MorphError(f"cannot write the morphed object: {exc}") from exc
    return buf.getvalue()


def morph_bytes(data: bytes, steps: Sequence[MorphStep], keys: MorphKeys) -> bytes:
    """The Part 10 bytes to send after ``steps``: deterministic for the same input, steps and
    secret. No steps: ``data`` itself."""
    if not steps:
        return data
    ds = read_dataset(data)
    return write_dataset(apply_steps(ds, steps, keys))


# --- diff ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Change:
    """One attribute a morph added, removed or changed (values shown shortened)."""

    path: str
    kind: str  # added | removed | changed
    before: str | None
    after: str | None

    def __str__(self) -> str:
        if self.kind == "added":
            return f"+ {self.path} = {self.after}"
        if self.kind == "removed":
            return f"- {self.path} (was {self.before})"
        return f"~ {self.path}: {self.before} -> {self.after}"


def _show(elem: Any) -> str:
    if elem.VR == "SQ":
        return f"<{len(elem.value or [])} item(s)>"
    value = elem.value
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    values = text_values(elem)
    text = "\\".join(values) if values else "''"
    return text if len(text) <= 64 else text[:61] + "..."


def diff(before: Dataset, after: Dataset, prefix: str = "") -> list[Change]:
    """What changed from ``before`` to ``after``, attribute by attribute, sequences item by item
    (pixel data by length only)."""
    out: list[Change] = []
    tags = sorted(set(before.keys()) | set(after.keys()))
    for tag in tags:
        label = prefix + tag_label(int(tag))
        a = before.get(tag)
        b = after.get(tag)
        if a is None and b is not None:
            out.append(Change(label, "added", None, _show(b)))
        elif b is None and a is not None:
            out.append(Change(label, "removed", _show(a), None))
        elif a is not None and b is not None:
            if a.VR == "SQ" and b.VR == "SQ":
                items_a, items_b = list(a.value or []), list(b.value or [])
                if len(items_a) != len(items_b):
                    out.append(Change(label, "changed", _show(a), _show(b)))
                for i, (x, y) in enumerate(zip(items_a, items_b, strict=False)):
                    out.extend(diff(x, y, f"{label}[{i}]."))
            elif int(tag) == 0x7FE00010:
                if len(a.value or b"") != len(b.value or b""):
                    out.append(Change(label, "changed", _show(a), _show(b)))
            elif a.value != b.value or a.VR != b.VR:
                out.append(Change(label, "changed", _show(a), _show(b)))
    return out


