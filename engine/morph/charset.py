"""Character sets when a morph writes text: keep the dataset's set when the new text fits it,
switch the whole dataset to UTF-8 when it does not.

pydicom keeps decoded text as Python strings and encodes them with the dataset's Specific
Character Set (0008,0005) when the dataset is written. A morph that puts "Müller" into an ASCII
dataset, or Japanese into a Latin-1 one, would otherwise be written with replacement characters
(or fail). :func:`ensure_fits` checks the new text against the declared set; when it does not
fit, every text element is decoded with the old set and the declaration becomes ``ISO_IR 192``
(UTF-8), so the existing text keeps its meaning and the new text is written as given. It must
not change a dataset whose text already fits (the bytes of untouched elements stay as received).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from pydicom.dataset import Dataset

from engine.dicom.charsets import fits

UTF8_TERM: Final = "ISO_IR 192"
#: VRs whose values are text encoded with the Specific Character Set (PS3.5 6.1.2.3)
CHARSET_VRS: Final = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})


def declared_terms(ds: Dataset) -> tuple[str, ...]:
    value = ds.get("SpecificCharacterSet")
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def to_utf8(ds: Dataset) -> None:
    """Decode every text element with the current set, then declare UTF-8."""
    ds.decode()  # pydicom decodes raw text values in place, sequences included
    ds.SpecificCharacterSet = UTF8_TERM
    _declare_items(ds)


def _declare_items(ds: Dataset) -> None:
    # A sequence item may carry its own Specific Character Set; after decoding it must say
    # UTF-8 too, or pydicom would encode the item's text with the old set.
    for elem in ds:
        if elem.VR == "SQ" and elem.value:
            for item in elem.value:
                if "SpecificCharacterSet" in item:
                    item.SpecificCharacterSet = UTF8_TERM
                _declare_items(item)


def ensure_fits(ds: Dataset, texts: Iterable[str]) -> bool:
    """Make ``ds`` able to hold ``texts``; True when the dataset was switched to UTF-8."""
    values = [t for t in texts if t and not t.isascii()]
    if not values or fits(values, declared_terms(ds)):
        return False
    to_utf8(ds)
    return True


