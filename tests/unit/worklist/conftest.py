"""Fixtures for the worklist unit tests: the shipped mapping, a fresh SQLite store, a service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.durable.sqlite import SqliteStore
from engine.worklist.mapping import WorklistMapping, load_mapping
from engine.worklist.service import WorklistService
from tests.unit.worklist.hl7_samples import MAPPING_FILE


@pytest.fixture(scope="session")
def mapping() -> WorklistMapping:
    return load_mapping(MAPPING_FILE)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "radflow.db")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def service(store: SqliteStore, mapping: WorklistMapping) -> WorklistService:
    return WorklistService(store, mapping, default_charset="ASCII")
