"""PostgreSQL SQL of the worklist: items, their indexed columns, and Modality Worklist queries.

The same matching rules as the SQLite backend: a query's constraints (from
:mod:`engine.worklist.query`) become a WHERE clause over the indexed copies of the item's keys,
and the caller makes the exact match on the superset returned. DICOM wildcards become a
case-sensitive ``LIKE`` ("C" collation, as SQLite's GLOB), and the pattern's constant prefix is
also given as a range, so the index is used whatever plan PostgreSQL picks for a parameter.
Every function takes the connection it runs on; no worklist policy lives here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from engine.durable.postgresql._common import transaction
from engine.durable.rows import ITEM_COLUMNS, item_values, row_to_item
from engine.records.worklist import StoredWorklistItem, WorklistItem, WorklistStatus
from engine.records.worklist_criteria import AnyOf, Column, Constraint, Criterion

Conn = psycopg.Connection[Any]

# Query columns by name: Column values are checked against this whitelist before they reach SQL.
_WORKLIST_COLUMNS: dict[Column, str] = {c: c.value for c in Column}
_ITEM_INSERT = (f"INSERT INTO worklist_items ({', '.join(ITEM_COLUMNS)}) "
                f"VALUES ({','.join(['%s'] * len(ITEM_COLUMNS))}) RETURNING id")
_ITEM_UPDATE = (f"UPDATE worklist_items SET {', '.join(c + '=%s' for c in ITEM_COLUMNS)} "
                "WHERE id=%s")


def like(pattern: str) -> str:
    """A DICOM wildcard pattern as a LIKE pattern (``*`` → ``%``, ``?`` → ``_``; LIKE's own
    ``%``, ``_`` and the escape character ``\\`` are made literal)."""
    out = []
    for ch in pattern:
        if ch in "\\%_":
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def prefix_range(pattern: str) -> tuple[str, str] | None:
    """The range [low, high) every match of ``pattern`` lies in ("C" collation is code point
    order), or None when the pattern starts with a wildcard."""
    cut = min((i for i in (pattern.find("*"), pattern.find("?")) if i >= 0),
              default=len(pattern))
    prefix = pattern[:cut]
    if not prefix or ord(prefix[-1]) >= 0x10FFFF:
        return None
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


def where(constraints: Sequence[Constraint], statuses: Sequence[WorklistStatus]
          ) -> tuple[str, list[Any]]:
    terms: list[str] = []
    params: list[Any] = []

    def term(c: Criterion) -> str:
        col = _WORKLIST_COLUMNS[c.column]
        if c.op == "eq":
            params.append(c.value)
            return f"{col} = %s"
        if c.op == "wildcard":
            bounds = prefix_range(c.value)
            params.append(like(c.value))
            if bounds is None:
                return f"{col} LIKE %s"
            params.extend(bounds)
            return f"({col} LIKE %s AND {col} >= %s AND {col} < %s)"
        if c.op == "in":
            params.append(list(c.values))
            return f"{col} = ANY(%s)"
        parts = []
        if c.low is not None:
            params.append(c.low)
            parts.append(f"{col} >= %s")
        if c.high is not None:
            params.append(c.high)
            parts.append(f"{col} <= %s")
        return " AND ".join(parts) or "TRUE"

    for constraint in constraints:
        if isinstance(constraint, AnyOf):
            terms.append("(" + " OR ".join(term(c) for c in constraint.criteria) + ")")
        else:
            terms.append(term(constraint))
    if statuses:
        params.append([s.value for s in statuses])
        terms.append("status = ANY(%s)")
    return (" WHERE " + " AND ".join(terms)) if terms else "", params


def query_sql(constraints: Sequence[Constraint], statuses: Sequence[WorklistStatus],
              limit: int, offset: int = 0, newest_first: bool = False
              ) -> tuple[str, list[Any]]:
    """The SELECT behind ``find_worklist`` (also explained by ``explain_worklist``)."""
    clause, params = where(constraints, statuses)
    order = " ORDER BY id DESC" if newest_first else ""
    return (f"SELECT id, data FROM worklist_items{clause}{order} LIMIT %s OFFSET %s",
            [*params, limit, offset])


_ITEM_INSERT_WITH_ID = (f"INSERT INTO worklist_items (id, {', '.join(ITEM_COLUMNS)}) "
                        f"VALUES ({','.join(['%s'] * (len(ITEM_COLUMNS) + 1))})")
#: ``n`` new item ids, taken from the table's own sequence (gaps are harmless)
RESERVE_IDS = ("SELECT nextval(pg_get_serial_sequence('worklist_items', 'id')) "
               "FROM generate_series(1, %s)")


#: the items of several orders at once (``OrderRows``): by placer number, or by filler number
#: for an order that has no placer number (as ``WorklistTxn.items_for_order`` looks them up)
ORDERS_SQL = ("SELECT id, data, placer_order_number, filler_order_number FROM worklist_items "
              "WHERE placer_order_number = ANY(%s) OR filler_order_number = ANY(%s)")


#: item id -> (placer number, filler number, JSON)
_Marked = dict[int, tuple[str, str, str]]


class OrderRows:
    """Worklist rows of some orders, read ahead in a round trip the caller makes anyway, and
    kept true to the transaction's own writes after it.

    ``placers``/``fillers`` are the keys whose every row the read returned; a lookup of another
    key is not answered here. Each write of the transaction passes through :meth:`put`, so a
    row that now carries a covered key is found, and one that left it is not; :meth:`mark` and
    :meth:`undo` follow a savepoint. A row is kept as its JSON and decoded only when asked for.
    Order numbers are compared without NUL characters, as the database holds them (a value
    carrying one is stored without it, see ``_common.tolerating_nul``).
    """

    def __init__(self, placers: set[str], fillers: set[str]) -> None:
        self.placers = placers
        self.fillers = fillers
        self._rows: _Marked = {}

    @classmethod
    def keys(cls, order_keys: Sequence[tuple[str, str]]) -> OrderRows | None:
        placers = {_nul_free(p) for p, _ in order_keys if p}
        fillers = {_nul_free(f) for p, f in order_keys if not p and f}
        return cls(placers, fillers) if placers or fillers else None

    def params(self) -> tuple[list[str], list[str]]:
        return sorted(self.placers), sorted(self.fillers)

    def load(self, rows: Sequence[Sequence[Any]]) -> None:
        for item_id, data, placer, filler in rows:
            self._rows[int(item_id)] = (placer, filler, data)

    def covers(self, placer: str, filler: str) -> bool:
        return _nul_free(placer) in self.placers if placer else _nul_free(filler) in self.fillers

    def find(self, placer: str, filler: str) -> list[StoredWorklistItem]:
        placer, filler = _nul_free(placer), _nul_free(filler)
        hits = [(item_id, data) for item_id, (p, f, data) in self._rows.items()
                if (p == placer if placer else f == filler)]
        return [row_to_item(r) for r in sorted(hits)]

    def put(self, item_id: int, values: Sequence[Any]) -> None:
        self._rows[item_id] = (_nul_free(values[_PLACER]), _nul_free(values[_FILLER]),
                               values[-1])

    def mark(self) -> _Marked:
        return dict(self._rows)

    def undo(self, marked: _Marked) -> None:
        self._rows = dict(marked)


def _nul_free(text: str) -> str:
    return text.replace("\x00", "")


_PLACER = ITEM_COLUMNS.index("placer_order_number")
_FILLER = ITEM_COLUMNS.index("filler_order_number")


class WorklistTxn:
    """:class:`~engine.durable.store.WorklistTxn` on the writer's connection.

    ``reserved_ids``: item ids taken beforehand (in a round trip the caller makes anyway); an
    insert that uses one needs no answer from the server, so in a pipeline it costs no round
    trip of its own. Without one left, an insert asks the server for its id. ``orders``: rows
    read ahead the same way, so the lookup of such an order costs no round trip either."""

    def __init__(self, conn: Conn, reserved_ids: Sequence[int] = (),
                 orders: OrderRows | None = None) -> None:
        self._conn = conn
        self._ids = list(reserved_ids)
        self.orders = orders

    def items_for_order(self, placer: str, filler: str) -> list[StoredWorklistItem]:
        if self.orders is not None and self.orders.covers(placer, filler):
            return self.orders.find(placer, filler)
        if placer:
            sql, key = "placer_order_number = %s", placer
        else:
            sql, key = "filler_order_number = %s", filler
        return select_items(self._conn, f"SELECT id, data FROM worklist_items WHERE {sql} "
                            "ORDER BY id", (key,))

    def items_for_patient(self, patient_id: str, issuer: str | None) -> list[StoredWorklistItem]:
        if issuer is None:
            return select_items(self._conn, "SELECT id, data FROM worklist_items WHERE "
                                "patient_id = %s ORDER BY id", (patient_id,))
        return select_items(self._conn, "SELECT id, data FROM worklist_items WHERE "
                            "patient_id = %s AND issuer_of_patient_id = %s ORDER BY id",
                            (patient_id, issuer))

    def insert_item(self, item: WorklistItem) -> int:
        values = item_values(item)
        if self._ids:
            item_id = self._ids.pop(0)
            self._conn.execute(_ITEM_INSERT_WITH_ID, (item_id, *values))
        else:
            row = self._conn.execute(_ITEM_INSERT, values).fetchone()
            assert row is not None
            item_id = int(row[0])
        if self.orders is not None:
            self.orders.put(item_id, values)
        return item_id

    def update_item(self, item_id: int, item: WorklistItem) -> None:
        values = item_values(item)
        self._conn.execute(_ITEM_UPDATE, (*values, item_id))
        if self.orders is not None:
            self.orders.put(item_id, values)

    def mark(self) -> _Marked | None:
        """Before a savepoint: what :meth:`undo` needs after rolling back to it."""
        return self.orders.mark() if self.orders is not None else None

    def undo(self, marked: _Marked | None) -> None:
        """After rolling back to the savepoint :meth:`mark` was taken at."""
        if self.orders is not None and marked is not None:
            self.orders.undo(marked)


def select_items(conn: Conn, sql: str, params: Sequence[Any], *, prepare: bool | None = None
                 ) -> list[StoredWorklistItem]:
    """Items of a ``SELECT id, data FROM worklist_items ...``."""
    return [row_to_item(r) for r in conn.execute(sql, params, prepare=prepare)]


def items_by_ids(conn: Conn, ids: Sequence[int]) -> list[StoredWorklistItem]:
    if not ids:
        return []
    return select_items(conn, "SELECT id, data FROM worklist_items WHERE id = ANY(%s) "
                        "ORDER BY id", (list(ids),))


def find(conn: Conn, sql: str, params: Sequence[Any]) -> list[StoredWorklistItem]:
    # Never a generic (prepared) plan: the constraints' values decide which index is selective.
    return select_items(conn, sql, params, prepare=False)


def explain(conn: Conn, sql: str, params: Sequence[Any]) -> list[str]:
    return [str(r[0]) for r in conn.execute("EXPLAIN " + sql, params, prepare=False)]


def count(conn: Conn, constraints: Sequence[Constraint],
          statuses: Sequence[WorklistStatus]) -> int:
    clause, params = where(constraints, statuses)
    row = conn.execute(f"SELECT COUNT(*) FROM worklist_items{clause}", params,
                       prepare=False).fetchone()
    return int(row[0]) if row else 0


def get(conn: Conn, item_id: int, *, for_update: bool = False) -> StoredWorklistItem | None:
    lock = " FOR UPDATE" if for_update else ""
    row = conn.execute(f"SELECT id, data FROM worklist_items WHERE id = %s{lock}",
                       (item_id,)).fetchone()
    return row_to_item(row) if row else None


def add(conn: Conn, items: Sequence[WorklistItem]) -> list[int]:
    if not items:
        return []
    ids: list[int] = []
    with transaction(conn), conn.cursor() as cur:
        # Pipelined batches, not a round trip per item (bulk seeding, imports); bounded so one
        # call never holds the interpreter long enough to stall the event loop.
        for start in range(0, len(items), 500):
            chunk = items[start:start + 500]
            cur.executemany(_ITEM_INSERT, [item_values(item) for item in chunk],
                            returning=True)
            while True:
                row = cur.fetchone()
                if row is not None:
                    ids.append(int(row[0]))
                if not cur.nextset():
                    break
    return ids


def update(conn: Conn, item_id: int, change: Callable[[WorklistItem], WorklistItem]
           ) -> StoredWorklistItem | None:
    with transaction(conn):
        current = get(conn, item_id, for_update=True)
        if current is None:
            return None
        new = change(current.item)
        WorklistTxn(conn).update_item(item_id, new)
    return StoredWorklistItem(item_id, new)


def delete(conn: Conn, item_id: int) -> bool:
    return conn.execute("DELETE FROM worklist_items WHERE id = %s", (item_id,)).rowcount > 0


def purge(conn: Conn, statuses: Sequence[WorklistStatus], updated_before: str) -> int:
    return int(conn.execute(
        "DELETE FROM worklist_items WHERE status = ANY(%s) AND updated_at < %s",
        ([s.value for s in statuses], updated_before)).rowcount)


def counts(conn: Conn) -> dict[WorklistStatus, int]:
    out = dict.fromkeys(WorklistStatus, 0)
    for status, n in conn.execute("SELECT status, COUNT(*) FROM worklist_items GROUP BY status"):
        out[WorklistStatus(status)] = int(n)
    return out
