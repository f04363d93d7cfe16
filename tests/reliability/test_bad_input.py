"""Group B cases that no other test covers the way RELIABILITY.md asks (see the table in
``docs/reliability.md`` for where the other cases are tested): each bad input gets its clear
error, and the one checker (:mod:`tests.helpers.invariant`) holds afterwards: what radflow
acknowledged is at every destination its routes name, nothing foreign there, nothing
half-written in the spool or journal.

B1 every path-like or malformed SOP Instance UID, with the file system walked before and after,
and one longer than 64 characters (a failure on a surviving association); B2 shell and path
syntax in PatientID, StudyDescription and the calling AE used by rules and a morph template;
B3 an executable preamble; B7 pixel attributes that disagree with the pixel data; B9 the same
UID with other content; B11/B13 MLLP frame bytes inside an HL7 message; and what the fuzzers
found: ESC bytes in MSH without an ISO 2022 character set, and a command fragment without
Command Field.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import _config

from engine.hl7.message import Hl7Message
from tests.helpers import dicomgen
from tests.helpers.invariant import assert_nothing_lost
from tests.helpers.proc import HOST, STORESCU_PROPOSE, RadflowProcess, store_responses, storescu
from tests.helpers.scu import association, send_raw_file
from tests.reliability.conftest import routed_config

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(120)]

CT = dicomgen.CT_IMAGE_STORAGE
VERIFICATION = "1.2.840.10008.1.1"
ARGS = STORESCU_PROPOSE[ExplicitVRLittleEndian]


def tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


# --- B1 ---------------------------------------------------------------------------------------
#: (an empty UID is h-dimse's regression test: tests/integration/test_dimse_bad_input.py)
BAD_UIDS = ["../../x", "/etc/x", "1.2/../3", "1.2\x003", "1.2.abc", "1..2", "1.02.3"]


@pytest.mark.filterwarnings("ignore")
def test_b1_path_like_uids_are_refused_and_write_nothing_outside_the_spool(
        fanout, dicom_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # pynetdicom would refuse to send UIDs this bad; a hostile peer has no such scruples.
    monkeypatch.setitem(_config.VALIDATORS, "UI", lambda value: (True, ""))
    rf, sinks = fanout()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evil = [dicomgen.write_instance(dicom_dir, sop_instance_uid=uid, name=f"evil{i}.dcm")
                for i, uid in enumerate(BAD_UIDS)]
    good = dicomgen.write_instance(dicom_dir / "good")
    before = tree(tmp_path) - tree(rf.spool_dir)
    with association(rf, [(CT, [ExplicitVRLittleEndian])]) as assoc:
        for inst in evil:
            status = send_raw_file(assoc, inst.path)
            assert "Status" in status, f"no answer for {inst.sop_instance_uid!r}"
            assert status.Status == 0xC000 and "UID" in status.ErrorComment, inst.sop_instance_uid
        # The same association goes on working.
        assert send_raw_file(assoc, good.path).Status == 0x0000
    created = {p for p in tree(tmp_path) - before
               if rf.spool_dir not in p.parents and p != rf.spool_dir}
    # Only what the engine, its sinks and its log own may have appeared.
    allowed = (rf.base_dir, *(s.out.parent for s in sinks.values()))
    assert {p for p in created if not any(a in p.parents for a in allowed)} == set()
    assert not Path("/etc/x").exists()
    assert len(rf.events("ingress.dimse.c_store.failed", reason="invalid_identifier")) == \
        len(BAD_UIDS)
    for sink in sinks.values():
        sink.wait_for({good.sop_instance_uid})
    assert_nothing_lost({good.sop_instance_uid},
                        {n: s.received() for n, s in sinks.items()}, rf=rf)


@pytest.mark.filterwarnings("ignore")
def test_b1_an_overlong_uid_is_answered_and_the_association_goes_on(
        fanout, dicom_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # pynetdicom checks UID length on both sides; the sender's check is switched off here.
    monkeypatch.setitem(_config.VALIDATORS, "UI", lambda value: (True, ""))
    rf, sinks = fanout()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        long_uid = dicomgen.write_instance(dicom_dir, sop_instance_uid="1." + "2" * 70)
    good = dicomgen.write_instance(dicom_dir / "good")
    with association(rf, [(CT, [ExplicitVRLittleEndian])]) as assoc:
        status = send_raw_file(assoc, long_uid.path)
        assert "Status" in status, "no answer: the association was aborted"
        assert status.Status == 0xC000
        assert status.ErrorComment == \
            "Invalid Affected SOP Instance UID: must not exceed 64 characters"
        assert assoc.is_established
        # The same association goes on working.
        assert send_raw_file(assoc, good.path).Status == 0x0000
    (event,) = rf.events("ingress.dimse.request.invalid")
    assert event["request"] == "C-STORE-RQ" and event["status"] == "0xC000"
    assert event["calling_ae"] and event["peer_host"] == "127.0.0.1"
    assert list(event["invalid"]) == ["AffectedSOPInstanceUID"]
    assert rf.events("ingress.dimse.request.aborted") == []
    assert [r["sop_instance_uid"] for r in rf.journal_rows()] == [good.sop_instance_uid]
    for sink in sinks.values():
        sink.wait_for({good.sop_instance_uid})
    assert_nothing_lost({good.sop_instance_uid},
                        {n: s.received() for n, s in sinks.items()}, rf=rf)


# --- B2 ---------------------------------------------------------------------------------------
def test_b2_shell_and_path_syntax_in_values_stays_plain_text(radflow, sinks, dicom_dir: Path,
                                                            tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    pacs, ai = sinks("PACS"), sinks("AI")
    rf = radflow(routed_config({"pacs": pacs, "ai": ai}), start=False)
    routes = Path(rf.config["routing"]["routes_dir"])
    (routes / "10-evil.yaml").write_text(
        "version: 1\nroutes:\n"
        "  - name: shell-looking-ids\n"
        "    match: {attr: PatientID, regex: '^\\$\\(touch'}\n"
        "    destinations: [pacs]\n"
        "    morph:\n"
        "      - {op: set, attr: StudyDescription, value: '{PatientID}'}\n"
        "  - name: rest\n    fallback: true\n    destinations: [ai]\n", encoding="utf-8")
    rf.start()
    evil_id = f"$(touch {canary})"[:64]
    ds = dicomgen.new_dataset("CT", patient_id=evil_id)
    ds.StudyDescription = f"`touch {canary}`; ../../etc/passwd\n"
    path = dicomgen.write_part10(ds, dicom_dir / "evil.dcm")
    result = storescu(rf, path, *ARGS, "-aet", "CT;$(id)`x`")
    assert store_responses(result.stdout) == ["Success"], result.stdout[-2000:]
    uid = str(ds.SOPInstanceUID)
    assert pacs.wait_for({uid}) == set()
    time.sleep(1.0)  # the fallback route would have sent it to ai by now
    assert uid not in ai.received()
    forwarded = pydicom.dcmread(pacs.received_files()[0])
    assert forwarded.StudyDescription == evil_id  # the template copied the text, nothing ran
    assert not canary.exists()
    (row,) = rf.journal_rows()
    assert "$" not in row["spool_path"] and ".." not in row["spool_path"]
    assert_nothing_lost({uid}, {"pacs": pacs.received()}, rf=rf)


# --- B3 ---------------------------------------------------------------------------------------
def test_b3_an_executable_preamble_is_not_kept(fanout, dicom_dir: Path) -> None:
    rf, sinks = fanout()
    inst = dicomgen.write_instance(dicom_dir)
    raw = bytearray(inst.path.read_bytes())
    raw[:4] = b"MZ\x90\x00"
    raw[64:68] = b"\x7fELF"
    inst.path.write_bytes(bytes(raw))
    result = storescu(rf, inst.path, *ARGS)
    assert store_responses(result.stdout) == ["Success"], result.stdout[-2000:]
    (row,) = rf.journal_rows()
    stored = rf.spool_dir / row["spool_path"]
    assert stored.read_bytes()[:128] == b"\x00" * 128
    assert dicomgen.dataset_bytes(stored) == dicomgen.dataset_bytes(inst.path)
    for sink in sinks.values():
        assert sink.wait_for({inst.sop_instance_uid}) == set()
        (received,) = sink.received_files()
        assert received.read_bytes()[:4] != b"MZ\x90\x00"
        assert pydicom.dcmread(received) == pydicom.dcmread(inst.path)
    assert_nothing_lost({inst.sop_instance_uid},
                        {n: s.received() for n, s in sinks.items()}, rf=rf)


# --- B4 ---------------------------------------------------------------------------------------
def _deflate_bomb(folder: Path, inflated_gib: int = 2) -> tuple[Path, str]:
    """A Part 10 file in Deflated Explicit VR Little Endian whose ~2 MB of deflate inflate to
    ``inflated_gib`` GiB: a CT header, then Pixel Data declaring that many zero bytes.

    Zeros are compressed once, 64 MiB at a time, each piece ended with a full flush (which
    resets the compressor), so the same piece can be repeated: seconds instead of a minute.
    """
    ds = dicomgen.new_dataset("CT")
    del ds.PixelData
    header = DicomBytesIO()
    header.is_little_endian, header.is_implicit_VR = True, False
    write_dataset(header, ds)
    zeros = inflated_gib * 1024**3
    plain_head = header.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, zeros)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = comp.compress(plain_head) + comp.flush(zlib.Z_FULL_FLUSH)
    piece = comp.compress(b"\x00" * (64 * 1024**2)) + comp.flush(zlib.Z_FULL_FLUSH)
    stream = head + piece * (zeros // (64 * 1024**2)) + comp.flush()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    fp = DicomBytesIO()
    fp.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(fp, meta)
    path = folder / "bomb.dcm"
    path.write_bytes(fp.getvalue() + stream)
    return path, str(ds.SOPInstanceUID)


def _peak_rss_mib(rf: RadflowProcess) -> float:
    """The radflow process's peak resident memory (VmHWM), in MiB."""
    assert rf.proc is not None
    for line in Path(f"/proc/{rf.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.timeout(300)
def test_b4_a_deflate_bomb_is_refused_in_bounded_memory_while_others_store(
        fanout, dicom_dir: Path) -> None:
    rf, sinks = fanout()
    bomb, bomb_uid = _deflate_bomb(dicom_dir)
    assert bomb.stat().st_size < 3 * 1024**2
    outcome: dict[str, Any] = {}

    def send_bomb() -> None:
        with association(rf, [(CT, [DeflatedExplicitVRLittleEndian])],
                         calling_ae="BOMB") as assoc:
            outcome["status"] = send_raw_file(assoc, bomb)

    sender = threading.Thread(target=send_bomb)
    sender.start()
    # Meanwhile, another modality's association: echo and store while the bomb is handled.
    stored: list[str] = []
    with association(rf, [(CT, [ExplicitVRLittleEndian]), (VERIFICATION,
                                                            [ExplicitVRLittleEndian])]) as other:
        while sender.is_alive() or not stored:
            assert other.send_c_echo().Status == 0x0000
            inst = dicomgen.write_instance(dicom_dir / "other", seed=len(stored))
            assert send_raw_file(other, inst.path).Status == 0x0000
            stored.append(inst.sop_instance_uid)
    sender.join(120)
    status = outcome["status"]
    assert status.Status == 0xC000, status
    assert "size limit" in status.ErrorComment
    (event,) = rf.events("ingress.dimse.c_store.failed", sop_instance_uid=bomb_uid)
    assert event["calling_ae"] == "BOMB"
    assert _peak_rss_mib(rf) < 512
    # Nothing of the bomb kept or queued; everything else delivered.
    assert bomb_uid not in {r["sop_instance_uid"] for r in rf.journal_rows()}
    for sink in sinks.values():
        assert sink.wait_for(set(stored)) == set()
    assert_nothing_lost(set(stored), {n: s.received() for n, s in sinks.items()}, rf=rf)


# --- B7 ---------------------------------------------------------------------------------------
def test_b7_pixel_attributes_that_do_not_fit_the_pixel_data_are_forwarded_unchanged(
        fanout, dicom_dir: Path) -> None:
    rf, sinks = fanout()
    ds = dicomgen.new_dataset("CT", size=16)
    ds.Rows, ds.Columns = 65535, 65535  # 8 GiB of pixels declared, 512 bytes present
    ds.NumberOfFrames = 1000
    path = dicomgen.write_part10(ds, dicom_dir / "overflow.dcm")
    result = storescu(rf, path, *ARGS)
    assert store_responses(result.stdout) == ["Success"], result.stdout[-2000:]
    uid = str(ds.SOPInstanceUID)
    for sink in sinks.values():
        assert sink.wait_for({uid}) == set()
        forwarded = pydicom.dcmread(sink.received_files()[0])
        assert forwarded.Rows == 65535 and forwarded.PixelData == ds.PixelData
    assert_nothing_lost({uid}, {n: s.received() for n, s in sinks.items()}, rf=rf)


# --- B9 ---------------------------------------------------------------------------------------
def test_b9_same_uid_other_content_is_a_new_version_visible_in_the_api(
        fanout, dicom_dir: Path) -> None:
    rf, sinks = fanout()  # the test config's policy: version
    first = dicomgen.new_dataset("CT", seed=1)
    second = dicomgen.new_dataset("CT", seed=2, sop_instance_uid=str(first.SOPInstanceUID),
                                  study_instance_uid=str(first.StudyInstanceUID),
                                  series_instance_uid=str(first.SeriesInstanceUID))
    a = dicomgen.write_part10(first, dicom_dir / "a.dcm")
    b = dicomgen.write_part10(second, dicom_dir / "b.dcm")
    result = storescu(rf, [a, b], *ARGS)
    assert store_responses(result.stdout) == ["Success", "Success"], result.stdout[-2000:]
    uid = str(first.SOPInstanceUID)
    versions = sorted(r["version"] for r in rf.journal_rows())
    assert versions == [1, 2]
    (event,) = rf.events("ingress.dimse.c_store.new_version")
    assert event["sop_instance_uid"] == uid and event["version"] == 2
    status, body = rf.http_get(f"/api/v1/instances/{uid}")
    assert status == 200 and b'"version": 2' in body.replace(b'"version":2', b'"version": 2')
    for sink in sinks.values():
        assert sink.wait_for({uid}) == set()
    assert_nothing_lost({uid}, {n: s.received() for n, s in sinks.items()}, rf=rf)


# --- B11 / B13 --------------------------------------------------------------------------------
def _mllp(rf: RadflowProcess, payload: bytes, expect: int) -> list[bytes]:
    port = int(rf.config["hl7"]["listeners"][0]["port"])
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(payload)
        data = b""
        while data.count(b"\x1c\x0d") < expect:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    return [f.lstrip(b"\x0b") for f in data.split(b"\x1c\x0d") if f.strip()]


def _order(cid: str, sender: str = "RIS") -> bytes:
    return (f"MSH|^~\\&|{sender}|HOSP|RADFLOW|HOSP|20261204010000||ORM^O01^ORM_O01|{cid}|P|2.5.1\r"
            f"PID|1||P{cid}^^^HOSP^MR||DOE^JOHN\rPV1|1|O\r"
            f"ORC|NW|PL{cid}^RIS|FL{cid}^RADFLOW||SC||^^^20261204010000\r"
            f"OBR|1|PL{cid}^RIS|FL{cid}^RADFLOW|CTHEAD^CT Head^LOCAL|||20261204010000||||||||"
            f"|||ACC{cid}|RP{cid}|||||CT||||||||||||||20261204010000\r").encode()


def test_b11_b13_an_mllp_frame_byte_inside_a_message_is_rejected_with_a_reason(
        radflow) -> None:
    rf = radflow()
    bad = _order("BAD1", sender="R\x1cIS")
    frames = b"".join(b"\x0b" + m + b"\x1c\x0d" for m in (bad, _order("OK1"), _order("OK2")))
    acks = _mllp(rf, frames, expect=3)
    assert [a.split(b"\r")[1].split(b"|")[1] for a in acks] == [b"AR", b"AA", b"AA"], acks
    assert b"0x1C" in acks[0] and b"MSH-3" in acks[0]
    rows = rf.hl7_rows()
    assert [r["ack_code"] for r in rows] == ["AR", "AA", "AA"]
    assert rows[0]["raw"] == bad  # kept whole in the rejected store
    status, body = rf.http_get("/api/v1/worklist?limit=100")
    assert status == 200 and body.count(b"ACCOK1") == 1 and body.count(b"ACCOK2") == 1
    assert b"ACCBAD1" not in body
    assert rf.events("Unhandled exception in client_connected_cb") == []


def test_esc_bytes_in_msh_without_iso_2022_get_a_readable_ar(radflow) -> None:
    # What the HL7 fuzzer found: the ESC bytes hid MSH-18 from the byte-level reading, and the
    # ACK echoed a garbage MSH-18 from the text one.
    from tests.fuzz.test_fuzz import ESC_IN_MSH

    rf = radflow()
    frames = b"".join(b"\x0b" + m + b"\x1c\x0d" for m in (ESC_IN_MSH, _order("OK1")))
    acks = _mllp(rf, frames, expect=2)
    assert len(acks) == 2, acks
    bad = Hl7Message.parse(acks[0])  # what a receiver does with it
    msa, err = bad.segment("MSA"), bad.segment("ERR")
    assert msa is not None and msa.field(1) == "AR" and err is not None
    assert "0x1B" in msa.field(3) and "ISO 2022" in msa.field(3), msa.raw
    assert bad.msh.field(18) == ""  # plain ASCII, as its bytes are
    assert Hl7Message.parse(acks[1]).segment("MSA").field(1) == "AA"  # type: ignore[union-attr]
    rows = rf.hl7_rows()
    assert [r["ack_code"] for r in rows] == ["AR", "AA"]
    assert rows[0]["raw"] == ESC_IN_MSH  # kept whole in the rejected store
    (event, _) = rf.events("ingress.hl7.ack_sent")
    assert event["ack_code"] == "AR" and "ESC" in event["reason"] and event["peer_host"]


# --- the PDU the fuzzer found -----------------------------------------------------------------
def test_a_command_without_command_field_aborts_that_association_only(fanout,
                                                                       dicom_dir: Path) -> None:
    rf, sinks = fanout()
    good = dicomgen.write_instance(dicom_dir)
    with association(rf, [(CT, [ExplicitVRLittleEndian])]) as assoc:
        assert send_raw_file(assoc, good.path).Status == 0x0000
        sock = assoc.dul.socket
        assert sock is not None and sock.socket is not None
        # P-DATA-TF, one PDV on context 1: a last command fragment holding one element
        # (0000,0002)-less garbage, which pynetdicom cannot turn into a command.
        pdv = bytes([1, 0x03]) + struct.pack("<HHI", 0x0000, 0x0053, 0)
        sock.socket.sendall(struct.pack(">BBL", 0x04, 0, 4 + len(pdv)) +
                            struct.pack(">L", len(pdv)) + pdv)
        deadline = time.monotonic() + 10
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert assoc.is_aborted, "radflow did not abort the association"
    rf.wait_for_event("dimse.dul.failed")
    result = storescu(rf, dicomgen.write_instance(dicom_dir / "next").path, *ARGS)
    assert store_responses(result.stdout) == ["Success"]
    uids = {r["sop_instance_uid"] for r in rf.journal_rows()}
    for sink in sinks.values():
        sink.wait_for(uids)
    assert_nothing_lost(uids, {n: s.received() for n, s in sinks.items()}, rf=rf)

