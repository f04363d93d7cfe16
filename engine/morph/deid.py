"""De-identification by the DICOM PS3.15 Basic Application Level Confidentiality Profile.

Owns the ``deidentify`` op: every attribute of Table E.1-1 (:mod:`engine.morph.ps315`) gets the
action the profile and the chosen options give it, at every nesting level; private attributes,
curve groups (50xx) and overlay groups (60xx) are removed; the profile's marks are added
(Patient Identity Removed, De-identification Method and its code sequence, Longitudinal Temporal
Information Modified). It must stay deterministic: dummy values are constants, UIDs are remapped
with the site secret (:func:`engine.morph.ops.remap_uid`), and a "modified" date is shifted by
the per-patient offset, so the same object and settings always give the same bytes.

How the standard's choices are made here (the profile leaves them to the implementation):

* compound actions, whose choice depends on the IOD's type of the attribute, take the one that
  keeps any IOD valid: ``X/Z`` → Z, ``X/D``, ``Z/D``, ``X/Z/D`` → D; ``X/Z/U*`` keeps the
  sequence and replaces the UIDs inside it;
* D (dummy) writes a constant per VR (``ANONYMOUS``, ``19000101``, ``0``...), a remapped UID
  for UI, an empty sequence for SQ, and empties binary values;
* C (clean) of a descriptor keeps the text with every identifying value of the original
  object (the patient's names, IDs, accession number, birth date) replaced by ``***``; C of a
  date under "modified dates" shifts it by the per-patient offset;
* options: ``retain_uids``, ``retain_device_identity``, ``retain_institution_identity``,
  ``retain_patient_characteristics``, ``retain_longitudinal_dates`` (``full`` keeps dates,
  ``modified`` shifts them per patient), ``clean_descriptors``; each applies its column of the
  table. ``clean_pixel_data`` (Clean Pixel Data Option, :mod:`engine.morph.pixels`) blanks
  the burned-in text regions the site names for a kind of image; an image that says it carries
  burned-in annotation and fits no region is refused (``burned_in_annotation: refuse``, the
  default) or sent as it is (``send``). Retain Safe Private and Clean Visual Features are not
  offered.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from engine.morph import charset
from engine.morph.ops import (
    DEFAULT_UID_PREFIX,
    CompileEnv,
    HashValue,
    MorphKeys,
    MorphStep,
    _Fields,
    _valid_prefix,
    patient_offset,
    remap_element,
    shift_element,
)
from engine.morph.paths import is_private, parse_path, text_values
from engine.morph.pixels import BURNED_IN_POLICIES, PixelRegion, clean_pixel_data, parse_regions
from engine.morph.ps315 import PROFILE_BY_TAG, ProfileRow

DEID_KEYS: Final = frozenset({
    "retain_uids", "retain_device_identity", "retain_institution_identity",
    "retain_patient_characteristics", "retain_longitudinal_dates", "clean_descriptors",
    "max_shift_days", "uid_prefix", "pseudonymize_patient", "clean_pixel_data",
    "burned_in_annotation",
})
_COMPOUND: Final = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U*"}
_DUMMY: Final[dict[str, Any]] = {
    "AE": "ANONYMOUS", "AS": "000D", "CS": "ANONYMOUS", "DA": "19000101", "DS": "0",
    "DT": "19000101000000", "IS": "0", "LO": "ANONYMOUS", "LT": "ANONYMOUS", "PN": "ANONYMOUS",
    "SH": "ANONYMOUS", "ST": "ANONYMOUS", "TM": "000000", "UC": "ANONYMOUS", "UT": "ANONYMOUS",
    "UR": "http://anonymous.invalid", "FL": 0.0, "FD": 0.0, "SL": 0, "SS": 0, "UL": 0, "US": 0,
    "SV": 0, "UV": 0,
}
#: PS3.16 CID 7050 De-identification Method codes
_CODES: Final[dict[str, tuple[str, str]]] = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_pixel_data": ("113101", "Clean Pixel Data Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "full": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "modified": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}
_SCRUBBED: Final = "***"


@dataclass(frozen=True)
class DeidOptions:
    retain_uids: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    retain_patient_characteristics: bool = False
    #: ``off`` (dates removed or dummied), ``full`` (kept), ``modified`` (shifted per patient)
    retain_longitudinal_dates: str = "off"
    clean_descriptors: bool = False
    max_shift_days: int = 365
    uid_prefix: str = DEFAULT_UID_PREFIX
    #: Patient ID and Patient's Name become an HMAC pseudonym of the original Patient ID (and
    #: issuer) instead of being emptied, so one patient's studies stay linked
    pseudonymize_patient: bool = False
    #: burned-in text regions per kind of image (Clean Pixel Data Option)
    clean_pixel_data: tuple[PixelRegion, ...] = ()
    #: an image with Burned In Annotation YES that fits no region: ``refuse`` or ``send``
    burned_in_annotation: str = "refuse"

    def letters(self) -> frozenset[str]:
        out = set()
        if self.retain_uids:
            out.add("U")
        if self.retain_device_identity:
            out.add("D")
        if self.retain_institution_identity:
            out.add("I")
        if self.retain_patient_characteristics:
            out.add("P")
        if self.retain_longitudinal_dates != "off":
            out.add("L")
        if self.clean_descriptors:
            out.add("C")
        return frozenset(out)


def effective_action(row: ProfileRow, options: DeidOptions) -> str:
    """The action for ``row`` under ``options``: an enabled option's K wins, then its C, then
    its X; otherwise the basic profile's action, compound actions resolved (module docstring)."""
    letters = options.letters()
    chosen: str | None = None
    for letter, action in row.options:
        if letter not in letters:
            continue
        if letter == "L":
            action = "K" if options.retain_longitudinal_dates == "full" else "C"
        if action == "K":
            return "K"
        if chosen != "C":
            chosen = action
    if chosen is not None:
        return chosen
    return _COMPOUND.get(row.action, row.action)


