"""FHIR resources for studies and orders (engine.pipeline.fhir_resources), validated with the
FHIR models of ``fhir.resources``, and the hl7 destination options check-config checks."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydicom.dataset import Dataset

from engine.durable.store import InstanceRecord
from engine.hl7.message import Hl7Message
from engine.pipeline.fhir_resources import imaging_study, service_requests
from engine.pipeline.rulesets import destination_options
from engine.settings import Settings, SettingsError


def record(sop: str, series: str, modality: str, study: str = "1.2.3") -> InstanceRecord:
    return InstanceRecord(
        object_id=sop, spool_path="x", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=sop, transfer_syntax_uid="1.2.840.10008.1.2.1",
        study_instance_uid=study, series_instance_uid=series, patient_id="P1",
        accession_number="A1", modality=modality, calling_ae="CT", called_ae="RF",
        peer_host="127.0.0.1", listener="main", size_bytes=1, sha256="0",
        received_at="2026-11-25T10:00:00+00:00")


def test_imaging_study_is_valid_fhir_with_zone_and_series() -> None:
    header = Dataset()
    header.StudyDate, header.StudyTime, header.TimezoneOffsetFromUTC = "20261125", "0930", "+0100"
    study = imaging_study([record("1.1", "9.1", "CT"), record("1.2", "9.1", "CT"),
                           record("1.3", "9.2", "SR"), record("2.1", "9.3", "CT", "other")],
                          header)
    assert study is not None
    ImagingStudy.model_validate(study)
    assert study["started"] == "2026-11-25T09:30:00+01:00"
    assert (study["numberOfSeries"], study["numberOfInstances"]) == (2, 3)
    assert [c["code"] for c in study["modality"]] == ["CT", "SR"]
    assert imaging_study([record("1.1", "9.1", "CT", study="")]) is None


@pytest.mark.parametrize(("orc", "status"), [
    ("ORC|NW|PL1|FL1", "active"), ("ORC|CA|PL1|FL1", "revoked"),
    ("ORC|SC|PL1|FL1||CM", "completed"), ("ORC|SC|PL1|FL1||IP", "active"),
    ("ORC|HD|PL1|FL1", "on-hold"), ("ORC|ZZ|PL1|FL1", "unknown")])
def test_service_request_status_follows_the_order(orc: str, status: str) -> None:
    msg = Hl7Message.parse(("MSH|^~\\&|HIS|H|RF|R|20261125||ORM^O01|1|P|2.5.1\r"
                            "PID|1||P1^^^HOSP^MR\r" + orc + "\r"
                            "OBR|1|PL1|FL1|CT^CT Head^http://loinc.org\r").encode())
    (request,) = service_requests(msg)
    ServiceRequest.model_validate(request)
    assert request["status"] == status
    assert request["identifier"][0]["value"] == "PL1"  # no accession: the placer number
    assert request["code"]["coding"][0]["system"] == "http://loinc.org"


def test_adt_makes_no_service_request() -> None:
    msg = Hl7Message.parse(b"MSH|^~\\&|HIS|H|RF|R|20261125||ADT^A08|1|P|2.5.1\rPID|1||P1\r")
    assert service_requests(msg) == []


def test_an_unknown_destination_charset_is_a_configuration_error() -> None:
    settings = Settings.model_validate({"destinations": {"ris": {
        "type": "hl7", "host": "127.0.0.1", "port": 2575, "charset": "KLINGON"}}})
    with pytest.raises(SettingsError, match=r"destinations\.ris\.charset"):
        destination_options(settings)
    settings = Settings.model_validate({"destinations": {"ris": {
        "type": "hl7", "host": "127.0.0.1", "port": 2575, "charset": "UTF-8",
        "receiving_application": "RIS"}}})
    assert destination_options(settings)["ris"]["receiving_application"] == "RIS"
