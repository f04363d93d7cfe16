"""The supervisor of ``radflow run`` with several workers on one machine.

Owns the worker processes: starts the first one alone (it runs the start-up recovery before
anyone else writes), then the others; restarts a worker that dies (with a growing pause when
one keeps dying at once); passes SIGHUP (reload) on to every worker and turns SIGTERM/SIGINT
into a drain of all of them, killing only those still running after the grace period. It
prepares the metrics folder (``PROMETHEUS_MULTIPROC_DIR``, emptied at start; a dead worker's
live gauges removed) and the status folder the workers report readiness through. It must not
open listeners, stores or the admin server itself: a crash of the process that holds every
worker must stay unlikely, so it holds nothing else. Each worker binds its own listening
sockets with SO_REUSEPORT, so the supervisor never touches a connection.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import structlog

from engine.workers import ENV_COUNT, ENV_INDEX, ENV_RECOVER, ENV_RUNTIME

log = structlog.get_logger("engine.supervisor")

#: how long the first worker may take to finish recovery and open its listeners
FIRST_START_SECONDS = 600.0
#: a worker that lived shorter than this before dying restarts after a growing pause
STABLE_SECONDS = 10.0
MAX_PAUSE = 30.0


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restart_at: float | None = None
    pause: float = 1.0
    restarts: int = 0


@dataclass
class Supervisor:
    """N worker processes of ``radflow run --config PATH``."""

    config_path: Path
    count: int
    grace: float
    runtime_dir: Path | None = None
    #: the command a worker runs (the CLI's own ``run`` by default)
    command: list[str] = field(default_factory=list)
    _workers: list[_Worker] = field(default_factory=list)
    _stopping: bool = False
    _reload: bool = False
    _owned_runtime: bool = False

    def __post_init__(self) -> None:
        if not self.command:
            self.command = [sys.executable, "-m", "engine", "run",
                            "--config", str(self.config_path)]

    # --- folders --------------------------------------------------------------------------
    def _prepare(self) -> tuple[Path, Path]:
        owned = self.runtime_dir is None
        runtime = self.runtime_dir or Path(tempfile.mkdtemp(prefix="radflow-workers-"))
        self.runtime_dir = runtime
        self._owned_runtime = owned
        status = runtime / "status"
        given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        metrics = Path(given) if given else runtime / "metrics"
        # Emptied at every start: files of an earlier run's processes would be added to this
        # run's totals (and dead workers' gauges would linger).
        for folder in (status, metrics):
            if folder.exists():
                for child in folder.iterdir():
                    if child.is_dir():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
            folder.mkdir(parents=True, exist_ok=True)
        return status, metrics

    # --- processes ------------------------------------------------------------------------
    def _spawn(self, worker: _Worker, status: Path, metrics: Path, recover: bool) -> None:
        env = dict(os.environ)
        env.update({ENV_INDEX: str(worker.index), ENV_COUNT: str(self.count),
                    ENV_RUNTIME: str(status), ENV_RECOVER: "1" if recover else "0",
                    "PROMETHEUS_MULTIPROC_DIR": str(metrics)})
        (status / f"worker-{worker.index}.json").unlink(missing_ok=True)
        worker.proc = subprocess.Popen(self.command, env=env, preexec_fn=_die_with_parent)
        worker.started = time.monotonic()
        worker.restart_at = None
        log.info("supervisor.worker.started", worker=worker.index, pid=worker.proc.pid,
                 recover=recover, restarts=worker.restarts)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stopping = True

    def _forward(self, signum: int) -> None:
        for worker in self._workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.send_signal(signum)

    def _buried(self, worker: _Worker, metrics: Path) -> None:
        """A worker exited without being asked to: its live gauges go, a restart is due."""
        assert worker.proc is not None
        pid, code = worker.proc.pid, worker.proc.returncode
        _mark_dead(pid, metrics)
        lived = time.monotonic() - worker.started
        worker.pause = 1.0 if lived >= STABLE_SECONDS else min(MAX_PAUSE, worker.pause * 2)
        worker.restart_at = time.monotonic() + worker.pause
        worker.proc = None
        log.error("supervisor.worker.died", worker=worker.index, pid=pid, exit_code=code,
                  lived_seconds=round(lived, 1), restart_in_seconds=worker.pause)

    def _wait_first(self, worker: _Worker, status: Path) -> bool:
        """Wait until the first worker reports (recovery done, listeners open)."""
        assert worker.proc is not None
        deadline = time.monotonic() + FIRST_START_SECONDS
        path = status / f"worker-{worker.index}.json"
        while time.monotonic() < deadline and not self._stopping:
            if worker.proc.poll() is not None:
                return False
            if path.exists():
                return True
            time.sleep(0.1)
        return not self._stopping

    def run(self) -> int:
        """Run the workers until SIGTERM/SIGINT; the exit code of ``radflow run``."""
        status, metrics = self._prepare()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        log.info("supervisor.starting", workers=self.count, status_dir=str(status),
                 metrics_dir=str(metrics))
        self._workers = [_Worker(i) for i in range(self.count)]
        try:
            first = self._workers[0]
            self._spawn(first, status, metrics, recover=True)
            if not self._wait_first(first, status):
                code = first.proc.wait() if first.proc is not None else 1
                if not self._stopping:
                    log.error("supervisor.first_worker_failed", exit_code=code)
                    return code or 1
            for worker in self._workers[1:]:
                if not self._stopping:
                    self._spawn(worker, status, metrics, recover=False)
            while not self._stopping:
                if self._reload:
                    self._reload = False
                    log.info("supervisor.reload_forwarded", workers=self.count)
                    self._forward(signal.SIGHUP)
                now = time.monotonic()
                for worker in self._workers:
                    if worker.proc is not None and worker.proc.poll() is not None:
                        self._buried(worker, metrics)
                    elif worker.proc is None and worker.restart_at is not None \
                            and now >= worker.restart_at:
                        worker.restarts += 1
                        self._spawn(worker, status, metrics, recover=False)
                time.sleep(0.1)
            return self._drain()
        finally:
            for worker in self._workers:
                if worker.proc is not None and worker.proc.poll() is None:
                    worker.proc.kill()
                    worker.proc.wait()
            if self._owned_runtime:
                shutil.rmtree(status.parent, ignore_errors=True)

    def _drain(self) -> int:
        log.info("supervisor.stopping", grace_seconds=self.grace)
        self._forward(signal.SIGTERM)
        # Each worker drains within ``grace`` and then stops its stores; a little more time
        # for that before anything is killed.
        deadline = time.monotonic() + self.grace + 15.0
        worst = 0
        for worker in self._workers:
            if worker.proc is None:
                continue
            try:
                code = worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("supervisor.worker.killed", worker=worker.index, pid=worker.proc.pid,
                          reason="still running after the shutdown grace")
                worker.proc.kill()
                code = worker.proc.wait()
            worst = worst or code
        log.info("supervisor.stopped")
        return 1 if worst else 0


def _die_with_parent() -> None:
    """In the new worker, before it runs: SIGTERM (a drain) when the supervisor dies, so no
    worker is left serving the ports unsupervised (Linux; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


def _mark_dead(pid: int, metrics: Path) -> None:
    # Imported here: prometheus_client picks its value class when first imported, and the
    # supervisor keeps no metrics of its own.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(metrics))  # type: ignore[no-untyped-call]
