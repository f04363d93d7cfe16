"""The JSON an outbox row carries (``outbox.payload``), built from a decision; version 1.

The layout is documented in :mod:`engine.pipeline` (the delivery side reads it). Every builder
here is pure, and everything a retry needs is frozen in the payload: the spool path and digest
of the original, the morph steps as JSON (profiles expanded, CSV tables inlined), the
destination's name and type, and the fingerprint of the site secret the morph needs. The parts
of a DICOM payload that do not depend on the instance are serialized once (:class:`DicomRows`,
:class:`PayloadCache`) and joined around each instance's object; the text is the same as one
``json.dumps`` of the whole payload. This module must not read the store or the spool.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from engine.durable.routing import OpenGroup
from engine.durable.store import Hl7JournalRecord, NewOutboxRow, StoredInstance
from engine.hl7.message import Hl7Message
from engine.pipeline import fhir_resources
from engine.rules.ruleset import Decision

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

PAYLOAD_VERSION: Final = 1


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def decision_json(decision: Decision, ruleset_version: str,
                  destination_types: Mapping[str, str], fingerprint: str | None) -> str:
    """A group's frozen decision (stored with the group, read when it fires)."""
    return _dumps({
        "route": decision.route, "ruleset": ruleset_version, "level": decision.trigger.level,
        "destinations": [{"name": d, "type": destination_types.get(d, "")}
                         for d in decision.destinations],
        "morph": [s.to_json() for s in decision.morph],
        "secret_fingerprint": fingerprint if decision.morph else None,
    })


def object_json(stored: StoredInstance) -> dict[str, Any]:
    rec = stored.record
    return {
        "journal_id": stored.id, "object_id": rec.object_id, "spool_path": rec.spool_path,
        "sha256": rec.sha256, "size_bytes": rec.size_bytes, "version": stored.version,
        "sop_class_uid": rec.sop_class_uid, "sop_instance_uid": rec.sop_instance_uid,
        "transfer_syntax_uid": rec.transfer_syntax_uid,
        "study_instance_uid": rec.study_instance_uid,
        "series_instance_uid": rec.series_instance_uid,
        # correlation keys: a failed delivery's log line names the order it belongs to
        "accession_number": rec.accession_number, "patient_id": rec.patient_id,
    }


def object_text(stored: StoredInstance) -> str:
    return _dumps(object_json(stored))


def _around(payload: Mapping[str, Any], key: str) -> tuple[str, str]:
    """``_dumps(payload)`` split around the value of ``key``: what comes before and after it."""
    before = {k: v for k, v in payload.items() if k < key}
    after = {k: v for k, v in payload.items() if k > key}
    head = (_dumps(before)[:-1] + "," if before else "{") + _dumps(key) + ":"
    tail = "," + _dumps(after)[1:] if after else "}"
    return head, tail


@dataclass(frozen=True, slots=True)
class DicomRows:
    """A decision's DICOM rows for any instance: each destination's payload, serialized up to
    and after the ``object``."""

    route: str
    parts: tuple[tuple[str, str, str], ...]  # destination name, payload head, payload tail

    @classmethod
    def build(cls, route: str, ruleset: str, destinations: Sequence[Mapping[str, str]],
              morph: list[dict[str, Any]], fingerprint: str | None,
              trigger: Mapping[str, Any]) -> DicomRows:
        parts = []
        for dest in destinations:
            payload = {"v": PAYLOAD_VERSION, "kind": "dicom", "route": route,
                       "ruleset": ruleset, "trigger": trigger, "destination": dest,
                       "morph": morph, "secret_fingerprint": fingerprint if morph else None}
            parts.append((dest["name"], *_around(payload, "object")))
        return cls(route, tuple(parts))

    def rows(self, stored: StoredInstance, obj: str | None = None) -> list[NewOutboxRow]:
        """One row per destination for ``stored`` (``obj``: its :func:`object_text`)."""
        obj = object_text(stored) if obj is None else obj
        return [NewOutboxRow(destination=name, kind="dicom", source_table="instances",
                             source_id=stored.id, route=self.route, payload=head + obj + tail,
                             study_instance_uid=stored.record.study_instance_uid)
                for name, head, tail in self.parts]


def decision_rows(decision: Decision, ruleset: str, destination_types: Mapping[str, str],
                  fingerprint: str | None) -> DicomRows:
    """The rows of an instance route's decision."""
    return DicomRows.build(decision.route, ruleset,
                           [{"name": d, "type": destination_types.get(d, "")}
                            for d in decision.destinations],
                           [s.to_json() for s in decision.morph], fingerprint,
                           {"level": "instance"})


