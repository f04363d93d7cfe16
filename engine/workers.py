"""What one worker process knows about its place among the workers of its machine.

Owns :class:`WorkerContext` (this process's index, the worker count, whether it runs the
start-up recovery) read from the environment the supervisor sets, and the small status files
through which each worker reports its readiness to the one serving ``/readyz``. It must not
start processes (that is :mod:`engine.supervisor`) or hold engine logic.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_INDEX = "RADFLOW_WORKER_INDEX"
ENV_COUNT = "RADFLOW_WORKER_COUNT"
ENV_RUNTIME = "RADFLOW_WORKER_RUNTIME"
ENV_RECOVER = "RADFLOW_WORKER_RECOVER"

#: a worker whose status is older than this is reported as not answering
STALE_SECONDS = 15.0
#: how often a worker rewrites its status
STATUS_INTERVAL = 2.0


@dataclass(frozen=True)
class WorkerContext:
    """One process's place: ``index`` of ``count``; ``recover``: it runs the start-up recovery
    (spool orphan sweep, not-durable rows, the node's outbox leases). Only the first worker of
    a fresh start does: a restarted worker would otherwise remove files and release leases its
    running siblings hold."""

    index: int = 0
    count: int = 1
    runtime_dir: Path | None = None
    recover: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerContext:
        env = os.environ if environ is None else environ
        if ENV_INDEX not in env:
            return cls()
        runtime = env.get(ENV_RUNTIME)
        return cls(index=int(env[ENV_INDEX]), count=int(env.get(ENV_COUNT, "1")),
                   runtime_dir=Path(runtime) if runtime else None,
                   recover=env.get(ENV_RECOVER, "0") == "1")

    @property
    def shared(self) -> bool:
        """Several workers share this machine's listening ports."""
        return self.count > 1

    @property
    def serves_admin(self) -> bool:
        """The admin HTTP server (one port, one process) runs in the first worker."""
        return self.index == 0

    def lease_prefix(self, node_id: str) -> str:
        """The prefix of this process's outbox lease owners."""
        return f"{node_id}/w{self.index}/" if self.shared else f"{node_id}/"

    def release_prefix(self, node_id: str) -> str:
        """Whose leases this process gives back at start: the whole node's after a fresh
        start, only its own earlier run's after a restart (the siblings' are live)."""
        return f"{node_id}/" if self.recover else self.lease_prefix(node_id)

    def status_path(self, index: int | None = None) -> Path | None:
        if self.runtime_dir is None:
            return None
        return self.runtime_dir / f"worker-{self.index if index is None else index}.json"


def write_status(path: Path, *, index: int, node_id: str, ready: bool, detail: str,
                 ruleset: str) -> None:
    """Replace this worker's status file (written aside and renamed: a reader never sees half
    of one)."""
    body = {"index": index, "pid": os.getpid(), "node": node_id, "ready": ready,
            "detail": detail, "ruleset": ruleset, "at": time.time()}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body), encoding="utf-8")
    tmp.replace(path)


def read_status(path: Path, now: float | None = None) -> tuple[bool, str]:
    """A worker's readiness as ``/readyz`` shows it."""
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False, "not started (or restarting)"
    except (OSError, ValueError) as exc:
        return False, f"status unreadable: {exc}"
    age = (time.time() if now is None else now) - float(body.get("at", 0.0))
    pid = body.get("pid")
    if age > STALE_SECONDS:
        return False, f"pid {pid}: no report for {age:.0f} s (hung or dead)"
    state = "ready" if body.get("ready") else "not ready"
    return bool(body.get("ready")), (f"pid {pid} {state}: {body.get('detail', '')}; "
                                     f"ruleset {body.get('ruleset', '?')}")
