"""The read-only HL7 v2 model: delimiters, addressing, escapes, character sets, parse errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import InvalidInput
from engine.hl7.message import (
    DEFAULT_ENCODING_CHARS,
    EncodingChars,
    Hl7Message,
    Hl7ParseError,
    codec_for_charset,
    escape,
    unescape,
)

ORM = (
    "MSH|^~\\&|RIS|HOSP^1.2.3^ISO|RADFLOW|RAD|20250101120000||ORM^O01^ORM_O01|MSG00001|P|2.5.1"
    "||||||{charset}\r"
    "PID|1||PAT123^^^HOSP^MR~998877^^^NHS&2.16.840.1.113883.2.1.4.1&ISO^NH||{name}||19700101|M\r"
    "PV1|1|O|RAD^^^HOSP\r"
    "ORC|NW|ORD1001|FIL2002||SC\r"
    "OBR|1|ORD1001|FIL2002|CTHEAD^CT Head w/o contrast^L|||20250101120000\r"
    "OBR|2|ORD1002|FIL2003|CTCHEST^CT Chest^L\r"
    "ZDS|1.2.826.0.1.3680043.8.498.1^RADFLOW^Application^DICOM\r"
    'NTE|1||Allergy\\T\\family\\F\\iodine\\X0D0A\\line 2 \\E\\ end \\S\\ x \\H\\bold\\N\\|""\r'
)


def orm(name: str = "DOE^JOHN^Q", charset: str = "") -> str:
    return ORM.format(name=name, charset=charset)


@pytest.fixture
def msg() -> Hl7Message:
    return Hl7Message.parse(orm().encode("ascii"))


def test_segments_in_order_with_z_segment(msg: Hl7Message) -> None:
    names = [s.name for s in msg.segments()]
    assert names == ["MSH", "PID", "PV1", "ORC", "OBR", "OBR", "ZDS", "NTE"]
    assert len(msg.segments("OBR")) == 2
    assert msg.segments("ZZZ") == []
    assert msg.get("ZDS-1") == "1.2.826.0.1.3680043.8.498.1"
    assert msg.get("ZDS-1.4") == "DICOM"


def test_header_shortcuts(msg: Hl7Message) -> None:
    assert msg.message_type == "ORM"
    assert msg.trigger_event == "O01"
    assert msg.message_structure == "ORM_O01"
    assert msg.control_id == "MSG00001"
    assert msg.sending_application == "RIS"
    assert msg.sending_facility == "HOSP"
    assert msg.receiving_application == "RADFLOW"
    assert msg.receiving_facility == "RAD"
    assert msg.processing_id == "P"
    assert msg.version == "2.5.1"
    assert msg.accept_ack_type == ""
    assert msg.application_ack_type == ""
    assert msg.charset == "ASCII"
    assert msg.codec == "ascii"


def test_msh_numbering(msg: Hl7Message) -> None:
    assert msg.get("MSH-1") == "|"
    assert msg.get("MSH-2") == "^~\\&"
    assert msg.get("MSH-3") == "RIS"
    assert msg.get("MSH-4.2") == "1.2.3"
    assert msg.msh.field(4) == "HOSP^1.2.3^ISO"
    assert msg.get("MSH-9.2") == "O01"


def test_terser_addressing_and_repetitions(msg: Hl7Message) -> None:
    assert msg.get("PID-3") == "PAT123"  # first repetition, first component
    assert msg.get("PID-3.1") == "PAT123"
    assert msg.get("PID-3[2].1") == "998877"
    assert msg.get("PID-3[2].4") == "NHS"
    assert msg.get("PID-3[2].4.2") == "2.16.840.1.113883.2.1.4.1"
    assert msg.get("PID-3[3].1") == ""
    assert msg.get_all("PID-3") == ["PAT123", "998877"]
    assert msg.get_all("PID-3.5") == ["MR", "NH"]
    assert msg.get_all("PV1-50") == []
    assert msg.get_all("ZZZ-1") == []
    assert msg.get("PID-5.2") == "JOHN"
    assert msg.get("PID-99") == ""
    assert msg.get("PID-5.9") == ""
    pid = msg.segment("PID")
    assert pid is not None
    assert pid.field(3) == "PAT123^^^HOSP^MR~998877^^^NHS&2.16.840.1.113883.2.1.4.1&ISO^NH"
    assert pid.repetitions(3) == [
        "PAT123^^^HOSP^MR",
        "998877^^^NHS&2.16.840.1.113883.2.1.4.1&ISO^NH",
    ]
    assert pid.repetitions(4) == []
    assert pid.component(5, 1) == "DOE"
    assert pid.field_count == 8


def test_repeated_segments(msg: Hl7Message) -> None:
    assert msg.get("OBR-4.1") == "CTHEAD"
    assert msg.get("OBR[1]-4.2") == "CT Head w/o contrast"
    assert msg.get("OBR[2]-4.1") == "CTCHEST"
    assert msg.get("OBR[2]-2") == "ORD1002"
    assert msg.get("OBR[3]-4.1") == ""
    assert msg.segment("OBR", 3) is None


def test_escapes_and_hl7_null(msg: Hl7Message) -> None:
    assert msg.get("NTE-3") == "Allergy&family|iodine\r\nline 2 \\ end ^ x \\H\\bold\\N\\"
    assert msg.get("NTE-4") == '""'
    nte = msg.segment("NTE")
    assert nte is not None
    assert "\\F\\" in nte.field(3)  # field() is the encoded form


@pytest.mark.parametrize("path", ["PID", "PID-", "pid-3", "PID-0", "PID-3.0", "OBR[0]-1", "X-1"])
def test_bad_paths_are_programming_errors(msg: Hl7Message, path: str) -> None:
    with pytest.raises(ValueError):
        msg.get(path)


def test_get_all_refuses_explicit_repetition(msg: Hl7Message) -> None:
    with pytest.raises(ValueError):
        msg.get_all("PID-3[2]")


@pytest.mark.parametrize("sep", ["\n", "\r\n", "\r\r\n"])
def test_lf_and_crlf_segment_terminators(sep: str) -> None:
    parsed = Hl7Message.parse(orm().replace("\r", sep).encode("ascii"))
    assert [s.name for s in parsed.segments()][-2:] == ["ZDS", "NTE"]
    assert parsed.get("PV1-3.1") == "RAD"


def test_leading_blank_lines_and_bom_are_ignored() -> None:
    parsed = Hl7Message.parse(b"\xef\xbb\xbf\r\n" + orm().encode("ascii"))
    assert parsed.control_id == "MSG00001"


def test_custom_delimiters() -> None:
    data = b"MSH#*!@%#RIS#HOSP#####ADT*A01#42#P#2.3\rPID#1##ID1!ID2##A*B%C@S@D*E"
    parsed = Hl7Message.parse(data)
    assert parsed.encoding_chars == EncodingChars("#", "*", "!", "@", "%")
    assert parsed.get("MSH-2") == "*!@%"
    assert parsed.message_type == "ADT"
    assert parsed.get_all("PID-3") == ["ID1", "ID2"]
    assert parsed.get("PID-5.2") == "B"
    assert parsed.get("PID-5.2.2") == "C*D"


def test_v27_truncation_character() -> None:
    data = b"MSH|^~\\&#|A|B|C|D|2025||ADT^A01|1|P|2.7\rPID|1||A\\P\\B"
    parsed = Hl7Message.parse(data)
    assert parsed.encoding_chars.truncation == "#"
    assert parsed.get("MSH-2") == "^~\\&#"
    assert parsed.get("PID-3") == "A#B"


# --- character sets ---------------------------------------------------------------------


def test_latin1_from_msh18() -> None:
    data = orm("Müller^Jürgen", "8859/1").encode("latin-1")
    parsed = Hl7Message.parse(data)
    assert parsed.charset == "8859/1"
    assert parsed.codec == "latin-1"
    assert parsed.get("PID-5.1") == "Müller"
    assert parsed.get("PID-5.2") == "Jürgen"


def test_default_charset_applies_when_msh18_is_empty() -> None:
    data = orm("Müller^Jürgen").encode("latin-1")
    assert Hl7Message.parse(data, default_charset="8859/1").get("PID-5.1") == "Müller"


def test_undecodable_bytes_name_the_field() -> None:
    data = orm("Müller^Jürgen").encode("latin-1")
    with pytest.raises(Hl7ParseError) as info:
        Hl7Message.parse(data)  # ASCII by default
    assert info.value.field_path == "PID-5"
    assert isinstance(info.value, InvalidInput)


def test_utf8() -> None:
    data = orm("Ødegård^Zoë", "UNICODE UTF-8").encode("utf-8")
    parsed = Hl7Message.parse(data)
    assert parsed.charset == "UNICODE UTF-8"
    assert parsed.get("PID-5.1") == "Ødegård"
    assert parsed.get("PID-5.2") == "Zoë"


def test_utf8_declared_but_latin1_sent() -> None:
    data = orm("Müller^Jürgen", "UNICODE UTF-8").encode("latin-1")
    with pytest.raises(Hl7ParseError) as info:
        Hl7Message.parse(data)
    assert info.value.field_path == "PID-5"


@pytest.mark.parametrize("msh18", ["ISO IR87", "~ISO IR87", "ASCII~ISO IR87"])
def test_iso_ir87_japanese(msh18: str) -> None:
    data = orm("ヤマダ^タロウ=山田^太郎", msh18).encode("iso2022_jp")
    assert b"\x1b$B" in data  # really ISO 2022 escapes, not UTF-8
    parsed = Hl7Message.parse(data)
    assert parsed.charset == "ISO IR87"
    assert parsed.codec == "iso2022_jp"
    assert parsed.get("PID-5.1") == "ヤマダ"
    assert parsed.get("PID-5.2") == "タロウ=山田"
    assert parsed.get("PID-5.3") == "太郎"


def test_iso_ir87_bytes_that_look_like_delimiters() -> None:
    # JIS encodes 万 as 0x4B 0x7C and 京 as 0x35 0x7E: '|' and '~' once shifted out of ASCII.
    name = "万田^京子"
    data = orm(name, "ISO IR87").replace("|RAD|", "|放射線科|").encode("iso2022_jp")
    assert b"K|" in data and b"5~" in data
    parsed = Hl7Message.parse(data)
    assert parsed.receiving_facility == "放射線科"
    assert parsed.get("PID-5.1") == "万田"
    assert parsed.get("PID-5.2") == "京子"
    assert parsed.charset == "ISO IR87"


@pytest.mark.parametrize(
    ("msh18", "codec", "name"),
    [
        ("8859/2", "iso8859_2", "Dvořák^Łukasz"),
        ("8859/5", "iso8859_5", "Иванов^Иван"),
        ("8859/7", "iso8859_7", "Παπαδόπουλος^Νίκος"),
        ("8859/9", "iso8859_9", "Y\u0131lmaz^\u015eule"),  # dotless i: Turkish only
        ("GB 18030-2000", "gb18030", "王^小明"),
        ("KS X 1001", "euc_kr", "김^민수"),
        ("BIG-5", "big5", "陳^大文"),
        ("UTF-8", "utf-8", "Ødegård^Zoë"),  # common misspelling, tolerated
    ],
)
def test_other_charsets(msh18: str, codec: str, name: str) -> None:
    parsed = Hl7Message.parse(orm(name, msh18).encode(codec))
    assert parsed.codec == codec
    assert parsed.get("PID-5.1") + "^" + parsed.get("PID-5.2") == name


def test_unsupported_charset() -> None:
    with pytest.raises(Hl7ParseError) as info:
        Hl7Message.parse(orm(charset="UNICODE UTF-16").encode("ascii"))
    assert info.value.field_path == "MSH-18"


def test_bad_default_charset_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        Hl7Message.parse(orm().encode("ascii"), default_charset="klingon")


def test_codec_for_charset() -> None:
    assert codec_for_charset("8859/1") == "latin-1"
    assert codec_for_charset("ISO_IR 87") == "iso2022_jp"
    with pytest.raises(ValueError):
        codec_for_charset("UNICODE UTF-32")


# --- parse errors -----------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\r\n", b"PID|1||42\r", b"MSH", b"FHS|^~\\&|A\rMSH|^~\\&|"])
def test_missing_msh(data: bytes) -> None:
    with pytest.raises(Hl7ParseError) as info:
        Hl7Message.parse(data)
    assert info.value.field_path is None


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (b"MSH|^~|A|B\r", "MSH-2"),
        (b"MSH|^^\\&|A|B\r", "MSH-2"),
        (b"MSH|^~\\||A|B\r", "MSH-2"),
        (b"MSHA^~\\&|A|B\r", "MSH-1"),
        (b"MSH|^~\\&|A|B\rPI|1\r", "segment 2"),
        (b"MSH|^~\\&|A|B\rPID1\r", "segment 2"),
    ],
)
def test_bad_delimiters_and_segments(data: bytes, path: str) -> None:
    with pytest.raises(Hl7ParseError) as info:
        Hl7Message.parse(data)
    assert info.value.field_path == path


def test_repr_carries_no_patient_data(msg: Hl7Message) -> None:
    assert "DOE" not in repr(msg)
    assert "DOE" not in repr(msg.segment("PID"))


# --- escaping ---------------------------------------------------------------------------


def test_escape_every_delimiter_and_control_character() -> None:
    enc = DEFAULT_ENCODING_CHARS
    assert escape("a|b^c~d\\e&f", enc) == "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f"
    assert escape("x\r\ny\x1c\x0b\tz", enc) == "x\\X0D\\\\X0A\\y\\X1C\\\\X0B\\\tz"


def test_unescape_hex_uses_the_codec() -> None:
    assert unescape("M\\XFC\\ller", DEFAULT_ENCODING_CHARS, "latin-1") == "Müller"
    assert unescape("M\\XC3BC\\ller", DEFAULT_ENCODING_CHARS, "utf-8") == "Müller"
    # Not valid UTF-8: falls back to latin-1 instead of failing a read.
    assert unescape("M\\XFC\\ller", DEFAULT_ENCODING_CHARS, "utf-8") == "Müller"
    assert unescape("bad \\XZZ\\ and \\Q\\ and \\", DEFAULT_ENCODING_CHARS) == (
        "bad \\XZZ\\ and \\Q\\ and \\"
    )


@given(st.text())
def test_escape_round_trip(text: str) -> None:
    assert unescape(escape(text)) == text


@given(st.text())
def test_escaped_text_survives_as_one_leaf(text: str) -> None:
    data = "MSH|^~\\&|A|B|C|D|2025||ADT^A01|1|P|2.5||||||UNICODE UTF-8\rNTE|1||" + escape(text)
    parsed = Hl7Message.parse(data.encode("utf-8"))
    assert parsed.get("NTE-3") == text
