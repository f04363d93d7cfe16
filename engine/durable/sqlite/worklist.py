"""SQLite SQL of the worklist: items, their indexed columns, and Modality Worklist queries.

A query's constraints (built by :mod:`engine.worklist.query` from the C-FIND identifier) become
a WHERE clause over the indexed copies of the item's keys, so the database answers from an
index; the caller makes the exact match on the superset returned. :class:`WorklistTxn` is the
worklist inside an open write transaction (HL7 orders, MPPS links). Every function takes the
connection it runs on; no worklist policy lives here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from engine.durable.rows import ITEM_COLUMNS, item_values, row_to_item
from engine.durable.sqlite._common import marks, transaction
from engine.records.worklist import StoredWorklistItem, WorklistItem, WorklistStatus
from engine.records.worklist_criteria import AnyOf, Column, Constraint, Criterion

# Query columns by name: Column values are checked against this whitelist before they reach SQL.
_WORKLIST_COLUMNS: dict[Column, str] = {c: c.value for c in Column}
_ITEM_INSERT = (f"INSERT INTO worklist_items ({', '.join(ITEM_COLUMNS)}) "
                f"VALUES ({marks(len(ITEM_COLUMNS))})")
_ITEM_UPDATE = (f"UPDATE worklist_items SET {', '.join(c + '=?' for c in ITEM_COLUMNS)} "
                "WHERE id=?")


def glob(pattern: str) -> str:
    """A DICOM wildcard pattern as an SQLite GLOB pattern (``*``/``?`` keep their meaning;
    GLOB's own ``[`` and ``]`` are made literal). GLOB, not LIKE: it is case-sensitive like
    DICOM, and its constant prefix lets SQLite range-scan the index."""
    return pattern.replace("[", "\x00").replace("]", "[]]").replace("\x00", "[[]")


def where(constraints: Sequence[Constraint], statuses: Sequence[WorklistStatus]
          ) -> tuple[str, list[Any]]:
    terms: list[str] = []
    params: list[Any] = []

    def term(c: Criterion) -> str:
        col = _WORKLIST_COLUMNS[c.column]
        if c.op == "eq":
            params.append(c.value)
            return f"{col} = ?"
        if c.op == "wildcard":
            params.append(glob(c.value))
            return f"{col} GLOB ?"
        if c.op == "in":
            params.extend(c.values)
            return f"{col} IN ({marks(len(c.values))})"
        parts = []
        if c.low is not None:
            params.append(c.low)
            parts.append(f"{col} >= ?")
        if c.high is not None:
            params.append(c.high)
            parts.append(f"{col} <= ?")
        return " AND ".join(parts) or "1"

    for constraint in constraints:
        if isinstance(constraint, AnyOf):
            terms.append("(" + " OR ".join(term(c) for c in constraint.criteria) + ")")
        else:
            terms.append(term(constraint))
    if statuses:
        params.extend(s.value for s in statuses)
        # Unary + keeps the planner off the status index: nearly every row is active, so it
        # would be a scan in disguise; the selective key indexes must drive the search.
        terms.append(f"+status IN ({marks(len(statuses))})")
    return (" WHERE " + " AND ".join(terms)) if terms else "", params


def query_sql(constraints: Sequence[Constraint], statuses: Sequence[WorklistStatus],
              limit: int, offset: int = 0, newest_first: bool = False
              ) -> tuple[str, list[Any]]:
    """The SELECT behind ``find_worklist`` (also explained by ``explain_worklist``)."""
    clause, params = where(constraints, statuses)
    # No ORDER BY for MWL queries: sorting would tempt the planner into a rowid scan.
    order = " ORDER BY id DESC" if newest_first else ""
    return (f"SELECT id, data FROM worklist_items{clause}{order} LIMIT ? OFFSET ?",
            [*params, limit, offset])


class WorklistTxn:
    """:class:`~engine.durable.store.WorklistTxn` on the writer's connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def items_for_order(self, placer: str, filler: str) -> list[StoredWorklistItem]:
        if placer:
            sql, key = "placer_order_number = ?", placer
        else:
            sql, key = "filler_order_number = ?", filler
        return select_items(self._conn, f"SELECT id, data FROM worklist_items WHERE {sql} "
                            "ORDER BY id", (key,))

    def items_for_patient(self, patient_id: str, issuer: str | None) -> list[StoredWorklistItem]:
        if issuer is None:
            return select_items(self._conn, "SELECT id, data FROM worklist_items WHERE "
                                "patient_id = ? ORDER BY id", (patient_id,))
        return select_items(self._conn, "SELECT id, data FROM worklist_items WHERE "
                            "patient_id = ? AND issuer_of_patient_id = ? ORDER BY id",
                            (patient_id, issuer))

    def insert_item(self, item: WorklistItem) -> int:
        cur = self._conn.execute(_ITEM_INSERT, item_values(item))
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    def update_item(self, item_id: int, item: WorklistItem) -> None:
        self._conn.execute(_ITEM_UPDATE, (*item_values(item), item_id))


def select_items(conn: sqlite3.Connection, sql: str, params: Sequence[Any]
                 ) -> list[StoredWorklistItem]:
    """Items of a ``SELECT id, data FROM worklist_items ...``."""
    return [row_to_item(r) for r in conn.execute(sql, params)]


def items_by_ids(conn: sqlite3.Connection, ids: Sequence[int]) -> list[StoredWorklistItem]:
    if not ids:
        return []
    return select_items(conn, "SELECT id, data FROM worklist_items WHERE id IN "
                        f"({marks(len(ids))}) ORDER BY id", list(ids))


def find(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[StoredWorklistItem]:
    return select_items(conn, sql, params)


def explain(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[str]:
    return [str(r[3]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]


def count(conn: sqlite3.Connection, constraints: Sequence[Constraint],
          statuses: Sequence[WorklistStatus]) -> int:
    clause, params = where(constraints, statuses)
    return int(conn.execute(f"SELECT COUNT(*) FROM worklist_items{clause}",
                            params).fetchone()[0])


def get(conn: sqlite3.Connection, item_id: int) -> StoredWorklistItem | None:
    row = conn.execute("SELECT id, data FROM worklist_items WHERE id = ?",
                       (item_id,)).fetchone()
    return row_to_item(row) if row else None


def add(conn: sqlite3.Connection, items: Sequence[WorklistItem]) -> list[int]:
    txn = WorklistTxn(conn)
    with transaction(conn):
        return [txn.insert_item(item) for item in items]


def update(conn: sqlite3.Connection, item_id: int,
           change: Callable[[WorklistItem], WorklistItem]) -> StoredWorklistItem | None:
    with transaction(conn):
        current = get(conn, item_id)
        if current is None:
            return None
        new = change(current.item)
        WorklistTxn(conn).update_item(item_id, new)
    return StoredWorklistItem(item_id, new)


def delete(conn: sqlite3.Connection, item_id: int) -> bool:
    return conn.execute("DELETE FROM worklist_items WHERE id = ?", (item_id,)).rowcount > 0


def purge(conn: sqlite3.Connection, statuses: Sequence[WorklistStatus], updated_before: str
          ) -> int:
    return int(conn.execute(
        f"DELETE FROM worklist_items WHERE status IN ({marks(len(statuses))}) "
        "AND updated_at < ?", (*(s.value for s in statuses), updated_before)).rowcount)


def counts(conn: sqlite3.Connection) -> dict[WorklistStatus, int]:
    out = dict.fromkeys(WorklistStatus, 0)
    for status, n in conn.execute("SELECT status, COUNT(*) FROM worklist_items GROUP BY status"):
        out[WorklistStatus(status)] = int(n)
    return out
