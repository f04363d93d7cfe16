"""``check_structure`` accepts whole datasets and nothing else; ``read_keys`` reads identifiers.

The central property: a C-STORE that lost bytes must never be stored as if whole. A prefix of a
well-formed dataset is itself well-formed exactly when it ends on a top-level element boundary
(those prefixes are valid, shorter datasets: the walker cannot know more elements were meant to
follow); every other prefix must raise :class:`MalformedDataset`. A deflate stream carries its own
end, so for the deflated syntax every proper prefix must be rejected.
"""

from __future__ import annotations

import contextlib
import struct
import zlib

import pydicom
import pytest
from dicom_samples import (
    DEFLATED,
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    ITEM_DELIMITER,
    JPEG_BASELINE,
    PLAIN_SYNTAXES,
    SEQUENCE_DELIMITER,
    UID_ROOT,
    UNDEFINED,
    encapsulated_dataset,
    encode,
    encode_plain,
    ex,
    ex_identifier_elements,
    ex_identifiers,
    ex_nested,
    ex_sequence,
    im,
    item,
    part10,
    sample_dataset,
    top_level_boundaries,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from engine.errors import MalformedDataset, OutOfResources
from engine.ingress.dimse import encoding
from engine.ingress.dimse.encoding import check_structure, read_keys

SEQUENCE_SHAPES = {
    "sq_undefined-item_defined": (True, False),
    "sq_undefined-item_undefined": (True, True),
    "sq_defined-item_defined": (False, False),
    "sq_defined-item_undefined": (False, True),
}


def assert_only_boundary_prefixes_pass(data: bytes, ts: str, boundaries: set[int]) -> None:
    """Every prefix of ``data`` passes iff it ends on a top-level element boundary."""
    assert len(data) in boundaries
    for cut in range(len(data)):
        prefix = data[:cut]
        if cut in boundaries:
            assert check_structure(prefix, ts).plain == prefix, f"boundary prefix {cut} refused"
        else:
            with pytest.raises(MalformedDataset):
                check_structure(prefix, ts)
                pytest.fail(f"prefix of {cut}/{len(data)} bytes accepted as a whole dataset")


def cumulative(chunks: list[bytes]) -> set[int]:
    ends, total = set(), 0
    for chunk in chunks:
        total += len(chunk)
        ends.add(total)
    return ends


# --- whole datasets ----------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SEQUENCE_SHAPES)
@pytest.mark.parametrize("ts_name", PLAIN_SYNTAXES)
def test_whole_pydicom_datasets_pass_and_keys_match_pydicom(ts_name: str, shape: str) -> None:
    ts = PLAIN_SYNTAXES[ts_name]
    seq_undefined, item_undefined = SEQUENCE_SHAPES[shape]
    ds = sample_dataset(
        sequence_undefined_length=seq_undefined, item_undefined_length=item_undefined
    )
    data = encode(ds, ts)

    inspected = check_structure(data, ts)

    assert inspected.plain == data
    keys = read_keys(inspected)
    back = pydicom.dcmread(pydicom.filebase.DicomBytesIO(part10(ds, ts)))
    assert keys.sop_class_uid == back.SOPClassUID
    assert keys.sop_instance_uid == back.SOPInstanceUID
    assert keys.study_instance_uid == back.StudyInstanceUID
    assert keys.series_instance_uid == back.SeriesInstanceUID
    assert keys.patient_id == back.PatientID == "PID-001"
    assert keys.accession_number == back.AccessionNumber == "ACC-001"
    assert keys.modality == "CT"


def test_deflated_dataset_written_by_pydicom_passes_and_inflates_to_explicit_le() -> None:
    ds = sample_dataset()
    deflated = encode(ds, DEFLATED)
    assert len(deflated) < len(encode(ds, EXPLICIT_LE))  # really compressed

    inspected = check_structure(deflated, DEFLATED)

    assert inspected.plain == encode(ds, EXPLICIT_LE)
    assert read_keys(inspected).sop_instance_uid == ds.SOPInstanceUID


def test_encapsulated_pixel_data_passes() -> None:
    ds = encapsulated_dataset()
    data = encode(ds, JPEG_BASELINE)
    assert data.endswith(SEQUENCE_DELIMITER)  # pixel data is the last, undefined-length element

    inspected = check_structure(data, JPEG_BASELINE)

    assert read_keys(inspected).sop_instance_uid == ds.SOPInstanceUID


def test_undefined_length_un_holding_an_implicit_le_sequence_passes() -> None:
    # PS3.5 6.2.2: a sequence re-encoded as UN keeps undefined lengths and Implicit VR LE inside.
    inner = im(0x00080100, b"CODE01") + im(0x00080102, b"DCM ")
    nested = im(0x0040A730, length=UNDEFINED) + item(inner, undefined=True) + SEQUENCE_DELIMITER
    un = (
        ex(0x00091010, "UN", length=UNDEFINED)
        + item(inner)
        + item(nested, undefined=True)
        + SEQUENCE_DELIMITER
    )
    chunks = [*ex_identifier_elements(), un, ex(0x00100020, "LO", b"PID-UN")]
    data = b"".join(chunks)

    inspected = check_structure(data, EXPLICIT_LE)

    assert read_keys(inspected).patient_id == "PID-UN"
    assert_only_boundary_prefixes_pass(data, EXPLICIT_LE, cumulative(chunks))


def test_undefined_length_un_must_hold_items() -> None:
    garbage = ex(0x00091010, "UN", length=UNDEFINED) + im(0x00100010, b"Doe^J ")
    with pytest.raises(MalformedDataset):
        check_structure(ex_identifiers() + garbage + SEQUENCE_DELIMITER, EXPLICIT_LE)


# --- truncation --------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SEQUENCE_SHAPES)
@pytest.mark.parametrize("ts_name", PLAIN_SYNTAXES)
def test_every_truncation_is_refused_unless_on_an_element_boundary(
    ts_name: str, shape: str
) -> None:
    ts = PLAIN_SYNTAXES[ts_name]
    seq_undefined, item_undefined = SEQUENCE_SHAPES[shape]
    ds = sample_dataset(
        sequence_undefined_length=seq_undefined, item_undefined_length=item_undefined
    )
    data = encode(ds, ts)
    assert_only_boundary_prefixes_pass(data, ts, top_level_boundaries(ds, ts))


def test_every_truncation_of_encapsulated_pixel_data_is_refused() -> None:
    ds = encapsulated_dataset()
    data = encode(ds, JPEG_BASELINE)
    assert_only_boundary_prefixes_pass(data, JPEG_BASELINE, top_level_boundaries(ds, JPEG_BASELINE))


def test_every_truncation_of_a_deflated_dataset_is_refused() -> None:
    # The deflate stream ends with a final block: a shorter stream is truncated, whatever the
    # inflated prefix happens to look like.
    data = encode(sample_dataset(), DEFLATED)
    check_structure(data, DEFLATED)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflater.decompress(data)
    # PS3.5 A.5: an odd-length stream is padded with one NUL; without it, it is still whole.
    stream_end = len(data) - len(inflater.unused_data)
    assert inflater.unused_data in (b"", b"\x00")
    accepted = []
    for cut in range(stream_end):
        try:
            check_structure(data[:cut], DEFLATED)
        except MalformedDataset:
            continue
        accepted.append(cut)
    assert accepted == [], f"truncated deflated datasets accepted at lengths {accepted}"


def test_empty_data_is_refused() -> None:
    for ts in (EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, DEFLATED):
        with pytest.raises(MalformedDataset):
            check_structure(b"", ts)


# --- broken encodings --------------------------------------------------------------------------
@pytest.mark.parametrize("vr", [b"\x00\x00", b"ob", b"1A", b"U\x00", b"  "])
def test_a_vr_that_is_not_two_capital_letters_is_refused(vr: bytes) -> None:
    bogus = struct.pack("<HH", 0x0010, 0x0010) + vr + struct.pack("<H", 4) + b"Doe "
    with pytest.raises(MalformedDataset, match="VR"):
        check_structure(ex_identifiers() + bogus, EXPLICIT_LE)


def test_implicit_vr_data_sent_as_explicit_is_refused() -> None:
    # A classic misconfiguration: the length field's first bytes are read as the VR.
    data = encode(sample_dataset(), IMPLICIT_LE)
    with pytest.raises(MalformedDataset):
        check_structure(data, EXPLICIT_LE)


def test_an_unknown_vr_is_refused() -> None:
    bogus = ex(0x00280010, "ZZ", b"\x02\x00")
    with pytest.raises(MalformedDataset):
        check_structure(ex_identifiers() + bogus, EXPLICIT_LE)


@pytest.mark.parametrize(
    "stray",
    {
        "item delimiter at top level": ITEM_DELIMITER,
        "sequence delimiter at top level": SEQUENCE_DELIMITER,
        "item at top level": item(ex(0x00100010, "PN", b"Doe ")),
    }.items(),
    ids=lambda p: p[0],
)
def test_delimiters_outside_a_sequence_are_refused(stray: tuple[str, bytes]) -> None:
    with pytest.raises(MalformedDataset):
        check_structure(ex_identifiers() + stray[1] + ex(0x00100020, "LO", b"P1"), EXPLICIT_LE)


def test_a_non_item_inside_an_undefined_length_sequence_is_refused() -> None:
    seq = (
        ex(0x00081140, "SQ", length=UNDEFINED) + ex(0x00100010, "PN", b"Doe ") + SEQUENCE_DELIMITER
    )
    with pytest.raises(MalformedDataset, match="expected an item"):
        check_structure(ex_identifiers() + seq, EXPLICIT_LE)


def test_an_item_delimiter_inside_a_defined_length_item_is_refused() -> None:
    body = ex(0x00080100, "SH", b"CODE01") + ITEM_DELIMITER
    seq = ex_sequence(0x00081140, [item(body)])
    with pytest.raises(MalformedDataset, match="item delimiter"):
        check_structure(ex_identifiers() + seq, EXPLICIT_LE)


def test_a_sequence_closed_by_an_item_delimiter_is_refused() -> None:
    seq = (
        ex(0x00081140, "SQ", length=UNDEFINED)
        + item(ex(0x00080100, "SH", b"CODE01"))
        + ITEM_DELIMITER
    )
    with pytest.raises(MalformedDataset):
        check_structure(ex_identifiers() + seq, EXPLICIT_LE)


@pytest.mark.parametrize("vr", ["OB", "UT", "UC"])
def test_undefined_length_is_refused_outside_sq_un_and_pixel_data(vr: str) -> None:
    element = ex(0x00091011, vr, length=UNDEFINED) + item(b"abcd") + SEQUENCE_DELIMITER
    with pytest.raises(MalformedDataset, match="undefined length"):
        check_structure(ex_identifiers() + element, EXPLICIT_LE)


def test_a_pixel_data_fragment_of_undefined_length_is_refused() -> None:
    pixels = (
        ex(0x7FE00010, "OB", length=UNDEFINED)
        + item(b"")
        + struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED)
        + b"\xff\xd8\xff\xd9"
        + SEQUENCE_DELIMITER
    )
    with pytest.raises(MalformedDataset, match="fragment"):
        check_structure(ex_identifiers() + pixels, EXPLICIT_LE)


