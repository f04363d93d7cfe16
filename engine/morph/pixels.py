"""Clean Pixel Data (PS3.15 E.3.1): blanking the regions of an image where a device burns in text.

No file says where a device writes the patient's name into its pixels, so the site names the
regions per kind of image (:class:`PixelRegion`: modality, manufacturer, model and matrix size,
each optional, with rectangles in pixels), as de-identification tools commonly do. The first
region whose criteria the original object meets is blanked (set to 0) in every frame and
sample. An object that says it carries burned-in annotation (Burned In Annotation YES) and
meets no region is refused unless the site chose to send such objects as they are: a refusal
is a dead letter with the reason, where sending would leak what the profile exists to remove.

Compressed pixel data is decompressed with pydicom's handlers and stays uncompressed (Explicit
VR Little Endian), because no encoder is at hand for most lossy syntaxes and re-compressing a
lossy image loses more. Packed 1-bit and subsampled YCbCr native data are refused: blanking
them correctly needs a layout this module does not write. Pure: no I/O, deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from engine.morph.ops import MorphError

#: criteria a region may name, with the attribute each compares against
_CRITERIA = {"modality": "Modality", "manufacturer": "Manufacturer",
             "model": "ManufacturerModelName", "rows": "Rows", "columns": "Columns"}
REGION_KEYS = frozenset({*_CRITERIA, "rectangles"})
BURNED_IN_POLICIES = ("refuse", "send")


@dataclass(frozen=True)
class PixelRegion:
    """Where one kind of image carries burned-in text: criteria (``None``: any) and
    rectangles as (x, y, width, height) in pixels from the top left corner."""

    rectangles: tuple[tuple[int, int, int, int], ...]
    modality: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    rows: int | None = None
    columns: int | None = None

    def matches(self, ds: Dataset) -> bool:
        for key, keyword in _CRITERIA.items():
            wanted = getattr(self, key)
            if wanted is None:
                continue
            have = ds.get(keyword)
            if isinstance(wanted, int):
                if have is None or int(have) != wanted:
                    return False
            elif str(have or "").strip().casefold() != wanted.strip().casefold():
                return False
        return True

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in _CRITERIA
                               if getattr(self, k) is not None}
        out["rectangles"] = [list(r) for r in self.rectangles]
        return out


def parse_regions(raw: object, problem: Any) -> tuple[PixelRegion, ...]:
    """Regions from a route file's ``clean_pixel_data`` list; ``problem(key, message)`` is
    called for each error."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problem("clean_pixel_data", "expected a list of regions")
        return ()
    regions = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping):
            problem("clean_pixel_data", f"[{i}]: expected a mapping")
            continue
        unknown = sorted(set(item) - REGION_KEYS)
        if unknown:
            problem("clean_pixel_data", f"[{i}]: unknown key(s) {', '.join(unknown)} "
                                        f"(allowed: {', '.join(sorted(REGION_KEYS))})")
            continue
        rectangles = _rectangles(item.get("rectangles"))
        if rectangles is None:
            problem("clean_pixel_data", f"[{i}].rectangles: expected a non-empty list of "
                                        "[x, y, width, height] with x, y >= 0 and sizes > 0")
            continue
        criteria: dict[str, Any] = {}
        for key in _CRITERIA:
            value = item.get(key)
            if value is None:
                continue
            if key in ("rows", "columns"):
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    problem("clean_pixel_data", f"[{i}].{key}: expected a positive number")
                    continue
            elif not isinstance(value, str) or not value.strip():
                problem("clean_pixel_data", f"[{i}].{key}: expected text")
                continue
            criteria[key] = value
        regions.append(PixelRegion(rectangles=rectangles, **criteria))
    return tuple(regions)


def _rectangles(raw: object) -> tuple[tuple[int, int, int, int], ...] | None:
    if not isinstance(raw, list) or not raw:
        return None
    out = []
    for rect in raw:
        if not isinstance(rect, list) or len(rect) != 4 or any(
                isinstance(v, bool) or not isinstance(v, int) for v in rect):
            return None
        x, y, w, h = rect
        if x < 0 or y < 0 or w < 1 or h < 1:
            return None
        out.append((x, y, w, h))
    return tuple(out)


def says_burned_in(ds: Dataset) -> bool:
    return str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES"


def describe_image(ds: Dataset) -> str:
    """The criteria values of ``ds``, for a refusal a site can turn into a region."""
    return ", ".join(f"{k}={ds.get(v, '')}" for k, v in _CRITERIA.items())


def blank(ds: Dataset, region: PixelRegion) -> None:
    """Set ``region``'s rectangles to 0 in every frame of ``ds`` (in place); the pixel data
    ends up uncompressed. Raises :class:`MorphError` for data this module cannot rewrite."""
    if "PixelData" not in ds:
        return
    meta = getattr(ds, "file_meta", None)
    syntax = UID(meta.get("TransferSyntaxUID", ExplicitVRLittleEndian) if meta is not None
                 else ExplicitVRLittleEndian)
    try:
        if syntax.is_compressed:
            # Leaves Explicit VR Little Endian, colour as RGB; the instance keeps its UID.
            ds.decompress(generate_instance_uid=False)
    except Exception as exc:
        raise MorphError(f"cannot decompress {syntax.name} to clean its pixel data: {exc}"
                         ) from exc
    if int(ds.get("BitsAllocated", 0) or 0) == 1:
        raise MorphError("cannot clean pixel data of 1-bit images")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric.startswith("YBR_") and photometric != "YBR_FULL":
        raise MorphError(f"cannot clean native {photometric} pixel data")
    try:
        pixels = ds.pixel_array.copy()
    except Exception as exc:
        raise MorphError(f"cannot read the pixel data to clean it: {exc}") from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    rows, columns = int(ds.Rows), int(ds.Columns)
    for x, y, width, height in region.rectangles:
        x0, x1 = min(x, columns), min(x + width, columns)
        y0, y1 = min(y, rows), min(y + height, rows)
        if frames > 1:
            pixels[:, y0:y1, x0:x1, ...] = 0
        else:
            pixels[y0:y1, x0:x1, ...] = 0
    ds.PixelData = pixels.tobytes()
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        ds.PlanarConfiguration = 0  # pixel_array gives samples interleaved
    ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
    ds.BurnedInAnnotation = "NO"


def clean_pixel_data(ds: Dataset, regions: Sequence[PixelRegion], policy: str) -> bool:
    """Blank the first region ``ds`` meets; ``True`` if one was blanked. An object marked as
    carrying burned-in annotation that meets none is refused under the ``refuse`` policy."""
    for region in regions:
        if region.matches(ds):
            blank(ds, region)
            return True
    if policy == "refuse" and says_burned_in(ds):
        raise MorphError("Burned In Annotation is YES and no clean_pixel_data region fits "
                         f"this image ({describe_image(ds)}): not sent, as it may show "
                         "identifying text")
    return False
