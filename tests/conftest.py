"""Shared fixtures: ``radflow`` (a factory of real radflow processes), ``store`` (an open
store, once on SQLite and once on PostgreSQL) and DCMTK availability.

``radflow(overrides)`` writes a config under the test's ``tmp_path`` (data, spool and database
there too, DICOM and HTTP on free loopback ports), starts ``python -m engine run`` and waits for
``/readyz``; every process a test started is killed at teardown if the test left it running.
Tests that use DCMTK's tools are skipped when they are not installed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

# ``tests.helpers`` is imported from the repository root, also when pytest is not started with
# ``python -m pytest`` from there.
_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from engine.durable.postgresql import PostgresStore  # noqa: E402
from engine.durable.sqlite import SqliteStore  # noqa: E402
from tests.helpers import pg  # noqa: E402
from tests.helpers.proc import RadflowFactory, RadflowProcess, dcmtk_tool  # noqa: E402

__all__ = ["RadflowFactory"]


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """An open store, once per backend: SQLite (``radflow.db`` in the test's folder) and
    PostgreSQL (a fresh schema on the shared server, dropped after). Closed at teardown.
    A test marked ``sqlite_only`` (it looks at SQLite's own plans or file) runs on SQLite."""
    if request.param == "sqlite":
        if request.node.get_closest_marker("postgresql_only"):
            pytest.skip("looks at PostgreSQL itself")
        s: Any = SqliteStore(tmp_path / "radflow.db")
        await s.open()
        yield s
        await s.close()
        return
    if request.node.get_closest_marker("sqlite_only"):
        pytest.skip("looks at SQLite itself")
    if (why := await asyncio.to_thread(pg.unavailable)) is not None:
        pytest.skip(why)
    name = pg.new_schema_name()
    s = PostgresStore(pg.settings(name), connect_attempts=1)
    try:
        await s.open()
        yield s
    finally:
        await s.close()
        await asyncio.to_thread(pg.drop_schema, name)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_overrides(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """``storage`` overrides for a radflow process, once per backend (PostgreSQL: a fresh
    schema on the shared server, dropped after the test)."""
    if request.param == "sqlite":
        yield {}
        return
    if (why := pg.unavailable()) is not None:
        pytest.skip(why)
    name = pg.new_schema_name()
    try:
        yield pg.radflow_storage(name)
    finally:
        pg.drop_schema(name)


@pytest.fixture
def radflow(tmp_path: Path) -> Iterator[RadflowFactory]:
    """Factory: ``radflow(overrides=None, *, start=True, wait_ready=True) -> RadflowProcess``."""
    started: list[RadflowProcess] = []

    def make(overrides: Mapping[str, Any] | None = None, *, start: bool = True,
             wait_ready: bool = True) -> RadflowProcess:
        rf = RadflowProcess(tmp_path / f"radflow{len(started)}", overrides)
        started.append(rf)
        if start:
            rf.start(wait_ready=wait_ready)
        return rf

    yield make
    for rf in started:
        rf.close()


@pytest.fixture
def dicom_dir(tmp_path: Path) -> Path:
    """An empty directory for a test's generated DICOM files."""
    path = tmp_path / "dicom"
    path.mkdir()
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if dcmtk_tool("storescu") and dcmtk_tool("echoscu"):
        return
    skip = pytest.mark.skip(reason="DCMTK (storescu, echoscu) is not installed")
    for item in items:
        if "dcmtk" in item.keywords:
            item.add_marker(skip)