def test_an_element_longer_than_the_data_is_refused() -> None:
    with pytest.raises(MalformedDataset, match="truncated"):
        check_structure(ex_identifiers() + ex(0x00100010, "PN", b"Doe ", length=40), EXPLICIT_LE)


def test_a_broken_item_inside_a_defined_length_sequence_is_refused() -> None:
    broken_item = struct.pack("<HHI", 0xFFFE, 0xE000, 1000) + b"abcd"  # claims 1000 bytes
    seq = ex(0x00081140, "SQ", broken_item)
    with pytest.raises(MalformedDataset):
        check_structure(ex_identifiers() + seq, EXPLICIT_LE)


# --- nesting -------------------------------------------------------------------------------------
@pytest.mark.parametrize("undefined", [True, False], ids=["undefined", "defined_items"])
def test_ordinary_nesting_passes(undefined: bool) -> None:
    data = ex_identifiers() + ex_nested(8, undefined=undefined)
    check_structure(data, EXPLICIT_LE)


@pytest.mark.parametrize("depth", [64, 5000])
def test_too_deep_nesting_is_refused_without_exhausting_the_stack(depth: int) -> None:
    data = ex_identifiers() + ex_nested(depth)
    with pytest.raises(MalformedDataset, match="nested too deeply"):
        check_structure(data, EXPLICIT_LE)


