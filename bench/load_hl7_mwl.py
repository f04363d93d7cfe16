"""L6 (bounded): HL7 orders at a steady rate while modalities query the worklist; the verdict.

``python bench/load_hl7_mwl.py --minutes 5`` seeds radflow's worklist with ``--items`` (10,000)
scheduled items (the bulk insert ``bench_mwl.py`` uses), starts radflow (SQLite, fsync on), and
then, for ``--minutes``:

* a RIS sends ORM^O01 new orders over MLLP (the ``hl7`` package's client) at ``--rate``
  (50/s) on ``--connections`` connections, on an open-loop schedule, timing each ACK;
* ``--scanners`` modalities (2) query the worklist, each over one open association
  (pynetdicom), at ``--query-rate`` (5/s) in total, alternating a one-patient query and the
  "CT today" query (about 1 % of the seeded items), timing each C-FIND to its final response
  and checking the number of matches.

At the end the worklist is read back by C-FIND (every item whose accession number the orders
used): it must hold exactly one item per acknowledged order, with that order's patient and
accession number, and nothing for an order that was not acknowledged.

Judged against RELIABILITY.md L6: ACK p99 <= 500 ms; every C-FIND <= 2 s (and the right number
of matches); the worklist matches the orders exactly. The rates reached are printed and judged
too (a machine that cannot keep up fails visibly rather than quietly sending less).
``verdict: PASS``/``FAIL``, exit code 0/1, ``--report FILE`` for the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hl7
from hl7.client import MLLPClient
from pydicom.dataset import Dataset
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

from bench._reliability import ResourceSampler, Verdict, percentile
from bench.bench_mwl import expected_matches, identifier, seed_radflow
from bench.soak import _clean_up_on_exit, order
from engine.reactor import EventDrivenAE
from tests.helpers.proc import HOST, RadflowProcess


class OrderSender(threading.Thread):
    """One RIS connection: orders ``first, first + step, ...`` at ``rate`` per second."""

    def __init__(self, port: int, first: int, step: int, rate: float, stop_at: float) -> None:
        super().__init__(name=f"ris-{first}", daemon=True)
        self.port, self.first, self.step, self.rate, self.stop_at = port, first, step, rate, stop_at
        self.latencies: list[float] = []
        self.acked: dict[str, str] = {}  # accession number -> patient ID
        self.sent: set[str] = set()
        self.refused: list[str] = []
        self.errors = 0

    def run(self) -> None:
        started = time.monotonic()
        k = 0
        while time.monotonic() < self.stop_at:
            try:
                with MLLPClient(HOST, self.port) as client:
                    client.socket.settimeout(30)
                    while time.monotonic() < self.stop_at:
                        wait = started + k / self.rate - time.monotonic()
                        if wait > 0:
                            time.sleep(wait)
                        n = self.first + k * self.step
                        k += 1
                        self.sent.add(f"ACC{n}")
                        began = time.perf_counter()
                        answer = client.send_message(order(f"L6{n:08d}", n))
                        took = time.perf_counter() - began
                        raw = answer.decode() if isinstance(answer, bytes) else answer
                        code = str(hl7.parse(raw.strip("\x0b\x1c\r\n")).segment("MSA")[1])
                        self.latencies.append(took)
                        if code in ("AA", "CA"):
                            self.acked[f"ACC{n}"] = f"MRN{n}"
                        else:
                            self.refused.append(f"{n}:{code}")
            except OSError:
                self.errors += 1
                time.sleep(1.0)


class Modality(threading.Thread):
    """One scanner asking the worklist ``rate`` times a second over one association."""

    def __init__(self, rf: RadflowProcess, items: int, rate: float, stop_at: float,
                 n: int = 0) -> None:
        super().__init__(name=f"modality-{n}", daemon=True)
        self.rf, self.items, self.rate, self.stop_at, self.n = rf, items, rate, stop_at, n
        self.latencies: list[float] = []
        self.wrong: list[str] = []
        self.expected = {kind: expected_matches(kind, items) for kind in ("patient", "ct-today")}

    def run(self) -> None:
        ae = EventDrivenAE(ae_title=f"CT_MWL{self.n}")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        ae.add_requested_context(ModalityWorklistInformationFind)
        assoc = ae.associate(HOST, self.rf.port, ae_title=self.rf.ae_title)
        if not assoc.is_established:
            self.wrong.append("association refused")
            return
        started = time.monotonic()
        k = 0
        try:
            while time.monotonic() < self.stop_at:
                wait = started + k / self.rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                kind = "patient" if (k + self.n) % 2 == 0 else "ct-today"
                ds = identifier(kind, (k * 7 + self.n) % self.items)
                k += 1
                began = time.perf_counter()
                matches = 0
                final = None
                for status, answer in assoc.send_c_find(ds, ModalityWorklistInformationFind):
                    if status is not None and status.Status in (0xFF00, 0xFF01):
                        matches += answer is not None
                    else:
                        final = status
                self.latencies.append(time.perf_counter() - began)
                if final is None or final.Status != 0 or matches != self.expected[kind]:
                    self.wrong.append(f"{kind}: {matches} matches (expected "
                                      f"{self.expected[kind]}), final {final}")
        finally:
            assoc.release()
            ae.shutdown()


def worklist_by_accession(rf: RadflowProcess) -> dict[str, list[str]]:
    """Every worklist item whose accession number starts with ``ACC`` (the orders'): the
    patient IDs of the items under each accession number."""
    ae = EventDrivenAE(ae_title="CHECK")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 300
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate(HOST, rf.port, ae_title=rf.ae_title)
    assert assoc.is_established
    ds = Dataset()
    ds.AccessionNumber = "ACC*"
    ds.PatientID = ""
    sps = Dataset()
    sps.ScheduledProcedureStepID = ""
    ds.ScheduledProcedureStepSequence = [sps]
    found: dict[str, list[str]] = {}
    try:
        for status, answer in assoc.send_c_find(ds, ModalityWorklistInformationFind):
            if status is not None and status.Status in (0xFF00, 0xFF01) and answer is not None:
                found.setdefault(str(answer.AccessionNumber), []).append(str(answer.PatientID))
    finally:
        assoc.release()
        ae.shutdown()
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--rate", type=float, default=50.0, help="orders per second in total")
    ap.add_argument("--connections", type=int, default=2,
                    help="MLLP connections (each waits for its ACK before the next order)")
    ap.add_argument("--query-rate", type=float, default=5.0, help="C-FIND per second in total")
    ap.add_argument("--scanners", type=int, default=2,
                    help="modalities querying, each on its own association")
    ap.add_argument("--items", type=int, default=10_000, help="seeded worklist items")
    ap.add_argument("--report", type=Path, help="write the figures and verdict as JSON")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="radflow-l6-"))
    rf = RadflowProcess(work / "radflow", {
        "worklist": {"find_limit": 1_000_000, "retention_days": 0},
        "dicom": {"listeners": [{"dimse_timeout": 120, "network_timeout": 120}]},
    })
    _clean_up_on_exit(rf)
    seeded = time.perf_counter()
    asyncio.run(seed_radflow(rf.db_path, args.items))
    print(f"seeded {args.items} worklist items in {time.perf_counter() - seeded:.1f} s",
          flush=True)
    rf.start(timeout=120)  # a loaded machine starts slowly
    assert rf.proc is not None
    sampler = ResourceSampler(rf.proc.pid, interval=2.0).start()
    port = int(rf.config["hl7"]["listeners"][0]["port"])
    started = time.monotonic()
    stop_at = started + args.minutes * 60
    senders = [OrderSender(port, c, args.connections, args.rate / args.connections, stop_at)
               for c in range(args.connections)]
    scanners = [Modality(rf, args.items, args.query_rate / args.scanners, stop_at, n)
                for n in range(args.scanners)]
    for t in [*senders, *scanners]:
        t.start()
    while any(t.is_alive() for t in [*senders, *scanners]):
        time.sleep(5.0)
        done = sum(len(s.latencies) for s in senders)
        print(f"{time.monotonic() - started:5.0f} s: {done} orders answered, "
              f"{sum(len(m.latencies) for m in scanners)} queries", flush=True)
    seconds = time.monotonic() - started
    sampler.stop()

    acked: dict[str, str] = {}
    sent: set[str] = set()
    for s in senders:
        acked.update(s.acked)
        sent |= s.sent
    found = worklist_by_accession(rf)
    missing = sorted(set(acked) - set(found))
    doubled = sorted(a for a, pids in found.items() if len(pids) != 1)
    wrong_patient = sorted(a for a, pids in found.items() if a in acked and pids != [acked[a]])
    unacked_present = sorted(set(found) - set(acked))
    ack_lat = [t for s in senders for t in s.latencies]
    ack_p99 = percentile(ack_lat, 99) * 1000
    find_lat = [t for m in scanners for t in m.latencies]
    wrong = [w for m in scanners for w in m.wrong]
    find_max = max(find_lat, default=0.0)
    query_rate = len(find_lat) / (args.minutes * 60)
    rate = len(ack_lat) / (args.minutes * 60)  # the planned window (threads end a bit later)

    v = Verdict("L6: HL7 orders under load while the worklist is queried")
    for name, value in {
        "minutes": round(seconds / 60, 2), "seeded_items": args.items,
        "orders_rate_asked": args.rate, "orders_rate_answered": round(rate, 1),
        "orders_sent_acked_refused": (len(sent), len(acked),
                                      sum(len(s.refused) for s in senders)),
        "connection_errors": sum(s.errors for s in senders),
        "ack_ms_p50_p99_max": (round(percentile(ack_lat, 50) * 1000, 1), round(ack_p99, 1),
                               round(max(ack_lat, default=0.0) * 1000, 1)),
        "queries": len(find_lat), "query_rate": round(query_rate, 2),
        "cfind_ms_p50_p99_max": (round(percentile(find_lat, 50) * 1000, 1),
                                 round(percentile(find_lat, 99) * 1000, 1),
                                 round(find_max * 1000, 1)),
        "worklist_items_from_orders": len(found),
        **sampler.figures(),
    }.items():
        v.figure(name, value)
    v.require("ACK p99", ack_p99 <= 500, f"{ack_p99:.0f} ms", "<= 500 ms")
    v.require("every C-FIND within 2 s", find_max <= 2.0, f"max {find_max * 1000:.0f} ms",
              "<= 2000 ms")
    v.require("C-FIND answers right while orders arrive", not wrong,
              f"{len(wrong)} wrong {wrong[:2]}", "0 wrong")
    v.require("worklist matches the orders exactly",
              not (missing or doubled or wrong_patient or unacked_present),
              f"{len(missing)} missing, {len(doubled)} doubled, {len(wrong_patient)} wrong "
              f"patient, {len(unacked_present)} never acknowledged",
              "one item per acknowledged order, none other")
    v.require("the asked order rate was reached", rate >= 0.95 * args.rate,
              f"{rate:.1f}/s", f">= 95 % of {args.rate:g}/s")
    v.require("the asked query rate was reached", query_rate >= 0.95 * args.query_rate,
              f"{query_rate:.2f}/s", f">= 95 % of {args.query_rate:g}/s")
    refused = [r for s in senders for r in s.refused]
    if refused:
        v.note(f"orders refused: {refused[:5]}")
    code = v.finish(args.report, {"resource_samples": sampler.samples})
    rf.stop(timeout=60)
    if code == 0:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept for inspection: {work}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
