"""PostgreSQL SQL of the Query/Retrieve index: writing index rows and answering C-FIND, C-MOVE
and C-GET lookups from them.

The SQLite backend's rules (see its ``qr.py``): one row per current SOP Instance, deleted with
its journal row (``ON DELETE CASCADE``); study, series and patient answers are aggregates. Names
are compared case-insensitively through ``lower()`` (an expression index serves it); other
wildcards are case-sensitive ``LIKE`` in the "C" collation. Two nodes indexing at once upsert
the same rows and move the watermark only forward. This module must not read files nor parse
DICOM.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from engine.durable.postgresql._common import pipelined, scalar
from engine.durable.qr import COLUMNS, QrIndexRow, QrLocated, QrMatch, QrQuery, QrRecord

Conn = psycopg.Connection[Any]

_LEVEL_COLUMNS: dict[str, tuple[str, ...]] = {
    "PATIENT": COLUMNS[:4],
    "STUDY": COLUMNS[:11],
    "SERIES": COLUMNS[:15],
    "IMAGE": COLUMNS,
}
_GROUP_BY = {"PATIENT": "patient_id", "STUDY": "study_instance_uid",
             "SERIES": "series_instance_uid"}
# SQLite's CAST of a non-number is 0; PostgreSQL's would fail the query.
_INSTANCE_ORDER = ("CASE WHEN {p}instance_number ~ '^[0-9]{{1,18}}$' "
                   "THEN {p}instance_number::bigint ELSE 0 END")


def watermark(conn: Conn) -> int:
    got = scalar(conn, "SELECT last_instance_id FROM qr_index_state WHERE id = 1")
    return int(got) if got is not None else 0


def index(conn: Conn, rows: Sequence[QrIndexRow], last_instance_id: int) -> int:
    """Insert (or replace: a newer version of a SOP Instance) ``rows`` and move the watermark
    forward; a row whose journal entry is gone meanwhile is skipped. Committed without waiting
    for the flush: the index is rebuilt from the journal (the watermark goes back with it)."""
    cols = ", ".join(COLUMNS)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in ("instance_id", *COLUMNS)
                        if c != "sop_instance_uid")
    sql = (f"INSERT INTO qr_instances (instance_id, {cols}) "
           f"SELECT %s, {', '.join(['%s'] * len(COLUMNS))} "
           "WHERE EXISTS (SELECT 1 FROM instances WHERE id = %s) "
           f"ON CONFLICT (sop_instance_uid) DO UPDATE SET {updates}")
    # One round trip for the whole batch (pipelined); the counts are read once it committed.
    with pipelined(conn, durable=False):
        inserts = [conn.execute(sql, (row.instance_id, *row.values, row.instance_id))
                   for row in rows]
        conn.execute("INSERT INTO qr_index_state (id, last_instance_id) VALUES (1, %s) "
                     "ON CONFLICT (id) DO UPDATE SET last_instance_id = "
                     "GREATEST(qr_index_state.last_instance_id, EXCLUDED.last_instance_id)",
                     (last_instance_id,))
    return sum(cur.rowcount for cur in inserts)


def _like(pattern: str) -> str:
    out = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return out.replace("*", "%").replace("?", "_")


def _where(matches: Sequence[QrMatch], prefix: str = ""
           ) -> tuple[str, list[Any], str, list[Any]]:
    """WHERE clause (and HAVING, for ModalitiesInStudy) with their parameters."""
    where: list[str] = []
    params: list[Any] = []
    having = ""
    having_params: list[Any] = []
    for m in matches:
        col = prefix + m.column
        if m.kind == "equals":
            where.append(f"lower({col}) = lower(%s)" if m.fold else f"{col} = %s")
            params.append(m.values[0])
        elif m.kind == "wildcard":
            where.append(f"lower({col}) LIKE lower(%s)" if m.fold else f"{col} LIKE %s")
            params.append(_like(m.values[0]))
        elif m.kind == "range":
            low, high = m.values
            if low:
                where.append(f"{col} >= %s")
                params.append(low)
            if high:
                where.append(f"{col} <= %s")
                params.append(high)
            where.append(f"{col} <> ''")
        elif m.kind == "any":
            where.append(f"{col} = ANY(%s)")
            params.append(list(m.values))
        elif m.kind == "modalities":
            having = f"bool_or({prefix}modality = ANY(%s))"
            having_params.append(list(m.values))
    return (" WHERE " + " AND ".join(where) if where else ""), params, having, having_params


def find(conn: Conn, query: QrQuery) -> list[QrRecord]:
    """At most ``query.limit + 1`` answers (one more tells the caller there are too many)."""
    where, params, having, having_params = _where(query.matches)
    cols = _LEVEL_COLUMNS[query.level]
    if query.level == "IMAGE":
        rows = conn.execute(
            f"SELECT {', '.join(cols)} FROM qr_instances{where} ORDER BY series_instance_uid, "
            f"{_INSTANCE_ORDER.format(p='')}, sop_instance_uid LIMIT %s",
            (*params, query.limit + 1), prepare=False).fetchall()
        return [QrRecord(dict(zip(cols, r, strict=True))) for r in rows]
    group = _GROUP_BY[query.level]
    picked = ", ".join(f"MAX({c})" for c in cols)
    sql = (f"SELECT {picked}, COUNT(DISTINCT study_instance_uid), "
           "COUNT(DISTINCT series_instance_uid), COUNT(*), "
           "string_agg(DISTINCT modality, ','), string_agg(DISTINCT sop_class_uid, ',') "
           f"FROM qr_instances{where} GROUP BY {group}"
           f"{' HAVING ' + having if having else ''} ORDER BY {group} LIMIT %s")
    out = []
    for r in conn.execute(sql, (*params, *having_params, query.limit + 1), prepare=False):
        n = len(cols)
        out.append(QrRecord(
            dict(zip(cols, (v or "" for v in r[:n]), strict=True)), studies=int(r[n]),
            series=int(r[n + 1]), instances=int(r[n + 2]),
            modalities=tuple(sorted(m for m in (r[n + 3] or "").split(",") if m)),
            sop_classes=tuple(sorted(s for s in (r[n + 4] or "").split(",") if s))))
    return out


def locate(conn: Conn, query: QrQuery) -> list[QrLocated]:
    """The instances a C-MOVE or C-GET names, with their files, in series and image order
    (at most ``query.limit + 1``)."""
    where, params, _, _ = _where(query.matches, prefix="q.")
    rows = conn.execute(
        "SELECT q.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.spool_path, "
        "q.study_instance_uid, q.patient_id "
        f"FROM qr_instances q JOIN instances i ON i.id = q.instance_id{where} "
        "ORDER BY q.study_instance_uid, q.series_instance_uid, "
        f"{_INSTANCE_ORDER.format(p='q.')}, q.sop_instance_uid LIMIT %s",
        (*params, query.limit + 1), prepare=False).fetchall()
    return [QrLocated(*r) for r in rows]


def count(conn: Conn) -> int:
    return int(scalar(conn, "SELECT COUNT(*) FROM qr_instances"))