def test_nesting_limit_applies_to_undefined_length_un_too() -> None:
    body = im(0x00080100, b"CODE01")
    for _ in range(64):
        body = im(0x0040A730, length=UNDEFINED) + item(body, undefined=True) + SEQUENCE_DELIMITER
    data = (
        ex_identifiers()
        + ex(0x00091010, "UN", length=UNDEFINED)
        + item(body, undefined=True)
        + SEQUENCE_DELIMITER
    )
    with pytest.raises(MalformedDataset, match="nested too deeply"):
        check_structure(data, EXPLICIT_LE)


# --- deflate -------------------------------------------------------------------------------------
def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def test_a_deflate_bomb_is_refused_at_the_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoding, "MAX_INFLATED_BYTES", 64 * 1024)
    plain = ex_identifiers() + ex(0x7FE00010, "OB", b"\x00" * (1024 * 1024))
    bomb = _raw_deflate(plain)
    assert len(bomb) < 2048  # a 1 MiB dataset in about a kilobyte

    with pytest.raises(MalformedDataset, match="size limit"):
        check_structure(bomb, DEFLATED)


def test_a_deflated_dataset_below_the_limit_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = ex_identifiers() + ex(0x7FE00010, "OB", b"\x00" * 4096)
    monkeypatch.setattr(encoding, "MAX_INFLATED_BYTES", len(plain))
    assert check_structure(_raw_deflate(plain), DEFLATED).plain == plain