class _Run:
    """One application: the identifying values and the date offset of this object."""

    def __init__(self, ds: Dataset, options: DeidOptions, keys: MorphKeys) -> None:
        self.options = options
        self.keys = keys
        self.offset = patient_offset(ds, keys, options.max_shift_days) \
            if options.retain_longitudinal_dates == "modified" else 0
        self.scrub = _scrubber(ds) if options.clean_descriptors else None

    def process(self, ds: Dataset) -> None:
        for elem in list(ds):
            tag = int(elem.tag)
            group = tag >> 16
            if is_private(tag) or (0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF):
                # Private data is not known to be safe; curves and overlays may carry burned
                # annotations (their Data and Comments are X, so the whole group goes).
                del ds[elem.tag]
                continue
            row = PROFILE_BY_TAG.get(tag)
            if row is None:
                if elem.VR == "SQ" and elem.value:
                    for item in elem.value:
                        self.process(item)
                continue
            self.act(ds, elem, effective_action(row, self.options))

    def act(self, ds: Dataset, elem: DataElement, action: str) -> None:
        vr = elem.VR
        if action == "X":
            del ds[elem.tag]
        elif action == "K" or action == "U*" or (action == "U" and vr == "SQ"):
            if vr == "SQ" and elem.value:
                for item in elem.value:
                    self.process(item)
        elif action == "Z":
            elem.value = Sequence() if vr == "SQ" else elem.empty_value
        elif action == "U" or (action == "D" and vr == "UI"):
            if vr == "UI":
                remap_element(elem, self.keys, self.options.uid_prefix)
            else:
                del ds[elem.tag]  # a non-UID in a U row (never in the table; be safe)
        elif action == "D":
            if vr == "SQ":
                elem.value = Sequence()
            elif vr in _DUMMY:
                elem.value = _DUMMY[vr]
            else:
                elem.value = elem.empty_value
        elif action == "C":
            self.clean(ds, elem)
        else:
            del ds[elem.tag]  # an action this code does not know: remove, never leak

    def clean(self, ds: Dataset, elem: DataElement) -> None:
        vr = elem.VR
        if vr in ("DA", "DT"):
            if self.options.retain_longitudinal_dates == "modified":
                shift_element(elem, self.offset)
            return
        if vr == "TM":
            return  # shifting by whole days leaves times as they are
        if vr == "SQ":
            for item in elem.value or ():
                self.process(item)
            return
        if self.scrub is None:
            # Cleaning was not asked for (a C from the patient characteristics column, say):
            # remove rather than keep text nobody looked at.
            del ds[elem.tag]
            return
        values = text_values(elem)
        if not values:
            return
        cleaned = [self.scrub(v) for v in values]
        if cleaned != values:
            elem.value = cleaned[0] if len(cleaned) == 1 else cleaned


