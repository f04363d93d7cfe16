"""F12 / L4 (bounded): radflow starts on a deep outbox and drains it, each row sent once.

``python bench/reliability_backlog.py --count 500000`` writes ``--count`` pending outbox rows
(the router's payload layout, ``--files`` distinct spooled instances cycled) into a fresh
radflow database, then starts radflow with its destination (DCMTK ``storescp``) up. Printed:
the time from process start to ``/readyz`` 200 and RSS then, the time for
``/api/v1/queues`` and ``/metrics`` to answer on the full queue, the drain rate, peak RSS while
draining, and how many rows needed more than one attempt (a row dispatched twice by a recovery
race would show here; with the destination up from the start every row should take one).
RELIABILITY.md asks for 500k rows, start-up within 60 s and RSS under 500 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.soak import _clean_up_on_exit, proc_figures
from engine.durable.sqlite import SqliteStore
from engine.durable.store import NewOutboxRow
from tests.helpers.outbox import dicom_payload, spool_series
from tests.helpers.peers import Storescp
from tests.helpers.proc import HOST, RadflowProcess


async def fill(db: Path, spool: Path, count: int, files: int) -> None:
    store = SqliteStore(db)
    await store.open()
    try:
        instances = spool_series(spool, files)
        payloads = [dicom_payload(i, spool) for i in instances]
        for start in range(0, count, 5000):
            rows = [NewOutboxRow("pacs", "dicom", payloads[n % files], route="bench")
                    for n in range(start, min(count, start + 5000))]
            await store.enqueue_outbox(rows, time.time())
    finally:
        await store.close()


def outbox_counts(db: Path) -> tuple[int, int, int]:
    """(rows not done, rows done, done rows that took more than one attempt)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        left = conn.execute("SELECT count(*) FROM outbox WHERE state != 'done'").fetchone()[0]
        done = conn.execute("SELECT count(*) FROM outbox WHERE state = 'done'").fetchone()[0]
        again = conn.execute(
            "SELECT count(*) FROM outbox WHERE state = 'done' AND attempts > 1").fetchone()[0]
        return int(left), int(done), int(again)
    finally:
        conn.close()


def timed_get(rf: RadflowProcess, path: str) -> tuple[int, float]:
    started = time.perf_counter()
    status, _ = rf.http_get(path, timeout=60)
    return status, time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=20000, help="rows queued before the start")
    ap.add_argument("--files", type=int, default=100, help="distinct spooled instances")
    ap.add_argument("--drain-timeout", type=float, default=1800.0)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="radflow-backlog-"))
    pacs = Storescp(work / "pacs", ae_title="PACS").start()
    rf = RadflowProcess(work / "radflow", {
        "destinations": {"pacs": {"type": "dimse", "host": HOST, "ae_title": "PACS",
                                  "port": pacs.port, "idle_close": 2}},
        "delivery": {"done_retention_hours": 24},
        # The rows are written straight into the outbox, with no journal rows: keep their
        # files from being taken for crash leftovers at start.
        "storage": {"orphan_window_hours": 0},
    })
    _clean_up_on_exit(rf, pacs)
    filled = time.perf_counter()
    asyncio.run(fill(rf.db_path, rf.spool_dir, args.count, args.files))
    print(f"queued {args.count} rows in {time.perf_counter() - filled:.1f} s")

    started = time.monotonic()
    rf.start(timeout=300)
    startup = time.monotonic() - started
    assert rf.proc is not None
    rss_start, fds_start = proc_figures(rf.proc.pid)
    queues_status, queues_s = timed_get(rf, "/api/v1/queues")
    metrics_status, metrics_s = timed_get(rf, "/metrics")

    peak = rss_start
    deadline = time.monotonic() + args.drain_timeout
    while time.monotonic() < deadline:
        peak = max(peak, proc_figures(rf.proc.pid)[0])
        left, _, _ = outbox_counts(rf.db_path)
        if left == 0:
            break
        time.sleep(1.0)
    drain = time.monotonic() - started - startup
    left, done, again = outbox_counts(rf.db_path)

    print(f"start-up to /readyz: {startup:.1f} s (asked: <= 60 s), RSS {rss_start:.0f} MiB, "
          f"{fds_start} fds")
    print(f"/api/v1/queues {queues_status} in {queues_s:.2f} s, /metrics {metrics_status} in "
          f"{metrics_s:.2f} s on the full queue")
    print(f"drained {done}/{args.count} in {drain:.1f} s ({done / drain:.0f} rows/s), "
          f"peak RSS {peak:.0f} MiB (asked: < 500)")
    print(f"rows that took more than one attempt: {again}")
    problems = []
    if left:
        problems.append(f"{left} rows not delivered")
    if again:
        problems.append(f"{again} rows sent more than once")
    if startup > 60:
        problems.append("start-up over 60 s")
    if peak > 500:
        problems.append("RSS over 500 MiB")
    for p in problems:
        print(p)
    print("verdict:", "FAIL" if problems else "PASS")
    rf.stop(timeout=60)
    pacs.stop()
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
