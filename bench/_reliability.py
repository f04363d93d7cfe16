"""What every pass/fail reliability bench shares: resource samples, criteria, the verdict.

The reliability benches (``soak.py``, ``reliability_*.py``, ``load_*.py``) each judge one case of
the reliability list against its criteria. This module owns the parts that must read the same
in all of them:

* :func:`proc_figures` and :class:`ResourceSampler`: a process's RSS and open file descriptors
  read from ``/proc``, sampled in a thread; the highest value, the first and last, and the RSS
  growth per hour as the slope of a least-squares line (so one early spike does not read as
  growth);
* :func:`percentile`: nearest-rank percentiles of latency samples;
* :class:`Verdict`: the figures and one line per criterion (``PASS``/``FAIL`` with the measured
  value beside the bound), printed the same way, ``verdict: PASS`` or ``FAIL`` last, exit code
  0 or 1, and the whole thing as JSON with ``--report FILE``.

It judges nothing by itself and starts no process; each bench names its own criteria.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def proc_figures(pid: int) -> tuple[float, int]:
    """(RSS in MiB, open file descriptors) of a process, from /proc; zeros once it is gone."""
    rss = 0.0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = 0
    return rss, fds


def percentile(values: Sequence[float], pct: float) -> float:
    """The nearest-rank ``pct`` percentile of ``values`` (0.0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def slope_per_hour(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, in value units per hour."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 3600.0


@dataclass
class ResourceSampler:
    """Samples one process's RSS and fds every ``interval`` seconds in a daemon thread.

    ``pid`` may change (a restarted process): call :meth:`follow`. Samples of 0 (the process
    is gone or between runs) are skipped."""

    pid: int
    interval: float = 1.0
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # (t, rss MiB, fds)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = field(default_factory=time.monotonic)

    def start(self) -> ResourceSampler:
        self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)
        self._thread.start()
        return self

    def follow(self, pid: int) -> None:
        self.pid = pid

    def sample(self) -> tuple[float, int]:
        rss, fds = proc_figures(self.pid)
        if rss > 0:
            self.samples.append((time.monotonic() - self._t0, rss, fds))
        return rss, fds

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval * 3)
        self.sample()

    def since(self, seconds: float) -> list[tuple[float, float, int]]:
        """Samples taken ``seconds`` or later after the sampler started (e.g. after warm-up)."""
        return [s for s in self.samples if s[0] >= seconds]

    @property
    def max_rss(self) -> float:
        return max((s[1] for s in self.samples), default=0.0)

    @property
    def max_fds(self) -> int:
        return max((s[2] for s in self.samples), default=0)

    def rss_growth_pct_per_hour(self, after: float = 0.0) -> float:
        """RSS slope after ``after`` seconds (warm-up), in % of the first such sample per hour."""
        points = self.since(after)
        if len(points) < 2 or points[0][1] <= 0:
            return 0.0
        return slope_per_hour([(t, rss) for t, rss, _ in points]) / points[0][1] * 100

    def rss_growth_verdict(self, bound_pct_per_hour: float, after: float = 0.0,
                           until: float | None = None) -> tuple[bool, str]:
        """Judge "RSS grows less than ``bound`` % per hour" on the samples between ``after`` and
        ``until`` seconds. With the slope's standard error small enough (two of them under the
        bound) the slope decides. A run too short for that (minutes of noisy samples cannot
        resolve a few % per hour) is judged by its plateau instead, and says so: the median RSS
        of its last third may exceed the middle third's by at most the bound's share of the
        time between them."""
        points = [(t, rss) for t, rss, _ in self.since(after) if until is None or t <= until]
        if len(points) < 6 or points[0][1] <= 0:
            return False, "too few samples"
        base = points[0][1]
        slope = slope_per_hour(points) / base * 100
        n = len(points)
        mean_t = sum(t for t, _ in points) / n
        mean_v = sum(v for _, v in points) / n
        var_t = sum((t - mean_t) ** 2 for t, _ in points)
        residual = [v - (mean_v + (slope / 100 * base / 3600) * (t - mean_t)) for t, v in points]
        sd = math.sqrt(sum(r * r for r in residual) / max(1, n - 2))
        se = sd / math.sqrt(var_t) * 3600 / base * 100 if var_t > 0 else float("inf")
        if 2 * se < bound_pct_per_hour:
            return slope < bound_pct_per_hour, f"{slope:+.1f} %/h (± {se:.1f}, slope)"
        third = n // 3
        middle = sorted(v for _, v in points[third:2 * third])[third // 2]
        last = sorted(v for _, v in points[2 * third:])[(n - 2 * third) // 2]
        hours = (points[-1][0] - points[third][0]) / 2 / 3600
        allowed = bound_pct_per_hour * max(hours, 1 / 60)
        change = (last - middle) / middle * 100
        return change <= allowed, (
            f"slope {slope:+.0f} %/h ± {se:.0f}: too short a run to resolve "
            f"{bound_pct_per_hour:g} %/h; plateau: last third median {last:.0f} MiB, middle "
            f"third {middle:.0f} MiB ({change:+.1f} %, allowed {allowed:.2f} %)")

    def fds_span(self, after: float = 0.0) -> tuple[int, int, int]:
        """(first, lowest, highest) fd count after ``after`` seconds."""
        points = self.since(after)
        if not points:
            return 0, 0, 0
        fds = [f for _, _, f in points]
        return fds[0], min(fds), max(fds)

    def figures(self, after: float = 0.0) -> dict[str, Any]:
        points = self.since(after)
        first_fds, low_fds, high_fds = self.fds_span(after)
        return {
            "rss_first_mb": round(points[0][1], 1) if points else 0.0,
            "rss_last_mb": round(points[-1][1], 1) if points else 0.0,
            "rss_max_mb": round(self.max_rss, 1),
            "rss_growth_pct_per_hour": round(self.rss_growth_pct_per_hour(after), 2),
            "fds_first": first_fds, "fds_min": low_fds, "fds_max": high_fds,
            "samples": len(self.samples),
        }


@dataclass
class Criterion:
    name: str
    ok: bool
    measured: str
    bound: str


@dataclass
class Verdict:
    """A bench's figures and criteria; :meth:`finish` prints them and returns the exit code."""

    case: str
    figures: dict[str, Any] = field(default_factory=dict)
    criteria: list[Criterion] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def figure(self, name: str, value: Any) -> None:
        self.figures[name] = value

    def require(self, name: str, ok: bool, measured: object, bound: str) -> bool:
        """One criterion of the case: ``measured`` beside its ``bound``."""
        self.criteria.append(Criterion(name, bool(ok), str(measured), bound))
        return bool(ok)

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.criteria)

    def finish(self, report: Path | None = None, extra: dict[str, Any] | None = None) -> int:
        print(f"--- {self.case}", flush=True)
        for key, value in self.figures.items():
            print(f"{key:>30}: {value}")
        for c in self.criteria:
            print(f"{'PASS' if c.ok else 'FAIL'}  {c.name}: {c.measured} (asked: {c.bound})")
        for text in self.notes:
            print(text)
        print(f"verdict: {'PASS' if self.ok else 'FAIL'}", flush=True)
        if report is not None:
            report.write_text(json.dumps({
                "case": self.case, "verdict": "PASS" if self.ok else "FAIL",
                "figures": self.figures,
                "criteria": [c.__dict__ for c in self.criteria],
                "notes": self.notes, **(extra or {}),
            }, indent=1, default=str))
        return 0 if self.ok else 1
