"""F12 / L4 (bounded): radflow starts on a deep outbox and drains it, each row sent once.

``python bench/reliability_backlog.py --count 500000`` writes ``--count`` pending outbox rows
(the router's payload layout, ``--files`` distinct spooled instances cycled) into a fresh
radflow database, then starts radflow with its destination (DCMTK ``storescp``) up. Printed:
the time from process start to ``/readyz`` 200 and RSS then, the time for
``/api/v1/queues`` and ``/metrics`` to answer on the full queue, the drain rate, peak RSS while
draining, and how many rows needed more than one attempt (a row dispatched twice by a recovery
race would show here; with the destination up from the start every row should take one).
RELIABILITY.md asks for 500k rows, start-up within 60 s and RSS under 500 MB (F12), and for
L4: enqueue and dequeue cost flat with depth (the time per 5,000 rows queued, last chunks beside
the first; the drain rate in the last third beside the first), the admin listing and the metrics
scrape each under 1 s on the full queue, and a drain at least twice the ingest rate
(``--ingest-rate``, default L1's 50 inst/s). ``verdict: PASS``/``FAIL``, exit code 0/1,
``--report FILE`` for the figures as JSON.
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

from bench._reliability import ResourceSampler, Verdict, proc_figures
from bench.soak import _clean_up_on_exit
from engine.durable.sqlite import SqliteStore
from engine.durable.store import NewOutboxRow
from tests.helpers.outbox import dicom_payload, spool_series
from tests.helpers.peers import Storescp
from tests.helpers.proc import HOST, RadflowProcess


async def fill(db: Path, spool: Path, count: int, files: int) -> list[float]:
    """Queue ``count`` rows in chunks of 5,000; the seconds each chunk took."""
    chunk_seconds: list[float] = []
    store = SqliteStore(db)
    await store.open()
    try:
        instances = spool_series(spool, files)
        payloads = [dicom_payload(i, spool) for i in instances]
        for start in range(0, count, 5000):
            rows = [NewOutboxRow("pacs", "dicom", payloads[n % files], route="bench")
                    for n in range(start, min(count, start + 5000))]
            began = time.perf_counter()
            await store.enqueue_outbox(rows, time.time())
            chunk_seconds.append(time.perf_counter() - began)
    finally:
        await store.close()
    return chunk_seconds


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
    ap.add_argument("--ingest-rate", type=float, default=50.0,
                    help="the ingest rate the drain must double (inst/s)")
    ap.add_argument("--report", type=Path, help="write the figures and verdict as JSON")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="radflow-backlog-"))
    # Forking, as a PACS takes parallel associations: the destination runs two at once.
    pacs = Storescp(work / "pacs", ae_title="PACS", fork=True).start()
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
    chunks = asyncio.run(fill(rf.db_path, rf.spool_dir, args.count, args.files))
    print(f"queued {args.count} rows in {time.perf_counter() - filled:.1f} s")

    started = time.monotonic()
    rf.start(timeout=300)
    startup = time.monotonic() - started
    assert rf.proc is not None
    rss_start, fds_start = proc_figures(rf.proc.pid)
    sampler = ResourceSampler(rf.proc.pid, interval=1.0).start()
    queues_status, queues_s = timed_get(rf, "/api/v1/queues")
    listing_status, listing_s = timed_get(rf, "/api/v1/queues/pacs/dead?limit=100")
    metrics_status, metrics_s = timed_get(rf, "/metrics")

    progress: list[tuple[float, int]] = []  # (seconds since ready, rows done)
    deadline = time.monotonic() + args.drain_timeout
    while time.monotonic() < deadline:
        left, done_now, _ = outbox_counts(rf.db_path)
        progress.append((time.monotonic() - started - startup, done_now))
        if left == 0:
            break
        time.sleep(1.0)
    sampler.stop()
    peak = max(rss_start, sampler.max_rss)
    drain = time.monotonic() - started - startup
    left, done, again = outbox_counts(rf.db_path)
    rate = done / drain if drain > 0 else 0.0

    def rate_between(lo: float, hi: float) -> float:
        """Rows per second while the done count went from ``lo`` to ``hi`` of the total."""
        pts = [(t, d) for t, d in progress if lo * args.count <= d <= hi * args.count]
        if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
            return 0.0
        return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])

    first_third, last_third = rate_between(0.0, 1 / 3), rate_between(2 / 3, 1.0)
    head = sorted(chunks[:3])[len(chunks[:3]) // 2] if chunks else 0.0
    tail = sorted(chunks[-3:])[len(chunks[-3:]) // 2] if chunks else 0.0
    v = Verdict("F12/L4: start on a deep queue, then drain it")
    for name, value in {
        "rows_queued": args.count, "distinct_files": args.files,
        "enqueue_s_per_5000_first_last": (round(head, 3), round(tail, 3)),
        "startup_to_readyz_s": round(startup, 1), "rss_at_ready_mb": round(rss_start),
        "fds_at_ready": fds_start,
        "queues_overview": f"{queues_status} in {queues_s:.2f} s",
        "dead_letter_listing": f"{listing_status} in {listing_s:.2f} s",
        "metrics_scrape": f"{metrics_status} in {metrics_s:.2f} s",
        "drained": f"{done}/{args.count} in {drain:.1f} s",
        "drain_rows_per_s": round(rate), "drain_rate_first_last_third":
            (round(first_third), round(last_third)),
        "peak_rss_mb": round(peak), "rows_more_than_one_attempt": again,
    }.items():
        v.figure(name, value)
    v.require("every row delivered", left == 0, f"{left} left", "0")
    v.require("no row dispatched twice by the recovery", again == 0, again, "0")
    v.require("start-up on the full queue", startup <= 60, f"{startup:.1f} s", "<= 60 s")
    v.require("RSS while starting and draining", peak < 500, f"{peak:.0f} MiB", "< 500 MiB")
    v.require("queues overview on the full queue", queues_status == 200 and queues_s < 1,
              f"{queues_status} in {queues_s:.2f} s", "200 in < 1 s")
    v.require("paginated listing on the full queue", listing_status == 200 and listing_s < 1,
              f"{listing_status} in {listing_s:.2f} s", "200 in < 1 s")
    v.require("metrics scrape on the full queue", metrics_status == 200 and metrics_s < 1,
              f"{metrics_status} in {metrics_s:.2f} s", "200 in < 1 s")
    v.require("enqueue cost flat with depth", tail <= 2 * head + 0.05,
              f"{head:.3f} -> {tail:.3f} s per 5,000 rows", "last <= 2x first")
    v.require("dequeue cost flat with depth",
              first_third == 0 or last_third >= 0.5 * first_third,
              f"{first_third:.0f} -> {last_third:.0f} rows/s", "last third >= half the first")
    v.require("drains at twice the ingest rate", rate >= 2 * args.ingest_rate,
              f"{rate:.0f} rows/s", f">= {2 * args.ingest_rate:g}/s")
    code = v.finish(args.report, {"progress": progress, "enqueue_chunk_seconds": chunks})
    rf.stop(timeout=60)
    pacs.stop()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
