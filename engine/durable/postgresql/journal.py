"""PostgreSQL SQL of the intake journal (D1): received instances, the duplicate SOP Instance UID
policy applied inside the commit, reads, and the "file durable" mark.

The same rules as the SQLite backend's ``journal.py`` (see there for the "durable" mark and
withdrawal). Two nodes may commit the same SOP Instance UID at once: the second insert waits on
the UNIQUE (SOP Instance UID, version) constraint until the first commits, does nothing, and the
duplicate policy then judges its copy against the first's row (identical bytes: kept once).
Should two new versions still collide, that commit fails and the sender's retry is judged
afresh. Every function takes the connection it runs on; this
module must not touch files nor decide policy (see ``store.decide_duplicate``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from engine.durable.postgresql._common import pipelined, transaction
from engine.durable.rows import INSTANCE_COLUMNS, row_to_instance
from engine.durable.store import (
    InstanceCommit,
    InstanceCommitResult,
    InstanceOutcome,
    StoredInstance,
    decide_duplicate,
)
from engine.errors import PartlyCommitted

Conn = psycopg.Connection[Any]


_INSERT = (
    "INSERT INTO instances (object_id, spool_path, sop_class_uid, sop_instance_uid, "
    "version, transfer_syntax_uid, study_instance_uid, series_instance_uid, patient_id, "
    "accession_number, modality, calling_ae, called_ae, peer_host, listener, size_bytes, "
    "sha256, received_at, durable) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,"
    "%s,%s,%s,%s)")


def _values(item: InstanceCommit, version: int) -> tuple[object, ...]:
    rec = item.record
    return (rec.object_id, rec.spool_path, rec.sop_class_uid, rec.sop_instance_uid, version,
            rec.transfer_syntax_uid, rec.study_instance_uid, rec.series_instance_uid,
            rec.patient_id, rec.accession_number, rec.modality, rec.calling_ae, rec.called_ae,
            rec.peer_host, rec.listener, rec.size_bytes, rec.sha256, rec.received_at,
            1 if item.file_durable else 0)


_INSERT_FRESH = (
    "INSERT INTO instances (object_id, spool_path, sop_class_uid, sop_instance_uid, "
    "version, transfer_syntax_uid, study_instance_uid, series_instance_uid, patient_id, "
    "accession_number, modality, calling_ae, called_ae, peer_host, listener, size_bytes, "
    "sha256, received_at, durable) SELECT %s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,"
    "%s,%s,%s,%s WHERE NOT EXISTS (SELECT 1 FROM instances WHERE sop_instance_uid = %s) "
    "ON CONFLICT (sop_instance_uid, version) DO NOTHING RETURNING id")


def commit(conn: Conn, batch: Sequence[InstanceCommit], durable_ids: Sequence[int]
           ) -> list[InstanceCommitResult]:
    """The durable marks and every new instance of the batch in one transaction that costs
    one round trip: BEGIN, the marks, one conditional insert per instance and COMMIT travel
    together (the caller has made the files durable before). An instance whose SOP Instance
    UID was already known (its insert did nothing) is judged afterwards, by the duplicate
    policy, in a second transaction: nobody has been answered for it yet, so a crash in
    between is the same as a crash before its commit (the sender resends)."""
    with pipelined(conn):
        mark(conn, durable_ids)
        inserts = [conn.execute(_INSERT_FRESH, (*_values(item, 1), item.record.sop_instance_uid))
                   for item in batch]
    stored: list[InstanceCommitResult | None] = [
        None if row is None else InstanceCommitResult(InstanceOutcome.STORED, int(row[0]), 1)
        for row in (cur.fetchone() for cur in inserts)]
    known = [index for index, result in enumerate(stored) if result is None]
    judged: dict[int, InstanceCommitResult] = {}
    if known:
        try:
            with transaction(conn):
                judged = {index: _commit_known(conn, batch[index]) for index in known}
        except psycopg.Error as exc:
            # The new instances are committed and must be answered as such (their rows
            # exist, whatever happens next); only the judged ones failed, none of them kept.
            raise PartlyCommitted(f"duplicates not judged: {exc}", stored) from exc
    return [result if result is not None else judged[index]
            for index, result in enumerate(stored)]


def _commit_known(conn: Conn, item: InstanceCommit) -> InstanceCommitResult:
    """One instance whose SOP Instance UID may be known, inside the caller's transaction."""
    rec = item.record
    # Still tried first: the version seen a moment ago may have been withdrawn since.
    fresh = conn.execute(_INSERT_FRESH, (*_values(item, 1), rec.sop_instance_uid)).fetchone()
    if fresh is not None:
        return InstanceCommitResult(InstanceOutcome.STORED, int(fresh[0]), 1)
    existing = conn.execute(
        "SELECT id, version, sha256, size_bytes FROM instances WHERE sop_instance_uid = %s "
        "ORDER BY version DESC LIMIT 1", (rec.sop_instance_uid,)).fetchone()
    if existing is not None and existing[2] != rec.sha256:
        # A resend of an older version's bytes is a retransmission, not a new version.
        same = conn.execute(
            "SELECT id, version FROM instances "
            "WHERE sop_instance_uid = %s AND sha256 = %s AND size_bytes = %s LIMIT 1",
            (rec.sop_instance_uid, rec.sha256, rec.size_bytes)).fetchone()
        if same is not None:
            return InstanceCommitResult(InstanceOutcome.IDENTICAL, int(same[0]), int(same[1]))
    outcome = decide_duplicate(existing[2] if existing else None,
                               existing[3] if existing else None, rec, item.policy)
    if existing is not None and outcome in (
            InstanceOutcome.IDENTICAL, InstanceOutcome.IGNORED, InstanceOutcome.REJECTED):
        return InstanceCommitResult(outcome, int(existing[0]), int(existing[1]))
    version = 1
    if existing is not None:
        version = int(existing[1]) + 1
        conn.execute("UPDATE instances SET superseded = 1 WHERE id = %s", (existing[0],))
    row = conn.execute(_INSERT + " RETURNING id", _values(item, version)).fetchone()
    assert row is not None
    return InstanceCommitResult(outcome, int(row[0]), version)


