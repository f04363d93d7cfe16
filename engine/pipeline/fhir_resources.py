"""FHIR R4 resources for studies and orders, rendered at routing time for ``fhir`` destinations.

:func:`imaging_study` describes one study from the instance journal: ``identifier`` the Study
Instance UID (``urn:dicom:uid``, first, so the FHIR sender's conditional update creates the
resource once and updates it as the study grows), the accession number as a second identifier,
every series with its modality and instances (SOP class as ``urn:oid``), the study's
modalities and counts, ``started`` from Study Date/Time (with Timezone Offset From UTC when the
images carry it), ``subject`` the patient by identifier and ``basedOn`` the order's
ServiceRequest by accession number. :func:`service_requests` turns an HL7 order message into
one ServiceRequest per ORC group: ``status`` from ORC-1 / ORC-5, identifiers accession (ACSN,
first), placer (PLAC) and filler (FILL), ``code`` from OBR-4, ``subject`` from PID-3. References
are logical (by identifier): radflow does not know the EHR's resource ids.

Written by hand from plain dicts: the FHIR model library (``fhir.resources``) validates them in
the tests, but it would cost a pydantic model build per resource on the routing path for no
gain in what is sent. Pure: no store, no clock (the host's time zone only), no network, no
files (the caller reads the one header ``started`` needs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from pydicom.dataset import Dataset

from engine.durable.store import InstanceRecord
from engine.hl7.message import Hl7Message, Hl7Segment
from engine.pipeline.fhir_status import fhir_datetime, with_zone

_DICOM_UID: Final = "urn:dicom:uid"
_DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
_RFC3986: Final = "urn:ietf:rfc:3986"
_V2_0203: Final = "http://terminology.hl7.org/CodeSystem/v2-0203"
#: SNOMED CT 363679005 "Imaging": the category FHIR's own imaging ServiceRequest examples use
_IMAGING: Final = {"coding": [{"system": "http://snomed.info/sct", "code": "363679005",
                               "display": "Imaging"}]}
#: the attributes :func:`imaging_study` reads from one instance's header
HEADER_KEYWORDS: Final = ("StudyDate", "StudyTime", "TimezoneOffsetFromUTC", "StudyDescription",
                          "IssuerOfPatientID")


def _typed(code: str, value: str) -> dict[str, Any]:
    return {"type": {"coding": [{"system": _V2_0203, "code": code}]}, "value": value}


def _patient(patient_id: str, issuer: str = "") -> dict[str, Any]:
    if not patient_id:
        # ImagingStudy.subject and ServiceRequest.subject are required; say so honestly.
        return {"display": "unknown patient"}
    ident = _typed("MR", patient_id)
    if issuer:
        ident["assigner"] = {"display": issuer}
    return {"type": "Patient", "identifier": ident}


def _text(ds: Dataset | None, keyword: str) -> str:
    if ds is None:
        return ""
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed value in a header must not stop the resource
        return ""
    return str(value).strip() if value not in (None, "") else ""


def _started(header: Dataset | None) -> str:
    when = fhir_datetime(_text(header, "StudyDate"), _text(header, "StudyTime"))
    return with_zone(when, _text(header, "TimezoneOffsetFromUTC"))


def imaging_study(instances: Sequence[InstanceRecord], header: Dataset | None = None
                  ) -> dict[str, Any] | None:
    """The ImagingStudy of the study ``instances`` belong to (None without a Study UID).
    ``header``: one instance's attributes (:data:`HEADER_KEYWORDS`), for ``started``."""
    study_uid = next((r.study_instance_uid for r in instances if r.study_instance_uid), None)
    if study_uid is None:
        return None
    records = [r for r in instances if r.study_instance_uid == study_uid]
    series: dict[str, dict[str, Any]] = {}
    for rec in records:
        uid = rec.series_instance_uid or ""
        entry = series.setdefault(uid, {"uid": uid, "modality": rec.modality or "",
                                        "instance": {}})
        entry["instance"][rec.sop_instance_uid] = {
            "uid": rec.sop_instance_uid,
            "sopClass": {"system": _RFC3986, "code": f"urn:oid:{rec.sop_class_uid}"}}
        if not entry["modality"] and rec.modality:
            entry["modality"] = rec.modality
    accession = next((r.accession_number for r in records if r.accession_number), "")
    patient_id = next((r.patient_id for r in records if r.patient_id), "")
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "identifier": [{"system": _DICOM_UID, "value": f"urn:oid:{study_uid}"}],
        "status": "available",
        "subject": _patient(patient_id, _text(header, "IssuerOfPatientID")),
    }
    if accession:
        resource["identifier"].append(_typed("ACSN", accession))
        resource["basedOn"] = [{"type": "ServiceRequest",
                                "identifier": _typed("ACSN", accession)}]
    modalities = sorted({s["modality"] for s in series.values() if s["modality"]})
    if modalities:
        resource["modality"] = [{"system": _DCM, "code": m} for m in modalities]
    started = _started(header)
    if started:
        resource["started"] = started
    description = _text(header, "StudyDescription")
    if description:
        resource["description"] = description
    resource["numberOfSeries"] = len(series)
    resource["numberOfInstances"] = sum(len(s["instance"]) for s in series.values())
    resource["series"] = [
        {"uid": s["uid"],
         # Series.modality is required in R4; OT (other) when the images did not say.
         "modality": {"system": _DCM, "code": s["modality"] or "OT"},
         "numberOfInstances": len(s["instance"]),
         "instance": list(s["instance"].values())}
        for s in series.values()]
    return resource


