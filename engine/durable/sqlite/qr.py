"""SQLite SQL of the Query/Retrieve index: writing index rows and answering C-FIND, C-MOVE and
C-GET lookups from them.

``qr_instances`` holds one row per current SOP Instance, pointing at its journal row; deleting
the journal row (retention, a withdrawn write) deletes the index row with it (``ON DELETE
CASCADE``), so a query never names a file radflow no longer keeps. Study, series and patient
answers are aggregates of those rows. ``qr_index_state`` remembers the last journal row indexed,
written in the same transaction as the rows. Every function takes the writer's (or reader's)
connection; this module must not read files nor parse DICOM.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from engine.durable.qr import COLUMNS, QrIndexRow, QrLocated, QrMatch, QrQuery, QrRecord
from engine.durable.sqlite._common import marks, transaction

_LEVEL_COLUMNS: dict[str, tuple[str, ...]] = {
    "PATIENT": COLUMNS[:4],
    "STUDY": COLUMNS[:11],
    "SERIES": COLUMNS[:15],
    "IMAGE": COLUMNS,
}
_GROUP_BY = {"PATIENT": "patient_id", "STUDY": "study_instance_uid",
             "SERIES": "series_instance_uid"}


def watermark(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT last_instance_id FROM qr_index_state WHERE id = 1").fetchone()
    return int(row[0]) if row else 0


def index(conn: sqlite3.Connection, rows: Sequence[QrIndexRow], last_instance_id: int) -> int:
    """Insert (or replace: a newer version of a SOP Instance) ``rows`` and move the watermark;
    a row whose journal entry is gone meanwhile is skipped. Not fsync'd: the index is rebuilt
    from the journal after a power cut (the watermark goes back with the rows)."""
    cols = ", ".join(COLUMNS)
    sql = (f"INSERT OR REPLACE INTO qr_instances (instance_id, {cols}) "
           f"SELECT ?, {marks(len(COLUMNS))} WHERE EXISTS (SELECT 1 FROM instances WHERE id = ?)")
    written = 0
    with transaction(conn, durable=False):
        for row in rows:
            written += conn.execute(sql, (row.instance_id, *row.values, row.instance_id)).rowcount
        conn.execute("INSERT INTO qr_index_state (id, last_instance_id) VALUES (1, ?) "
                     "ON CONFLICT (id) DO UPDATE SET last_instance_id = "
                     "MAX(last_instance_id, excluded.last_instance_id)", (last_instance_id,))
    return written


def _like(pattern: str) -> str:
    out = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return out.replace("*", "%").replace("?", "_")


def _where(matches: Sequence[QrMatch]) -> tuple[str, list[Any], str, list[Any]]:
    """WHERE clause (and HAVING, for ModalitiesInStudy) with their parameters."""
    where: list[str] = []
    params: list[Any] = []
    having = ""
    having_params: list[Any] = []
    for m in matches:
        col = m.column
        if m.kind == "equals":
            where.append(f"{col} = ? COLLATE NOCASE" if m.fold else f"{col} = ?")
            params.append(m.values[0])
        elif m.kind == "wildcard":
            # LIKE folds ASCII case in SQLite; GLOB keeps it, as PS3.4 asks for non-PN values
            if m.fold:
                where.append(f"{col} LIKE ? ESCAPE '\\'")
                params.append(_like(m.values[0]))
            else:
                where.append(f"{col} GLOB ?")
                params.append(m.values[0].replace("[", "[[]"))
        elif m.kind == "range":
            low, high = m.values
            if low:
                where.append(f"{col} >= ?")
                params.append(low)
            if high:
                where.append(f"{col} <= ?")
                params.append(high)
            where.append(f"{col} <> ''")
        elif m.kind == "any":
            where.append(f"{col} IN ({marks(len(m.values))})")
            params.extend(m.values)
        elif m.kind == "modalities":
            having = f"SUM(modality IN ({marks(len(m.values))})) > 0"
            having_params.extend(m.values)
    return (" WHERE " + " AND ".join(where) if where else ""), params, having, having_params


def find(conn: sqlite3.Connection, query: QrQuery) -> list[QrRecord]:
    """At most ``query.limit + 1`` answers (one more tells the caller there are too many)."""
    where, params, having, having_params = _where(query.matches)
    cols = _LEVEL_COLUMNS[query.level]
    if query.level == "IMAGE":
        rows = conn.execute(
            f"SELECT {', '.join(cols)} FROM qr_instances{where} "
            "ORDER BY series_instance_uid, CAST(instance_number AS INTEGER), sop_instance_uid "
            "LIMIT ?", (*params, query.limit + 1)).fetchall()
        return [QrRecord(dict(zip(cols, r, strict=True))) for r in rows]
    group = _GROUP_BY[query.level]
    picked = ", ".join(f"MAX({c})" for c in cols)
    sql = (f"SELECT {picked}, COUNT(DISTINCT study_instance_uid), "
           "COUNT(DISTINCT series_instance_uid), COUNT(*), GROUP_CONCAT(DISTINCT modality), "
           f"GROUP_CONCAT(DISTINCT sop_class_uid) FROM qr_instances{where} GROUP BY {group}"
           f"{' HAVING ' + having if having else ''} ORDER BY {group} LIMIT ?")
    out = []
    for r in conn.execute(sql, (*params, *having_params, query.limit + 1)):
        n = len(cols)
        out.append(QrRecord(
            dict(zip(cols, (v or "" for v in r[:n]), strict=True)), studies=int(r[n]),
            series=int(r[n + 1]), instances=int(r[n + 2]),
            modalities=tuple(sorted(m for m in (r[n + 3] or "").split(",") if m)),
            sop_classes=tuple(sorted(s for s in (r[n + 4] or "").split(",") if s))))
    return out


def locate(conn: sqlite3.Connection, query: QrQuery) -> list[QrLocated]:
    """The instances a C-MOVE or C-GET names, with their files, in series and image order
    (at most ``query.limit + 1``)."""
    where, params, _, _ = _where(query.matches)
    where = where.replace(" WHERE ", " WHERE q.", 1).replace(" AND ", " AND q.")
    rows = conn.execute(
        "SELECT q.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.spool_path, "
        "q.study_instance_uid, q.patient_id "
        f"FROM qr_instances q JOIN instances i ON i.id = q.instance_id{where} "
        "ORDER BY q.study_instance_uid, q.series_instance_uid, "
        "CAST(q.instance_number AS INTEGER), q.sop_instance_uid LIMIT ?",
        (*params, query.limit + 1)).fetchall()
    return [QrLocated(*r) for r in rows]


def count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM qr_instances").fetchone()[0])
