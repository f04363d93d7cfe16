"""From an HL7 character set (MSH-18, table 0211) to DICOM Specific Character Set defined terms.

Owns the one table between the two vocabularies and the check that an item's texts can really be
written in the chosen DICOM set (PS3.3 C.12.1.1.2). Values travel as Python text between HL7 and
DICOM; the set only says how pydicom encodes the C-FIND answer, so a set that cannot hold a
name falls back to UTF-8 (``ISO_IR 192``) rather than failing the query. It must not parse HL7
or build datasets.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from engine.dicom.charsets import codecs_for, fits

#: DICOM's answer when nothing narrower fits
UTF8: Final = ("ISO_IR 192",)

# HL7 canonical names (engine.hl7.message spells them this way) → DICOM defined terms.
# ASCII needs no Specific Character Set at all (the default repertoire, ISO_IR 6). The ISO 2022
# Japanese sets keep ASCII as the first, default value, as Japanese senders (JAHIS) and DICOM
# both do; a leading empty value is DICOM's way of writing that.
_HL7_TO_DICOM: Final[dict[str, tuple[str, ...]]] = {
    "ASCII": (),
    "ISO IR6": (),
    "8859/1": ("ISO_IR 100",),
    "8859/2": ("ISO_IR 101",),
    "8859/3": ("ISO_IR 109",),
    "8859/4": ("ISO_IR 110",),
    "8859/5": ("ISO_IR 144",),
    "8859/6": ("ISO_IR 127",),
    "8859/7": ("ISO_IR 126",),
    "8859/8": ("ISO_IR 138",),
    "8859/9": ("ISO_IR 148",),
    "8859/15": ("ISO_IR 203",),
    "UNICODE UTF-8": UTF8,
    "ISO IR14": ("ISO 2022 IR 13", "ISO 2022 IR 87"),
    "ISO IR87": ("", "ISO 2022 IR 87"),
    "ISO IR159": ("", "ISO 2022 IR 87", "ISO 2022 IR 159"),
    "GB 18030-2000": ("GB18030",),
    "KS X 1001": ("", "ISO 2022 IR 149"),
    # Big5 has no DICOM defined term; the item is answered in UTF-8.
    "BIG-5": UTF8,
}

def dicom_charset(hl7_charset: str) -> tuple[str, ...]:
    """The DICOM Specific Character Set for an HL7 canonical character set name.

    Unknown names give UTF-8: the message was decoded already, so its text is valid Unicode.
    """
    return _HL7_TO_DICOM.get(hl7_charset, UTF8)


def is_known_dicom_charset(terms: Iterable[str]) -> bool:
    return codecs_for(tuple(terms)) is not None


def choose(hl7_charset: str, texts: Iterable[str]) -> tuple[str, ...]:
    """The DICOM set for ``hl7_charset`` if it holds every text, else UTF-8."""
    values = list(texts)
    terms = dicom_charset(hl7_charset)
    if all(v.isascii() for v in values):
        # Plain ASCII needs no declaration; keeping the sender's set would not hurt, but the
        # default repertoire is what every modality reads.
        return terms if terms and terms[0] == "" else ()
    return terms if fits(values, terms) else UTF8
