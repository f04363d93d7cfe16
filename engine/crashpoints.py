"""Named crash points for the reliability suite: ``RADFLOW_CRASH_AT=<point>[:<n>]``.

This module owns fault injection and nothing else. Unset (every production start), the
:func:`crash_point` calls sprinkled on the acceptance and delivery path are a no-op function
call and nothing is patched. Set, the process ends with ``os._exit(CRASH_EXIT_CODE)`` (as abrupt
as ``kill -9``: no ``finally``, no flush, no clean-up) the ``n``-th time (default the first) it
passes the named point. The points, in pipeline order, are :data:`POINTS`.

Two more variables model what ``kill -9`` cannot show, for a machine with no dm-flakey or VM
reset: ``RADFLOW_CRASH_POWERLOSS=<dir>`` makes the crash also drop, under ``<dir>`` (the spool),
every file written since this start whose bytes or whose directory entry were not fsync'd (the
page cache a power cut loses); SQLite's own fsyncs (WAL, ``synchronous=FULL``) are trusted, not
simulated. ``RADFLOW_FSYNC_STUB=1`` turns ``os.fsync`` into a no-op, to prove that the suite
notices when durability is missing. Never set either outside tests.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Final

#: the named points, in the order an instance passes them
POINTS: Final = ("received", "written", "fsync", "commit", "response", "routed", "enqueued",
                 "sent", "peer_ack", "dequeued")
#: the exit code of an injected crash (what the test harness expects to see)
CRASH_EXIT_CODE: Final = 86


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, count = spec.partition(":")
    if name not in POINTS:
        raise SystemExit(f"RADFLOW_CRASH_AT: unknown crash point {name!r}; one of {POINTS}")
    return name, int(count) if count else 1


_TARGET = _parse(os.environ.get("RADFLOW_CRASH_AT"))
_POWERLOSS_DIR = os.environ.get("RADFLOW_CRASH_POWERLOSS") or None
_FSYNC_STUB = os.environ.get("RADFLOW_FSYNC_STUB") == "1"
_STARTED = time.time()
_lock = threading.Lock()
_hits = 0
#: inode -> wall time of its last real fsync (files and directories), for the power-loss model
_synced: dict[tuple[int, int], float] = {}
_real_fsync = os.fsync


def _tracking_fsync(fd: int) -> None:
    # Installed only when a power-loss or stubbed-fsync test asked for it.
    if not _FSYNC_STUB:
        _real_fsync(fd)
    else:
        return
    st = os.fstat(fd)
    with _lock:
        _synced[(st.st_dev, st.st_ino)] = time.time()


if _POWERLOSS_DIR or _FSYNC_STUB:
    # Patched on the module, so every ``os.fsync(fd)`` call site (spool, journal) goes through it.
    setattr(os, "fsync", _tracking_fsync)  # noqa: B010


def _lose_unsynced(root: Path) -> None:
    """Delete what a power cut would lose: files written since start whose bytes, or whose
    directory entry, were not fsync'd after their last write."""
    for path in root.rglob("*"):
        try:
            st = path.stat()
            if not path.is_file() or st.st_mtime < _STARTED:
                continue
            parent = path.parent.stat()
        except OSError:
            continue
        file_synced = _synced.get((st.st_dev, st.st_ino), -1.0) >= st.st_mtime
        entry_synced = _synced.get((parent.st_dev, parent.st_ino), -1.0) >= st.st_mtime
        if not (file_synced and entry_synced):
            path.unlink(missing_ok=True)


def crash_point(name: str) -> None:
    """End the process here if the test asked for a crash at ``name`` (see module doc)."""
    if _TARGET is None or _TARGET[0] != name:
        return
    global _hits
    with _lock:
        _hits += 1
        if _hits != _TARGET[1]:
            return
        if _POWERLOSS_DIR:
            _lose_unsynced(Path(_POWERLOSS_DIR))
        sys.stderr.write(f"radflow: injected crash at {name} (hit {_hits})\n")
        sys.stderr.flush()
        os._exit(CRASH_EXIT_CODE)
