"""The worklist tables on both backends: migration, indexed queries (the planner's own
EXPLAIN on SQLite and on PostgreSQL), filtering."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from pydicom.dataset import Dataset

from engine.durable.postgresql import PostgresStore
from engine.durable.sqlite import MIGRATIONS, SqliteStore
from engine.records.worklist import ACTIVE_STATUSES, WorklistItem, WorklistStatus
from engine.records.worklist_criteria import Constraint
from engine.worklist.query import MwlQuery
from tests.helpers import pg


def ident(sps: dict[str, str] | None = None, **top: object) -> Dataset:
    ds = Dataset()
    for k, v in top.items():
        setattr(ds, k, v)
    if sps is not None:
        item = Dataset()
        for k, v in sps.items():
            setattr(item, k, v)
        ds.ScheduledProcedureStepSequence = [item]
    return ds


def items(n: int) -> list[WorklistItem]:
    out = []
    for i in range(n):
        modality = ("CT", "MR", "US", "DX")[i % 4]
        out.append(WorklistItem(
            patient_id=f"P{i:05d}", patient_name=f"NAME{i:05d}^GIVEN",
            accession_number=f"A{i:05d}", study_instance_uid=f"1.2.3.{i}", modality=modality,
            scheduled_station_ae_title=f"{modality}_1",
            scheduled_procedure_step_start_date=f"202611{20 + i % 10:02d}",
            scheduled_procedure_step_start_time="080000", placer_order_number=f"O{i}",
            filler_order_number=f"F{i}", created_at="2026-11-25T00:00:00",
            updated_at="2026-11-25T00:00:00"))
    return out


@pytest.fixture(params=["fresh", "analyzed"])
async def seeded(store: SqliteStore, request: pytest.FixtureRequest) -> SqliteStore:
    await store.add_worklist_items(items(400))
    if request.param == "analyzed":
        # The planner with statistics, as after a PRAGMA optimize on a long-lived database.
        await store._write(lambda c: c.execute("ANALYZE"))
    return store


async def test_migration_two_is_appended(store: SqliteStore) -> None:
    assert await store.schema_version() == len(MIGRATIONS) >= 2
    assert "CREATE TABLE instances" in MIGRATIONS[0]
    assert "CREATE TABLE hl7_messages" in MIGRATIONS[1]


async def plan(store: SqliteStore, constraints: list[Constraint]) -> str:
    return " | ".join(await store.explain_worklist(constraints, ACTIVE_STATUSES))


@pytest.mark.parametrize(("query", "index"), [
    (ident(PatientID="P00042"), "worklist_patient"),
    (ident(AccessionNumber="A00042"), "worklist_accession"),
    (ident(AccessionNumber="A0004*"), "worklist_accession"),
    (ident({"Modality": "CT", "ScheduledProcedureStepStartDate": "20261125"}),
     "worklist_modality_date"),
    (ident({"ScheduledStationAETitle": "CT_1"}), "worklist_station_date"),
    (ident({"ScheduledProcedureStepStartDate": "20261121-20261122"}), "worklist_date"),
    (ident(StudyInstanceUID=["1.2.3.7", "1.2.3.8"]), "worklist_study"),
    (ident(PatientName="NAME0004*"), "worklist_name"),
])
@pytest.mark.sqlite_only
async def test_queries_use_an_index(seeded: SqliteStore, query: Dataset, index: str) -> None:
    q = MwlQuery.parse(query, case_insensitive_pn=True)
    text = await plan(seeded, q.constraints)
    assert index in text, text
    assert "SCAN worklist_items" not in text, text


@pytest.mark.sqlite_only
async def test_name_query_searches_every_component_group(seeded: SqliteStore) -> None:
    q = MwlQuery.parse(ident(PatientName="name0004*"), case_insensitive_pn=True)
    text = await plan(seeded, q.constraints)
    # The OR over the three folded group columns runs as three index searches.
    for index in ("worklist_name ", "worklist_name_ideographic", "worklist_name_phonetic"):
        assert index in text + " ", text


@pytest.mark.parametrize(("query", "expected"), [
    (ident(PatientID="P00042"), ["P00042"]),
    (ident(AccessionNumber="A0004?"), [f"P0004{i}" for i in range(10)]),
    (ident(PatientName="name0001*"), [f"P0001{i}" for i in range(10)]),
    (ident({"Modality": "CT", "ScheduledProcedureStepStartDate": "20261120"}),
     [f"P{i:05d}" for i in range(0, 400, 20)]),
])
async def test_candidates_match(seeded: SqliteStore, query: Dataset,
                                expected: list[str]) -> None:
    q = MwlQuery.parse(query, case_insensitive_pn=True)
    found = await seeded.find_worklist(q.constraints, ACTIVE_STATUSES, 1000)
    assert sorted(s.item.patient_id for s in found if q.matches(s.item)) == expected


async def test_glob_special_characters_are_literal(store: SqliteStore) -> None:
    await store.add_worklist_items([
        WorklistItem(patient_id="A[1]", created_at="x", updated_at="x"),
        WorklistItem(patient_id="A1", created_at="x", updated_at="x")])
    q = MwlQuery.parse(ident(PatientID="A[1]*"))
    found = await store.find_worklist(q.constraints, ACTIVE_STATUSES, 10)
    assert [s.item.patient_id for s in found] == ["A[1]"]


async def test_like_special_characters_are_literal(store: SqliteStore) -> None:
    """PostgreSQL matches wildcards with LIKE: its own % and _ must not match anything."""
    await store.add_worklist_items([
        WorklistItem(patient_id=pid, created_at="x", updated_at="x")
        for pid in ("A%1", "A_1", "AB1", "a%1")])
    for pattern, expected in (("A%*", ["A%1"]), ("A_?", ["A_1"]), ("?%1", ["A%1", "a%1"])):
        q = MwlQuery.parse(ident(PatientID=pattern))
        found = await store.find_worklist(q.constraints, ACTIVE_STATUSES, 10)
        assert sorted(s.item.patient_id for s in found) == expected, pattern


async def test_final_items_are_not_candidates(store: SqliteStore) -> None:
    ids = await store.add_worklist_items(items(5))
    for item_id, status in zip(ids, WorklistStatus, strict=True):
        await store.update_worklist_item(item_id, lambda i, s=status: i.replace(status=s))
    found = await store.find_worklist([], ACTIVE_STATUSES, 10)
    assert sorted(s.item.status for s in found) == sorted(ACTIVE_STATUSES)
    assert await store.count_worklist([], list(WorklistStatus)) == 5


# --- PostgreSQL's planner ------------------------------------------------------------------
def spread_items(n: int) -> list[WorklistItem]:
    """A year of orders across many stations: PostgreSQL's planner weighs selectivity, so its
    plans are only meaningful on data shaped like a site's (SQLite's rules are not)."""
    modalities = ("CT", "MR", "US", "DX", "MG", "NM")
    out = []
    for i in range(n):
        modality = modalities[i % len(modalities)]
        day = dt.date(2026, 1, 1) + dt.timedelta(days=i % 365)
        out.append(WorklistItem(
            patient_id=f"P{i:06d}", patient_name=f"NAME{i:06d}^GIVEN",
            accession_number=f"A{i:06d}", study_instance_uid=f"1.2.3.{i}", modality=modality,
            scheduled_station_ae_title=f"{modality}_{i % 40}",
            scheduled_procedure_step_start_date=day.strftime("%Y%m%d"),
            scheduled_procedure_step_start_time="080000", placer_order_number=f"O{i}",
            filler_order_number=f"F{i}", created_at="2026-11-25T00:00:00",
            updated_at="2026-11-25T00:00:00"))
    return out


PG_PLANS: list[tuple[Dataset, set[str]]] = [
    (ident(PatientID="P000042"), {"worklist_patient"}),
    (ident(AccessionNumber="A000042"), {"worklist_accession"}),
    (ident(AccessionNumber="A00004*"), {"worklist_accession"}),
    (ident({"Modality": "CT", "ScheduledProcedureStepStartDate": "20261125"}),
     {"worklist_modality_date"}),
    (ident({"ScheduledStationAETitle": "CT_6"}), {"worklist_station_date"}),
    (ident({"ScheduledProcedureStepStartDate": "20261121-20261122"}), {"worklist_date"}),
    (ident(StudyInstanceUID=["1.2.3.7", "1.2.3.8"]), {"worklist_study"}),
    (ident(PatientName="NAME00004*"), {"worklist_name", "worklist_name_ideographic",
                                       "worklist_name_phonetic"}),
]


def test_queries_use_an_index_on_postgresql() -> None:
    """A plain test running its own loop: seeding 20,000 items and dropping them again keeps
    PostgreSQL busy for seconds, which the loop guard of coroutine tests would count against
    the loop."""
    if (why := pg.unavailable()) is not None:
        pytest.skip(why)

    async def run(schema: str) -> list[tuple[set[str], str]]:
        store = PostgresStore(pg.settings(schema), connect_attempts=1)
        await store.open()
        try:
            await store.add_worklist_items(spread_items(20_000))
            await store._write(lambda c: c.execute("ANALYZE worklist_items"))
            out = []
            for query, _ in PG_PLANS:
                q = MwlQuery.parse(query, case_insensitive_pn=True)
                out.append((set(), await plan(store, q.constraints)))
            return out
        finally:
            await store.close()

    with pg.schema() as schema:
        plans = asyncio.run(run(schema))
    for (_, text), (_, indexes) in zip(plans, PG_PLANS, strict=True):
        used = {word for word in text.replace("|", " ").split()
                if word.startswith("worklist_") and word != "worklist_items"}
        assert used == indexes, text
        assert "Seq Scan" not in text, text