#: ORC-1 order control (HL7 table 0119) → FHIR request-status
_CONTROL_STATUS: Final = {"NW": "active", "XO": "active", "CA": "revoked", "DC": "revoked",
                          "OC": "revoked", "OD": "revoked", "HD": "on-hold", "RL": "active"}
#: ORC-5 order status (HL7 table 0038) → FHIR request-status, for ORC-1 SC (status changed)
_ORDER_STATUS: Final = {"CM": "completed", "IP": "active", "SC": "active", "A": "active",
                        "CA": "revoked", "DC": "revoked", "HD": "on-hold"}


def _status(orc: Hl7Segment) -> str:
    control = orc.component(1)
    if control == "SC":
        return _ORDER_STATUS.get(orc.component(5), "active")
    return _CONTROL_STATUS.get(control, "unknown")


def service_requests(message: Hl7Message) -> list[dict[str, Any]]:
    """One ServiceRequest per ORC group of an order message ([] for a message without one,
    e.g. an ADT)."""
    pid = message.segment("PID")
    subject = _patient(pid.component(3) if pid else "", pid.component(3, 4) if pid else "")
    orcs = message.segments("ORC")
    obrs = message.segments("OBR")
    out = []
    for n, orc in enumerate(orcs):
        obr = obrs[n] if n < len(obrs) else None
        placer = orc.component(2) or (obr.component(2) if obr else "")
        filler = orc.component(3) or (obr.component(3) if obr else "")
        accession = obr.component(18) if obr else ""
        identifiers = [_typed(code, value) for code, value in
                       (("ACSN", accession), ("PLAC", placer), ("FILL", filler)) if value]
        if not identifiers:
            continue  # nothing to find it by again: a conditional update would not be possible
        resource: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "identifier": identifiers,
            "status": _status(orc),
            "intent": "order",
            "category": [_IMAGING],
            "subject": subject,
        }
        if obr is not None and (obr.component(4) or obr.component(4, 2)):
            coding = {k: v for k, v in (("code", obr.component(4)),
                                        ("display", obr.component(4, 2))) if v}
            system = obr.component(4, 3)
            if ":" in system:  # only a URI is a FHIR code system; "LOCAL" and the like are not
                coding["system"] = system
            resource["code"] = {"coding": [coding], **(
                {"text": obr.component(4, 2)} if obr.component(4, 2) else {})}
        when = orc.component(7, 4) or (obr.component(27, 4) if obr else "")
        occurrence = with_zone(fhir_datetime(when[:8], when[8:14])) if when else ""
        if occurrence:
            resource["occurrenceDateTime"] = occurrence
        out.append(resource)
    return out
