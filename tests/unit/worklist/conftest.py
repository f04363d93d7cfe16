"""Fixtures for the worklist unit tests: the shipped mapping, a fresh SQLite store, a service."""

from __future__ import annotations

import pytest

from engine.durable.sqlite import SqliteStore
from engine.worklist.mapping import WorklistMapping, load_mapping
from engine.worklist.service import WorklistService
from tests.unit.worklist.hl7_samples import MAPPING_FILE


@pytest.fixture(scope="session")
def mapping() -> WorklistMapping:
    return load_mapping(MAPPING_FILE)


@pytest.fixture
async def service(store: SqliteStore, mapping: WorklistMapping) -> WorklistService:
    return WorklistService(store, mapping, default_charset="ASCII")
