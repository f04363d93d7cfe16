"""PostgreSQL SQL of Modality Performed Procedure Steps (migration 5): steps, their event journal,
the instances a COMPLETED step lists, and the worklist link, each change in ONE transaction.

:func:`create_step` and :func:`set_step` run on the store's writer thread: they read what the
domain needs, call the pure decisions passed in from :mod:`engine.procedure` (the N-SET rules,
the worklist link and its transitions), then write the step, the linked worklist items and a
journal row for the event, and commit — so a modality's success status always means all of it
is durable. No MPPS policy lives here. :class:`~engine.durable.postgresql.PostgresStore`
calls these functions through thin methods; a step's row lock orders two nodes' N-SETs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from engine.durable.postgresql._common import scalar, transaction
from engine.durable.postgresql.worklist import WorklistTxn, items_by_ids, select_items
from engine.durable.rows import STEP_COLUMNS, row_to_step
from engine.errors import DuplicateProcedureStep, NoSuchProcedureStep
from engine.records.procedure_step import (
    NewProcedureStep,
    PpsStatus,
    ProcedureStep,
    ProcedureStepCommit,
    StepUpdate,
    WorklistLink,
)
from engine.records.worklist import ACTIVE_STATUSES, StoredWorklistItem

Conn = psycopg.Connection[Any]

#: the domain's link decision over candidate worklist items (see ``procedure.worklist_link``)
LinkDecision = Callable[[Sequence[StoredWorklistItem]], WorklistLink]

def read_step(conn: Conn, uid: str) -> ProcedureStep | None:
    row = conn.execute(f"SELECT {STEP_COLUMNS} FROM procedure_steps s "
                       "WHERE sop_instance_uid = %s", (uid,)).fetchone()
    return row_to_step(row) if row else None


def _write_link(conn: Conn, link: WorklistLink) -> None:
    txn = WorklistTxn(conn)
    for stored in link.updates:
        txn.update_item(stored.id, stored.item)


def _event(conn: Conn, step_id: int, operation: str, status: PpsStatus,
           received: str, now: str) -> int:
    return int(scalar(
        conn, "INSERT INTO procedure_step_events (step_id, operation, status, received, "
        "received_at) VALUES (%s,%s,%s,%s,%s) RETURNING id",
        (step_id, operation, status.value, received, now)))


def create_step(conn: Conn, new: NewProcedureStep, decide: LinkDecision
                ) -> ProcedureStepCommit:
    with transaction(conn):
        if conn.execute("SELECT 1 FROM procedure_steps WHERE sop_instance_uid = %s",
                        (new.sop_instance_uid,)).fetchone():
            raise DuplicateProcedureStep("a Performed Procedure Step with this SOP Instance "
                                         "UID exists")
        studies = sorted({k.study_instance_uid for k in new.keys if k.study_instance_uid})
        accessions = sorted({k.accession_number for k in new.keys if k.accession_number})
        terms: list[str] = []
        params: list[list[str]] = []
        if studies:
            terms.append("study_instance_uid = ANY(%s)")
            params.append(studies)
        if accessions:
            terms.append("accession_number = ANY(%s)")
            params.append(accessions)
        candidates = select_items(conn, "SELECT id, data FROM worklist_items WHERE "
                            + " OR ".join(terms) + " ORDER BY id", params) if terms else []
        link = decide(candidates) if new.keys else WorklistLink((), ())
        _write_link(conn, link)
        try:
            step_id = int(scalar(
                conn, "INSERT INTO procedure_steps (sop_instance_uid, status, "
                "study_instance_uid, accession_number, patient_id, performed_procedure_step_id, "
                "modality, calling_ae, worklist_item_ids, unscheduled, created_at, updated_at, "
                "dataset) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING id",
                (new.sop_instance_uid, PpsStatus.IN_PROGRESS.value, new.study_instance_uid,
                 new.accession_number, new.patient_id, new.performed_procedure_step_id,
                 new.modality, new.calling_ae, json.dumps(list(link.item_ids)),
                 int(not link.item_ids), new.received_at, new.received_at, new.dataset_json)))
        except psycopg.errors.UniqueViolation as exc:
            # Another node created it since we looked.
            raise DuplicateProcedureStep("a Performed Procedure Step with this SOP Instance "
                                         "UID exists") from exc
        event_id = _event(conn, step_id, "create", PpsStatus.IN_PROGRESS, new.dataset_json,
                          new.received_at)
        step = read_step(conn, new.sop_instance_uid)
    assert step is not None
    return ProcedureStepCommit(step, event_id, link)


def set_step(conn: Conn, uid: str, change: Callable[[ProcedureStep], StepUpdate],
             decide: Callable[[PpsStatus], LinkDecision], now: str) -> ProcedureStepCommit:
    with transaction(conn):
        # Row lock: two nodes' N-SETs of one step apply one after the other.
        conn.execute("SELECT id FROM procedure_steps WHERE sop_instance_uid = %s FOR UPDATE",
                     (uid,))
        step = read_step(conn, uid)
        if step is None:
            raise NoSuchProcedureStep("no Performed Procedure Step with this SOP Instance UID")
        update = change(step)  # pure; raises to refuse (and the transaction rolls back)
        conn.execute("UPDATE procedure_steps SET status = %s, dataset = %s, updated_at = %s "
                     "WHERE id = %s", (update.status.value, update.dataset_json, now, step.id))
        event_id: int | None = None
        link = WorklistLink(step.worklist_item_ids, ())
        missing: tuple[str, ...] = ()
        if update.status.is_final:
            ids = list(step.worklist_item_ids)
            linked = items_by_ids(conn, ids)
            link = decide(update.status)(linked)
            _write_link(conn, link)
            event_id = _event(conn, step.id, "set", update.status, update.modification_json,
                              now)
            if update.status is PpsStatus.COMPLETED and update.expected:
                conn.cursor().executemany(
                    "INSERT INTO procedure_step_instances (step_id, "
                    "sop_instance_uid, sop_class_uid, series_instance_uid) VALUES (%s,%s,%s,%s) "
                    "ON CONFLICT DO NOTHING",
                    [(step.id, e.sop_instance_uid, e.sop_class_uid, e.series_instance_uid)
                     for e in update.expected])
                missing = _missing(conn, step.id)
        after = read_step(conn, uid)
    assert after is not None
    return ProcedureStepCommit(after, event_id, link, missing)


def _missing(conn: Conn, step_id: int) -> tuple[str, ...]:
    return tuple(r[0] for r in conn.execute(
        "SELECT x.sop_instance_uid FROM procedure_step_instances x WHERE x.step_id = %s AND "
        "NOT EXISTS (SELECT 1 FROM instances i WHERE i.sop_instance_uid = x.sop_instance_uid)"
        " ORDER BY x.sop_instance_uid", (step_id,)))


def get_step(conn: Conn, uid: str) -> ProcedureStep | None:
    return read_step(conn, uid)


def list_steps(conn: Conn, status: str | None, unscheduled: bool | None,
               limit: int, offset: int) -> tuple[int, list[ProcedureStep]]:
    terms: list[str] = []
    params: list[Any] = []
    if status is not None:
        terms.append("s.status = %s")
        params.append(status)
    if unscheduled is not None:
        terms.append("s.unscheduled = %s")
        params.append(int(unscheduled))
    where = (" WHERE " + " AND ".join(terms)) if terms else ""
    total = int(scalar(conn, f"SELECT COUNT(*) FROM procedure_steps s{where}", params))
    rows = conn.execute(f"SELECT {STEP_COLUMNS} FROM procedure_steps s{where} ORDER BY s.id DESC "
                        "LIMIT %s OFFSET %s", (*params, limit, offset)).fetchall()
    return total, [row_to_step(r) for r in rows]


def awaiting(conn: Conn) -> list[tuple[ProcedureStep, tuple[str, ...]]]:
    """COMPLETED steps whose study is not marked complete yet, with their missing instances
    (rebuilt at start: the completeness watch keeps these in memory)."""
    rows = conn.execute(f"SELECT {STEP_COLUMNS} FROM procedure_steps s WHERE s.status = "
                        "'COMPLETED' AND s.complete_at IS NULL AND EXISTS (SELECT 1 FROM "
                        "procedure_step_instances x WHERE x.step_id = s.id) ORDER BY s.id"
                        ).fetchall()
    return [(step, _missing(conn, step.id)) for step in map(row_to_step, rows)]


def mark_complete(conn: Conn, step_id: int, now: str) -> bool:
    return conn.execute("UPDATE procedure_steps SET complete_at = %s WHERE id = %s AND "
                        "complete_at IS NULL", (now, step_id)).rowcount > 0


def any_unscheduled(conn: Conn) -> bool:
    """Whether any step waits for a worklist item to be linked to (:func:`link_unscheduled`)."""
    return bool(scalar(conn, "SELECT EXISTS (SELECT 1 FROM procedure_steps WHERE "
                             "unscheduled = 1 AND worklist_item_ids = '[]')"))


def link_unscheduled(conn: Conn, item_ids: Sequence[int] | None,
                     decide: Callable[[PpsStatus], LinkDecision], now: str
                     ) -> list[ProcedureStepCommit]:
    """Link steps that started with no worklist item to items that have appeared since, by
    Accession Number or Study Instance UID (the SQLite backend's rules). The steps are taken
    with ``FOR UPDATE SKIP LOCKED``: two nodes sweeping at once link each step once."""
    commits: list[ProcedureStepCommit] = []
    with transaction(conn):
        locked = [int(r[0]) for r in conn.execute(
            "SELECT id FROM procedure_steps WHERE unscheduled = 1 AND worklist_item_ids = '[]' "
            "ORDER BY id FOR UPDATE SKIP LOCKED")]
        if not locked:
            return commits
        steps = [row_to_step(r) for r in conn.execute(
            f"SELECT {STEP_COLUMNS} FROM procedure_steps s WHERE s.id = ANY(%s) ORDER BY s.id",
            (locked,))]
        offered = items_by_ids(conn, list(item_ids)) if item_ids is not None else None
        for step in steps:
            if offered is not None:
                candidates = [i for i in offered if _same_order(step, i)]
            else:
                terms: list[str] = []
                params: list[str] = []
                if step.accession_number:
                    terms.append("accession_number = %s")
                    params.append(step.accession_number)
                if step.study_instance_uid:
                    terms.append("study_instance_uid = %s")
                    params.append(step.study_instance_uid)
                candidates = select_items(conn, "SELECT id, data FROM worklist_items WHERE "
                                          + " OR ".join(terms) + " ORDER BY id",
                                          params) if terms else []
            candidates = [i for i in candidates if i.item.status in ACTIVE_STATUSES]
            if not candidates:
                continue
            link = decide(step.status)(candidates)
            if not link.item_ids:
                continue
            _write_link(conn, link)
            conn.execute("UPDATE procedure_steps SET worklist_item_ids = %s, unscheduled = 0, "
                         "updated_at = %s WHERE id = %s",
                         (json.dumps(list(link.item_ids)), now, step.id))
            event_id = _event(conn, step.id, "link", step.status, "{}", now)
            after = read_step(conn, step.sop_instance_uid)
            assert after is not None
            commits.append(ProcedureStepCommit(after, event_id, link))
    return commits


def _same_order(step: ProcedureStep, stored: StoredWorklistItem) -> bool:
    item = stored.item
    return bool((step.accession_number and item.accession_number == step.accession_number)
                or (step.study_instance_uid
                    and item.study_instance_uid == step.study_instance_uid))
