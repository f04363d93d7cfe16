"""The JSON an outbox row carries (``outbox.payload``), built from a decision; version 1.

The layout is documented in :mod:`engine.pipeline` (the delivery side reads it). Every builder
here is pure, and everything a retry needs is frozen in the payload: the spool path and digest
of the original, the morph steps as JSON (profiles expanded, CSV tables inlined), the
destination's name and type, and the fingerprint of the site secret the morph needs. This module
must not read the store or the spool.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
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
    }


def dicom_rows(stored: StoredInstance, route: str, ruleset: str,
               destinations: Sequence[dict[str, str]], morph: list[dict[str, Any]],
               fingerprint: str | None, trigger: dict[str, Any]) -> list[NewOutboxRow]:
    """One row per destination for one instance."""
    obj = object_json(stored)
    rows = []
    for dest in destinations:
        payload = {"v": PAYLOAD_VERSION, "kind": "dicom", "route": route, "ruleset": ruleset,
                   "trigger": trigger, "destination": dest, "object": obj, "morph": morph,
                   "secret_fingerprint": fingerprint if morph else None}
        rows.append(NewOutboxRow(destination=dest["name"], kind="dicom", source_table="instances",
                              source_id=stored.id, route=route, payload=_dumps(payload),
                              study_instance_uid=stored.record.study_instance_uid))
    return rows


def instance_rows(stored: StoredInstance, decision: Decision, ruleset: str,
                  destination_types: Mapping[str, str], fingerprint: str | None
                  ) -> list[NewOutboxRow]:
    return dicom_rows(stored, decision.route, ruleset,
                      [{"name": d, "type": destination_types.get(d, "")}
                       for d in decision.destinations],
                      [s.to_json() for s in decision.morph], fingerprint,
                      {"level": "instance"})


def group_rows(decision: str, members: Sequence[StoredInstance], reason: str,
               group: OpenGroup) -> list[NewOutboxRow]:
    """A fired group's rows: every member to every destination, with the frozen decision."""
    frozen = json.loads(decision)
    trigger = {"level": group.level, "group_id": group.id, "key": group.key,
               "reason": reason, "instances": len(members)}
    rows: list[NewOutboxRow] = []
    for stored in members:
        rows.extend(dicom_rows(stored, frozen["route"], frozen["ruleset"],
                               frozen["destinations"], frozen["morph"],
                               frozen.get("secret_fingerprint"), trigger))
    return rows


def hl7_rows(record: Hl7JournalRecord, decision: Decision, ruleset: str,
             destination_types: Mapping[str, str]) -> list[NewOutboxRow]:
    e = record.entry
    message = {"journal_id": record.id, "message_type": f"{e.message_type}^{e.trigger_event}",
               "control_id": e.control_id, "sending_application": e.sending_application,
               "sending_facility": e.sending_facility}
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
