"""Record mapping shared by every store backend: which columns a read selects, and how a row
of them becomes a record of :mod:`engine.durable.store` (and a worklist item becomes the values
of its indexed columns).

Every backend selects these columns in this order, so one mapping serves all of them and a
record reads back the same whichever database holds it. The column lists are plain standard
SQL (the subqueries included). This module must not open connections or hold dialect-specific
SQL: placeholders, upserts and locking belong to each backend's own modules.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from engine.durable.routing import OpenGroup
from engine.durable.store import (
    DeadLetter,
    Hl7JournalEntry,
    Hl7JournalRecord,
    InstanceRecord,
    OutboxRow,
    StoredInstance,
)
from engine.records.procedure_step import PpsStatus, ProcedureStep
from engine.records.worklist import StoredWorklistItem, WorklistItem, fold_case, name_groups

# --- instances (the intake journal) ------------------------------------------------------------
INSTANCE_COLUMNS = (
    "id, version, routed_at, superseded, object_id, spool_path, sop_class_uid, sop_instance_uid, "
    "transfer_syntax_uid, study_instance_uid, series_instance_uid, patient_id, accession_number, "
    "modality, calling_ae, called_ae, peer_host, listener, size_bytes, sha256, received_at"
)
#: :data:`INSTANCE_COLUMNS` qualified with the table alias ``i`` (for joins)
INSTANCE_COLUMNS_I = ", ".join("i." + c.strip() for c in INSTANCE_COLUMNS.split(","))


def row_to_instance(row: Sequence[Any]) -> StoredInstance:
    return StoredInstance(
        id=int(row[0]), version=int(row[1]), routed_at=row[2], superseded=bool(row[3]),
        record=InstanceRecord(*row[4:]),
    )


# --- worklist ----------------------------------------------------------------------------------
#: the columns a worklist item is written to, in the order of :func:`item_values`
ITEM_COLUMNS = (
    "status", "patient_id", "issuer_of_patient_id", "patient_name_norm",
    "patient_name_ideographic_norm", "patient_name_phonetic_norm", "accession_number",
    "requested_procedure_id", "study_instance_uid", "placer_order_number",
    "filler_order_number", "modality", "scheduled_station_ae_title", "sps_start_date",
    "sps_start_time", "source", "created_at", "updated_at", "data")


def item_values(item: WorklistItem) -> tuple[Any, ...]:
    """The item's indexed columns (names folded per PN component group) and its JSON."""
    alpha, ideo, phon = name_groups(item.patient_name)
    return (item.status.value, item.patient_id, item.issuer_of_patient_id, fold_case(alpha),
            fold_case(ideo), fold_case(phon), item.accession_number,
            item.requested_procedure_id, item.study_instance_uid, item.placer_order_number,
            item.filler_order_number, item.modality, item.scheduled_station_ae_title,
            item.scheduled_procedure_step_start_date, item.scheduled_procedure_step_start_time,
            item.source, item.created_at, item.updated_at,
            json.dumps(item.to_json(), ensure_ascii=False, separators=(",", ":")))


def row_to_item(row: Sequence[Any]) -> StoredWorklistItem:
    """A ``SELECT id, data`` row as an item."""
    return StoredWorklistItem(int(row[0]), WorklistItem.from_json(json.loads(row[1])))


# --- HL7 journal -------------------------------------------------------------------------------
HL7_COLUMNS = (
    "id, sending_application, sending_facility, control_id, message_type, trigger_event, "
    "peer_host, listener, received_at, ack_code, errors_json, text, worklist_item_ids")


def row_to_hl7(row: Sequence[Any]) -> Hl7JournalRecord:
    """A row of :data:`HL7_COLUMNS` followed by ``raw`` (or NULL when not read)."""
    return Hl7JournalRecord(
        id=int(row[0]),
        entry=Hl7JournalEntry(row[1], row[2], row[3], row[4], row[5], row[6], row[7],
                              row[8], bytes(row[13]) if row[13] is not None else b""),
        ack_code=row[9], errors_json=row[10], text=row[11],
        worklist_item_ids=tuple(json.loads(row[12])))


# --- procedure steps (MPPS) --------------------------------------------------------------------
_RECEIVED = ("(SELECT COUNT(*) FROM procedure_step_instances x WHERE x.step_id = s.id "
             "AND EXISTS (SELECT 1 FROM instances i WHERE i.sop_instance_uid = "
             "x.sop_instance_uid))")
#: a step's columns (table alias ``s``), with its expected and received instance counts
STEP_COLUMNS = (
    "s.id, s.sop_instance_uid, s.status, s.study_instance_uid, s.accession_number, "
    "s.patient_id, s.performed_procedure_step_id, s.modality, s.calling_ae, "
    "s.worklist_item_ids, s.unscheduled, s.created_at, s.updated_at, "
    "(SELECT COUNT(*) FROM procedure_step_instances x WHERE x.step_id = s.id), "
    f"{_RECEIVED}, s.complete_at, s.dataset")


def row_to_step(row: Sequence[Any]) -> ProcedureStep:
    return ProcedureStep(
        id=int(row[0]), sop_instance_uid=row[1], status=PpsStatus(row[2]),
        study_instance_uid=row[3], accession_number=row[4], patient_id=row[5],
        performed_procedure_step_id=row[6], modality=row[7], calling_ae=row[8],
        worklist_item_ids=tuple(json.loads(row[9])), unscheduled=bool(row[10]),
        created_at=row[11], updated_at=row[12], expected_instances=int(row[13]),
        received_instances=int(row[14]), complete_at=row[15], dataset_json=row[16])


# --- outbox ------------------------------------------------------------------------------------
OUTBOX_COLUMNS = ("id, destination, kind, source_table, source_id, route, payload, "
                  "study_instance_uid, attempts, created_at, last_error")
DEAD_COLUMNS = ("id, destination, kind, source_table, source_id, route, study_instance_uid, "
                "attempts, last_error, created_at, updated_at, payload")


def row_to_outbox(r: Sequence[Any]) -> OutboxRow:
    return OutboxRow(int(r[0]), r[1], r[2], r[3], int(r[4]), r[5], r[6], r[7], int(r[8]),
                     float(r[9]), r[10])


def row_to_dead(r: Sequence[Any]) -> DeadLetter:
    return DeadLetter(int(r[0]), r[1], r[2], r[3], int(r[4]), r[5], r[6], int(r[7]), r[8],
                      float(r[9]), float(r[10]), r[11])


# --- routing groups ----------------------------------------------------------------------------
#: an open group's columns (table alias ``g``) with its member count
GROUP_COLUMNS = ("id, route, level, group_key, study_instance_uid, first_at, last_at, "
                 "quiet_seconds, max_wait_seconds, "
                 "(SELECT COUNT(*) FROM routing_group_members m WHERE m.group_id = g.id)")


def row_to_group(row: Sequence[Any]) -> OpenGroup:
    return OpenGroup(id=int(row[0]), route=row[1], level=row[2], key=row[3],
                     study_instance_uid=row[4], first_at=float(row[5]), last_at=float(row[6]),
                     quiet_seconds=float(row[7]), max_wait_seconds=float(row[8]),
                     members=int(row[9]))
