"""Lines logged inside ``about(...)`` carry its keys, a library's stdlib lines too (pydicom's
warning about undecodable text names the instance); lines outside it do not."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator

import pytest
import structlog

from engine.observability.logging import about, configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    chain = structlog.get_config()
    yield
    root.handlers[:], level = saved
    root.setLevel(level)
    structlog.configure(**chain)


def _read(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]


def test_a_library_line_inside_the_block_names_the_instance(
        restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")  # here: its handler writes to this test's capture
    library = logging.getLogger("pydicom")
    with about(sop_instance_uid="1.2.3", calling_ae="CT_1", peer_host=""):
        library.warning("Failed to decode byte string")
    library.warning("outside")
    inside, outside = _read(capsys)
    assert (inside["sop_instance_uid"], inside["calling_ae"]) == ("1.2.3", "CT_1")
    assert "peer_host" not in inside  # empty values are left out
    assert "sop_instance_uid" not in outside


def test_another_thread_does_not_see_the_keys(
        restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")  # here: its handler writes to this test's capture
    library = logging.getLogger("pydicom")
    with about(sop_instance_uid="1.2.3"):
        worker = threading.Thread(target=lambda: library.warning("elsewhere"))
        worker.start()
        worker.join()
    (line,) = _read(capsys)
    assert "sop_instance_uid" not in line
