"""PostgreSQL SQL of the HL7 journal: a batch of received messages journalled in one
transaction, each in its own savepoint, deduplicated on (sending application, sending facility,
MSH-10).

The same rules as the SQLite backend's ``hl7.py``. The idempotency key is also a UNIQUE
constraint. A message whose key is complete is journalled first (``INSERT … ON CONFLICT DO
NOTHING``, its answer filled in once decided): a copy that another node is journalling at the
same moment waits at that insert until the other commits, then finds its row and is answered
with that node's disposition, as any repeat is. A key with an empty part (no sending
application or facility: the constraint cannot tell NULLs apart) is looked up first instead.
No HL7 policy lives here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import psycopg

from engine.durable.postgresql._common import pipelined
from engine.durable.postgresql.worklist import ORDERS_SQL, RESERVE_IDS, OrderRows, WorklistTxn
from engine.durable.rows import HL7_COLUMNS, row_to_hl7
from engine.durable.store import (
    Hl7Apply,
    Hl7CommitResult,
    Hl7Disposition,
    Hl7JournalEntry,
    Hl7JournalRecord,
)

Conn = psycopg.Connection[Any]
Row = tuple[Any, ...]

_COLUMNS = ("sending_application, sending_facility, control_id, message_type, trigger_event, "
            "peer_host, listener, received_at, raw, ack_code, errors_json, text, "
            "worklist_item_ids, retryable")
_INSERT = (f"INSERT INTO hl7_messages ({_COLUMNS}) "
           "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
           "ON CONFLICT (sending_application, sending_facility, control_id) DO NOTHING "
           "RETURNING id")
#: what a row journalled first holds until its disposition replaces it, in the same
#: transaction (nobody else ever sees it)
_UNDECIDED = ("AR", "[]", None, "[]", 1)


def _full_key(entry: Hl7JournalEntry) -> bool:
    return None not in (entry.sending_application, entry.sending_facility, entry.control_id)


def _entry_values(entry: Hl7JournalEntry) -> tuple[Any, ...]:
    return (entry.sending_application, entry.sending_facility, entry.control_id,
            entry.message_type, entry.trigger_event, entry.peer_host, entry.listener,
            entry.received_at, entry.raw)


def commit_batch(conn: Conn, entries: Sequence[Hl7JournalEntry], apply: Hl7Apply,
                 order_keys: Sequence[tuple[str, str]] = ()) -> list[Hl7CommitResult]:
    """Pipelined (see ``_common.pipelined``): every message is journalled (or, with an
    incomplete key, looked up) in one round trip with BEGIN, and statements whose results
    nobody reads (savepoints, their release, the answer written into the journal row, COMMIT)
    ride on the next one that is read. A new order's item is inserted with an id reserved in
    that first round trip, and the rows of the orders the batch names (``order_keys``) are
    read in it too, so a batch of orders costs two round trips whatever its size."""
    with pipelined(conn):
        firsts = [conn.execute(_INSERT, (*_entry_values(entry), *_UNDECIDED))
                  if entry.control_id is None or _full_key(entry) else _lookup(conn, entry)
                  for entry in entries]
        # An item id per message (a new order makes one), so its insert needs no answer.
        reserved = conn.execute(RESERVE_IDS, (len(entries),))
        orders = OrderRows.keys(order_keys)
        # Read after the journal inserts, so after any wait on another node's copy of a
        # message: that node's worklist writes are then seen, as a lookup made later would.
        ahead = conn.execute(ORDERS_SQL, orders.params()) if orders is not None else None
        found = [cur.fetchone() for cur in firsts]
        if orders is not None and ahead is not None:
            orders.load(ahead.fetchall())
        txn = WorklistTxn(conn, [int(r[0]) for r in reserved.fetchall()], orders)
        seen: set[tuple[str | None, str | None, str]] = set()
        results = []
        for index, entry in enumerate(entries):
            journal_id: int | None
            existing: Row | None
            first = found[index]
            if entry.control_id is None:  # unparsed: journalled, never a repeat
                assert first is not None
                results.append(_process(conn, txn, entry, int(first[0]), None, index, apply))
                continue
            key = (entry.sending_application, entry.sending_facility, entry.control_id)
            if _full_key(entry):
                if first is not None:
                    journal_id, existing = int(first[0]), None
                else:  # journalled before (by anyone, this batch included): that row decides
                    existing = _existing(conn, entry)
                    assert existing is not None
                    journal_id = int(existing[0])
            else:
                # A repeat within this batch: the lookup above ran before its original.
                existing = _existing(conn, entry) if key in seen else first
                journal_id = None if existing is None else int(existing[0])
            seen.add(key)
            if existing is not None and not existing[5]:
                results.append(_answered(existing))
                continue
            results.append(_process(conn, txn, entry, journal_id, existing, index, apply))
        return results


def _lookup(conn: Conn, entry: Hl7JournalEntry) -> psycopg.Cursor[Any]:
    # "= %s" or "IS NULL" per part (not IS NOT DISTINCT FROM, which no index serves).
    terms: list[str] = []
    params: list[Any] = []
    for column, value in (("sending_application", entry.sending_application),
                          ("sending_facility", entry.sending_facility)):
        if value is None:
            terms.append(f"{column} IS NULL")
        else:
            terms.append(f"{column} = %s")
            params.append(value)
    params.append(entry.control_id)
    return conn.execute(
        "SELECT id, ack_code, errors_json, text, worklist_item_ids, retryable FROM hl7_messages "
        f"WHERE {' AND '.join(terms)} AND control_id = %s FOR UPDATE", params)


def _existing(conn: Conn, entry: Hl7JournalEntry) -> Row | None:
    return _lookup(conn, entry).fetchone()


def _answered(existing: Sequence[Any]) -> Hl7CommitResult:
    return Hl7CommitResult(int(existing[0]), Hl7Disposition(
        existing[1], existing[2], existing[3], tuple(json.loads(existing[4])), applied=False),
        duplicate=True)


def _process(conn: Conn, txn: WorklistTxn, entry: Hl7JournalEntry, journal_id: int | None,
             existing: Row | None, index: int, apply: Hl7Apply) -> Hl7CommitResult:
    """Apply one message in its savepoint and record its disposition: into the row journalled
    first (``journal_id``), over a repeat whose earlier answer depended on the moment
    (``existing``), or as a new row (``journal_id`` None: an incomplete key)."""
    # One savepoint per message: a message whose disposition is "not applied" (or whose
    # apply fails) leaves no worklist trace, and never takes the rest of the batch along.
    conn.execute("SAVEPOINT hl7_message")
    marked = txn.mark()
    try:
        disposition = apply(txn, index)
        if not disposition.applied:
            conn.execute("ROLLBACK TO SAVEPOINT hl7_message")
            txn.undo(marked)
        answer = (disposition.ack_code, disposition.errors_json, disposition.text,
                  json.dumps(list(disposition.worklist_item_ids)), int(disposition.retryable))
        if existing is not None:
            # A repeat of a message whose answer depended on the moment: answered anew.
            conn.execute(
                "UPDATE hl7_messages SET message_type=%s, trigger_event=%s, peer_host=%s, "
                "listener=%s, received_at=%s, raw=%s, ack_code=%s, errors_json=%s, text=%s, "
                "worklist_item_ids=%s, retryable=%s WHERE id=%s",
                (*_entry_values(entry)[3:], *answer, existing[0]))
        elif journal_id is not None:
            conn.execute(
                "UPDATE hl7_messages SET ack_code=%s, errors_json=%s, text=%s, "
                "worklist_item_ids=%s, retryable=%s WHERE id=%s", (*answer, journal_id))
        else:
            # An incomplete key: the constraint cannot catch another node's copy, so nothing
            # is gained by journalling first.
            row = conn.execute(_INSERT, (*_entry_values(entry), *answer)).fetchone()
            if row is None:  # cannot happen while a key part is NULL; kept for safety
                conn.execute("ROLLBACK TO SAVEPOINT hl7_message")
                txn.undo(marked)
                conn.execute("RELEASE SAVEPOINT hl7_message")
                winner = _existing(conn, entry)
                assert winner is not None
                return _answered(winner)
            journal_id = int(row[0])
        conn.execute("RELEASE SAVEPOINT hl7_message")
    except BaseException:
        if not conn.broken:
            conn.execute("ROLLBACK TO SAVEPOINT hl7_message")
            conn.execute("RELEASE SAVEPOINT hl7_message")
            txn.undo(marked)
        raise
    if existing is not None:
        journal_id = int(existing[0])
    assert journal_id is not None
    return Hl7CommitResult(journal_id, disposition, duplicate=False)


def _ack_filter(ack_codes: Sequence[str] | None) -> tuple[str, list[Any]]:
    if not ack_codes:
        return "", []
    return " WHERE ack_code = ANY(%s)", [list(ack_codes)]


def list_messages(conn: Conn, ack_codes: Sequence[str] | None, limit: int, offset: int
                  ) -> list[Hl7JournalRecord]:
    where, params = _ack_filter(ack_codes)
    rows = conn.execute(
        f"SELECT {HL7_COLUMNS}, NULL FROM hl7_messages{where} ORDER BY id DESC "
        "LIMIT %s OFFSET %s", (*params, limit, offset)).fetchall()
    return [row_to_hl7(r) for r in rows]


def count_messages(conn: Conn, ack_codes: Sequence[str] | None) -> int:
    where, params = _ack_filter(ack_codes)
    row = conn.execute(f"SELECT COUNT(*) FROM hl7_messages{where}", params).fetchone()
    return int(row[0]) if row else 0


def get_message(conn: Conn, journal_id: int) -> Hl7JournalRecord | None:
    row = conn.execute(f"SELECT {HL7_COLUMNS}, raw FROM hl7_messages WHERE id = %s",
                       (journal_id,)).fetchone()
    return row_to_hl7(row) if row else None
