"""DICOM bytes for unit tests: pydicom-written datasets and hand-built elements.

``encode(ds, ts)`` returns what an SCU puts on the wire for a C-STORE (the dataset after the
file meta group, deflated for the deflated syntax): pydicom writes a Part 10 file and the meta
group is cut off, so the bytes are pydicom's own. The ``ex_*`` functions build Explicit VR
Little Endian elements by hand, for shapes pydicom will not write (undefined-length UN, bogus
VRs, stray delimiters, deep nesting).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable

from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's example root

EXPLICIT_LE = str(ExplicitVRLittleEndian)
IMPLICIT_LE = str(ImplicitVRLittleEndian)
EXPLICIT_BE = str(ExplicitVRBigEndian)
DEFLATED = str(DeflatedExplicitVRLittleEndian)
JPEG_BASELINE = str(JPEGBaseline8Bit)

#: the uncompressed syntaxes by a short id for parametrised tests
PLAIN_SYNTAXES = {
    "explicit_le": EXPLICIT_LE,
    "implicit_le": IMPLICIT_LE,
    "explicit_be": EXPLICIT_BE,
}

LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
UNDEFINED = 0xFFFFFFFF


def sample_dataset(
    sop_instance_uid: str = UID_ROOT + "1.1",
    *,
    sop_class_uid: str = CT_IMAGE_STORAGE,
    patient_id: str = "PID-001",
    accession_number: str = "ACC-001",
    nested: bool = True,
    sequence_undefined_length: bool = True,
    item_undefined_length: bool = False,
    pixel_data: bool = True,
) -> Dataset:
    """A small CT image with the identifiers intake reads and a two-level nested sequence."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate = "20250101"
    ds.AccessionNumber = accession_number
    ds.Modality = "CT"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = patient_id
    ds.StudyInstanceUID = UID_ROOT + "2.1"
    ds.SeriesInstanceUID = UID_ROOT + "3.1"
    if nested:
        code = Dataset()
        code.CodeValue = "113691"
        code.CodingSchemeDesignator = "DCM"
        code.CodeMeaning = "IHE Protocol"
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class_uid
        ref.ReferencedSOPInstanceUID = UID_ROOT + "9.9"
        ref.PurposeOfReferenceCodeSequence = [code]
        ds.ReferencedImageSequence = [ref]
        for seq in (ds["ReferencedImageSequence"], ref["PurposeOfReferenceCodeSequence"]):
            seq.is_undefined_length = sequence_undefined_length
            for item in seq.value:
                item.is_undefined_length_sequence_item = item_undefined_length
    ds.InstanceNumber = 1
    if pixel_data:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = 2
        ds.Columns = 2
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.PixelData = struct.pack("<4H", 1, 2, 3, 4)
    return ds


def encapsulated_dataset(sop_instance_uid: str = UID_ROOT + "1.7") -> Dataset:
    """A dataset with encapsulated (JPEG Baseline) pixel data: offset table plus two fragments."""
    ds = sample_dataset(sop_instance_uid, pixel_data=False)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 2
    ds.Columns = 2
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = 2
    ds.PixelData = encapsulate([b"\xff\xd8frame-one\xff\xd9", b"\xff\xd8frame-2\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def part10(ds: Dataset, transfer_syntax: str) -> bytes:
    """``ds`` as a Part 10 file written by pydicom."""
    ds = ds.copy()
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = transfer_syntax
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def meta_end(data: bytes) -> int:
    """Offset of the dataset in a Part 10 file (after preamble, ``DICM`` and group 0002)."""
    assert data[128:132] == b"DICM"
    tag, vr, _length, group_length = struct.unpack_from("<I2sHI", data, 132)
    assert (tag, vr) == (0x00000002, b"UL")
    return 132 + 12 + group_length


def encode(ds: Dataset, transfer_syntax: str) -> bytes:
    """The dataset bytes as an SCU sends them in ``transfer_syntax`` (no meta group)."""
    data = part10(ds, transfer_syntax)
    return data[meta_end(data) :]


def top_level_boundaries(ds: Dataset, transfer_syntax: str) -> set[int]:
    """Offsets at which a top-level element ends (a prefix there is itself a whole dataset)."""
    ends = set()
    tags = sorted(ds.keys())  # written in tag order
    for count in range(1, len(tags) + 1):
        head = Dataset()
        for tag in tags[:count]:
            head.add(ds[tag])
        ends.add(len(encode_plain(head, transfer_syntax)))
    return ends


def encode_plain(ds: Dataset, transfer_syntax: str) -> bytes:
    """Like :func:`encode` for datasets without SOP identifiers (no file meta needed)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian = transfer_syntax != EXPLICIT_BE
    fp.is_implicit_VR = transfer_syntax == IMPLICIT_LE
    write_dataset(fp, ds)
    return fp.getvalue()


# --- hand-built Explicit VR Little Endian --------------------------------------------------------
def ex(tag: int, vr: str, value: bytes = b"", *, length: int | None = None) -> bytes:
    """One Explicit VR LE element; ``length`` overrides the encoded length."""
    size = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("latin-1")
    if vr in LONG_VRS:
        return head + struct.pack("<HI", 0, size) + value
    return head + struct.pack("<H", size) + value


def im(tag: int, value: bytes = b"", *, length: int | None = None) -> bytes:
    """One Implicit VR LE element."""
    size = len(value) if length is None else length
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, size) + value


ITEM_DELIMITER = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
SEQUENCE_DELIMITER = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def item(body: bytes, *, undefined: bool = False) -> bytes:
    if undefined:
        return struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED) + body + ITEM_DELIMITER
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


def ex_sequence(tag: int, items: Iterable[bytes], *, undefined: bool = True) -> bytes:
    body = b"".join(items)
    if undefined:
        return ex(tag, "SQ", length=UNDEFINED) + body + SEQUENCE_DELIMITER
    return ex(tag, "SQ", body)


def ex_nested(depth: int, *, undefined: bool = True) -> bytes:
    """``depth`` sequences nested inside one another, the innermost item holding a Code Value."""
    body = ex(0x00080100, "SH", b"CODE01")
    for _ in range(depth):
        body = ex_sequence(0x0040A730, [item(body, undefined=undefined)], undefined=undefined)
    return body


def ex_identifier_elements(
    sop_instance_uid: str = UID_ROOT + "1.1", sop_class_uid: str = CT_IMAGE_STORAGE
) -> list[bytes]:
    """SOP Class and Instance UID elements, padded to even length, one chunk each."""

    def ui(tag: int, uid: str) -> bytes:
        raw = uid.encode("ascii")
        return ex(tag, "UI", raw + b"\x00" * (len(raw) % 2))

    return [ui(0x00080016, sop_class_uid), ui(0x00080018, sop_instance_uid)]


def ex_identifiers(
    sop_instance_uid: str = UID_ROOT + "1.1", sop_class_uid: str = CT_IMAGE_STORAGE
) -> bytes:
    return b"".join(ex_identifier_elements(sop_instance_uid, sop_class_uid))
