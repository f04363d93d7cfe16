"""Spooled instances on their way out: read, morph, transcode, encode. Blocking; runs on a
sender's worker thread, never on the event loop.

Every object is read once, whole, and checked against the size and SHA-256 recorded at intake
before anything is decoded or sent (:func:`verified_bytes`); one larger than
:data:`LARGE_OBJECT_BYTES` with nothing to change is checked by a streaming read instead and sent
from its file (:func:`verified_file`). A damaged spool file becomes a permanent
``integrity_failed`` error, never bytes on the wire. With no morph the file's dataset
is sent as it is (never decoded). A morph
(``engine.morph.morph_bytes``, its steps frozen in the row, so a retry produces the same bytes)
or a transfer syntax the destination does not accept needs the dataset decoded: compressed pixel
data is decompressed with pydicom's pixel handlers (pylibjpeg and its plugins, the ``codecs``
extra) to Explicit VR Little Endian, or re-compressed when the destination only takes another
compressed syntax and pydicom has an encoder for it. This module must not talk to peers.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from engine.egress.delivery import DicomObject, MorphFn
from engine.egress.errors import IntegrityFailure, PermanentDeliveryError


def spool_file(obj: DicomObject, spool_root: Path) -> Path:
    """The spooled file; a missing one is permanent (the journal lost its bytes)."""
    path = obj.path_in(spool_root)
    if not path.is_file():
        raise PermanentDeliveryError(f"spool file {obj.spool_path} is missing",
                                     reason="spool_missing")
    return path


def verified_bytes(obj: DicomObject, spool_root: Path) -> bytes:
    """The spool file's bytes, checked against the size and SHA-256 recorded at intake.

    Read whole (objects up to :data:`LARGE_OBJECT_BYTES`; larger ones go through
    :func:`verified_file` and leave from their file) and verified before a byte is sent, so a
    mismatch never reaches the peer half-sent. Raises :class:`IntegrityFailure` with both
    digests."""
    path = spool_file(obj, spool_root)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PermanentDeliveryError(f"cannot read spool file {obj.spool_path}: {exc}",
                                     reason="spool_missing") from exc
    if obj.size_bytes is not None and len(data) != obj.size_bytes:
        found = hashlib.sha256(data).hexdigest()
        raise IntegrityFailure(
            f"spool file {obj.spool_path}: recorded {obj.size_bytes} bytes sha256 "
            f"{obj.sha256 or '?'}, found {len(data)} bytes sha256 {found}")
    if obj.sha256 is not None:
        found = hashlib.sha256(data).hexdigest()
        if found != obj.sha256.lower():
            raise IntegrityFailure(
                f"spool file {obj.spool_path}: recorded sha256 {obj.sha256}, found sha256 "
                f"{found} ({len(data)} bytes)")
    return data


#: objects larger than this leave from their spool file a few megabytes at a time, verified by
#: a streaming read first, instead of being read whole (large multi-frame objects)
LARGE_OBJECT_BYTES = 64 * 1024 * 1024


def is_large(obj: DicomObject) -> bool:
    return (obj.size_bytes or 0) > LARGE_OBJECT_BYTES


def verified_file(obj: DicomObject, spool_root: Path) -> Path:
    """:func:`verified_bytes` for an object too large to hold: the spool file's size and
    SHA-256 are checked by reading it in 1 MiB pieces, before a byte of it is sent; the path.
    Raises :class:`IntegrityFailure` with both digests."""
    path = spool_file(obj, spool_root)
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb", buffering=0) as fh:
            while piece := fh.read(1 << 20):
                digest.update(piece)
                size += len(piece)
    except OSError as exc:
        raise PermanentDeliveryError(f"cannot read spool file {obj.spool_path}: {exc}",
                                     reason="spool_missing") from exc
    found = digest.hexdigest()
    if obj.size_bytes is not None and size != obj.size_bytes:
        raise IntegrityFailure(
            f"spool file {obj.spool_path}: recorded {obj.size_bytes} bytes sha256 "
            f"{obj.sha256 or '?'}, found {size} bytes sha256 {found}")
    if obj.sha256 is not None and found != obj.sha256.lower():
        raise IntegrityFailure(
            f"spool file {obj.spool_path}: recorded sha256 {obj.sha256}, found sha256 "
            f"{found} ({size} bytes)")
    return path


def read_dataset(data: bytes, name: str = "") -> Dataset:
    try:
        return dcmread(io.BytesIO(data))
    except Exception as exc:  # pydicom raises many types for damaged files
        raise PermanentDeliveryError(f"spool file {name} cannot be read: {exc}",
                                     reason="unreadable") from exc


def morphed(data: bytes, steps: Sequence[Mapping[str, Any]], morph: MorphFn | None,
            fingerprint: str | None = None) -> Dataset:
    """The spooled dataset (the file's verified ``data``) with ``steps`` applied (an empty
    list: unchanged)."""
    if not steps:
        return read_dataset(data)
    if morph is None:
        raise PermanentDeliveryError(
            "the row carries morph steps but this sender was built without morphing",
            reason="morph_unavailable")
    try:
        result = morph(data, list(steps), fingerprint)
    except PermanentDeliveryError:
        raise
    except Exception as exc:
        # Morphs are pure and deterministic: failing now means failing on every retry.
        raise PermanentDeliveryError(f"morph failed: {exc}", reason="morph_failed") from exc
    if isinstance(result, Dataset):
        return result
    if isinstance(result, bytes | bytearray | memoryview):
        try:
            return dcmread(io.BytesIO(bytes(result)), force=True)
        except Exception as exc:
            raise PermanentDeliveryError(f"morph returned unreadable bytes: {exc}",
                                         reason="morph_failed") from exc
    raise PermanentDeliveryError(f"morph returned {type(result).__name__}",
                                 reason="morph_failed")


def transcode(ds: Dataset, target: str) -> Dataset:
    """``ds`` re-encoded for ``target`` (in place): decompress, then compress if asked."""
    meta = ds.file_meta if hasattr(ds, "file_meta") else FileMetaDataset()
    source = UID(meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
    want = UID(target)
    if source == want:
        return ds
    try:
        # generate_instance_uid=False: pydicom 3 gives a (de)compressed dataset a new SOP
        # Instance UID by default; a forwarded instance must keep its identity.
        if source.is_compressed and "PixelData" in ds:
            ds.decompress(generate_instance_uid=False)  # leaves Explicit VR Little Endian
        if want.is_compressed:
            ds.compress(want, generate_instance_uid=False)
    except Exception as exc:
        # No decoder or encoder installed for this pair (or damaged pixel data): the same
        # object fails the same way next time.
        raise PermanentDeliveryError(
            f"cannot transcode {source.name} to {want.name}: {exc}", reason="transcode_failed"
        ) from exc
    ds.file_meta = meta
    meta.TransferSyntaxUID = want
    if not want.is_compressed:
        # pynetdicom re-encodes for the context's syntax; the dataset must say which encoding
        # it is in now, or it refuses a mismatch with its file meta.
        ds.set_original_encoding(want.is_implicit_VR, want.is_little_endian,
                                 ds.original_character_set)
    return ds


def part10_bytes(ds: Dataset) -> bytes:
    """``ds`` as a Part 10 file (STOW-RS sends whole files)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