def _scrubber(ds: Dataset) -> Any:
    """A function replacing the original identifying values of ``ds`` in free text."""
    needles: set[str] = set()
    for keyword in ("PatientName", "OtherPatientNames", "PatientBirthName",
                    "PatientMotherBirthName", "ReferringPhysicianName"):
        for value in _values(ds, keyword):
            for part in re.split(r"[\^=\s,]+", value):
                if len(part) >= 3:
                    needles.add(part)
    for keyword in ("PatientID", "OtherPatientIDs", "AccessionNumber", "PatientBirthDate",
                    "MedicalRecordLocator", "StudyID", "AdmissionID"):
        for value in _values(ds, keyword):
            if len(value.strip()) >= 3:
                needles.add(value.strip())
    if not needles:
        return lambda text: text
    # Escaped literals only, longest first: a plain alternation, linear in the text.
    pattern = re.compile("|".join(re.escape(n) for n in sorted(needles, key=len, reverse=True)),
                         re.IGNORECASE)
    return lambda text: pattern.sub(_SCRUBBED, text)


def _values(ds: Dataset, keyword: str) -> list[str]:
    elem = ds.get(keyword)
    if elem is None:
        return []
    if isinstance(elem, DataElement):
        return text_values(elem)
    return text_values(ds[keyword])


