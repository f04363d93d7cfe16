"""A small, fast, read-only HL7 v2 message model, for intake, delivery and routing alike.

This module owns turning one MLLP payload (bytes) into a read-only view of an HL7 v2 message:
the character set chosen from MSH-18 before anything is decoded, the delimiters from MSH-1 and
MSH-2, segment / field / repetition / component / subcomponent addressing in standard HL7
numbering, and the HL7 escape rules (:func:`escape`, :func:`unescape`, shared with ``ack``).
It must not validate content against a message profile, decide acknowledgement policy, touch
sockets, storage or logs, or change a message: morphs work on copies elsewhere.

Why not hl7apy here: ``hl7apy.parser.parse_message`` costs ~12 ms per 1 KB ORM^O01 on our
machines (~85 msg/s, BASELINES.md), far below the 500 msg/s end-to-end target, and its tolerant
parse drops Z-segments such as ZDS. hl7apy stays the library of record for tables and for
cross-checking in tests; this parser splits lazily and costs tens of microseconds.

Addressing follows HAPI's Terser: ``"PID-3"`` means the first repetition's first component's
first subcomponent (``"PID-3.1.1"``); ``"OBR[2]-4.1"`` is the second OBR; ``"PID-3[2].1"`` the
second repetition. Values come back unescaped; an absent value is ``""`` and the HL7 null
``""`` (two double quotes) comes back as written, because "delete this value" is meaningful.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from engine.errors import InvalidInput

__all__ = [
    "DEFAULT_ENCODING_CHARS",
    "SUPPORTED_CHARSETS",
    "EncodingChars",
    "Hl7Message",
    "Hl7ParseError",
    "Hl7Segment",
    "canonical_charset",
    "codec_for_charset",
    "codec_for_msh18",
    "escape",
    "msh18_for_charset",
    "unescape",
]


class Hl7ParseError(InvalidInput):
    """The bytes are not a parseable HL7 v2 message; ``field_path`` says where (or ``None``)."""

    reason = "hl7_parse_error"

    def __init__(self, message: str, field_path: str | None = None) -> None:
        super().__init__(message if field_path is None else f"{field_path}: {message}")
        self.message = message
        self.field_path = field_path


@dataclass(frozen=True, slots=True)
class EncodingChars:
    """The delimiters declared by MSH-1 and MSH-2 (``truncation`` is v2.7's optional 5th)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    @property
    def msh2(self) -> str:
        """MSH-2 as it must be written back."""
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation

    @classmethod
    def from_msh(cls, field_sep: str, msh2: str) -> EncodingChars:
        """Validate the delimiters a sender declared; raise :class:`Hl7ParseError` if unusable."""
        if not _is_delimiter(field_sep):
            raise Hl7ParseError(f"unusable field separator {field_sep!r}", "MSH-1")
        # Four characters up to v2.6, five with v2.7's truncation character; fewer would leave
        # a delimiter undefined and make the rest of the message ambiguous.
        if len(msh2) not in (4, 5):
            raise Hl7ParseError(f"expected 4 or 5 encoding characters, got {msh2!r}", "MSH-2")
        chars = field_sep + msh2
        if not all(_is_delimiter(c) for c in msh2) or len(set(chars)) != len(chars):
            raise Hl7ParseError(f"encoding characters {msh2!r} are not distinct symbols", "MSH-2")
        return cls(field_sep, msh2[0], msh2[1], msh2[2], msh2[3], msh2[4:])


DEFAULT_ENCODING_CHARS: Final = EncodingChars()


def _is_delimiter(c: str) -> bool:
    return len(c) == 1 and c.isascii() and c.isprintable() and not c.isalnum() and c != " "


# --- character sets -------------------------------------------------------------------------

# HL7 table 0211 names (canonical spelling) → Python codec. UTF-16/32, bare "UNICODE" (UCS-2 in
# v2.3) and CNS 11643 are left out on purpose: the first three are not ASCII-compatible, so MLLP
# framing and MSH scanning would break, and Python has no CNS 11643 codec.
_CHARSETS: Final[dict[str, str]] = {
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859_2",
    "8859/3": "iso8859_3",
    "8859/4": "iso8859_4",
    "8859/5": "iso8859_5",
    "8859/6": "iso8859_6",
    "8859/7": "iso8859_7",
    "8859/8": "iso8859_8",
    "8859/9": "iso8859_9",
    "8859/15": "iso8859_15",
    "UNICODE UTF-8": "utf-8",
    # JIS X 0201 Roman, JIS X 0208 and JIS X 0212 reached through ISO 2022 escape sequences.
    "ISO IR14": "iso2022_jp",
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp_1",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
}
#: every HL7 character set name this parser decodes (canonical table 0211 spelling)
SUPPORTED_CHARSETS: Final = frozenset(_CHARSETS)
# ISO 2022 code-extension sets: named in any repetition of MSH-18 they decide the decoder,
# because Japanese senders (JAHIS) write "~ISO IR87" - ASCII by default, JIS by escape sequence.
_ISO2022: Final = frozenset({"ISO IR14", "ISO IR87", "ISO IR159"})


def _charset_key(name: str) -> str:
    # Senders misspell these a lot ("UTF-8", "ISO_IR 87", "8859-1"); compare without noise.
    return re.sub(r"[\s_/\-]", "", name.upper())


_BY_KEY: Final[dict[str, str]] = {_charset_key(k): k for k in _CHARSETS} | {
    "UTF8": "UNICODE UTF-8",
    "ISO2022JP": "ISO IR87",
    "GB18030": "GB 18030-2000",
    "ISO88591": "8859/1",
    "LATIN1": "8859/1",
}


@lru_cache(maxsize=64)
def _canonical_charset(name: str) -> str | None:
    return _BY_KEY.get(_charset_key(name))


def codec_for_charset(name: str) -> str:
    """The Python codec for an HL7 table 0211 character set name; ``ValueError`` if unknown."""
    canonical = _canonical_charset(name)
    if canonical is None:
        raise ValueError(f"unsupported HL7 character set {name!r}")
    return _CHARSETS[canonical]


def canonical_charset(name: str) -> str | None:
    """The table 0211 spelling of ``name`` (``"UTF-8"`` → ``"UNICODE UTF-8"``); None if
    unsupported."""
    return _canonical_charset(name)


def codec_for_msh18(msh18: str, repetition: str = "~", default: str = "ASCII"
                    ) -> tuple[str, str]:
    """(character set, Python codec) an MSH-18 value as written selects, by the same rule
    the parser uses (an ISO 2022 set in any repetition decides); ``default`` when empty.
    Raises :class:`Hl7ParseError` for an unsupported name."""
    default_canonical = _canonical_charset(default)
    if default_canonical is None:
        raise ValueError(f"unsupported default HL7 character set {default!r}")
    return _choose_codec(msh18, EncodingChars(repetition=repetition) if repetition != "~"
                         else DEFAULT_ENCODING_CHARS, default_canonical)


def msh18_for_charset(name: str, repetition: str = "~") -> str:
    """MSH-18 as a writer declares character set ``name``: ISO 2022 code extensions go in the
    second repetition after an empty (ASCII) default, as Japanese receivers (JAHIS) expect."""
    canonical = _canonical_charset(name) or name
    return f"{repetition}{canonical}" if canonical in _ISO2022 else canonical


# --- escaping -------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _escape_table(enc: EncodingChars) -> dict[int, str]:
    e = enc.escape
    # CR ends a segment and 0x0B / 0x1C end an MLLP frame, so control characters are hex-escaped.
    table = {ord(c): f"{e}X{ord(c):02X}{e}" for c in map(chr, range(0x20)) if c != "\t"}
    table[0x7F] = f"{e}X7F{e}"
    table.update(
        {
            ord(enc.escape): f"{e}E{e}",
            ord(enc.field): f"{e}F{e}",
            ord(enc.component): f"{e}S{e}",
            ord(enc.repetition): f"{e}R{e}",
            ord(enc.subcomponent): f"{e}T{e}",
        }
    )
    if enc.truncation:
        table[ord(enc.truncation)] = f"{e}P{e}"
    return table


def escape(text: str, enc: EncodingChars = DEFAULT_ENCODING_CHARS) -> str:
    """HL7-escape ``text`` so it can be written as one leaf value with ``enc``'s delimiters."""
    return text.translate(_escape_table(enc))


@lru_cache(maxsize=32)
def _escape_pattern(esc: str) -> re.Pattern[str]:
    e = re.escape(esc)
    return re.compile(f"{e}([^{e}\r]*){e}")


def unescape(text: str, enc: EncodingChars = DEFAULT_ENCODING_CHARS, codec: str = "latin-1") -> str:
    """Resolve \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ (\\P\\) and \\Xhh..\\ in one leaf value.

    Hex data is decoded with ``codec`` (the message's), falling back to latin-1 so that a bad
    sequence never fails a read. Formatting and character-set escapes (\\H\\, \\.br\\, \\C..\\,
    \\Z..\\) are kept as written: dropping them would lose information a receiver may need.
    """
    if enc.escape not in text:
        return text
    singles = {
        "F": enc.field,
        "S": enc.component,
        "T": enc.subcomponent,
        "R": enc.repetition,
        "E": enc.escape,
    }
    if enc.truncation:
        singles["P"] = enc.truncation

    def replace(m: re.Match[str]) -> str:
        body = m.group(1)
        single = singles.get(body)
        if single is not None:
            return single
        if len(body) > 1 and body[0] == "X" and len(body) % 2 == 1:
            try:
                raw = bytes.fromhex(body[1:])
            except ValueError:
                return m.group(0)
            try:
                return raw.decode(codec)
            except (UnicodeDecodeError, LookupError):
                return raw.decode("latin-1")
        return m.group(0)

    return _escape_pattern(enc.escape).sub(replace, text)


# --- segments -------------------------------------------------------------------------------


class Hl7Segment:
    """One segment; fields are split on first access and cached (most are never read)."""

    __slots__ = ("_codec", "_enc", "_fields", "name", "raw")

    def __init__(self, raw: str, enc: EncodingChars, codec: str) -> None:
        self.name = raw[:3]
        self.raw = raw
        self._enc = enc
        self._codec = codec
        self._fields: list[str] | None = None

    def _split(self) -> list[str]:
        fields = self._fields
        if fields is None:
            fields = self.raw.split(self._enc.field)
            if self.name == "MSH":
                # MSH-1 *is* the field separator, so everything after it shifts by one.
                fields.insert(1, self._enc.field)
            self._fields = fields
        return fields

    @property
    def field_count(self) -> int:
        """The highest field number present (trailing empty fields included)."""
        return len(self._split()) - 1

    def field(self, n: int) -> str:
        """Field ``n`` (1-based, HL7 numbering) as written: every repetition, still encoded."""
        _check_index(n, "field")
        fields = self._split()
        return fields[n] if n < len(fields) else ""

    def _repetition(self, n: int, repetition: int) -> str:
        _check_index(repetition, "repetition")
        value = self.field(n)
        if self.name == "MSH" and n <= 2:
            return value if repetition == 1 else ""
        if self._enc.repetition not in value:
            return value if repetition == 1 else ""
        reps = value.split(self._enc.repetition)
        return reps[repetition - 1] if repetition <= len(reps) else ""

    def repetitions(self, n: int) -> list[str]:
        """Every repetition of field ``n``, still encoded; ``[]`` when the field is empty."""
        _check_index(n, "field")
        fields = self._split()
        if n >= len(fields) or fields[n] == "":
            return []
        if self.name == "MSH" and n <= 2:
            return [fields[n]]
        return fields[n].split(self._enc.repetition)

    def component(self, n: int, c: int = 1, subcomponent: int = 1, *, repetition: int = 1) -> str:
        """The unescaped value at field ``n``, component ``c``, subcomponent, repetition."""
        _check_index(c, "component")
        _check_index(subcomponent, "subcomponent")
        value = self._repetition(n, repetition)
        if self.name == "MSH" and n <= 2:
            # The delimiters themselves: never split or unescaped.
            return value if c == 1 and subcomponent == 1 else ""
        return self._leaf(value, c, subcomponent)

    def _leaf(self, value: str, c: int, s: int) -> str:
        enc = self._enc
        if enc.component in value:
            parts = value.split(enc.component)
            value = parts[c - 1] if c <= len(parts) else ""
        elif c != 1:
            return ""
        if enc.subcomponent in value:
            subs = value.split(enc.subcomponent)
            value = subs[s - 1] if s <= len(subs) else ""
        elif s != 1:
            return ""
        return unescape(value, enc, self._codec)

    def __repr__(self) -> str:
        # Only the name: segment content may carry patient data.
        return f"<Hl7Segment {self.name}>"


def _check_index(i: int, what: str) -> None:
    if i < 1:
        raise ValueError(f"HL7 {what} numbers start at 1, got {i}")


# --- paths ----------------------------------------------------------------------------------

_PATH: Final = re.compile(
    r"([A-Z][A-Z0-9]{2})(?:\[(\d+)\])?-(\d+)(?:\[(\d+)\])?(?:\.(\d+)(?:\.(\d+))?)?"
)


@dataclass(frozen=True, slots=True)
class _Path:
    segment: str
    occurrence: int
    field: int
    repetition: int | None
    component: int
    subcomponent: int


@lru_cache(maxsize=1024)
def _parse_path(path: str) -> _Path:
    m = _PATH.fullmatch(path)
    if m is None:
        raise ValueError(
            f"bad HL7 path {path!r}; expected e.g. 'PID-3', 'OBR[2]-4.1', 'PID-3[2].1'"
        )
    seg, occ, fld, rep, comp, sub = m.groups()
    parsed = _Path(
        seg,
        int(occ or 1),
        int(fld),
        None if rep is None else int(rep),
        int(comp or 1),
        int(sub or 1),
    )
    for value, what in (
        (parsed.occurrence, "occurrence"),
        (parsed.field, "field"),
        (parsed.repetition or 1, "repetition"),
        (parsed.component, "component"),
        (parsed.subcomponent, "subcomponent"),
    ):
        _check_index(value, what)
    return parsed


# --- message --------------------------------------------------------------------------------

_SEGMENT_NAME: Final = re.compile(r"[A-Z][A-Z0-9]{2}")


@lru_cache(maxsize=256)
def _is_segment_name(name: str) -> bool:
    # The same dozen names arrive all day; the cache spares the regex on each segment.
    return _SEGMENT_NAME.fullmatch(name) is not None


_INTER_SEGMENT_WS: Final = b" \t\r\n"


class Hl7Message:
    """A parsed HL7 v2 message: segments in order, Z-segments included, read-only."""

    __slots__ = ("_by_name", "_segments", "charset", "codec", "encoding_chars")

    def __init__(
        self, segments: list[Hl7Segment], enc: EncodingChars, charset: str, codec: str
    ) -> None:
        self._segments = segments
        self.encoding_chars = enc
        #: the HL7 (table 0211) name that chose the decoder, e.g. "8859/1" or "ISO IR87"
        self.charset = charset
        #: the Python codec used to decode the message and to encode its acknowledgement
        self.codec = codec
        by_name: dict[str, list[Hl7Segment]] = {}
        for seg in segments:
            by_name.setdefault(seg.name, []).append(seg)
        self._by_name = by_name

    @classmethod
    def parse(cls, data: bytes, default_charset: str = "ASCII") -> Hl7Message:
        """Parse one message; ``default_charset`` (a table 0211 name) applies when MSH-18 is empty.

        Raises :class:`Hl7ParseError` for a missing MSH, unusable delimiters, an unsupported
        MSH-18 or bytes the declared character set cannot decode. ``ValueError`` if
        ``default_charset`` itself is unknown (a configuration mistake, not the peer's).
        """
        default_canonical = _canonical_charset(default_charset)
        if default_canonical is None:
            raise ValueError(f"unsupported default HL7 character set {default_charset!r}")

        # A UTF-8 byte order mark from Windows senders and stray blank lines are not content.
        start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
        while start < len(data) and data[start] in _INTER_SEGMENT_WS:
            start += 1
        if len(data) < start + 4 or data[start : start + 3] != b"MSH":
            raise Hl7ParseError("message does not start with an MSH segment")
        fs_byte = data[start + 3]
        msh_end = _segment_end(data, start)
        # MSH-18 has to be known before decoding, so MSH is read as bytes: every supported
        # charset is ASCII-compatible there (ISO 2022 shifts are skipped, see _msh_fields).
        msh_fields = _msh_fields(data[start:msh_end], data[start + 3 : start + 4])
        try:
            field_sep = chr(fs_byte)
            msh2 = msh_fields[1].decode("ascii") if len(msh_fields) > 1 else ""
            msh18 = msh_fields[17].decode("ascii") if len(msh_fields) > 17 else ""
        except UnicodeDecodeError as exc:
            raise Hl7ParseError("MSH delimiters and MSH-18 must be ASCII", "MSH") from exc
        enc = _delimiters(field_sep, msh2)
        charset, codec = _choose_codec(msh18, enc, default_canonical)
        # 0x0B and 0x1C frame MLLP: a message holding one cannot be answered (its ACK echoes
        # MSH fields, and a frame byte in an ACK would cut it) nor forwarded intact.
        frame_bytes = [i for i in (data.find(b"\x0b", start), data.find(b"\x1c", start)) if i >= 0]
        if frame_bytes:
            at = min(frame_bytes)
            raise Hl7ParseError(f"byte 0x{data[at]:02X} (an MLLP frame byte) at offset {at}",
                                _locate(data, at, fs_byte))

        try:
            text = data.decode(codec) if start == 0 else data[start:].decode(codec)
        except UnicodeDecodeError as exc:
            where = _locate(data, start + exc.start, fs_byte)
            raise Hl7ParseError(
                f"byte 0x{data[start + exc.start]:02X} at offset {start + exc.start} "
                f"cannot be decoded as {charset} ({codec})",
                where,
            ) from exc

        if "\n" in text:
            text = text.replace("\r\n", "\r").replace("\n", "\r")
        segments: list[Hl7Segment] = []
        for number, raw in enumerate(text.split("\r"), start=1):
            if not raw or raw.isspace():
                continue
            name = raw[:3]
            if not _is_segment_name(name) or (len(raw) > 3 and raw[3] != field_sep):
                raise Hl7ParseError(
                    f"segment {number} has no valid segment name", f"segment {number}"
                )
            segments.append(Hl7Segment(raw, enc, codec))
        if b"\x1b" in data[start:msh_end]:
            _check_msh_escapes(data, start, segments[0], msh18, charset)
        return cls(segments, enc, charset, codec)

    # -- navigation ------------------------------------------------------------------------

    def segments(self, name: str | None = None) -> list[Hl7Segment]:
        """All segments in order, or every occurrence of ``name`` (a new list each call)."""
        if name is None:
            return list(self._segments)
        return list(self._by_name.get(name, ()))

    def segment(self, name: str, occurrence: int = 1) -> Hl7Segment | None:
        """The ``occurrence``-th (1-based) segment called ``name``, or ``None``."""
        _check_index(occurrence, "occurrence")
        found = self._by_name.get(name)
        if found is None or occurrence > len(found):
            return None
        return found[occurrence - 1]

    @property
    def msh(self) -> Hl7Segment:
        """The message header (always present: parse refuses a message without it)."""
        return self._segments[0]

    def get(self, path: str) -> str:
        """The unescaped value at ``path`` (Terser rules, module docstring); ``""`` if absent."""
        p = _parse_path(path)
        seg = self.segment(p.segment, p.occurrence)
        if seg is None:
            return ""
        return seg.component(p.field, p.component, p.subcomponent, repetition=p.repetition or 1)

    def get_all(self, path: str) -> list[str]:
        """The value at ``path`` for each repetition of its field, in order."""
        p = _parse_path(path)
        if p.repetition is not None:
            raise ValueError(f"get_all reads every repetition; drop the [n] from {path!r}")
        seg = self.segment(p.segment, p.occurrence)
        if seg is None:
            return []
        count = len(seg.repetitions(p.field))
        return [
            seg.component(p.field, p.component, p.subcomponent, repetition=r)
            for r in range(1, count + 1)
        ]

    # -- MSH shortcuts ---------------------------------------------------------------------

    @property
    def message_type(self) -> str:
        """MSH-9.1, e.g. ``"ORM"``."""
        return self.msh.component(9, 1)

    @property
    def trigger_event(self) -> str:
        """MSH-9.2, e.g. ``"O01"``."""
        return self.msh.component(9, 2)

    @property
    def message_structure(self) -> str:
        """MSH-9.3, e.g. ``"ORM_O01"`` (often empty before v2.3.1)."""
        return self.msh.component(9, 3)

    @property
    def control_id(self) -> str:
        """MSH-10, the sender's message control id."""
        return self.msh.component(10)

    @property
    def sending_application(self) -> str:
        """MSH-3.1 (namespace id)."""
        return self.msh.component(3)

    @property
    def sending_facility(self) -> str:
        """MSH-4.1 (namespace id)."""
        return self.msh.component(4)

    @property
    def receiving_application(self) -> str:
        """MSH-5.1 (namespace id)."""
        return self.msh.component(5)

    @property
    def receiving_facility(self) -> str:
        """MSH-6.1 (namespace id)."""
        return self.msh.component(6)

    @property
    def processing_id(self) -> str:
        """MSH-11.1: ``P`` production, ``T`` training, ``D`` debugging."""
        return self.msh.component(11)

    @property
    def version(self) -> str:
        """MSH-12.1, e.g. ``"2.5.1"``."""
        return self.msh.component(12)

    @property
    def accept_ack_type(self) -> str:
        """MSH-15 (table 0155: AL, NE, ER, SU); non-empty means enhanced acknowledgement mode."""
        return self.msh.component(15)

    @property
    def application_ack_type(self) -> str:
        """MSH-16 (table 0155)."""
        return self.msh.component(16)

    def __repr__(self) -> str:
        # Type and control id only: anything else may identify a patient.
        return (
            f"<Hl7Message {self.message_type}^{self.trigger_event} "
            f"control_id={self.control_id!r} segments={len(self._segments)}>"
        )


def _segment_end(data: bytes, start: int) -> int:
    end = data.find(b"\r", start)
    if end < 0:
        end = len(data)
    lf = data.find(b"\n", start, end)
    return end if lf < 0 else lf


def _msh_fields(msh: bytes, field_sep: bytes) -> list[bytes]:
    """MSH split on the field separator, with ISO 2022 double-byte runs taken out first.

    In ISO-2022-JP a JIS character's bytes can equal ``|`` or ``^``, so bytes between a
    shift-out escape and the shift back to ASCII / JIS Roman (ESC ( B, ESC ( J) are dropped
    before splitting. Only the positions of MSH-2 and MSH-18 (both ASCII) matter here.
    GB 18030 and Big5 trail bytes can also equal a delimiter and carry no escape to skip, so
    with those sets MSH-3 to MSH-17 must be ASCII; they hold identifiers and codes in practice.
    """
    if b"\x1b" in msh:
        pieces = msh.split(b"\x1b")
        kept = [pieces[0]]
        kept.extend(p[2:] for p in pieces[1:] if p.startswith((b"(B", b"(J")))
        msh = b"".join(kept)
    return msh.split(field_sep, 18)


def _check_msh_escapes(data: bytes, start: int, msh: Hl7Segment, msh18: str,
                       charset: str) -> None:
    """Refuse an MSH whose ESC bytes leave its fields in doubt.

    MSH-18 is read from bytes with ISO 2022 runs taken out (:func:`_msh_fields`), the other
    fields from the decoded text. Only ISO 2022 sets use escape sequences; under any other set
    an ESC is a stray control byte that can hide MSH-18 from the byte reading, and the ACK,
    which echoes MSH-18 from the text, would then name a character set nobody can read. So an
    ESC in MSH needs an ISO 2022 set, and both readings must find the same MSH-18.
    """
    at = data.find(b"\x1b", start)
    where = _locate(data, at, data[start + 3])
    if charset not in _ISO2022:
        raise Hl7ParseError(
            f"byte 0x1B (ESC) at offset {at} in MSH, but MSH-18 names no ISO 2022 "
            "character set (only those use escape sequences)", where)
    if msh.field(18) != msh18:
        raise Hl7ParseError(
            f"byte 0x1B (ESC) at offset {at}: the escape sequences in MSH hide where MSH-18 "
            "is", where)


@lru_cache(maxsize=64)
def _delimiters(field_sep: str, msh2: str) -> EncodingChars:
    # The hot path sees the same few delimiter sets over and over; validate each once.
    return EncodingChars.from_msh(field_sep, msh2)


@lru_cache(maxsize=64)
def _choose_codec(msh18: str, enc: EncodingChars, default_canonical: str) -> tuple[str, str]:
    names = [n.strip() for n in msh18.split(enc.repetition)] if msh18 else []
    canonicals: list[str] = []
    for name in names:
        if not name:
            continue
        canonical = _canonical_charset(name)
        if canonical is None:
            raise Hl7ParseError(f"unsupported character set {name!r}", "MSH-18")
        canonicals.append(canonical)
    iso2022 = [c for c in canonicals if c in _ISO2022]
    if iso2022:
        # JIS X 0212 needs the wider decoder; ISO-2022-JP-1 also reads plain JIS X 0208.
        chosen = "ISO IR159" if "ISO IR159" in iso2022 else iso2022[0]
        return chosen, _CHARSETS[chosen]
    primary = names[0] if names and names[0] else ""
    # Unknown names raised above, so the lookup cannot miss.
    canonical = _canonical_charset(primary) if primary else default_canonical
    assert canonical is not None
    return canonical, _CHARSETS[canonical]


def _locate(data: bytes, offset: int, fs_byte: int) -> str:
    """Best-effort ``SEG-n`` of a byte offset, for error messages (never for logic)."""
    seg_start = max(data.rfind(b"\r", 0, offset), data.rfind(b"\n", 0, offset)) + 1
    name = data[seg_start : seg_start + 3].decode("ascii", "replace")
    field_no = data.count(bytes((fs_byte,)), seg_start, offset)
    if name == "MSH":
        field_no += 1
    return f"{name}-{field_no}"
