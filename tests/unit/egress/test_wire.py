"""The bytes radflow's senders write themselves: STOW-RS batching and FailedSOPSequence
parsing, HL7 rendering with escaping, FHIR request choice, presentation-context planning. The
DIMSE command sets and P-DATA framing are in ``tests/unit/test_dimse_wire.py``."""

from __future__ import annotations

import pytest
from pydicom.uid import CTImageStorage

from engine.egress.delivery import Delivery, DicomObject
from engine.egress.dicomweb import _Part, failed_instances, plan_requests
from engine.egress.dimse import chunk_by_contexts, plan_contexts
from engine.egress.errors import PermanentDeliveryError
from engine.egress.fhir import request_for
from engine.egress.hl7 import render_segments, wire_bytes

UID = "1.2.826.0.1.3680043.8.498.1234567"  # odd length: padded with NUL


def obj(sop: str, ts: str) -> DicomObject:
    return DicomObject("x.dcm", ts, sop, UID)


def test_contexts_stored_syntax_alone_then_fallbacks_and_split_at_128() -> None:
    fallbacks = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
    plan = plan_contexts([obj("1.2.3", "1.2.840.10008.1.2.4.50"), obj("1.2.3", fallbacks[0])],
                         fallbacks)
    assert plan == [("1.2.3", ("1.2.840.10008.1.2.4.50",)), ("1.2.3", fallbacks),
                    ("1.2.3", (fallbacks[0],))]
    from engine.egress.dimse import _Item

    items = [_Item(i, obj(f"1.2.{i}", fallbacks[0])) for i in range(100)]
    parts = chunk_by_contexts(items, fallbacks)
    assert [len(p) for p in parts] == [64, 36]  # two contexts per SOP class


def test_stow_batches_by_count_and_size() -> None:
    parts = [_Part(i, obj("1.2", "1.2.840.10008.1.2.1"), size) for i, size in
             enumerate([10, 10, 10, 50, 60, 10])]
    groups = plan_requests(parts, max_count=2, max_bytes=70)
    assert [[p.index for p in g] for g in groups] == [[0, 1], [2, 3], [4, 5]]
    big = [_Part(0, obj("1.2", "1.2.840.10008.1.2.1"), 500)]
    assert len(plan_requests(big, 5, 100)) == 1  # too large alone still goes


def test_failed_sop_sequence_is_read() -> None:
    body = {"00081198": {"vr": "SQ", "Value": [
        {"00081155": {"vr": "UI", "Value": [UID]}, "00081197": {"vr": "US", "Value": [42752]}}]}}
    assert failed_instances(body) == {UID: 0xA700}
    assert failed_instances(None) == {} and failed_instances({"x": 1}) == {}


def test_hl7_rendering_escapes_field_content() -> None:
    text = render_segments([["MSH", "A", "B", "C", "D", "", "", ["ADT", "A08"], "1", "P",
                             "2.5"], ["NTE", "1", "", "x|y^z&w~v\\u"]])
    assert text.split("\r")[0] == "MSH|^~\\&|A|B|C|D|||ADT^A08|1|P|2.5"
    assert text.split("\r")[1] == "NTE|1||x\\F\\y\\S\\z\\T\\w\\R\\v\\E\\u"


def test_hl7_message_text_is_normalised_and_block_characters_refused() -> None:
    d = Delivery(1, "ris", "hl7", {"message": "MSH|^~\\&|A|B|C|D|||ADT^A08|X9|P|2.5\nPID|1"}, 1)
    data, control_id = wire_bytes(d)
    assert data == b"MSH|^~\\&|A|B|C|D|||ADT^A08|X9|P|2.5\rPID|1\r" and control_id == "X9"
    bad = Delivery(2, "ris", "hl7", {"message": "MSH|^~\\&|A|B|C|D|||ADT^A08|X|P|2.5\x1c"}, 1)
    with pytest.raises(PermanentDeliveryError):
        wire_bytes(bad)


def test_fhir_request_choice() -> None:
    base = "http://ehr/fhir/"
    ident = {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}
    assert request_for(base, {"resourceType": "ImagingStudy", "identifier": [ident]}) == (
        "PUT", "http://ehr/fhir/ImagingStudy?identifier=urn%3Adicom%3Auid%7Curn%3Aoid%3A1.2.3")
    assert request_for(base, {"resourceType": "Task", "id": "t1"}) == (
        "PUT", "http://ehr/fhir/Task/t1")
    assert request_for(base, {"resourceType": "ServiceRequest"}) == (
        "POST", "http://ehr/fhir/ServiceRequest")
    with pytest.raises(PermanentDeliveryError):
        request_for(base, {"resourceType": "Bogus"})


def test_dicom_payload_in_the_router_layout_and_flat() -> None:
    nested = {"object": {"spool_path": "objects/a.dcm", "sop_class_uid": CTImageStorage,
                         "sop_instance_uid": UID, "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                         "size_bytes": 10}, "morph": [], "secret_fingerprint": None}
    o = DicomObject.of(Delivery(1, "p", "dicom", nested, 1))
    assert (o.spool_path, o.sop_instance_uid, o.size_bytes) == ("objects/a.dcm", UID, 10)
    flat = dict(nested["object"])  # type: ignore[call-overload]
    assert DicomObject.of(Delivery(1, "p", "dicom", flat, 1)).spool_path == "objects/a.dcm"
    with pytest.raises(PermanentDeliveryError):
        DicomObject.of(Delivery(1, "p", "dicom", {"spool_path": "a"}, 1))


def test_a_spool_path_may_not_leave_the_spool(tmp_path: object) -> None:
    from pathlib import Path

    for bad in ("../../etc/passwd", "/etc/passwd", "objects/../../x.dcm", "..", "."):
        o = DicomObject(bad, "1.2.840.10008.1.2.1", CTImageStorage, UID)
        with pytest.raises(PermanentDeliveryError):
            o.path_in(Path(str(tmp_path)))
    ok = DicomObject("objects/2026/01/02/03/a.dcm", "1.2.840.10008.1.2.1", CTImageStorage, UID)
    assert ok.path_in(Path(str(tmp_path))) == Path(str(tmp_path)) / ok.spool_path
