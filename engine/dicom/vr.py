"""Value-representation checks shared by settings, intake, delivery and the worklist (PS3.5 6.2).

Pure functions over strings; kept here so the same rule judges a configured AE title and one
off the wire. No pydicom import: pydicom warns on invalid UIDs instead of answering yes or no.
"""

from __future__ import annotations

import re

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # no backslash, no control characters


def is_valid_uid(value: str) -> bool:
    """Digits and dots, no leading zeros in a component, at most 64 characters (PS3.5 9.1)."""
    return 0 < len(value) <= 64 and _UID.fullmatch(value) is not None


def is_valid_ae_title(value: str) -> bool:
    return _AE_TITLE.fullmatch(value) is not None and bool(value.strip())
