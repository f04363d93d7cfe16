"""SQLite SQL of the intake journal (D1): received instances, the duplicate SOP Instance UID
policy applied inside the commit, reads, and the "file durable" mark.

Intake commits a row while the association thread fsyncs the spool file, so a row can exist
whose file is not on disk yet; such rows carry ``durable = 0`` until intake marks them. Nothing
routes them before that (see ``routing.unrouted_instances``), and a start after a crash lists
the rows left unmarked so their files can be checked. :func:`withdraw` removes a row whose file
failed, only while it is still unmarked and unrouted: it never reached a peer as a success, so
deleting it loses nothing anybody was told was kept. Every function takes the writer's (or
reader's) connection; this module must not touch files nor decide policy (see
``store.decide_duplicate``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from engine.durable.rows import INSTANCE_COLUMNS, row_to_instance
from engine.durable.sqlite._common import chunks, marks, transaction
from engine.durable.store import (
    InstanceCommit,
    InstanceCommitResult,
    InstanceOutcome,
    StoredInstance,
    decide_duplicate,
)


def commit(conn: sqlite3.Connection, batch: Sequence[InstanceCommit],
           durable_ids: Sequence[int]) -> list[InstanceCommitResult]:
    """One transaction: the durable marks, then every instance of the batch."""
    with transaction(conn):
        mark(conn, durable_ids)
        return [_commit_one(conn, item) for item in batch]


def _commit_one(conn: sqlite3.Connection, item: InstanceCommit) -> InstanceCommitResult:
    rec = item.record
    existing = conn.execute(
        "SELECT id, version, sha256, size_bytes FROM instances WHERE sop_instance_uid = ? "
        "ORDER BY version DESC LIMIT 1", (rec.sop_instance_uid,)).fetchone()
    if existing is not None and existing[2] != rec.sha256:
        # A resend of an older version's bytes is a retransmission, not a new version.
        same = conn.execute(
            "SELECT id, version, sha256, size_bytes FROM instances "
            "WHERE sop_instance_uid = ? AND sha256 = ? AND size_bytes = ? LIMIT 1",
            (rec.sop_instance_uid, rec.sha256, rec.size_bytes)).fetchone()
        if same is not None:
            return InstanceCommitResult(InstanceOutcome.IDENTICAL, same[0], same[1])
    outcome = decide_duplicate(existing[2] if existing else None,
                               existing[3] if existing else None, rec, item.policy)
    if existing is not None and outcome in (
            InstanceOutcome.IDENTICAL, InstanceOutcome.IGNORED, InstanceOutcome.REJECTED):
        return InstanceCommitResult(outcome, existing[0], existing[1])
    version = 1
    if existing is not None:
        version = existing[1] + 1
        conn.execute("UPDATE instances SET superseded = 1 WHERE id = ?", (existing[0],))
    cur = conn.execute(
        "INSERT INTO instances (object_id, spool_path, sop_class_uid, sop_instance_uid, "
        "version, transfer_syntax_uid, study_instance_uid, series_instance_uid, patient_id, "
        "accession_number, modality, calling_ae, called_ae, peer_host, listener, size_bytes, "
        "sha256, received_at, durable) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (rec.object_id, rec.spool_path, rec.sop_class_uid, rec.sop_instance_uid, version,
         rec.transfer_syntax_uid, rec.study_instance_uid, rec.series_instance_uid,
         rec.patient_id, rec.accession_number, rec.modality, rec.calling_ae, rec.called_ae,
         rec.peer_host, rec.listener, rec.size_bytes, rec.sha256, rec.received_at,
         1 if item.file_durable else 0))
    return InstanceCommitResult(outcome, cur.lastrowid, version)


def get(conn: sqlite3.Connection, sop_instance_uid: str) -> StoredInstance | None:
    row = conn.execute(
        f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE sop_instance_uid = ? "
        "ORDER BY version DESC LIMIT 1", (sop_instance_uid,)).fetchone()
    return row_to_instance(row) if row else None


def list_instances(conn: sqlite3.Connection, limit: int, offset: int) -> list[StoredInstance]:
    rows = conn.execute(
        f"SELECT {INSTANCE_COLUMNS} FROM instances ORDER BY id DESC LIMIT ? OFFSET ?",
        (limit, offset)).fetchall()
    return [row_to_instance(r) for r in rows]


def instances_after(conn: sqlite3.Connection, after_id: int, limit: int,
                    study_instance_uid: str | None) -> list[StoredInstance]:
    if study_instance_uid is None:
        rows = conn.execute(
            f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit)).fetchall()
    else:
        rows = conn.execute(
            f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE study_instance_uid = ? AND id > ? "
            "ORDER BY id LIMIT ?", (study_instance_uid, after_id, limit)).fetchall()
    return [row_to_instance(r) for r in rows]


def count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0])


def known_object_ids(conn: sqlite3.Connection, object_ids: Sequence[str]) -> set[str]:
    known: set[str] = set()
    for chunk in chunks(object_ids):
        known.update(r[0] for r in conn.execute(
            f"SELECT object_id FROM instances WHERE object_id IN ({marks(len(chunk))})", chunk))
    return known


def mark(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    """Mark rows durable, inside the caller's transaction."""
    for chunk in chunks(ids):
        conn.execute(f"UPDATE instances SET durable = 1 WHERE id IN ({marks(len(chunk))})"
                     " AND durable = 0", chunk)


def mark_durable(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    """Mark rows durable in a transaction of their own, without an fsync: a mark lost in a
    power cut leaves its row unmarked, and the start after it checks the file and marks it
    again (see ``JournalWriter.recover``). Nothing routes an unmarked row meanwhile."""
    with transaction(conn, durable=False):
        mark(conn, ids)


def not_durable(conn: sqlite3.Connection) -> list[StoredInstance]:
    rows = conn.execute(f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE durable = 0 "
                        "ORDER BY id").fetchall()
    return [row_to_instance(r) for r in rows]


def withdraw(conn: sqlite3.Connection, instance_id: int) -> bool:
    with transaction(conn):
        row = conn.execute("SELECT sop_instance_uid, superseded FROM instances WHERE id = ? "
                           "AND durable = 0 AND routed_at IS NULL", (instance_id,)).fetchone()
        if row is None:
            return False
        uid, superseded = row
        conn.execute("DELETE FROM routing_group_members WHERE instance_id = ?", (instance_id,))
        conn.execute("DELETE FROM instances WHERE id = ?", (instance_id,))
        if not superseded:
            # The version it superseded (if any) is the current one again.
            conn.execute("UPDATE instances SET superseded = 0 WHERE id = (SELECT id FROM "
                         "instances WHERE sop_instance_uid = ? ORDER BY version DESC LIMIT 1)",
                         (uid,))
        return True