@dataclass(frozen=True)
class Deidentify(MorphStep):
    """``deidentify``: the PS3.15 Basic Profile with options."""

    op: ClassVar[str] = "deidentify"
    needs_secret: ClassVar[bool] = True
    options: DeidOptions = DeidOptions()

    def apply(self, ds: Dataset, keys: MorphKeys) -> None:
        opts = self.options
        pseudonym = None
        if opts.pseudonymize_patient:
            pseudonym = HashValue(parse_path("PatientID"), 16, "", "patient").pseudonym(
                _patient_key(ds), keys)
        # Before the profile: regions are chosen by the device attributes it may remove.
        pixels_cleaned = clean_pixel_data(ds, opts.clean_pixel_data, opts.burned_in_annotation)
        run = _Run(ds, opts, keys)
        run.process(ds)
        if pseudonym is not None:
            ds.PatientID = pseudonym
            ds.PatientName = pseudonym
        self._mark(ds, pixels_cleaned)

    def _mark(self, ds: Dataset, pixels_cleaned: bool) -> None:
        opts = self.options
        names = ["basic"] + (["clean_pixel_data"] if pixels_cleaned else []) + [
            name for name in (
            "retain_uids", "retain_device_identity", "retain_institution_identity",
            "retain_patient_characteristics", "clean_descriptors") if getattr(opts, name)]
        if opts.retain_longitudinal_dates != "off":
            names.append(opts.retain_longitudinal_dates)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = [_CODES[n][1][:64] for n in names] if len(names) > 1 \
            else _CODES["basic"][1]
        items = Sequence()
        for name in names:
            code, meaning = _CODES[name]
            item = Dataset()
            item.CodeValue = code
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = items
        ds.LongitudinalTemporalInformationModified = {
            "off": "REMOVED", "full": "UNMODIFIED", "modified": "MODIFIED"}[
            opts.retain_longitudinal_dates]
        # The marks are ASCII; nothing to convert, but keep the declaration consistent.
        charset.ensure_fits(ds, [])

    def to_json(self) -> dict[str, Any]:
        o = self.options
        return {"op": "deidentify", "retain_uids": o.retain_uids,
                "retain_device_identity": o.retain_device_identity,
                "retain_institution_identity": o.retain_institution_identity,
                "retain_patient_characteristics": o.retain_patient_characteristics,
                "retain_longitudinal_dates": o.retain_longitudinal_dates,
                "clean_descriptors": o.clean_descriptors, "max_shift_days": o.max_shift_days,
                "uid_prefix": o.uid_prefix, "pseudonymize_patient": o.pseudonymize_patient,
                "clean_pixel_data": [r.to_json() for r in o.clean_pixel_data],
                "burned_in_annotation": o.burned_in_annotation}

    def describe(self) -> str:
        o = self.options
        on = [k for k in ("retain_uids", "retain_device_identity",
                          "retain_institution_identity", "retain_patient_characteristics",
                          "clean_descriptors", "pseudonymize_patient") if getattr(o, k)]
        if o.retain_longitudinal_dates != "off":
            on.append(f"longitudinal dates {o.retain_longitudinal_dates}")
        if o.clean_pixel_data:
            on.append(f"clean pixel data ({len(o.clean_pixel_data)} regions)")
        if o.burned_in_annotation != "refuse":
            on.append("burned-in annotation sent as is")
        return "deidentify (PS3.15 basic" + (f"; {', '.join(on)})" if on else ")")

    @classmethod
    def compile(cls, raw: Mapping[str, Any], f: _Fields, env: CompileEnv) -> Deidentify | None:
        dates = raw.get("retain_longitudinal_dates", "off")
        if dates is True:
            dates = "full"
        elif dates is False:
            dates = "off"
        if dates not in ("off", "full", "modified"):
            f.problem("retain_longitudinal_dates", "expected off, full or modified")
            dates = "off"
        prefix = f.string("uid_prefix", default=env.uid_prefix) or env.uid_prefix
        if not _valid_prefix(prefix):
            f.problem("uid_prefix", "a UID root of digits and dots, ending with a dot, at most "
                                    "40 characters")
        policy = f.string("burned_in_annotation", default="refuse") or "refuse"
        if policy not in BURNED_IN_POLICIES:
            f.problem("burned_in_annotation", "expected refuse or send")
            policy = "refuse"
        regions = parse_regions(raw.get("clean_pixel_data"), f.problem)
        options = DeidOptions(
            retain_uids=f.boolean("retain_uids", False),
            retain_device_identity=f.boolean("retain_device_identity", False),
            retain_institution_identity=f.boolean("retain_institution_identity", False),
            retain_patient_characteristics=f.boolean("retain_patient_characteristics", False),
            retain_longitudinal_dates=str(dates),
            clean_descriptors=f.boolean("clean_descriptors", False),
            max_shift_days=f.integer("max_shift_days", 365, 1, 36500) or 365,
            uid_prefix=prefix,
            pseudonymize_patient=f.boolean("pseudonymize_patient", False),
            clean_pixel_data=regions, burned_in_annotation=policy)
        if not env.has_secret:
            f.problem(None, "deidentify needs routing.secret (UIDs and pseudonyms are derived "
                            "from it); set it in the config or RADFLOW_ROUTING__SECRET")
        return cls(options) if f.ok else None


def _patient_key(ds: Dataset) -> str:
    return f"{ds.get('PatientID', '') or ''}^{ds.get('IssuerOfPatientID', '') or ''}"
