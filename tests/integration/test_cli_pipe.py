"""Every ``radflow`` command that prints survives a reader that stops early (``| head``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.dicomgen import write_series
from tests.helpers.proc import REPO_ROOT


def piped_into_head(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m engine ARGV | head -n 3`` through a real shell pipe."""
    quoted = " ".join(f"'{a}'" for a in argv)
    return subprocess.run(
        ["sh", "-c", f"{sys.executable} -m engine {quoted} | head -n 3"],
        cwd=cwd, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)})


def test_rules_test_json_into_head_ends_without_a_traceback(tmp_path: Path) -> None:
    # Enough files that the JSON outgrows the pipe's buffer after head has gone.
    files = [str(i.path) for i in write_series(tmp_path / "in", 150)]
    result = piped_into_head(
        ["rules", "test", "--json", "--calling-ae", "CT_1", "--config",
         str(REPO_ROOT / "config" / "radflow.yaml"), *files], tmp_path)
    assert len(result.stdout.splitlines()) == 3
    assert "Traceback" not in result.stderr
    assert "BrokenPipeError" not in result.stderr


def test_text_output_into_head_ends_without_a_traceback(tmp_path: Path) -> None:
    files = [str(i.path) for i in write_series(tmp_path / "in", 150)]
    result = piped_into_head(
        ["rules", "test", "--calling-ae", "CT_1", "--config",
         str(REPO_ROOT / "config" / "radflow.yaml"), *files], tmp_path)
    assert len(result.stdout.splitlines()) == 3
    assert "Traceback" not in result.stderr
