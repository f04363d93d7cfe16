"""Whether text can be written under a DICOM Specific Character Set, judged by pydicom's table.

Shared by the worklist (which set a C-FIND answer declares) and morphs (whether new text fits a
dataset's set). The judgement uses pydicom's own term → codec table, because pydicom is what
finally encodes the values: a set pydicom cannot encode must not be declared. Pure functions;
no datasets, no I/O.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable

from pydicom.charset import python_encoding

_DEFAULT_REPERTOIRE = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})


def codecs_for(terms: tuple[str, ...]) -> list[str] | None:
    """Python codec names for the defined terms, or None if one is unknown to pydicom."""
    names: list[str] = []
    for term in terms or ("ISO_IR 6",):
        term = term.strip()
        if term in _DEFAULT_REPERTOIRE:
            # The default repertoire is ASCII (pydicom reads it leniently as Latin-1, but a
            # writer must not put Latin-1 bytes into a dataset that declares none).
            names.append("ascii")
            continue
        codec = python_encoding.get(term)
        if codec is None:
            return None
        names.append(codecs.lookup(codec).name)
    return names


def fits(texts: Iterable[str], terms: tuple[str, ...]) -> bool:
    """Whether every text can be written in the set named by ``terms``.

    A text passes when one codec of the set encodes it whole, or, with ISO 2022 code
    extensions (several terms, or an ISO 2022 term), when each character fits one of them:
    pydicom switches sets with escape sequences inside a value.
    """
    names = codecs_for(terms)
    if names is None:
        return False
    extended = len(terms) > 1 or any("2022" in t for t in terms)
    for text in texts:
        if not text or text.isascii():
            continue
        if any(_encodes(text, n) for n in names):
            continue
        if extended and all(any(_encodes(ch, n) for n in names) for ch in text):
            continue
        return False
    return True


def _encodes(text: str, codec: str) -> bool:
    try:
        text.encode(codec)
    except UnicodeEncodeError:
        return False
    return True
