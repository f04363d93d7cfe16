"""B10: character sets. Person names as Japanese, Chinese and European modalities write them
(ISO 2022 with JIS X 0201/0208/0212 escapes, UTF-8), a misspelt defined term and bytes that are
not valid in the declared set, sent with DCMTK's storescu and forwarded to DCMTK storescp.

What a site checks: a rule on Patient Name matches the name as the modality meant it; the
elements a morph did not touch arrive byte for byte as the modality sent them (compared raw,
element by element, at the destination); the bad term and the bad bytes give a warning, not a
failure; and David Clunie's ``dciodvfy`` finds no error in what radflow forwarded that it did
not already find in what the modality sent.

The names are written into the files as raw bytes (the examples of PS3.5 Annex H and J), not
by pydicom's encoder, so the test does not depend on how pydicom would encode them.
"""

from __future__ import annotations

import io
import re
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.uid import ExplicitVRLittleEndian

from tests.helpers import dicomgen
from tests.helpers.invariant import assert_nothing_lost
from tests.helpers.proc import STORESCU_PROPOSE, store_responses, storescu
from tests.reliability.conftest import routed_config

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(180)]

ARGS = STORESCU_PROPOSE[ExplicitVRLittleEndian]
#: the StudyDescription the matching route's morph writes (the one element it touches)
MORPHED = "B10 MATCHED"


def _jis(text: str, codec: str, back: bytes = b"") -> bytes:
    """``text`` in ISO 2022 the way DICOM wants it: each component encoded on its own, so
    every ``^`` and ``=`` is reached in the initial set (PS3.5 6.1.2.5.3). ``back`` replaces
    the encoder's return to ASCII (``ESC ( J`` for sets whose G0 starts as JIS X 0201)."""
    out = []
    for group in text.split("="):
        parts = []
        for comp in group.split("^"):
            raw = comp.encode(codec)
            if back and raw.endswith(b"\x1b(B"):
                raw = raw[:-3] + back
            parts.append(raw)
        out.append(b"^".join(parts))
    return b"=".join(out)


@dataclass(frozen=True)
class Case:
    name: str
    charset: str  # Specific Character Set as written (backslash between values)
    raw_name: bytes  # Patient Name bytes as the modality writes them
    meant: str | None  # the name as the modality meant it (None: the bytes are invalid)