@pytest.mark.parametrize(
    "data", [b"not deflate at all", b"\xff" * 64, zlib.compress(b"zlib header, not raw deflate")]
)
def test_data_that_does_not_inflate_is_refused(data: bytes) -> None:
    with pytest.raises(MalformedDataset):
        check_structure(data, DEFLATED)


# --- read_keys -----------------------------------------------------------------------------------
@pytest.mark.parametrize("ts_name", PLAIN_SYNTAXES)
def test_read_keys_reports_missing_identifiers_as_none(ts_name: str) -> None:
    ts = PLAIN_SYNTAXES[ts_name]
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = UID_ROOT + "5"
    keys = read_keys(check_structure(encode_plain(ds, ts), ts))
    assert keys.sop_class_uid == "1.2.840.10008.5.1.4.1.1.7"
    assert keys.sop_instance_uid == UID_ROOT + "5"  # the NUL pad is not part of the UID
    assert (
        keys.study_instance_uid,
        keys.series_instance_uid,
        keys.patient_id,
        keys.accession_number,
        keys.modality,
    ) == (None, None, None, None, None)


def test_read_keys_decodes_text_in_the_specific_character_set() -> None:
    ds = sample_dataset(patient_id="MÜLLER-7", accession_number="ÅÄÖ1")
    data = encode(ds, EXPLICIT_LE)
    assert "MÜLLER-7".encode("latin-1") in data
    keys = read_keys(check_structure(data, EXPLICIT_LE))
    assert keys.patient_id == "MÜLLER-7"
    assert keys.accession_number == "ÅÄÖ1"


def test_read_keys_ignores_identifiers_inside_sequences() -> None:
    # Other Patient IDs Sequence items carry their own Patient ID: the patient is the top one.
    other = pydicom.Dataset()
    other.PatientID = "OTHER-ID"
    ds = sample_dataset(patient_id="TOP-ID")
    ds.OtherPatientIDsSequence = [other]
    for ts in PLAIN_SYNTAXES.values():
        assert read_keys(check_structure(encode(ds, ts), ts)).patient_id == "TOP-ID"


def test_read_keys_refuses_a_uid_that_is_not_ascii() -> None:
    data = ex(0x00080016, "UI", b"1.2\xff") + ex(0x00080018, "UI", b"1.23")
    with pytest.raises(MalformedDataset):
        read_keys(check_structure(data, EXPLICIT_LE))


# --- properties ----------------------------------------------------------------------------------
TAGS_SHORT = [(0x00100010, "PN"), (0x00080060, "CS"), (0x00200013, "IS"), (0x00280010, "US")]
TAGS_LONG = [(0x00420011, "OB"), (0x00181030, "UT"), (0x00091012, "UN")]