def get(conn: Conn, sop_instance_uid: str) -> StoredInstance | None:
    row = conn.execute(
        f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE sop_instance_uid = %s "
        "ORDER BY version DESC LIMIT 1", (sop_instance_uid,)).fetchone()
    return row_to_instance(row) if row else None


def list_instances(conn: Conn, limit: int, offset: int) -> list[StoredInstance]:
    rows = conn.execute(
        f"SELECT {INSTANCE_COLUMNS} FROM instances ORDER BY id DESC LIMIT %s OFFSET %s",
        (limit, offset)).fetchall()
    return [row_to_instance(r) for r in rows]


def instances_after(conn: Conn, after_id: int, limit: int, study_instance_uid: str | None
                    ) -> list[StoredInstance]:
    if study_instance_uid is None:
        rows = conn.execute(
            f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE id > %s ORDER BY id LIMIT %s",
            (after_id, limit)).fetchall()
    else:
        rows = conn.execute(
            f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE study_instance_uid = %s "
            "AND id > %s ORDER BY id LIMIT %s", (study_instance_uid, after_id, limit)).fetchall()
    return [row_to_instance(r) for r in rows]


def count(conn: Conn) -> int:
    row = conn.execute("SELECT COUNT(*) FROM instances").fetchone()
    return int(row[0]) if row else 0


def known_object_ids(conn: Conn, object_ids: Sequence[str]) -> set[str]:
    if not object_ids:
        return set()
    return {r[0] for r in conn.execute(
        "SELECT object_id FROM instances WHERE object_id = ANY(%s)", (list(object_ids),))}


def mark(conn: Conn, ids: Sequence[int]) -> None:
    """Mark rows durable, inside the caller's transaction."""
    if ids:
        conn.execute("UPDATE instances SET durable = 1 WHERE id = ANY(%s) AND durable = 0",
                     (list(ids),))


def mark_durable(conn: Conn, ids: Sequence[int]) -> None:
    """Marks in a transaction of their own, one round trip, not waiting for the WAL flush
    (see ``JournalWriter.flush_marks``: a mark lost in a crash is redone at start)."""
    with pipelined(conn, durable=False):
        mark(conn, ids)


def not_durable(conn: Conn) -> list[StoredInstance]:
    rows = conn.execute(f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE durable = 0 "
                        "ORDER BY id").fetchall()
    return [row_to_instance(r) for r in rows]


def withdraw(conn: Conn, instance_id: int) -> bool:
    with transaction(conn):
        row = conn.execute("SELECT sop_instance_uid, superseded FROM instances WHERE id = %s "
                           "AND durable = 0 AND routed_at IS NULL FOR UPDATE",
                           (instance_id,)).fetchone()
        if row is None:
            return False
        uid, superseded = row
        conn.execute("DELETE FROM routing_group_members WHERE instance_id = %s", (instance_id,))
        conn.execute("DELETE FROM instances WHERE id = %s", (instance_id,))
        if not superseded:
            # The version it superseded (if any) is the current one again.
            conn.execute("UPDATE instances SET superseded = 0 WHERE id = (SELECT id FROM "
                         "instances WHERE sop_instance_uid = %s ORDER BY version DESC LIMIT 1)",
                         (uid,))
        return True
