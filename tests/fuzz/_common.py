"""What every fuzz harness shares: atheris when it is installed, a plain replay when it is not.

A harness module defines ``one_input(data: bytes) -> None``, which must return normally for
every input: an exception it does not expect (anything but radflow's own refusals) is a crash.
Run one harness with atheris (coverage-guided, libFuzzer options after the script name)::

    python -m tests.fuzz.fuzz_hl7 -runs=100000 tests/fuzz/corpus/hl7

``instrumented()`` wraps the harness's imports of ``engine`` so atheris sees their coverage.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import structlog

try:
    import atheris
except ImportError:  # the replay of corpus and crash files needs no fuzzer
    atheris = None


@contextlib.contextmanager
def instrumented() -> Iterator[None]:
    """Instrument imports of radflow's own modules when running under atheris."""
    if atheris is not None and "--no-instrument" not in sys.argv and _fuzzing():
        with atheris.instrument_imports(include=["engine"]):
            yield
    else:
        yield


def _fuzzing() -> bool:
    main = sys.modules.get("__main__")
    return bool(main and getattr(main, "__file__", "") and
                "tests/fuzz/fuzz_" in str(getattr(main, "__file__", "")).replace("\\", "/"))


def fuzz(one_input: Callable[[bytes], Any]) -> None:
    """Hand ``one_input`` to atheris with the command line's libFuzzer options."""
    # The engine logs every refusal; millions of them would drown the fuzzer's own report.
    logging.disable(logging.CRITICAL)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    if atheris is None:
        raise SystemExit("atheris is not installed (pip install atheris)")
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
