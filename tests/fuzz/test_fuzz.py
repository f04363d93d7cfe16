"""The fuzz harnesses inside the suite: every seed and every input that once crashed replayed
through each harness (no fuzzer needed), and a short coverage-guided atheris run per harness,
bounded by a number of inputs.

Inputs that once crashed stay here as regressions, with what they taught:

* ``hl7``: an MSH-3 holding a lone 0x1C was committed, then its ACK (which echoes MSH-3) could
  not be framed: the connection dropped with a traceback and the sender never got an answer.
  Now such a message is an ``AR`` naming the byte and field.
* ``pdu``: a P-DATA-TF whose command fragment lacks Command Field makes pynetdicom's DIMSE layer
  raise inside radflow's reader; radflow's DUL loop answers with an A-ABORT and a log line
  (checked end to end in ``tests/reliability/test_bad_input.py``).
* ``pdu``: a header declaring 0xFFFFFFF0 bytes made the reader allocate that much before reading
  a byte of it (4 GB of RSS, the process stalled). Now it is an A-ABORT before the body
  (end to end in ``tests/integration/test_dimse_hardening.py``).
* ``hl7``: ESC bytes inside MSH with no ISO 2022 character set made the byte-level MSH reading
  (for MSH-18) and the field split the ACK copies disagree; the ACK then carried a garbage
  MSH-18 that a receiver could not parse. Now an ESC in MSH needs an ISO 2022 set and both
  readings must agree, else the message is an ``AR`` naming the byte (end to end in
  ``tests/reliability/test_bad_input.py``).
"""

from __future__ import annotations

import base64
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.seeds import SEEDS, write_corpus

HARNESSES = sorted(SEEDS)
REPO = Path(__file__).resolve().parents[2]
ESC_IN_MSH = base64.b64decode(
    "TVNIfF5+XCZ8UklTfEhPU1B8UkFERkxPV3xIT01TSHxeflwmfBsbGxsbGxt8SE9TUHxSQURGMjUxU1B8MjAyNjEx"
    "MjUxMjAwMDB8fE9STV5PMDFeT1JNX08wMXxNU0cwMDAxfFB8MjAwMDF8fE8xMjUxMTk5ODIuMC4xfHx8QUx8TkV8fA1Q"
    "SUR8MXx8UElEMV5eXkhPU1BeTVJ8fERPRV5KT0hOXFNcWHx8MTk3MDAxMDF8TQ1QVjE=")
#: inputs each harness once failed on (see the module docstring)
REGRESSIONS: dict[str, list[bytes]] = {
    "hl7": [b"MSH|^~\\&|R\x1cIS|HOSP|RADFLOW|HOSP|20261125120000||ORM^O01^ORM_O01|C1|P|2.5.1\r"
            b"PID|1||PID1^^^HOSP^MR||DOE^JOHN\r", ESC_IN_MSH],
    "pdu": [b"\x04\x01\x00\x00\x00\x06\x00\x00\x00\x02\x00S",
            b"\x04\x00\xff\xff\xff\xf0\x00\x00"],
}


def harness(name: str):  # type: ignore[no-untyped-def]
    return importlib.import_module(f"tests.fuzz.fuzz_{name}")


@pytest.mark.parametrize("name", HARNESSES)
def test_seeds_and_past_crashes_pass_the_harness(name: str, tmp_path: Path) -> None:
    one_input = harness(name).one_input
    for seed in write_corpus(name, tmp_path / name).iterdir():
        one_input(seed.read_bytes())
    for data in REGRESSIONS.get(name, []):
        one_input(data)


def test_esc_bytes_in_msh_without_iso_2022_are_refused_with_the_reason() -> None:
    from engine.hl7.message import Hl7Message, Hl7ParseError

    with pytest.raises(Hl7ParseError, match=r"ESC.*no ISO 2022"):
        Hl7Message.parse(ESC_IN_MSH)


def test_iso_2022_escapes_in_msh_still_parse_and_their_ack_too() -> None:
    from datetime import UTC, datetime

    from engine.hl7.ack import build_ack
    from engine.hl7.message import Hl7Message

    raw = ("MSH|^~\\&|\u5c71\u7530|HOSP|RADFLOW|HOSP|20261204010000||ORM^O01|C1|P|2.5.1|||||JP|"
           "~ISO IR87\rPID|1||P1||\u5c71\u7530^\u592a\u90ce\r").encode("iso2022_jp")
    msg = Hl7Message.parse(raw)
    assert msg.charset == "ISO IR87" and msg.msh.field(3) == "\u5c71\u7530"
    ack = Hl7Message.parse(build_ack(msg, "AA", sending_application="RADFLOW",
                                     sending_facility="HOSP",
                                     now=datetime(2026, 12, 4, tzinfo=UTC)))
    assert ack.msh.field(5) == "\u5c71\u7530" and ack.segment("MSA") is not None


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", HARNESSES)
def test_a_short_atheris_run_finds_no_crash(name: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    corpus = write_corpus(name, tmp_path / "corpus")
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "fuzz" / f"fuzz_{name}.py"), "-runs=20000",
         "-rss_limit_mb=2048", "-timeout=20", f"-artifact_prefix={tmp_path}/", str(corpus)],
        cwd=REPO, capture_output=True, text=True, errors="replace", timeout=280, check=False)
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "oom-",
                                                                               "timeout-")))
    assert result.returncode == 0 and not crashes, \
        f"fuzz_{name} failed: {crashes}\n{result.stderr[-4000:]}"
