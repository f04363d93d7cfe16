"""Fixtures of the morph tests."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from tests.unit.morph.support import sample


@pytest.fixture
def ds() -> Dataset:
    return sample()
