"""ACK building: codes per acknowledgement mode, ERR layout, escaping, charset echo, and that
the two reference libraries (hl7apy, the library of record, and ``hl7``) read what we write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import hl7
import pytest
from hl7apy.parser import parse_message
from hl7apy.v2_5.tables import TABLES as TABLES_25
from hl7apy.v2_8_2.tables import TABLES as TABLES_282

from engine.hl7.ack import (
    AckError,
    Hl7ErrorCode,
    ack_code_for,
    ack_control_id,
    ack_requested,
    build_ack,
)
from engine.hl7.message import SUPPORTED_CHARSETS, Hl7Message
from engine.status import AckCode

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
SRC = (
    "MSH|^~\\&|RIS|HOSP^1.2.3^ISO|RADFLOW|RAD|20250101120000||ORM^O01^ORM_O01|{ctrl}|T|{version}"
    "|||{accept}|{app}||{charset}\r"
    "PID|1||PAT123^^^HOSP^MR||{name}\r"
    "ZDS|1.2.3.4^RADFLOW^Application^DICOM\r"
)


def inbound(
    *,
    ctrl: str = "MSG00001",
    version: str = "2.5.1",
    accept: str = "",
    app: str = "",
    charset: str = "",
    name: str = "DOE^JOHN",
    codec: str = "ascii",
) -> Hl7Message:
    text = SRC.format(
        ctrl=ctrl, version=version, accept=accept, app=app, charset=charset, name=name
    )
    return Hl7Message.parse(text.encode(codec))


def ack_of(msg: Hl7Message, code: str, **kwargs: object) -> bytes:
    return build_ack(
        msg,
        code,
        sending_application="RADFLOW",
        sending_facility="RAD",
        now=NOW,
        **kwargs,  # type: ignore[arg-type]
    )


def both_libraries_accept(payload: bytes, codec: str = "ascii") -> None:
    text = payload.decode(codec)
    parsed = hl7.parse(text)
    assert str(parsed.segment("MSH")[9]).startswith("ACK")
    reference = parse_message(text)
    assert reference.msh.msh_9.msh_9_1.to_er7() == "ACK"


def test_aa_original_mode() -> None:
    msg = inbound()
    payload = ack_of(msg, "AA")
    both_libraries_accept(payload)
    ack = Hl7Message.parse(payload)
    assert [s.name for s in ack.segments()] == ["MSH", "MSA"]
    assert ack.get("MSA-1") == "AA"
    assert ack.get("MSA-2") == "MSG00001"
    assert ack.message_type == "ACK"
    assert ack.trigger_event == "O01"
    assert ack.message_structure == "ACK"
    assert ack.control_id == "MSG00001-ACK"
    assert ack.sending_application == "RADFLOW"
    assert ack.sending_facility == "RAD"
    assert ack.receiving_application == "RIS"
    assert ack.msh.field(6) == "HOSP^1.2.3^ISO"  # copied whole, components included
    assert ack.processing_id == "T"
    assert ack.version == "2.5.1"
    assert ack.get("MSH-7") == "20250102030405+0000"
    assert ack.accept_ack_type == ""
    assert payload.endswith(b"\r")


def test_ae_with_err_segments_and_escaping() -> None:
    msg = inbound()
    errors = [
        AckError("PID", 1, 3, 1, Hl7ErrorCode.REQUIRED_FIELD_MISSING, "PID-3.1 | missing ^ & ~ \\"),
        AckError("PID", 1, 7, None, Hl7ErrorCode.DATA_TYPE_ERROR, "bad date\r2025-13-45"),
    ]
    payload = ack_of(msg, "AE", errors=errors)
    both_libraries_accept(payload)
    ack = Hl7Message.parse(payload)
    assert ack.get("MSA-1") == "AE"
    assert ack.get("MSA-3") == "PID-3.1 | missing ^ & ~ \\"  # first error's text by default
    err1, err2 = ack.segments("ERR")
    assert err1.field(1) == ""
    assert err1.field(2) == "PID^1^3^^1"
    assert err1.field(3) == "101^Required field missing^HL70357"
    assert err1.field(4) == "E"
    assert err1.component(8, 1) == "PID-3.1 | missing ^ & ~ \\"
    assert err1.field(8) == "PID-3.1 \\F\\ missing \\S\\ \\T\\ \\R\\ \\E\\"
    assert err2.field(2) == "PID^1^7"
    assert err2.component(3, 1) == "102"
    assert err2.component(8) == "bad date\r2025-13-45"
    assert b"\r2025" not in payload  # a CR in text would end the segment

    reference = parse_message(payload.decode("ascii"))
    assert reference.err.err_3.err_3_1.to_er7() == "101"
    assert reference.err.err_2.err_2_1.to_er7() == "PID"
    assert reference.err.err_4.to_er7() == "E"


def test_ar_unsupported_message_type_with_explicit_text() -> None:
    msg = inbound()
    error = AckError("MSH", 1, 9, code=Hl7ErrorCode.UNSUPPORTED_MESSAGE_TYPE, text="ORM not routed")
    payload = ack_of(msg, "AR", text="Rejected", errors=[error])
    both_libraries_accept(payload)
    ack = Hl7Message.parse(payload)
    assert ack.get("MSA-1") == "AR"
    assert ack.get("MSA-3") == "Rejected"
    assert ack.get("ERR-3") == "200"
    assert ack.get("ERR-3.2") == "Unsupported message type"


def test_error_without_location() -> None:
    payload = ack_of(inbound(), "AE", errors=[AckError(text="store full")])
    ack = Hl7Message.parse(payload)
    assert ack.get("ERR-2") == ""
    assert ack.get("ERR-3") == "207"
    assert ack.get("ERR-8") == "store full"


@pytest.mark.parametrize(("code", "expected"), [("AA", "CA"), ("AE", "CE"), ("AR", "CR")])
def test_enhanced_mode_answers_at_commit_level(code: str, expected: str) -> None:
    msg = inbound(accept="AL", app="NE")
    payload = ack_of(msg, code)
    both_libraries_accept(payload)
    ack = Hl7Message.parse(payload)
    assert ack.get("MSA-1") == expected
    assert ack.accept_ack_type == ""  # an ACK is never acknowledged


def test_codes_are_normalised_to_the_senders_mode() -> None:
    assert ack_code_for(inbound(), "CA") is AckCode.APPLICATION_ACCEPT
    assert ack_code_for(inbound(accept="ER"), "AE") is AckCode.COMMIT_ERROR
    with pytest.raises(ValueError):
        ack_code_for(inbound(), "OK")


@pytest.mark.parametrize(
    ("accept", "code", "wanted"),
    [
        ("", "AA", True),
        ("", "AR", True),
        ("AL", "AA", True),
        ("AL", "AE", True),
        ("NE", "AA", False),
        ("NE", "AR", False),
        ("ER", "AA", False),
        ("ER", "AE", True),
        ("SU", "AA", True),
        ("SU", "AR", False),
    ],
)
def test_ack_requested(accept: str, code: str, wanted: bool) -> None:
    assert ack_requested(inbound(accept=accept), code) is wanted


def test_latin1_charset_echo_and_encoding() -> None:
    msg = inbound(charset="8859/1", name="Müller^Jürgen", codec="latin-1")
    payload = ack_of(msg, "AE", errors=[AckError("PID", 1, 5, text="Name Müller unknown")])
    assert "Müller".encode("latin-1") in payload
    both_libraries_accept(payload, "latin-1")
    ack = Hl7Message.parse(payload)
    assert ack.get("MSH-18") == "8859/1"
    assert ack.get("ERR-8") == "Name Müller unknown"


def test_iso_ir87_charset_echo_and_encoding() -> None:
    msg = inbound(charset="~ISO IR87", name="ヤマダ^タロウ", codec="iso2022_jp")
    payload = ack_of(msg, "AE", errors=[AckError("PID", 1, 5, text="氏名 ヤマダ が不正")])
    assert b"\x1b$B" in payload
    ack = Hl7Message.parse(payload)
    assert ack.msh.field(18) == "~ISO IR87"
    assert ack.get("ERR-8") == "氏名 ヤマダ が不正"
    both_libraries_accept(payload, "iso2022_jp")


def test_unencodable_text_degrades_instead_of_failing() -> None:
    payload = ack_of(inbound(), "AE", errors=[AckError(text="Zoë")])  # ASCII message
    assert Hl7Message.parse(payload).get("ERR-8") == "Zo?"


def test_utf8_default_charset_is_not_written_when_sender_left_msh18_empty() -> None:
    msg = Hl7Message.parse(
        SRC.format(ctrl="1", version="2.5", accept="", app="", charset="", name="Zoë").encode(),
        default_charset="UNICODE UTF-8",
    )
    payload = ack_of(msg, "AE", errors=[AckError(text="Zoë")])
    assert "Zoë".encode() in payload
    assert Hl7Message.parse(payload, default_charset="UNICODE UTF-8").get("MSH-18") == ""


@pytest.mark.parametrize("version", ["2.3", "2.4"])
def test_pre_25_err_uses_eld_in_err1(version: str) -> None:
    msg = inbound(version=version)
    error = AckError("PID", 1, 3, 1, Hl7ErrorCode.REQUIRED_FIELD_MISSING, "missing")
    payload = ack_of(msg, "AE", errors=[error])
    both_libraries_accept(payload)
    ack = Hl7Message.parse(payload)
    err = ack.segment("ERR")
    assert err is not None
    assert err.field(1) == "PID^1^3^101&Required field missing&HL70357"
    assert err.field_count == 1
    assert ack.version == version
    reference = parse_message(payload.decode("ascii"))
    assert reference.err.err_1.to_er7() == "PID^1^3^101&Required field missing&HL70357"


def test_v23_has_no_message_structure_component() -> None:
    ack = Hl7Message.parse(ack_of(inbound(version="2.3"), "AA"))
    assert ack.msh.field(9) == "ACK^O01"
    ack = Hl7Message.parse(ack_of(inbound(version="2.3.1"), "AA"))
    assert ack.msh.field(9) == "ACK^O01^ACK"


def test_control_id_rule() -> None:
    assert ack_control_id("MSG00001") == "MSG00001-ACK"
    assert ack_control_id("1234567890123456") == "1234567890123456-ACK"
    long_id = "12345678901234567"
    derived = ack_control_id(long_id)
    assert len(derived) == 20
    assert derived.startswith("ACK")
    assert derived == ack_control_id(long_id)  # deterministic: a duplicate gets the same answer
    assert derived != ack_control_id(long_id + "8")


def test_same_input_same_bytes() -> None:
    msg = inbound(ctrl="X" * 20)
    assert ack_of(msg, "AA") == ack_of(msg, "AA")


def test_local_time_offset_and_naive_time() -> None:
    tz = timezone(timedelta(hours=9))
    payload = build_ack(
        inbound(),
        "AA",
        sending_application="R",
        sending_facility="F",
        now=datetime(2025, 1, 2, 12, 0, 0, tzinfo=tz),
    )
    assert Hl7Message.parse(payload).get("MSH-7") == "20250102120000+0900"
    payload = build_ack(
        inbound(), "AA", sending_application="R", sending_facility="F", now=datetime(2025, 1, 2)
    )
    assert Hl7Message.parse(payload).get("MSH-7") == "20250102000000"


def test_our_sending_identity_is_escaped() -> None:
    payload = build_ack(
        inbound(), "AA", sending_application="RAD|FLOW", sending_facility="F", now=NOW
    )
    assert Hl7Message.parse(payload).sending_application == "RAD|FLOW"


def test_ack_error_validation() -> None:
    with pytest.raises(ValueError):
        AckError(code=999)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        AckError(severity="X")
    with pytest.raises(ValueError):
        AckError(segment="PIDX")
    assert AckError(code=101).code is Hl7ErrorCode.REQUIRED_FIELD_MISSING  # type: ignore[arg-type]


# --- our vocabulary agrees with hl7apy's tables -----------------------------------------


def test_tables_agree_with_hl7apy() -> None:
    assert {str(int(c)) for c in Hl7ErrorCode} == set(TABLES_25["HL70357"][1])
    assert {c.value for c in AckCode} == set(TABLES_25["HL70008"][1])
    assert {"AL", "NE", "ER", "SU"} == set(TABLES_25["HL70155"][1])
    assert {"E", "W", "I"} == set(TABLES_25["HL70516"][1])
    known = set(TABLES_25["HL70211"][1]) | set(TABLES_282["HL70211"][1])
    assert known >= SUPPORTED_CHARSETS
