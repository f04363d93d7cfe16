"""L1 (bounded): sustained C-STORE ingest, fsync on, three destinations; the verdict.

``python bench/load_sustained.py --minutes 5 --rate 50`` runs radflow (a real subprocess, SQLite,
fsync on as always) routing every instance to three destinations: two DCMTK ``storescp`` sinks
(``pacs``, ``ai``) and Orthanc over STOW-RS (``archive``; a third ``storescp`` with
``--third storescp`` or when Orthanc is not installed). ``--senders`` pynetdicom associations
send 512 x 512 16-bit CT images (0.5 MB each, 100 to a study) at ``--rate`` instances per
second in total, on an open-loop schedule (a late send goes at once, it does not wait for the
next slot), and time each C-STORE from the request to its response.

Judged against RELIABILITY.md L1: C-STORE response p99 <= 200 ms; nothing lost (every
acknowledged instance at all three destinations once the queues drained, nothing half-written:
``tests/helpers/invariant.py``); RSS growth < 5 %/h (the least-squares slope of radflow's RSS
after the warm-up; a run of minutes is too short to resolve 5 %/h, and is then judged, saying
so, by whether RSS has levelled off: see ``bench/_reliability.py``; the full case is 8 h); open file
descriptors flat (the highest count in the last fifth of the run no more than 10 above the
highest in the first fifth after warm-up). Also printed: the rate reached (the machine may
not keep up; the verdict says so rather than silently sending less). Files the sinks received
are counted and deleted as they arrive, so a long run needs disk for radflow's spool only
(about 0.5 MB per instance; the bench refuses to start without it).
``verdict: PASS``/``FAIL``, exit code 0/1, ``--report FILE`` for the figures as JSON.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bench._reliability import ResourceSampler, Verdict, percentile
from bench.soak import CT_IMAGE, SYNTAXES, _clean_up_on_exit
from tests.helpers import dicomgen
from tests.helpers.invariant import check
from tests.helpers.peers import Orthanc, Storescp, have_orthanc
from tests.helpers.proc import HOST, RadflowProcess
from tests.helpers.scu import association

ROUTES = ("version: 1\nroutes:\n  - name: all\n    fallback: true\n"
          "    destinations: [{dests}]\n")
IMAGE_SIZE = 512  # 512 x 512 x 2 bytes: the 0.5 MB CT slice of the case
PER_STUDY = 100


class HarvestingSink:
    """A storescp whose received files are counted by UID and deleted once settled, so a long
    run holds no copies (a file is taken once its size has not changed for a second)."""

    def __init__(self, sink: Storescp) -> None:
        self.sink = sink
        self.uids: set[str] = set()
        self._sizes: dict[Path, int] = {}
        self._lock = threading.Lock()

    def harvest(self) -> set[str]:
        with self._lock:
            for path in list(self.sink.out.iterdir()):
                name = path.name
                if not path.is_file() or "." not in name or name.endswith(".tmp"):
                    continue
                try:
                    size = path.stat().st_size
                except OSError:
                    continue
                if self._sizes.get(path) == size:
                    self.uids.add(name.split(".", 1)[1])
                    path.unlink(missing_ok=True)
                    self._sizes.pop(path, None)
                else:
                    self._sizes[path] = size
            return set(self.uids)

    def drain_all(self) -> set[str]:
        """After the run: everything left counts (storescp is idle, every file is whole)."""
        with self._lock:
            for path in list(self.sink.out.iterdir()):
                name = path.name
                if path.is_file() and "." in name and not name.endswith(".tmp"):
                    self.uids.add(name.split(".", 1)[1])
                    path.unlink(missing_ok=True)
            self._sizes.clear()
            return set(self.uids)


def template(seed: int) -> Dataset:
    ds = dicomgen.new_dataset("CT", size=IMAGE_SIZE, seed=seed)
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 4096, size=(IMAGE_SIZE, IMAGE_SIZE),
                                dtype=np.uint16).tobytes()
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian  # the context pynetdicom sends it in
    ds.file_meta = meta
    return ds


class Sender(threading.Thread):
    """One modality: an association sending its share of the rate; reconnects on failure and
    resends what got no Success (as modalities do)."""

    def __init__(self, n: int, rf: RadflowProcess, rate: float, stop_at: float,
                 ledger: dict[str, set[str]], lock: threading.Lock) -> None:
        super().__init__(name=f"sender-{n}", daemon=True)
        self.n, self.rf, self.rate, self.stop_at = n, rf, rate, stop_at
        self.ledger, self.lock = ledger, lock
        self.latencies: list[float] = []
        self.failures = 0
        self.ds = template(n)
        self.sent = 0

    def _next(self) -> str:
        if self.sent % PER_STUDY == 0:
            self.ds.StudyInstanceUID = generate_uid()
            self.ds.SeriesInstanceUID = generate_uid()
            self.ds.AccessionNumber = f"L1{self.n}{self.sent:08d}"
        uid = generate_uid()
        self.ds.SOPInstanceUID = uid
        self.ds.InstanceNumber = self.sent % PER_STUDY + 1
        return uid

    def run(self) -> None:
        started = time.monotonic()
        pending: list[str] = []
        while time.monotonic() < self.stop_at:
            try:
                with association(self.rf, [(CT_IMAGE, SYNTAXES)],
                                 calling_ae=f"CT_{self.n}") as assoc:
                    if not assoc.is_established:
                        raise ConnectionError("association refused")
                    while time.monotonic() < self.stop_at:
                        slot = started + self.sent / self.rate
                        wait = slot - time.monotonic()
                        if wait > 0:
                            time.sleep(wait)
                        uid = self._next()
                        with self.lock:
                            self.ledger["sent"].add(uid)
                        began = time.perf_counter()
                        status = assoc.send_c_store(self.ds)
                        took = time.perf_counter() - began
                        self.sent += 1
                        if status is not None and "Status" in status and status.Status == 0:
                            self.latencies.append(took)
                            with self.lock:
                                self.ledger["acked"].add(uid)
                        else:
                            self.failures += 1
                            pending.append(uid)
                        if not assoc.is_established:
                            raise ConnectionError("association lost")
            except Exception:
                self.failures += 1
                time.sleep(1.0)
        del pending  # fresh UIDs each time: an unacknowledged one is simply not in "acked"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="ingest duration")
    ap.add_argument("--rate", type=float, default=50.0, help="instances per second in total")
    ap.add_argument("--senders", type=int, default=4, help="parallel associations")
    ap.add_argument("--third", choices=["orthanc", "storescp"], default="orthanc",
                    help="the third destination: Orthanc over STOW-RS, or a third storescp")
    ap.add_argument("--warmup", type=float, default=60.0,
                    help="seconds left out of the RSS slope and fd comparison")
    ap.add_argument("--drain-timeout", type=float, default=900.0)
    ap.add_argument("--report", type=Path, help="write the figures and verdict as JSON")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="radflow-l1-"))
    need_gb = args.rate * args.minutes * 60 * 0.53 / 1024 * 1.2 + 1
    free_gb = shutil.disk_usage(work).free / 2**30
    if free_gb < need_gb:
        print(f"not enough disk under {work}: {free_gb:.1f} GiB free, about {need_gb:.1f} "
              "GiB needed (radflow's spool keeps every instance); shorten --minutes or --rate")
        return 1
    third = args.third if have_orthanc() else "storescp"
    # Forking sinks: radflow sends on two associations per destination, as a PACS allows.
    sinks = {"pacs": Storescp(work / "pacs", ae_title="PACS", fork=True).start(),
             "ai": Storescp(work / "ai", ae_title="AI", fork=True).start()}
    orthanc: Orthanc | None = None
    destinations = {n: {"type": "dimse", "host": HOST, "ae_title": s.ae_title, "port": s.port,
                        "idle_close": 5, "concurrency": 2} for n, s in sinks.items()}
    if third == "orthanc":
        orthanc = Orthanc(work / "orthanc").start()
        destinations["archive"] = {"type": "dicomweb", "url": orthanc.stow_url,
                                   "concurrency": 2, "batch_max_count": 20}
    else:
        sinks["archive"] = Storescp(work / "archive", ae_title="ARCHIVE", fork=True).start()
        s = sinks["archive"]
        destinations["archive"] = {"type": "dimse", "host": HOST, "ae_title": s.ae_title,
                                   "port": s.port, "idle_close": 5, "concurrency": 2}
    rf = RadflowProcess(work / "radflow", {
        "destinations": destinations,
        "dicom": {"listeners": [{"max_associations": max(16, args.senders + 4)}]},
    })
    _clean_up_on_exit(rf, *sinks.values())
    if orthanc is not None:
        atexit.register(orthanc.stop)
    (Path(rf.config["routing"]["routes_dir"]) / "10-all.yaml").write_text(
        ROUTES.format(dests=", ".join(destinations)))
    rf.start(timeout=120)  # a loaded machine starts slowly
    assert rf.proc is not None
    harvest = {n: HarvestingSink(s) for n, s in sinks.items()}
    sampler = ResourceSampler(rf.proc.pid, interval=2.0).start()

    ledger: dict[str, set[str]] = {"sent": set(), "acked": set()}
    lock = threading.Lock()
    duration = args.minutes * 60
    started = time.monotonic()
    senders = [Sender(i, rf, args.rate / args.senders, started + duration, ledger, lock)
               for i in range(args.senders)]
    for sender in senders:
        sender.start()
    while any(s.is_alive() for s in senders):
        time.sleep(2.0)
        for h in harvest.values():
            h.harvest()
        elapsed = time.monotonic() - started
        if int(elapsed) % 30 < 2 and sampler.samples:
            _, rss, fds = sampler.samples[-1]
            print(f"{elapsed:5.0f} s: {len(ledger['acked'])} acknowledged "
                  f"({len(ledger['acked']) / elapsed:.1f}/s), RSS {rss:.0f} MiB, fds {fds}",
                  flush=True)
    ingest_seconds = time.monotonic() - started
    acked = set(ledger["acked"])

    drain_started = time.monotonic()
    deadline = drain_started + args.drain_timeout
    while time.monotonic() < deadline:
        got = {n: h.harvest() for n, h in harvest.items()}
        if all(acked <= g for g in got.values()):
            break
        time.sleep(2.0)
    while orthanc is not None and time.monotonic() < deadline:
        if acked <= orthanc.received():
            break
        time.sleep(5.0)
    drain_seconds = time.monotonic() - drain_started
    time.sleep(2.0)
    sampler.stop()
    got = {n: h.drain_all() for n, h in harvest.items()}
    if orthanc is not None:
        got["archive"] = orthanc.received()
    verdict_nl = check(acked, got, sent=ledger["sent"], rf=rf)

    latencies = [t for s in senders for t in s.latencies]
    p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    warm = min(args.warmup, ingest_seconds / 3)
    during = [s for s in sampler.since(warm) if s[0] <= ingest_seconds]
    fifth = max(1, len(during) // 5)
    fds_first = max((s[2] for s in during[:fifth]), default=0)
    fds_last = max((s[2] for s in during[-fifth:]), default=0)
    growth_ok, growth_text = sampler.rss_growth_verdict(5.0, warm, ingest_seconds)
    rate = len(acked) / duration  # the planned window (senders end a bit later)

    v = Verdict("L1: sustained C-STORE ingest, fsync on, three destinations")
    for name, value in {
        "minutes": round(ingest_seconds / 60, 2), "rate_asked": args.rate,
        "rate_acknowledged": round(rate, 1), "senders": args.senders,
        "instance_bytes": IMAGE_SIZE * IMAGE_SIZE * 2, "third_destination": third,
        "instances_sent": len(ledger["sent"]), "instances_acked": len(acked),
        "send_failures_retried": sum(s.failures for s in senders),
        "rsp_ms_p50_p99_max": (round(p50, 1), round(p99, 1),
                               round(max(latencies, default=0) * 1000, 1)),
        "delivered": {n: len(g) for n, g in got.items()},
        "drain_after_ingest_s": round(drain_seconds, 1),
        **sampler.figures(warm),
    }.items():
        v.figure(name, value)
    v.require("C-STORE RSP p99", p99 <= 200, f"{p99:.0f} ms", "<= 200 ms")
    v.require("nothing lost (all three destinations, nothing half-written)", verdict_nl.ok,
              "ok" if verdict_nl.ok else "see report below", "acked ⊆ delivered")
    v.require("RSS growth after warm-up", growth_ok, growth_text, "< 5 %/h")
    v.require("fd count flat", fds_last <= fds_first + 10,
              f"first fifth max {fds_first}, last fifth max {fds_last}", "within 10")
    v.require("the asked rate was reached", rate >= 0.95 * args.rate,
              f"{rate:.1f} inst/s", f">= 95 % of {args.rate:g}")
    if not verdict_nl.ok:
        v.note(verdict_nl.report())
    code = v.finish(args.report, {"resource_samples": sampler.samples})
    rf.stop(timeout=60)
    for sink in sinks.values():
        sink.stop()
    if orthanc is not None:
        orthanc.stop()
    if code == 0:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept for inspection: {work}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
