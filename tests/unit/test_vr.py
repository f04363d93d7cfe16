"""UI and AE value-representation checks (PS3.5 6.2, 9.1), shared by settings and ingress."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.dicom.vr import is_valid_ae_title, is_valid_uid


@pytest.mark.parametrize(
    "uid",
    [
        "1.2.840.10008.1.2.1",
        "0",
        "1.0.2",
        "2.25.329800735698586629295641978511506172918",
        "1.2.840.10008.5.1.4.1.1.2",
        "1." + "2" * 62,  # exactly 64 characters
    ],
)
def test_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid)


@pytest.mark.parametrize(
    "uid",
    [
        "",
        "../../x",
        "1.2/../../etc/passwd",
        "1.02",  # leading zero in a component
        "01.2",
        "00",
        "1..2",
        ".1.2",
        "1.2.",
        "1.2 ",  # a space pad is not part of a UID
        "1.2\x00",
        "1.2\n",
        "1,2",
        "1.2.a",
        "1.-2",
        "\u0661.\u0662",  # Arabic-Indic digits are digits to str.isdigit, not to PS3.5
        "1." + "2" * 63,  # 65 characters
    ],
)
def test_invalid_uids(uid: str) -> None:
    assert not is_valid_uid(uid)


_COMPONENT = st.integers(min_value=0, max_value=10**12).map(str)


@given(st.lists(_COMPONENT, min_size=1, max_size=12).map(".".join))
def test_uid_grammar_is_accepted_up_to_64_characters(uid: str) -> None:
    assert is_valid_uid(uid) == (len(uid) <= 64)


@given(st.text(max_size=70))
def test_uid_check_agrees_with_the_ps3_5_grammar(text: str) -> None:
    grammar = re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*", text, flags=re.ASCII)
    assert is_valid_uid(text) == (grammar is not None and len(text) <= 64)


@pytest.mark.parametrize(
    "ae",
    [
        "RADFLOW",
        "CT_SCANNER_1",
        "A",
        "ABCDEFGHIJKLMNOP",  # 16 characters
        "CT 1",
        "  PADDED",  # leading spaces are not significant, but allowed
        "../../x",  # a legal AE title: radflow never builds a path from one
        "ae-lower.case",
    ],
)
def test_valid_ae_titles(ae: str) -> None:
    assert is_valid_ae_title(ae)


@pytest.mark.parametrize(
    "ae",
    [
        "",
        " ",
        " " * 16,
        "ABCDEFGHIJKLMNOPQ",  # 17 characters
        "BAD\\AE",  # backslash is the value separator
        "\\",
        "LINE\nFEED",
        "TAB\tAE",
        "NUL\x00",
        "ESC\x1b",
        "DEL\x7f",
        "MÜNCHEN",  # outside the default character repertoire
    ],
)
def test_invalid_ae_titles(ae: str) -> None:
    assert not is_valid_ae_title(ae)


@given(st.text(max_size=20))
def test_ae_title_rule(text: str) -> None:
    expected = (
        0 < len(text) <= 16
        and text.strip(" ") != ""
        and all(0x20 <= ord(c) <= 0x7E and c != "\\" for c in text)
    )
    assert is_valid_ae_title(text) == expected