class PayloadCache:
    """The instance-independent payload parts of one ruleset's decisions under one secret,
    made on first use: every instance a route takes repeats its destinations and morph."""

    def __init__(self, ruleset: str, destination_types: Mapping[str, str],
                 fingerprint: str | None) -> None:
        self._ruleset = ruleset
        self._destination_types = destination_types
        self._fingerprint = fingerprint
        self._rows: dict[str, DicomRows] = {}  # by route name (unique in a ruleset)
        self._decisions: dict[str, str] = {}

    def rows(self, decision: Decision) -> DicomRows:
        found = self._rows.get(decision.route)
        if found is None:
            found = self._rows[decision.route] = decision_rows(
                decision, self._ruleset, self._destination_types, self._fingerprint)
        return found

    def decision_json(self, decision: Decision) -> str:
        found = self._decisions.get(decision.route)
        if found is None:
            found = self._decisions[decision.route] = decision_json(
                decision, self._ruleset, self._destination_types, self._fingerprint)
        return found


#: every instance of a study so far (the store's, inside the firing transaction)
StudyInstances = Callable[[str], Sequence[StoredInstance]]
#: one instance's header attributes (:data:`fhir_resources.HEADER_KEYWORDS`), None if unreadable
HeaderOf = Callable[[StoredInstance], "Dataset | None"]


def group_rows(decision: str, members: Sequence[StoredInstance], reason: str,
               group: OpenGroup, study_instances: StudyInstances | None = None,
               header_of: HeaderOf | None = None) -> list[NewOutboxRow]:
    """A fired group's rows: every member to every DICOM destination, with the frozen
    decision; one ImagingStudy per ``fhir`` destination, describing every instance of the
    study so far (``study_instances``), so a late series updates the same resource."""
    frozen = json.loads(decision)
    trigger = {"level": group.level, "group_id": group.id, "key": group.key,
               "reason": reason, "instances": len(members)}
    fhir = [d for d in frozen["destinations"] if d.get("type") == "fhir"]
    dicom = [d for d in frozen["destinations"] if d.get("type") != "fhir"]
    made = DicomRows.build(frozen["route"], frozen["ruleset"], dicom,
                           frozen["morph"], frozen.get("secret_fingerprint"), trigger)
    rows: list[NewOutboxRow] = []
    for stored in members:
        rows.extend(made.rows(stored))
    if fhir and members:
        rows.extend(_imaging_study_rows(frozen, trigger, fhir, members, study_instances,
                                        header_of))
    return rows


def _imaging_study_rows(frozen: Mapping[str, Any], trigger: Mapping[str, Any],
                        destinations: Sequence[Mapping[str, str]],
                        members: Sequence[StoredInstance],
                        study_instances: StudyInstances | None,
                        header_of: HeaderOf | None) -> list[NewOutboxRow]:
    study_uid = members[-1].record.study_instance_uid or ""
    everything = list(study_instances(study_uid)) if study_instances and study_uid else []
    instances = everything or list(members)
    header = header_of(instances[0]) if header_of is not None else None
    resource = fhir_resources.imaging_study([s.record for s in instances], header)
    if resource is None:
        return []
    last = max(s.id for s in members)
    return [NewOutboxRow(
        destination=dest["name"], kind="fhir", source_table="instances", source_id=last,
        route=frozen["route"],
        payload=_dumps({"v": PAYLOAD_VERSION, "kind": "fhir", "route": frozen["route"],
                        "ruleset": frozen["ruleset"], "trigger": dict(trigger),
                        "destination": dict(dest), "resource": resource}),
        study_instance_uid=study_uid or None) for dest in destinations]


def hl7_rows(record: Hl7JournalRecord, decision: Decision, ruleset: str,
             destination_types: Mapping[str, str], charset: str = "",
             parsed: Hl7Message | None = None) -> list[NewOutboxRow]:
    """A routed message's rows. ``charset`` is the table 0211 name the message was read with
    (its MSH-18, or the site's default when MSH-18 is empty): the sender reads the journalled
    bytes with it, so a change of the site's default later does not strand queued rows. A
    ``fhir`` destination gets one ServiceRequest per order group of ``parsed``."""
    e = record.entry
    message = {"journal_id": record.id, "message_type": f"{e.message_type}^{e.trigger_event}",
               "control_id": e.control_id, "sending_application": e.sending_application,
               "sending_facility": e.sending_facility}
    if charset:
        message["charset"] = charset
    rows: list[NewOutboxRow] = []
    requests = fhir_resources.service_requests(parsed) if parsed is not None else []
    for name in decision.destinations:
        dest = {"name": name, "type": destination_types.get(name, "")}
        if dest["type"] == "fhir":
            rows.extend(NewOutboxRow(
                destination=name, kind="fhir", source_table="hl7_messages",
                source_id=record.id, route=decision.route, study_instance_uid=None,
                payload=_dumps({"v": PAYLOAD_VERSION, "kind": "fhir", "route": decision.route,
                                "ruleset": ruleset, "trigger": {"level": decision.trigger.level},
                                "destination": dest, "message": message,
                                "resource": resource}))
                for resource in requests)
            continue
        payload = {"v": PAYLOAD_VERSION, "kind": "hl7", "route": decision.route,
                   "ruleset": ruleset, "trigger": {"level": decision.trigger.level},
                   "destination": dest, "message": message}
        rows.append(NewOutboxRow(destination=name, kind="hl7", source_table="hl7_messages",
                              source_id=record.id, route=decision.route,
                              payload=_dumps(payload), study_instance_uid=None))
    return rows