CASES = [
    Case("ir6_ir87", "ISO 2022 IR 6\\ISO 2022 IR 87",
         _jis("Yamada^Tarou=山田^太郎=やまだ^たろう", "iso2022_jp"),
         "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    # Half-width katakana as single bytes of JIS X 0201 (G1 of IR 13), kanji after ESC $ B, and
    # ESC ( J back to JIS X 0201 Roman, as PS3.5 H.3.2 writes it.
    Case("ir13_ir87", "ISO 2022 IR 13\\ISO 2022 IR 87",
         "ﾔﾏﾀﾞ^ﾀﾛｳ=".encode("shift_jis")
         + _jis("山田^太郎=やまだ^たろう", "iso2022_jp", back=b"\x1b(J"),
         "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"),
    # 鷗 is only in JIS X 0212 (ESC $ ( D).
    Case("ir159", "ISO 2022 IR 6\\ISO 2022 IR 87\\ISO 2022 IR 159",
         _jis("Mori^Ogai=森^鷗外=もり^おうがい", "iso2022_jp_2"),
         "Mori^Ogai=森^鷗外=もり^おうがい"),
    Case("utf8", "ISO_IR 192", "Wang^XiaoDong=王^小東".encode(), "Wang^XiaoDong=王^小東"),
    # The defined term misspelt (a space for the underscore), as some modalities write it.
    Case("bad_term", "ISO IR 192", "Müller^Jürgen".encode(), "Müller^Jürgen"),
    Case("invalid_bytes", "ISO_IR 192", b"Bad\xff\xfe^Bytes\xc3", None),
]


def _with_raw_name(ds: Dataset, raw: bytes, path: Path) -> Path:
    """Write ``ds`` with Patient Name replaced by ``raw`` exactly (Explicit VR LE)."""
    ds.PatientName = "PLACEHOLDER"
    dicomgen.write_part10(ds, path)
    data = path.read_bytes()
    old = b"\x10\x00\x10\x00PN" + struct.pack("<H", len(b"PLACEHOLDER ")) + b"PLACEHOLDER "
    assert data.count(old) == 1
    value = raw + (b" " if len(raw) % 2 else b"")
    path.write_bytes(data.replace(old, b"\x10\x00\x10\x00PN" + struct.pack("<H", len(value))
                                  + value))
    return path


def _write_case(case: Case, folder: Path, n: int) -> tuple[Path, str]:
    ds = dicomgen.new_dataset("CT", seed=n, patient_id=f"B10-{n}")
    ds.SpecificCharacterSet = case.charset.split("\\") if "\\" in case.charset \
        else case.charset
    path = _with_raw_name(ds, case.raw_name, folder / f"{case.name}.dcm")
    return path, str(ds.SOPInstanceUID)


def _raw_elements(path: Path) -> dict[int, bytes]:
    """Every top-level element's value bytes, as read from the file (never decoded)."""
    with io.BytesIO(dicomgen.dataset_bytes(path)) as fp:
        return {int(elem.tag): bytes(elem.value or b"")
                for elem in data_element_generator(fp, False, True)}


def dciodvfy() -> str | None:
    found = shutil.which("dciodvfy") or str(Path(sys.executable).parent / "dciodvfy")
    return found if Path(found).exists() else None


def _errors(path: Path) -> set[str]:
    tool = dciodvfy()
    assert tool is not None
    result = subprocess.run([tool, str(path)], capture_output=True, text=True,
                            errors="replace", timeout=60, check=False)
    # dciodvfy names the file in some lines; the message is what is compared.
    return {re.sub(r"\s+", " ", line.strip()) for line in
            (result.stdout + result.stderr).splitlines() if line.startswith("Error")}


def test_b10_names_in_every_charset_match_rules_and_travel_byte_exact(
        radflow, sinks, dicom_dir: Path) -> None:
    pacs, ai = sinks("PACS"), sinks("AI")
    rf = radflow(routed_config({"pacs": pacs, "ai": ai}), start=False)
    names = [c.meant for c in CASES if c.meant is not None]
    quoted = ", ".join('"' + n + '"' for n in names)
    (Path(rf.config["routing"]["routes_dir"]) / "10-names.yaml").write_text(
        "version: 1\nroutes:\n"
        "  - name: known-names\n"
        f"    match: {{attr: PatientName, in: [{quoted}]}}\n"
        "    destinations: [pacs]\n"
        f"    morph:\n      - {{op: set, attr: StudyDescription, value: '{MORPHED}'}}\n"
        "  - name: everything\n"
        "    match: {attr: Modality, equals: CT}\n"
        "    destinations: [ai]\n", encoding="utf-8")
    rf.start()
    sent = {case.name: _write_case(case, dicom_dir, n) for n, case in enumerate(CASES)}
    result = storescu(rf, [p for p, _ in sent.values()], *ARGS)
    assert store_responses(result.stdout) == ["Success"] * len(CASES), result.stdout[-3000:]

    uid_of = {name: uid for name, (_, uid) in sent.items()}
    matched = {uid_of[c.name] for c in CASES if c.meant is not None}
    assert ai.wait_for(set(uid_of.values())) == set()
    assert pacs.wait_for(matched) == set()
    time.sleep(0.5)  # nothing else may follow to pacs
    # Rules matched the names as meant, and only those.
    assert pacs.received() == matched

    by_uid_pacs = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f
                   for f in pacs.received_files()}
    by_uid_ai = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f
                 for f in ai.received_files()}
    problems: list[str] = []
    for case in CASES:
        path, uid = sent[case.name]
        original = _raw_elements(path)
        # Unmorphed: every element byte-exact; and the whole dataset too.
        if dicomgen.dataset_bytes(by_uid_ai[uid]) != dicomgen.dataset_bytes(path):
            problems.append(f"{case.name}: the ai copy differs from what was sent")
        if case.meant is None:
            continue
        forwarded = _raw_elements(by_uid_pacs[uid])
        untouched = {t for t in original if t != 0x0008_1030}
        changed = sorted(hex(t) for t in untouched if forwarded.get(t) != original[t])
        if changed:
            problems.append(f"{case.name}: untouched elements changed: {changed}")
        if forwarded.get(0x0010_0010) != original[0x0010_0010]:
            problems.append(f"{case.name}: Patient Name bytes changed")
        ds = pydicom.dcmread(by_uid_pacs[uid])
        if ds.StudyDescription != MORPHED or str(ds.PatientName) != case.meant:
            problems.append(f"{case.name}: forwarded as {ds.PatientName!r}, "
                            f"{ds.StudyDescription!r}")
    assert problems == []

    # The misspelt term and the invalid bytes are warnings, nothing failed.
    assert rf.events("ingress.dimse.c_store.failed") == []
    (unknown,) = rf.events("ingress.dimse.c_store.unknown_charset")
    assert unknown["terms"] == ["ISO IR 192"] and unknown["sop_instance_uid"] == \
        uid_of["bad_term"]
    # pydicom's own warning about the undecodable bytes names the instance (and whether intake,
    # routing or a sender met them), so the operator can find the modality that sent them.
    undecodable = [r for r in rf.logs() if r.get("level") == "warning"
                   and "replacement characters" in str(r.get("event"))]
    assert undecodable, [r["event"] for r in rf.logs() if r.get("level") == "warning"]
    assert {r.get("sop_instance_uid") for r in undecodable} == {uid_of["invalid_bytes"]}
    assert all(r.get("calling_ae") or r.get("destination") for r in undecodable)
    assert_nothing_lost(set(uid_of.values()), {"ai": ai.received()}, rf=rf)
    assert_nothing_lost(matched, {"pacs": pacs.received()}, rf=rf)


@pytest.mark.skipif(dciodvfy() is None, reason="dciodvfy (dicom3tools) is not installed")
def test_b10_dciodvfy_finds_nothing_new_in_forwarded_output(radflow, sinks,
                                                             dicom_dir: Path) -> None:
    pacs = sinks("PACS")
    rf = radflow(routed_config({"pacs": pacs}), start=False)
    (Path(rf.config["routing"]["routes_dir"]) / "10-all.yaml").write_text(
        "version: 1\nroutes:\n  - name: everything\n    fallback: true\n"
        "    destinations: [pacs]\n"
        f"    morph:\n      - {{op: set, attr: StudyDescription, value: '{MORPHED}'}}\n",
        encoding="utf-8")
    rf.start()
    sent = {case.name: _write_case(case, dicom_dir, n) for n, case in enumerate(CASES)}
    result = storescu(rf, [p for p, _ in sent.values()], *ARGS)
    assert store_responses(result.stdout) == ["Success"] * len(CASES), result.stdout[-3000:]
    assert pacs.wait_for({uid for _, uid in sent.values()}) == set()
    by_uid = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f
              for f in pacs.received_files()}
    new_errors = {name: sorted(_errors(by_uid[uid]) - _errors(path))
                  for name, (path, uid) in sent.items()}
    assert {k: v for k, v in new_errors.items() if v} == {}
