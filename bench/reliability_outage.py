"""F5 (bounded): one destination down while instances keep arriving; the others keep flowing.

``python bench/reliability_outage.py --minutes 3 --rate 20`` runs radflow with two DCMTK
``storescp`` destinations (``pacs`` and ``ai``, every instance to both). ``pacs`` is down for the
whole ingest period while pynetdicom sends ``--rate`` instances per second; ``ai`` stays up. Then
``pacs`` comes back and the backlog drains. Printed: instances acknowledged, what ``ai`` got
during the outage, radflow's RSS and open files at the start and end of the outage (the queue
grows on disk, not in memory), the longest retry delay seen in the log (backoff cap), the drain
rate beside the ingest rate, and the checker's verdict (``tests/helpers/invariant.py``).
RELIABILITY.md's full case is 72 h at 5k inst/h; this is the same shape, shortened.

Judged against RELIABILITY.md F5: nothing lost; the healthy destination kept flowing (at least
90 % of the acknowledged instances delivered to it during the outage); RSS flat (within 10 %,
or under 20 MiB, across the outage); the retry rest capped at ``--max-delay``; the alert metric
(``radflow_outbox_oldest_age_seconds``, which the shipped alert rule fires on after 15 minutes)
tracking the outage's age for the down destination and staying low for the healthy one; the
backlog drained at least at the ingest rate. ``verdict: PASS``/``FAIL``, exit code 0/1,
``--report FILE`` for the figures as JSON.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._reliability import ResourceSampler, Verdict, proc_figures
from bench.soak import CT_IMAGE, SYNTAXES, _clean_up_on_exit
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
    ap.add_argument("--report", type=Path, help="write the figures and verdict as JSON")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="radflow-outage-"))
    # Forking sinks: radflow sends on two associations per destination, as a PACS allows.
    sinks = {"pacs": Storescp(work / "pacs", ae_title="PACS", fork=True),
             "ai": Storescp(work / "ai", ae_title="AI", fork=True).start()}
    rf = RadflowProcess(work / "radflow", {
        "destinations": {n: {"type": "dimse", "host": HOST, "ae_title": s.ae_title,
                             "port": s.port, "idle_close": 2} for n, s in sinks.items()},
        "delivery": {"retry": {"initial_delay": 1.0, "max_delay": args.max_delay,
                               "circuit_cooldown": min(30.0, args.max_delay),
                               "max_age_hours": 72},
                     "stats_interval": 1.0},
    })
    _clean_up_on_exit(rf, *sinks.values())
    (Path(rf.config["routing"]["routes_dir"]) / "10-all.yaml").write_text(ROUTES)
    rf.start(timeout=120)  # a loaded machine starts slowly
    assert rf.proc is not None
    acked: set[str] = set()
    sent: set[str] = set()
    rss0, fds0 = proc_figures(rf.proc.pid)
    sampler = ResourceSampler(rf.proc.pid, interval=2.0).start()
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
    time.sleep(1.5)  # one stats interval, so the gauges below are this moment's
    oldest_pacs = rf.metric("radflow_outbox_oldest_age_seconds", destination="pacs")
    oldest_ai = rf.metric("radflow_outbox_oldest_age_seconds", destination="ai")
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
    checked = check(acked, {k: s.received() for k, s in sinks.items()}, sent=sent, rf=rf)
    sampler.stop()
    rss2, fds2 = proc_figures(rf.proc.pid)

    ingest_rate = len(acked) / ingest_seconds
    drain_rate = len(acked) / drain_seconds if drain_seconds > 0 else float("inf")
    growth = (rss1 - rss0) / rss0 * 100 if rss0 else 0.0
    longest_rest = max(delays, default=0.0)
    v = Verdict("F5: a destination down while instances keep arriving")
    for name, value in {
        "outage_minutes": round(ingest_seconds / 60, 2), "rate_asked": args.rate,
        "instances_sent": len(sent), "instances_acked": len(acked),
        "ai_delivered_during_outage": ai_during,
        "rss_mb_start_end_after": (round(rss0), round(rss1), round(rss2)),
        "fds_start_end_after": (fds0, fds1, fds2),
        "longest_circuit_rest_s": round(longest_rest, 1),
        "oldest_age_s_pacs_ai": (round(oldest_pacs), round(oldest_ai)),
        "first_delivery_after_back_s": round((first or end_drain) - back, 1),
        "drain_seconds": round(drain_seconds, 1),
        "ingest_rate": round(ingest_rate, 1), "drain_rate": round(drain_rate, 1),
        "delivered": checked.delivered,
    }.items():
        v.figure(name, value)
    v.require("nothing lost (acked at pacs and ai, nothing half-written)", checked.ok,
              "ok" if checked.ok else checked.report().replace("\n", "; "), "acked ⊆ delivered")
    v.require("healthy destination kept flowing", ai_during >= len(acked) * 0.9,
              f"{ai_during}/{len(acked)}", ">= 90 % during the outage")
    v.require("RSS flat across the outage", abs(growth) <= 10 or rss1 - rss0 <= 20,
              f"{rss0:.0f} -> {rss1:.0f} MiB ({growth:+.1f} %)", "±10 % (or < 20 MiB)")
    during = [x for x in sampler.samples if x[0] <= ingest_seconds]
    fifth = max(1, len(during) // 5)
    fds_first = max((x[2] for x in during[:fifth]), default=0)
    fds_last = max((x[2] for x in during[-fifth:]), default=0)
    v.require("fds flat across the outage", fds_last <= fds_first + 5,
              f"first fifth max {fds_first}, last fifth max {fds_last}", "within 5")
    v.require("retry rest capped", longest_rest <= args.max_delay + 1,
              f"{longest_rest:.0f} s", f"<= {args.max_delay:g} s")
    v.require("alert metric tracks the outage",
              oldest_pacs >= 0.8 * ingest_seconds and oldest_ai < 60,
              f"pacs {oldest_pacs:.0f} s, ai {oldest_ai:.0f} s",
              f"pacs ~{ingest_seconds:.0f} s (alert fires past 900 s), ai < 60 s")
    v.require("drains at least at the ingest rate", drain_rate >= ingest_rate,
              f"{drain_rate:.1f} inst/s", f">= {ingest_rate:.1f} inst/s")
    if not checked.ok:
        v.note(checked.report())
    code = v.finish(args.report, {"resource_samples": sampler.samples})
    rf.stop()
    for s in sinks.values():
        s.stop()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
