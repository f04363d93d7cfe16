"""F5 (bounded): one destination down while instances keep arriving; the others keep flowing.

``python bench/reliability_outage.py --minutes 3 --rate 20`` runs radflow with two DCMTK
``storescp`` destinations (``pacs`` and ``ai``, every instance to both). ``pacs`` is down for the
whole ingest period while pynetdicom sends ``--rate`` instances per second; ``ai`` stays up. Then
``pacs`` comes back and the backlog drains. Printed: instances acknowledged, what ``ai`` got
during the outage, radflow's RSS and open files at the start and end of the outage (the queue
grows on disk, not in memory), the longest retry delay seen in the log (backoff cap), the drain
rate beside the ingest rate, and the checker's verdict (``tests/helpers/invariant.py``).
RELIABILITY.md's full case is 72 h at 5k inst/h; this is the same shape, shortened.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.soak import CT_IMAGE, SYNTAXES, _clean_up_on_exit, proc_figures
from tests.helpers import dicomgen
from tests.helpers.invariant import check
from tests.helpers.peers import Storescp
from tests.helpers.proc import HOST, RadflowProcess
from tests.helpers.scu import association

ROUTES = ("version: 1\nroutes:\n  - name: all\n    fallback: true\n"
          "    destinations: [pacs, ai]\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=1.0, help="outage (and ingest) length")
    ap.add_argument("--rate", type=float, default=20.0, help="instances per second")
    ap.add_argument("--max-delay", type=float, default=300.0, help="retry backoff cap (s)")
    ap.add_argument("--drain-timeout", type=float, default=600.0)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="radflow-outage-"))
    sinks = {"pacs": Storescp(work / "pacs", ae_title="PACS"),
             "ai": Storescp(work / "ai", ae_title="AI").start()}
    rf = RadflowProcess(work / "radflow", {
        "destinations": {n: {"type": "dimse", "host": HOST, "ae_title": s.ae_title,
                             "port": s.port, "idle_close": 2} for n, s in sinks.items()},
        "delivery": {"retry": {"initial_delay": 1.0, "max_delay": args.max_delay,
                               "circuit_cooldown": min(30.0, args.max_delay),
                               "max_age_hours": 72}},
    })
    _clean_up_on_exit(rf, *sinks.values())
    (Path(rf.config["routing"]["routes_dir"]) / "10-all.yaml").write_text(ROUTES)
    rf.start()
    assert rf.proc is not None
    acked: set[str] = set()
    sent: set[str] = set()
    rss0, fds0 = proc_figures(rf.proc.pid)
    started = time.monotonic()
    end = started + args.minutes * 60
    n = 0
    with association(rf, [(CT_IMAGE, SYNTAXES)], calling_ae="CT_1") as assoc:
        while time.monotonic() < end:
            # A fresh instance per send (200 pixel patterns), one file rewritten each time.
            ds = dicomgen.new_dataset("CT", seed=n % 200)
            path = dicomgen.write_part10(ds, work / "data" / "next.dcm")  # reused
            status = assoc.send_c_store(path)
            sent.add(str(ds.SOPInstanceUID))
            if status is not None and "Status" in status and status.Status == 0:
                acked.add(str(ds.SOPInstanceUID))
            n += 1
            time.sleep(max(0.0, started + n / args.rate - time.monotonic()))
    ingest_seconds = time.monotonic() - started
    rss1, fds1 = proc_figures(rf.proc.pid)
    ai_during = len(acked & sinks["ai"].received())
    # The circuit's rest doubles while probes fail, up to the backoff cap.
    delays = [float(e.get("rest_seconds") or 0) for e in rf.events("egress.circuit_opened")]

    sinks["pacs"].start()
    back = time.monotonic()
    first: float | None = None  # the first delivery after the outage: the probe got through
    while time.monotonic() - back < args.drain_timeout:
        got = sinks["pacs"].received()
        if got and first is None:
            first = time.monotonic()
        if acked <= got and acked <= sinks["ai"].received():
            break
        time.sleep(0.2)
    end_drain = time.monotonic()
    drain_seconds = end_drain - (first or back)
    print(f"first delivery to pacs {((first or end_drain) - back):.1f} s after it came back "
          "(the circuit's rest ending)")
    verdict = check(acked, {k: s.received() for k, s in sinks.items()}, sent=sent, rf=rf)
    rss2, fds2 = proc_figures(rf.proc.pid)

    ingest_rate = len(acked) / ingest_seconds
    drain_rate = len(acked) / drain_seconds if drain_seconds > 0 else float("inf")
    growth = (rss1 - rss0) / rss0 * 100 if rss0 else 0.0
    print(f"outage {ingest_seconds / 60:.1f} min at {args.rate:g} inst/s: "
          f"{len(acked)} acknowledged of {len(sent)}")
    print(f"ai during the outage: {ai_during}/{len(acked)} delivered")
    print(f"RSS {rss0:.0f} -> {rss1:.0f} MiB ({growth:+.1f} %), fds {fds0} -> {fds1}; "
          f"after drain {rss2:.0f} MiB, {fds2} fds")
    print(f"longest circuit rest logged: {max(delays, default=0):.0f} s (cap {args.max_delay:g})")
    print(f"drain: {drain_seconds:.1f} s, {drain_rate:.1f} inst/s beside ingest "
          f"{ingest_rate:.1f} inst/s (ratio {drain_rate / ingest_rate:.1f}x)")
    print(verdict.report())
    problems = [] if verdict.ok else ["nothing-lost check failed"]
    if ai_during < len(acked) * 0.9:
        problems.append("the healthy destination was held up by the down one")
    if abs(growth) > 10 and rss1 - rss0 > 20:
        problems.append(f"RSS grew {growth:.1f} % with the queue")
    if drain_rate < ingest_rate:
        problems.append("drains slower than the ingest rate")
    for p in problems:
        print(p)
    print("verdict:", "FAIL" if problems else "PASS")
    rf.stop()
    for s in sinks.values():
        s.stop()
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
