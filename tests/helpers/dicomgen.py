"""Small, valid DICOM instances for tests, built with pydicom and numpy.

Every instance gets fresh UIDs, a tiny pixel matrix and the attributes radflow's journal records
(Patient ID, Accession Number, Study/Series UIDs, Modality). :func:`write_part10` writes one as a
Part 10 file in any of the transfer syntaxes the tests use: Explicit and Implicit VR Little
Endian, Deflated Explicit VR Little Endian and RLE Lossless (encapsulated pixel data, encoded by
pydicom's own RLE encoder, so no extra codec package is needed). :func:`dataset_bytes` returns a
file's bytes after its file meta group: exactly what an SCU that sends without conversion puts on
the wire, and what radflow must store unchanged.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")
#: a SOP class no storage SCP knows (a private root), for "unsupported SOP class" tests
PRIVATE_SOP_CLASS = UID("1.2.826.0.1.3680043.9.7777.1.1")

_SOP_CLASS_OF_MODALITY = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE}

#: the transfer syntaxes :func:`write_part10` can produce, by a short name used in test ids
TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit_le": ExplicitVRLittleEndian,
    "implicit_le": ImplicitVRLittleEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
    "rle": RLELossless,
}


@dataclass(frozen=True)
class Instance:
    """A written Part 10 file and the identifiers a test checks against."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


