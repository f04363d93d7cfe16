"""De-identification's Clean Pixel Data option (engine.morph.pixels through ``deidentify``):
the site's regions are blanked in every frame and sample and nothing else changes; compressed
data comes out uncompressed; an image marked as carrying burned-in text that fits no region is
refused unless the site chose to send it; and the option survives the trip through the frozen
JSON a route puts in the outbox."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from engine.morph import MorphKeys, apply_steps, morph_bytes, write_dataset
from engine.morph.ops import CompileEnv, MorphError
from tests.helpers import dicomgen
from tests.unit.morph.support import SECRET, problems_of, run, steps

US_REGION = {"modality": "US", "manufacturer": "Acme Medical", "rows": 32, "columns": 48,
             "rectangles": [[0, 0, 48, 4], [40, 28, 8, 4]]}


def ultrasound(*, frames: int = 1, planar: int = 0, burned_in: str | None = "YES") -> Dataset:
    """An RGB ultrasound image (32 x 48, 8-bit) whose every pixel is non-zero."""
    ds = dicomgen.new_dataset("CT")
    ds.Modality = "US"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1" if frames == 1 else \
        "1.2.840.10008.5.1.4.1.1.3.1"
    ds.Manufacturer = "ACME MEDICAL"  # regions compare without regard to case
    ds.Rows, ds.Columns = 32, 48
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = planar
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in
    shape = (frames, 32, 48, 3) if frames > 1 else (32, 48, 3)
    pixels = np.random.default_rng(7).integers(1, 256, size=shape, dtype=np.uint8)
    if frames > 1:
        ds.NumberOfFrames = frames
    if planar:
        pixels = np.moveaxis(pixels, -1, -3)  # samples first: RRR...GGG...BBB...
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def blanked_mask(frames: int = 1) -> np.ndarray:
    mask = np.zeros((32, 48), dtype=bool)
    mask[0:4, 0:48] = True
    mask[28:32, 40:48] = True
    return np.broadcast_to(mask, (frames, 32, 48)) if frames > 1 else mask


def codes(ds: Dataset) -> set[str]:
    return {str(i.CodeValue) for i in ds.DeidentificationMethodCodeSequence}


@pytest.mark.parametrize("planar", [0, 1])
def test_regions_are_blanked_and_the_rest_kept(planar: int) -> None:
    ds = ultrasound(planar=planar)
    before = ds.pixel_array.copy()
    out = run(ds, {"op": "deidentify", "clean_pixel_data": [US_REGION]})
    after = out.pixel_array
    mask = blanked_mask()
    assert (after[mask] == 0).all()
    assert (after[~mask] == before[~mask]).all()
    assert out.BurnedInAnnotation == "NO"
    assert out.PlanarConfiguration == 0
    assert "113101" in codes(out)


def test_every_frame_is_blanked() -> None:
    ds = ultrasound(frames=3)
    before = ds.pixel_array.copy()
    after = run(ds, {"op": "deidentify", "clean_pixel_data": [US_REGION]}).pixel_array
    mask = blanked_mask(3)
    assert (after[mask] == 0).all() and (after[~mask] == before[~mask]).all()


def test_compressed_pixel_data_comes_out_uncompressed(tmp_path: Path) -> None:
    ds = dicomgen.new_dataset("CT", size=32)
    ds.Manufacturer = "Acme Medical"
    path = dicomgen.write_part10(ds, tmp_path / "rle.dcm", RLELossless)
    region = {"modality": "CT", "rectangles": [[0, 0, 32, 2]]}
    step = steps({"op": "deidentify", "clean_pixel_data": [region]})
    out = dcmread(io.BytesIO(morph_bytes(path.read_bytes(), step, MorphKeys(SECRET))))
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (out.pixel_array[0:2] == 0).all()
    assert (out.pixel_array[2:] == dcmread(path).pixel_array[2:]).all()


def test_burned_in_without_a_region_is_refused() -> None:
    ds = ultrasound()
    other = dict(US_REGION, manufacturer="Other Vendor")
    with pytest.raises(MorphError, match=r"Burned In Annotation is YES.*manufacturer=ACME"):
        run(ds, {"op": "deidentify", "clean_pixel_data": [other]})
    with pytest.raises(MorphError, match="Burned In Annotation"):
        run(ds, {"op": "deidentify"})  # the default refuses too


def test_burned_in_can_be_sent_as_it_is_when_the_site_says_so() -> None:
    ds = ultrasound()
    out = run(ds, {"op": "deidentify", "burned_in_annotation": "send"})
    assert out.PixelData == ds.PixelData
    assert "113101" not in codes(out)


def test_images_without_burned_in_annotation_pass_untouched() -> None:
    for marker in ("NO", None):
        ds = ultrasound(burned_in=marker)
        out = run(ds, {"op": "deidentify"})
        assert out.PixelData == ds.PixelData


def test_options_survive_the_frozen_json() -> None:
    (step,) = steps({"op": "deidentify", "clean_pixel_data": [US_REGION],
                     "burned_in_annotation": "send"})
    frozen: dict[str, Any] = step.to_json()
    (again,) = steps(frozen)
    assert again == step
    assert "clean pixel data (1 regions)" in step.describe()


@pytest.mark.parametrize(("raw", "message"), [
    ({"clean_pixel_data": [{"rectangles": [[0, 0, 0, 4]]}]}, "rectangles"),
    ({"clean_pixel_data": [{"rectangles": [[0, 0, 4]]}]}, "rectangles"),
    ({"clean_pixel_data": [{"modality": "US"}]}, "rectangles"),
    ({"clean_pixel_data": [{"rectangles": [[0, 0, 4, 4]], "colour": "red"}]}, "unknown key"),
    ({"clean_pixel_data": [{"rectangles": [[0, 0, 4, 4]], "rows": "many"}]}, "positive"),
    ({"clean_pixel_data": {"rectangles": []}}, "list of regions"),
    ({"burned_in_annotation": "blur"}, "refuse or send"),
])
def test_bad_options_are_reported(raw: dict[str, Any], message: str) -> None:
    problems = problems_of({"op": "deidentify", **raw}, CompileEnv(has_secret=True))
    assert any(message in p for p in problems), problems


def test_a_written_cleaned_object_reads_back() -> None:
    out = apply_steps(ultrasound(), steps({"op": "deidentify", "clean_pixel_data": [US_REGION]}),
                      MorphKeys(SECRET))
    again = dcmread(io.BytesIO(write_dataset(out)))
    assert (again.pixel_array[blanked_mask()] == 0).all()
