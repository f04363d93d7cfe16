"""FHIR resources for studies and orders, end to end against a real HTTP FHIR endpoint.

A running radflow routes ``trigger: {on: study}`` and ``trigger: order`` to a ``fhir``
destination (an aiohttp FHIR server that stores what it receives). DCMTK storescu sends the
images, the ``hl7`` package's MLLP client the order. Every resource that arrives is validated
against the FHIR models of ``fhir.resources`` (R4B: ImagingStudy and ServiceRequest are the
same as in R4), and is created or updated by identifier (conditional update), so a study that
grows updates one ImagingStudy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.servicerequest import ServiceRequest
from hl7.client import MLLPClient
from pydicom.uid import generate_uid

from tests.helpers.dicomgen import write_instance
from tests.helpers.peers import FhirServerThread
from tests.helpers.proc import HOST, RadflowFactory, RadflowProcess, storescu

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(180)]

ROUTES = """\
version: 1
routes:
  - name: study-to-ehr
    trigger: {on: study, quiet_seconds: 1, max_wait_seconds: 60}
    destinations: [ehr]
  - name: orders-to-ehr
    trigger: order
    match: {hl7: MSH-9.1, in: [ORM]}
    destinations: [ehr]
"""


def order(control_id: str, control: str = "NW", status: str = "") -> bytes:
    return ("\r".join([
        f"MSH|^~\\&|HIS|HOSP|RADFLOW|RAD|20261125120000||ORM^O01^ORM_O01|{control_id}|P|2.5.1",
        "PID|1||PAT-F^^^HOSP^MR||Fhir^Fiona||19800101|F",
        f"ORC|{control}|PL-F^HIS|FL-F^RAD||{status}||^^^20261125083000",
        "OBR|1|PL-F^HIS|FL-F^RAD|CTCHEST^CT Chest^LOCAL||||||||||||||ACC-F|RP-F||||CT",
    ]) + "\r").encode()


def send_order(rf: RadflowProcess, message: bytes) -> None:
    with MLLPClient(HOST, int(rf.config["hl7"]["listeners"][0]["port"])) as client:
        assert b"MSA|AA|" in client.send_message(message)


@pytest.fixture
def fhir() -> Iterator[FhirServerThread]:
    server = FhirServerThread()
    yield server
    server.close()


def start(radflow: RadflowFactory, fhir: FhirServerThread) -> RadflowProcess:
    rf = radflow({"destinations": {"ehr": {"type": "fhir",
                                           "base_url": fhir.server.base_url}}}, start=False)
    (Path(rf.config["routing"]["routes_dir"]) / "fhir.yaml").write_text(ROUTES)
    rf.start()
    return rf


def test_study_becomes_one_imaging_study_updated_as_it_grows(
        radflow: RadflowFactory, fhir: FhirServerThread, tmp_path: Path) -> None:
    rf = start(radflow, fhir)
    study, ct_series, sr_series = generate_uid(), generate_uid(), generate_uid()
    common: dict[str, Any] = {"study_instance_uid": study, "patient_id": "PAT-F",
                              "accession_number": "ACC-F"}
    first = [write_instance(tmp_path / "a", modality="CT", series_instance_uid=ct_series,
                            instance_number=n, seed=n, **common) for n in (1, 2)]
    first.append(write_instance(tmp_path / "a", modality="MR", series_instance_uid=sr_series,
                                **common))
    assert storescu(rf, [i.path for i in first]).returncode == 0
    key = ("ImagingStudy", f"urn:dicom:uid|urn:oid:{study}")
    sent = fhir.wait_for(key)
    assert sent is not None, rf.diagnostics()
    resource = ImagingStudy.model_validate(sent)  # valid FHIR, or this raises
    assert resource.status == "available"
    assert sent["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{study}"}
    assert sent["subject"]["identifier"]["value"] == "PAT-F"
    assert sent["basedOn"][0]["identifier"]["value"] == "ACC-F"
    assert sent["basedOn"][0]["type"] == "ServiceRequest"
    assert sent["started"].startswith("2025-01-01T12:00:00")
    assert sorted(c["code"] for c in sent["modality"]) == ["CT", "MR"]
    assert (sent["numberOfSeries"], sent["numberOfInstances"]) == (2, 3)
    by_uid = {s["uid"]: s for s in sent["series"]}
    assert by_uid[ct_series]["modality"]["code"] == "CT"
    assert {i["uid"] for i in by_uid[ct_series]["instance"]} == {first[0].sop_instance_uid,
                                                                first[1].sop_instance_uid}
    assert by_uid[ct_series]["instance"][0]["sopClass"]["code"] == \
        f"urn:oid:{first[0].sop_class_uid}"

    # A late image of the same study: the same ImagingStudy, now with four instances.
    late = write_instance(tmp_path / "b", modality="CT", series_instance_uid=ct_series,
                          instance_number=3, seed=3, **common)
    assert storescu(rf, [late.path]).returncode == 0
    updated = fhir.wait_for(key, check=lambda r: r["numberOfInstances"] == 4)
    assert updated is not None, rf.diagnostics()
    ImagingStudy.model_validate(updated)
    assert [k for k in fhir.server.resources if k[0] == "ImagingStudy"] == [key]
    assert all(m == "PUT" for m, url in fhir.server.requests if "ImagingStudy" in url)
    dead = [r for r in rf._table("outbox") if r["state"] == "dead"]
    assert dead == []


def test_order_messages_become_service_request_status(
        radflow: RadflowFactory, fhir: FhirServerThread) -> None:
    rf = start(radflow, fhir)
    send_order(rf, order("ORD1"))
    key = ("ServiceRequest", "ACC-F")
    sent = fhir.wait_for(key)
    assert sent is not None, (fhir.server.requests, rf._table("outbox"))
    ServiceRequest.model_validate(sent)
    assert (sent["status"], sent["intent"]) == ("active", "order")
    assert sent["subject"]["identifier"]["value"] == "PAT-F"
    types = {i["type"]["coding"][0]["code"]: i["value"] for i in sent["identifier"]}
    assert types == {"ACSN": "ACC-F", "PLAC": "PL-F", "FILL": "FL-F"}
    assert sent["code"]["coding"][0]["code"] == "CTCHEST"
    # The RIS cancels it: the same ServiceRequest is revoked.
    send_order(rf, order("ORD2", control="CA"))
    revoked = fhir.wait_for(key, check=lambda r: r["status"] == "revoked")
    assert revoked is not None, rf.diagnostics()
    ServiceRequest.model_validate(revoked)
    assert [k for k in fhir.server.resources if k[0] == "ServiceRequest"] == [key]
    assert [r for r in rf._table("outbox") if r["state"] == "dead"] == []