def new_dataset(
    modality: str = "CT",
    *,
    size: int = 16,
    seed: int = 0,
    sop_instance_uid: str | None = None,
    sop_class_uid: str | None = None,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    patient_id: str = "RF-TEST-001",
    accession_number: str = "ACC0001",
    instance_number: int = 1,
) -> Dataset:
    """A small CT or MR image (``size`` x ``size``, 16-bit) with fresh UIDs unless given."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 4096, size=(size, size), dtype=np.uint16)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid or _SOP_CLASS_OF_MODALITY[modality]
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.StudyDate = "20250101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = accession_number
    ds.Modality = modality
    ds.PatientName = "Test^Radflow"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


def write_part10(ds: Dataset, path: Path, transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
    """Write ``ds`` (modified in place) as a Part 10 file in ``transfer_syntax``."""
    ts = UID(transfer_syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if ts.is_compressed else ts
    ds.file_meta = meta
    if ts.is_compressed:
        # Encapsulates Pixel Data and sets the file meta transfer syntax.
        ds.compress(ts)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_instance(directory: Path, transfer_syntax: str = ExplicitVRLittleEndian, *,
                   modality: str = "CT", name: str | None = None, **fields: object) -> Instance:
    """Build one instance with :func:`new_dataset` and write it into ``directory``."""
    ds = new_dataset(modality, **fields)  # type: ignore[arg-type]
    path = directory / (name or f"{ds.SOPInstanceUID}.dcm")
    write_part10(ds, path, transfer_syntax)
    return Instance(path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(transfer_syntax))


def write_series(directory: Path, count: int, transfer_syntax: str = ExplicitVRLittleEndian,
                 *, modality: str = "CT", size: int = 16) -> list[Instance]:
    """``count`` instances of one study and series, numbered 1..count, one file each."""
    study, series = generate_uid(), generate_uid()
    return [
        write_instance(directory, transfer_syntax, modality=modality, name=f"img{i:05d}.dcm",
                       size=size, seed=i, study_instance_uid=study, series_instance_uid=series,
                       instance_number=i)
        for i in range(1, count + 1)
    ]


def write_sized_instance(directory: Path, dataset_length: int, *, name: str = "sized.dcm"
                         ) -> Instance:
    """An Explicit VR LE instance whose dataset is exactly ``dataset_length`` bytes (even),
    padded with a private OB element."""
    ds = new_dataset()
    path = directory / name
    write_part10(ds, path)
    base = len(dataset_bytes(path))
    # private creator (0009,0010) LO "RADFLOW TEST" = 8 + 12 bytes; (0009,1000) OB header = 12
    pad = dataset_length - base - 32
    if pad < 0 or pad % 2:
        raise ValueError(f"cannot pad a {base}-byte dataset to {dataset_length} bytes")
    block = ds.private_block(0x0009, "RADFLOW TEST", create=True)
    block.add_new(0x00, "OB", b"\x00" * pad)
    write_part10(ds, path)
    if len(dataset_bytes(path)) != dataset_length:
        raise AssertionError("padding arithmetic is wrong")
    return Instance(path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), ExplicitVRLittleEndian)


def write_encapsulated_instance(directory: Path, transfer_syntax: str, fragment: bytes, *,
                                name: str = "encapsulated.dcm") -> Instance:
    """An instance in a compressed ``transfer_syntax`` whose Pixel Data is one opaque
    ``fragment`` (nothing decodes it: for syntaxes no test codec can produce)."""
    ds = new_dataset()
    ds.PixelData = encapsulate([fragment])
    ds["PixelData"].VR = "OB"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return Instance(path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), transfer_syntax)


def meta_group_end(data: bytes) -> int:
    """Offset of the first byte after the file meta group of Part 10 ``data``."""
    if len(data) < 144 or data[128:132] != b"DICM":
        raise ValueError("not a Part 10 file (no DICM prefix)")
    group, element, vr = struct.unpack_from("<HH2s", data, 132)
    if (group, element, vr) != (0x0002, 0x0000, b"UL"):
        raise ValueError("file meta group does not start with (0002,0000) UL")
    (group_length,) = struct.unpack_from("<I", data, 140)
    return 144 + int(group_length)


def dataset_bytes(path: Path) -> bytes:
    """The bytes of the file at ``path`` after its file meta group."""
    data = path.read_bytes()
    return data[meta_group_end(data):]


def truncated_copy(src: Path, dst: Path, drop: int) -> Path:
    """A copy of ``src`` without its last ``drop`` bytes (the meta group stays whole)."""
    data = src.read_bytes()
    if drop <= 0 or len(data) - drop <= meta_group_end(data):
        raise ValueError("drop must cut into the dataset, not the meta group")
    dst.write_bytes(data[:-drop])
    return dst


def corrupt_vr_copy(src: Path, dst: Path, tag: tuple[int, int] = (0x0010, 0x0010),
                    bogus_vr: bytes = b"\x01\x02") -> Path:
    """A copy of Explicit VR ``src`` whose element ``tag`` has its VR replaced by ``bogus_vr``."""
    data = bytearray(src.read_bytes())
    start = meta_group_end(bytes(data))
    needle = struct.pack("<HH", *tag)
    at = data.find(needle, start)
    if at < 0:
        raise ValueError(f"tag {tag} not found in {src}")
    data[at + 4:at + 6] = bogus_vr
    dst.write_bytes(bytes(data))
    return dst


def sop_instance_uids(instances: Sequence[Instance]) -> set[str]:
    return {inst.sop_instance_uid for inst in instances}


# --- objects larger than memory should hold ---------------------------------------------------
MULTIFRAME_CT = UID("1.2.840.10008.5.1.4.1.1.2.1")  # Enhanced CT Image Storage


def write_large_multiframe(path: Path, size_bytes: int, *, rows: int = 512, columns: int = 512
                           ) -> Instance:
    """A multi-frame 16-bit image whose Pixel Data is about ``size_bytes`` (whole frames, under
    4 GiB), written a few frames at a time so the writer never holds it: the header through
    pydicom, then the Pixel Data element appended. Each frame differs (its number is stamped
    into it), so a copy that drops or repeats one has another digest."""
    frame = rows * columns * 2
    frames = max(1, size_bytes // frame)
    if frames * frame >= 0xFFFFFFFE:
        raise ValueError("Pixel Data of defined length must stay under 4 GiB")
    ds = new_dataset("CT", size=4, sop_class_uid=MULTIFRAME_CT)
    del ds.PixelData
    ds.Rows, ds.Columns = rows, columns
    ds.NumberOfFrames = frames
    write_part10(ds, path)
    block_frames = 16
    block = np.random.default_rng(7).integers(0, 4096, size=block_frames * rows * columns,
                                              dtype=np.uint16).tobytes()
    with open(path, "ab") as fh:
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, frames * frame))
        for n in range(frames):
            start = (n % block_frames) * frame
            fh.write(struct.pack("<Q", n))
            fh.write(block[start + 8:start + frame])
    return Instance(path, str(MULTIFRAME_CT), str(ds.SOPInstanceUID), ExplicitVRLittleEndian)


def dataset_sha256(path: Path) -> str:
    """SHA-256 of the bytes after the file meta group of the Part 10 file at ``path``, read in
    pieces (the same dataset has the same digest whoever wrote the meta group)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
        digest.update(head[meta_group_end(head):])
        while piece := fh.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()
