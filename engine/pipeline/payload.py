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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from engine.durable.routing import OpenGroup
from engine.durable.store import Hl7JournalRecord, NewOutboxRow, StoredInstance
from engine.rules.ruleset import Decision

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


def group_rows(decision: str, members: Sequence[StoredInstance], reason: str,
               group: OpenGroup) -> list[NewOutboxRow]:
    """A fired group's rows: every member to every destination, with the frozen decision."""
    frozen = json.loads(decision)
    trigger = {"level": group.level, "group_id": group.id, "key": group.key,
               "reason": reason, "instances": len(members)}
    made = DicomRows.build(frozen["route"], frozen["ruleset"], frozen["destinations"],
                           frozen["morph"], frozen.get("secret_fingerprint"), trigger)
    rows: list[NewOutboxRow] = []
    for stored in members:
        rows.extend(made.rows(stored))
    return rows


def hl7_rows(record: Hl7JournalRecord, decision: Decision, ruleset: str,
             destination_types: Mapping[str, str], charset: str = "") -> list[NewOutboxRow]:
    """A routed message's rows. ``charset`` is the table 0211 name the message was read with
    (its MSH-18, or the site's default when MSH-18 is empty): the sender reads the journalled
    bytes with it, so a change of the site's default later does not strand queued rows."""
    e = record.entry
    message = {"journal_id": record.id, "message_type": f"{e.message_type}^{e.trigger_event}",
               "control_id": e.control_id, "sending_application": e.sending_application,
               "sending_facility": e.sending_facility}
    if charset:
        message["charset"] = charset
    rows = []
    for name in decision.destinations:
        dest = {"name": name, "type": destination_types.get(name, "")}
        payload = {"v": PAYLOAD_VERSION, "kind": "hl7", "route": decision.route,
                   "ruleset": ruleset, "trigger": {"level": decision.trigger.level},
                   "destination": dest, "message": message}
        rows.append(NewOutboxRow(destination=name, kind="hl7", source_table="hl7_messages",
                              source_id=record.id, route=decision.route,
                              payload=_dumps(payload), study_instance_uid=None))
    return rows
