"""SQLite SQL of the HL7 journal: a batch of received messages journalled in one transaction,
each in its own savepoint, deduplicated on (sending application, sending facility, MSH-10).

:func:`commit_batch` runs on the store's writer thread: a known key whose answer was final is
answered from the journal and changes nothing; otherwise the domain's ``apply`` writes the
worklist and decides, and the message is recorded with that disposition. The raw bytes are in
the row, so they are durable with the commit that answers AA. No HL7 policy lives here.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from engine.durable.rows import HL7_COLUMNS, row_to_hl7
from engine.durable.sqlite._common import marks, transaction
from engine.durable.sqlite.worklist import WorklistTxn
from engine.durable.store import (
    Hl7Apply,
    Hl7CommitResult,
    Hl7Disposition,
    Hl7JournalEntry,
    Hl7JournalRecord,
)


def commit_batch(conn: sqlite3.Connection, entries: Sequence[Hl7JournalEntry], apply: Hl7Apply
                 ) -> list[Hl7CommitResult]:
    txn = WorklistTxn(conn)
    with transaction(conn):
        return [_commit_one(conn, txn, entry, index, apply)
                for index, entry in enumerate(entries)]


def _commit_one(conn: sqlite3.Connection, txn: WorklistTxn, entry: Hl7JournalEntry,
                index: int, apply: Hl7Apply) -> Hl7CommitResult:
    existing = None
    if entry.control_id is not None:
        existing = conn.execute(
            "SELECT id, ack_code, errors_json, text, worklist_item_ids, retryable "
            "FROM hl7_messages WHERE sending_application IS ? AND sending_facility IS ? "
            "AND control_id = ?",
            (entry.sending_application, entry.sending_facility, entry.control_id)
        ).fetchone()
        if existing is not None and not existing[5]:
            return Hl7CommitResult(int(existing[0]), Hl7Disposition(
                existing[1], existing[2], existing[3],
                tuple(json.loads(existing[4])), applied=False), duplicate=True)
    # One savepoint per message: a message whose disposition is "not applied" (or whose
    # apply fails) leaves no worklist trace, and never takes the rest of the batch along.
    conn.execute("SAVEPOINT hl7_message")
    try:
        disposition = apply(txn, index)
        if not disposition.applied:
            conn.execute("ROLLBACK TO hl7_message")
        values = (entry.message_type, entry.trigger_event, entry.peer_host, entry.listener,
                  entry.received_at, entry.raw, disposition.ack_code,
                  disposition.errors_json, disposition.text,
                  json.dumps(list(disposition.worklist_item_ids)),
                  int(disposition.retryable))
        if existing is not None:
            # A repeat of a message whose answer depended on the moment: answered anew.
            conn.execute(
                "UPDATE hl7_messages SET message_type=?, trigger_event=?, peer_host=?, "
                "listener=?, received_at=?, raw=?, ack_code=?, errors_json=?, text=?, "
                "worklist_item_ids=?, retryable=? WHERE id=?", (*values, existing[0]))
            journal_id = int(existing[0])
        else:
            cur = conn.execute(
                "INSERT INTO hl7_messages (sending_application, sending_facility, "
                "control_id, message_type, trigger_event, peer_host, listener, "
                "received_at, raw, ack_code, errors_json, text, worklist_item_ids, "
                "retryable) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (entry.sending_application, entry.sending_facility, entry.control_id,
                 *values))
            assert cur.lastrowid is not None
            journal_id = int(cur.lastrowid)
        conn.execute("RELEASE hl7_message")
    except BaseException:
        conn.execute("ROLLBACK TO hl7_message")
        conn.execute("RELEASE hl7_message")
        raise
    return Hl7CommitResult(journal_id, disposition, duplicate=False)


def _ack_filter(ack_codes: Sequence[str] | None) -> tuple[str, list[str]]:
    if not ack_codes:
        return "", []
    return f" WHERE ack_code IN ({marks(len(ack_codes))})", list(ack_codes)


def list_messages(conn: sqlite3.Connection, ack_codes: Sequence[str] | None, limit: int,
                  offset: int) -> list[Hl7JournalRecord]:
    where, params = _ack_filter(ack_codes)
    rows = conn.execute(
        f"SELECT {HL7_COLUMNS}, NULL FROM hl7_messages{where} ORDER BY id DESC "
        "LIMIT ? OFFSET ?", (*params, limit, offset)).fetchall()
    return [row_to_hl7(r) for r in rows]


def count_messages(conn: sqlite3.Connection, ack_codes: Sequence[str] | None) -> int:
    where, params = _ack_filter(ack_codes)
    return int(conn.execute(f"SELECT COUNT(*) FROM hl7_messages{where}", params).fetchone()[0])


def get_message(conn: sqlite3.Connection, journal_id: int) -> Hl7JournalRecord | None:
    row: Any = conn.execute(f"SELECT {HL7_COLUMNS}, raw FROM hl7_messages WHERE id = ?",
                            (journal_id,)).fetchone()
    return row_to_hl7(row) if row else None