@st.composite
def elements(draw: st.DrawFn, implicit: bool, depth: int = 0) -> bytes:
    """One random element (possibly a sequence of random items), Explicit or Implicit VR LE."""
    kinds = ["short", "long"] + (["sequence"] if depth < 3 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "sequence":
        items = []
        for body in draw(st.lists(st.lists(elements(implicit, depth + 1), max_size=3), max_size=3)):
            items.append(item(b"".join(body), undefined=draw(st.booleans())))
        undefined = draw(st.booleans())
        tag = 0x0040A730
        if implicit:
            content = b"".join(items)
            if undefined:
                return im(tag, length=UNDEFINED) + content + SEQUENCE_DELIMITER
            return im(tag, content)
        return ex_sequence(tag, items, undefined=undefined)
    tag, vr = draw(st.sampled_from(TAGS_SHORT if kind == "short" else TAGS_LONG))
    value = draw(st.binary(max_size=24))
    value += b"\x00" * (len(value) % 2)
    return im(tag, value) if implicit else ex(tag, vr, value)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), implicit=st.booleans())
def test_random_datasets_pass_whole_and_fail_truncated(data: st.DataObject, implicit: bool) -> None:
    chunks = data.draw(st.lists(elements(implicit), min_size=1, max_size=6))
    ts = IMPLICIT_LE if implicit else EXPLICIT_LE
    assert_only_boundary_prefixes_pass(b"".join(chunks), ts, cumulative(chunks))


_FUZZ_SEEDS = {ts: encode(sample_dataset(), ts) for ts in (*PLAIN_SYNTAXES.values(), DEFLATED)}


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=300, deadline=None)
@given(
    ts=st.sampled_from(sorted(_FUZZ_SEEDS)),
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
        min_size=1,
        max_size=6,
    ),
)
def test_corrupted_bytes_raise_only_malformed_dataset(
    ts: str, edits: list[tuple[int, int]]
) -> None:
    data = bytearray(_FUZZ_SEEDS[ts])
    for position, value in edits:
        data[position % len(data)] = value
    with contextlib.suppress(MalformedDataset):
        read_keys(check_structure(bytes(data), ts))


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=200, deadline=None)
@given(ts=st.sampled_from(sorted(_FUZZ_SEEDS)), junk=st.binary(min_size=1, max_size=200))
def test_random_bytes_raise_only_malformed_dataset(ts: str, junk: bytes) -> None:
    with contextlib.suppress(MalformedDataset):
        read_keys(check_structure(junk, ts))


def test_a_bomb_costs_no_more_than_the_limit_and_gives_its_budget_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoding, "MAX_INFLATED_BYTES", 3 * 1024 * 1024)
    monkeypatch.setattr(encoding, "_INFLATE_STEP", 1024 * 1024)
    bomb = _raw_deflate(ex_identifiers() + ex(0x7FE00010, "OB", b"\x00" * (64 * 1024 * 1024)))
    with pytest.raises(MalformedDataset, match=r"size limit \(3 MiB\)"):
        check_structure(bomb, DEFLATED)
    assert encoding._BUDGET.used == 0
    plain = ex_identifiers() + ex(0x7FE00010, "OB", b"\x00" * 4096)
    assert check_structure(_raw_deflate(plain), DEFLATED).plain == plain
    assert encoding._BUDGET.used == 0


def test_a_dataset_that_finds_the_budget_used_by_others_is_out_of_resources(
        monkeypatch: pytest.MonkeyPatch) -> None:
    plain = ex_identifiers() + ex(0x7FE00010, "OB", b"\x00" * 4096)
    assert encoding._BUDGET.take(encoding.INFLATE_BUDGET)  # another association's inflate
    try:
        with pytest.raises(OutOfResources):
            check_structure(_raw_deflate(plain), DEFLATED)
    finally:
        encoding._BUDGET.give(encoding.INFLATE_BUDGET)
    assert encoding._BUDGET.used == 0
    assert check_structure(_raw_deflate(plain), DEFLATED).plain == plain


def test_terms_that_are_not_defined_terms_are_named() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = ["ISO 2022 IR 6", "ISO IR 87", "ISO 2022 IR 87"]
    ds.SOPInstanceUID = "1.2.3"
    raw = DicomBytesIO()
    raw.is_little_endian, raw.is_implicit_VR = True, False
    write_dataset(raw, ds)
    with pytest.warns(UserWarning):
        keys = read_keys(check_structure(raw.getvalue(), EXPLICIT_LE))
    assert keys.unknown_charset_terms == ("ISO IR 87",)
    assert keys.sop_instance_uid == "1.2.3"
