"""Bounded chaos soak: realistic traffic, random kill -9 and destination outages, then the verdict.

``python bench/soak.py --minutes 30`` runs radflow (a real subprocess, SQLite, fsync on) with
three destinations: two DCMTK ``storescp`` sinks (``pacs`` and ``ai``, every instance to both)
and an MLLP sink on the ``hl7`` package (``ris``, every new order). While it runs:

* modalities send small CT studies over C-STORE (pynetdicom, and DCMTK ``storescu`` for one study
  in four) and a RIS sends ORM orders over MLLP (the ``hl7`` package's client);
* about 1 % of the inputs are malformed on purpose (a truncated dataset, an order without
  PID-3); they must be refused and must never reach a destination;
* radflow is killed with SIGKILL at random intervals and restarted on the same data;
* one destination at a time goes down for a while (storescp killed, the MLLP sink closed with
  its connections) and comes back on the same port;
* a sender resends whatever got no success (as modalities and interface engines do).

At the end traffic stops, every destination is up, and the soak waits (bounded) for the queues
to drain. The verdict comes from the same checker as the test suite
(``tests/helpers/invariant.py``): every acknowledged SOP Instance UID at ``pacs`` and ``ai``,
every acknowledged order control ID at ``ris``, nothing foreign anywhere, nothing half-written;
dead letters only for injected bad inputs (none are expected: bad inputs are refused at intake);
and no unbounded growth (RSS and open file descriptors per run, spool temp files). It prints the
figures and ``verdict: PASS`` or ``FAIL`` (exit code 0 or 1), and writes them as JSON with
``--report``.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hl7
import hl7.mllp
from hl7.client import MLLPClient

from bench._reliability import proc_figures
from tests.helpers import dicomgen
from tests.helpers.invariant import check
from tests.helpers.peers import Storescp
from tests.helpers.proc import (
    HOST,
    STORESCU_PROPOSE,
    RadflowError,
    RadflowProcess,
    StorescuRun,
    free_port,
)
from tests.helpers.scu import association, send_raw_file

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
#: bounds for "no unbounded growth" (one engine run; each kill starts a fresh process)
MAX_RSS_MB = 500.0
MAX_FDS = 400

ROUTES = """\
version: 1
routes:
  - name: images
    trigger: instance
    match: {attr: Modality, equals: CT}
    destinations: [pacs, ai]
  - name: orders
    trigger: order
    match: {hl7: MSH-9.1, in: [ORM]}
    destinations: [ris]
"""

def _clean_up_on_exit(*stoppable: object) -> None:
    """Kill what this run started even when it ends early (an error, Ctrl-C, ``timeout``)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    for thing in stoppable:
        atexit.register(getattr(thing, "close", None) or thing.kill)


# --- the MLLP sink -------------------------------------------------------------------------
class MllpSink:
    """An MLLP receiver on the ``hl7`` package, in a thread of its own, that can go down (server
    and open connections closed) and come back on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.control_ids: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[Any] = set()
        threading.Thread(target=self._loop.run_forever, name="mllp-sink", daemon=True).start()

    async def _on_client(self, reader: Any, writer: Any) -> None:
        self._writers.add(writer)
        try:
            while True:
                message = await reader.readmessage()
                self.control_ids.append(str(message.segment("MSH")[10]))
                writer.writemessage(message.create_ack("AA", message_id=f"ACK{time.time_ns()}"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _up(self) -> None:
        self._server = await hl7.mllp.start_hl7_server(self._on_client, HOST, self.port,
                                                      reuse_address=True)

    async def _down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()

    def up(self) -> None:
        asyncio.run_coroutine_threadsafe(self._up(), self._loop).result(10)

    def down(self) -> None:
        asyncio.run_coroutine_threadsafe(self._down(), self._loop).result(10)


# --- bookkeeping ----------------------------------------------------------------------------
@dataclass
class Ledger:
    """What was offered to radflow and what it acknowledged (identifiers only)."""

    sent_dicom: set[str] = field(default_factory=set)
    acked_dicom: set[str] = field(default_factory=set)
    bad_dicom: set[str] = field(default_factory=set)
    bad_dicom_acked: set[str] = field(default_factory=set)
    sent_hl7: set[str] = field(default_factory=set)
    acked_hl7: set[str] = field(default_factory=set)
    bad_hl7: set[str] = field(default_factory=set)
    bad_hl7_acked: set[str] = field(default_factory=set)
    send_errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Chaos:
    kills: int = 0
    restart_failures: int = 0
    outages: dict[str, int] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)


def order(control_id: str, n: int, *, bad: bool = False) -> str:
    pid = "" if bad else f"PID|1||MRN{n}^^^HOSP^MR||SOAK^PATIENT{n}||19700101|F"
    segments = [
        f"MSH|^~\\&|RIS|HOSP|RADFLOW|HOSP|20261204010000||ORM^O01^ORM_O01|{control_id}|P|2.5.1",
        pid or "PID|1",
        "PV1|1|O",
        f"ORC|NW|PL{n}^RIS|FL{n}^RADFLOW||SC||^^^20261204010000",
        f"OBR|1|PL{n}^RIS|FL{n}^RADFLOW|CTHEAD^CT Head^LOCAL|||20261204010000|||||||||"
        f"||ACC{n}|RP{n}|||||CT||||||||||||||20261204010000",
    ]
    return "\r".join(segments) + "\r"


# --- traffic --------------------------------------------------------------------------------
class Traffic:
    def __init__(self, rf: RadflowProcess, work: Path, ledger: Ledger, stop: threading.Event,
                 rng: random.Random, bad_rate: float, study_interval: float,
                 order_interval: float) -> None:
        self.rf, self.work, self.ledger, self.stop, self.rng = rf, work, ledger, stop, rng
        self.bad_rate, self.study_interval, self.order_interval = (
            bad_rate, study_interval, order_interval)
        self.pending_files: list[dicomgen.Instance] = []
        self.pending_orders: list[tuple[str, str]] = []
        self._studies = 0

    # DICOM: a study every ``study_interval`` seconds, plus resends of what got no Success.
    def dicom_loop(self) -> None:
        while not self.stop.is_set():
            self._studies += 1
            folder = self.work / f"study{self._studies:06d}"
            batch = dicomgen.write_series(folder, self.rng.randint(2, 6))
            with self.ledger.lock:
                self.ledger.sent_dicom.update(i.sop_instance_uid for i in batch)
            batch = self.pending_files + batch
            self.pending_files = []
            try:
                if self._studies % 4 == 0:
                    self._send_storescu(batch)
                else:
                    self._send_pynetdicom(batch)
            except Exception:  # radflow down or killed mid-association: resend later
                self.ledger.send_errors += 1
            self.stop.wait(self.study_interval)

    def _record(self, inst: dicomgen.Instance, ok: bool) -> None:
        if ok:
            with self.ledger.lock:
                self.ledger.acked_dicom.add(inst.sop_instance_uid)
        elif inst.sop_instance_uid not in self.ledger.acked_dicom:
            self.pending_files.append(inst)

    def _send_pynetdicom(self, batch: list[dicomgen.Instance]) -> None:
        done: set[Path] = set()
        try:
            with association(self.rf, [(CT_IMAGE, SYNTAXES)], calling_ae="CT_1") as assoc:
                if not assoc.is_established:
                    raise ConnectionError("association refused")
                for inst in batch:
                    if self.rng.random() < self.bad_rate:
                        self._send_bad(assoc, inst)
                    status = assoc.send_c_store(inst.path)
                    done.add(inst.path)
                    self._record(inst, status is not None and int(status.Status) == 0)
                    if not assoc.is_established:
                        raise ConnectionError("association lost")
        finally:
            for inst in batch:
                if inst.path not in done:
                    self._record(inst, False)

    def _send_bad(self, assoc: Any, inst: dicomgen.Instance) -> None:
        """A truncated copy under a UID of its own: must be refused (B6)."""
        uid = dicomgen.generate_uid()
        ds = dicomgen.new_dataset("CT", sop_instance_uid=uid)
        path = dicomgen.write_part10(ds, inst.path.parent / f"bad-{uid}.dcm")
        dicomgen.truncated_copy(path, path.with_suffix(".trunc"), drop=40)
        status = send_raw_file(assoc, path.with_suffix(".trunc"))
        with self.ledger.lock:
            self.ledger.bad_dicom.add(uid)
            if status is not None and "Status" in status and int(status.Status) == 0:
                self.ledger.bad_dicom_acked.add(uid)

    def _send_storescu(self, batch: list[dicomgen.Instance]) -> None:
        run = StorescuRun(self.rf, [i.path for i in batch], "-aet", "CT_1",
                          *STORESCU_PROPOSE[dicomgen.TRANSFER_SYNTAXES["explicit_le"]])
        run.finish(120)
        acked = set(run.acknowledged)
        for inst in batch:
            self._record(inst, inst.path in acked)

    # HL7: an order every ``order_interval`` seconds on one connection, resends after failures.
    def hl7_loop(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            bad = self.rng.random() < self.bad_rate
            control_id = f"SOAK{n:07d}" + ("X" if bad else "")
            batch = [*self.pending_orders, (control_id, order(control_id, n, bad=bad))]
            self.pending_orders = []
            with self.ledger.lock:
                self.ledger.sent_hl7.add(control_id)
                if bad:
                    self.ledger.bad_hl7.add(control_id)
            self._send_orders(batch)
            self.stop.wait(self.order_interval)

    def _send_orders(self, batch: list[tuple[str, str]]) -> None:
        i = 0  # batch[i:] still needs sending, should the connection fail
        try:
            port = int(self.rf.config["hl7"]["listeners"][0]["port"])
            with MLLPClient(HOST, port) as client:
                client.socket.settimeout(10)
                for cid, text in batch:
                    answer = client.send_message(text)
                    raw = answer.decode() if isinstance(answer, bytes) else answer
                    code = str(hl7.parse(raw.strip("\x0b\x1c\r\n")).segment("MSA")[1])
                    with self.ledger.lock:
                        if code in ("AA", "CA"):
                            if cid in self.ledger.bad_hl7:
                                self.ledger.bad_hl7_acked.add(cid)
                            else:
                                self.ledger.acked_hl7.add(cid)
                        elif cid not in self.ledger.bad_hl7:
                            self.pending_orders.append((cid, text))
                    i += 1
        except Exception:
            # Connection refused (radflow down) or lost: resend the rest, as a RIS does.
            self.pending_orders.extend(batch[i:])
            self.ledger.send_errors += 1

    def flush(self) -> None:
        """After the run, resend once more what got no success (as senders do)."""
        orders, self.pending_orders = self.pending_orders, []
        if orders:
            self._send_orders(orders)
        files, self.pending_files = self.pending_files, []
        if files:
            with contextlib.suppress(Exception):
                self._send_pynetdicom(files)


# --- chaos ----------------------------------------------------------------------------------
def restart(rf: RadflowProcess, chaos: Chaos) -> None:
    for _ in range(5):
        try:
            rf.start()
            return
        except RadflowError as exc:
            chaos.restart_failures += 1
            print(f"restart failed: {str(exc)[:300]}", flush=True)
            with contextlib.suppress(Exception):
                rf.kill()
            time.sleep(2)
    raise SystemExit("radflow does not come back after a kill")


def chaos_loop(rf: RadflowProcess, sinks: dict[str, Storescp], mllp: MllpSink,
               chaos: Chaos, stop: threading.Event, rng: random.Random,
               kill_every: tuple[float, float], outage_every: tuple[float, float],
               outage_for: tuple[float, float]) -> None:
    next_kill = time.monotonic() + rng.uniform(*kill_every)
    next_outage = time.monotonic() + rng.uniform(*outage_every)
    down: tuple[str, float] | None = None
    run = 0
    while not stop.wait(1.0):
        now = time.monotonic()
        if rf.proc is not None and rf.running:
            rss, fds = proc_figures(rf.proc.pid)
            chaos.samples.append({"t": round(time.time()), "run": run, "rss_mb": round(rss, 1),
                                  "fds": fds})
        if now >= next_kill:
            rf.kill()
            chaos.kills += 1
            print(f"{time.strftime('%H:%M:%S')} kill -9 #{chaos.kills}", flush=True)
            time.sleep(rng.uniform(0.5, 3.0))
            restart(rf, chaos)
            run += 1
            next_kill = time.monotonic() + rng.uniform(*kill_every)
        if down is None and now >= next_outage:
            name = rng.choice([*sinks, "ris"])
            if name == "ris":
                mllp.down()
            else:
                sinks[name].kill()
            chaos.outages[name] = chaos.outages.get(name, 0) + 1
            down = (name, now + rng.uniform(*outage_for))
            print(f"{time.strftime('%H:%M:%S')} outage: {name} down", flush=True)
        elif down is not None and now >= down[1]:
            bring_up(down[0], sinks, mllp)
            print(f"{time.strftime('%H:%M:%S')} outage: {down[0]} back", flush=True)
            down = None
            next_outage = time.monotonic() + rng.uniform(*outage_every)
    if down is not None:
        bring_up(down[0], sinks, mllp)


def bring_up(name: str, sinks: dict[str, Storescp], mllp: MllpSink) -> None:
    if name == "ris":
        mllp.up()
    else:
        sinks[name].start()


# --- the end --------------------------------------------------------------------------------
def dead_letters(rf: RadflowProcess) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{rf.db_path}?mode=ro", uri=True, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(
            "SELECT id, destination, last_error FROM outbox WHERE state = 'dead'")]
    finally:
        conn.close()


def rejected_hl7(rf: RadflowProcess) -> set[str]:
    status, body = rf.http_get("/api/v1/hl7/messages?ack=AE,AR,CE,CR&limit=1000")
    if status != 200:
        return set()
    data = json.loads(body)
    items = data["items"] if isinstance(data, dict) else data
    return {str(i.get("control_id") or i.get("message_control_id") or "") for i in items}


def wait_drained(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(1.0)
    return cond()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=2.0, help="traffic and chaos time")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--bad-rate", type=float, default=0.01, help="share of malformed inputs")
    ap.add_argument("--kill-every", default="60,180", help="seconds between kills: MIN,MAX")
    ap.add_argument("--outage-every", default="45,120", help="seconds between outages: MIN,MAX")
    ap.add_argument("--outage-for", default="10,60", help="seconds an outage lasts: MIN,MAX")
    ap.add_argument("--study-interval", type=float, default=0.5)
    ap.add_argument("--order-interval", type=float, default=0.2)
    ap.add_argument("--drain-timeout", type=float, default=300.0)
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    ap.add_argument("--report", type=Path, help="write the figures as JSON here")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    pair = lambda text: tuple(float(x) for x in text.split(","))  # noqa: E731

    work = Path(tempfile.mkdtemp(prefix="radflow-soak-"))
    sinks = {"pacs": Storescp(work / "pacs", ae_title="PACS").start(),
             "ai": Storescp(work / "ai", ae_title="AI").start()}
    mllp = MllpSink()
    mllp.up()
    overrides = {
        "destinations": {
            **{name: {"type": "dimse", "host": HOST, "ae_title": s.ae_title, "port": s.port,
                      "idle_close": 2, "timeout": 20} for name, s in sinks.items()},
            "ris": {"type": "hl7", "host": HOST, "port": mllp.port, "ack_timeout": 10,
                    "connect_timeout": 5},
        },
        "delivery": {"retry": {"initial_delay": 0.5, "max_delay": 5.0,
                               "circuit_failures": 5, "circuit_cooldown": 2.0},
                     "poll_interval": 0.2},
    }
    rf = RadflowProcess(work / "radflow", overrides)
    _clean_up_on_exit(rf, *sinks.values())
    (Path(rf.config["routing"]["routes_dir"]) / "10-soak.yaml").write_text(ROUTES)
    rf.start()
    print(f"soak: {args.minutes:g} min, seed {seed}, work {work}", flush=True)

    ledger, chaos, stop = Ledger(), Chaos(), threading.Event()
    traffic = Traffic(rf, work / "data", ledger, stop, rng, args.bad_rate,
                      args.study_interval, args.order_interval)
    threads = [threading.Thread(target=traffic.dicom_loop, name="dicom"),
               threading.Thread(target=traffic.hl7_loop, name="hl7")]
    chaos_thread = threading.Thread(target=chaos_loop, name="chaos", args=(
        rf, sinks, mllp, chaos, stop, random.Random(seed + 1), pair(args.kill_every),
        pair(args.outage_every), pair(args.outage_for)))
    started = time.monotonic()
    for t in [*threads, chaos_thread]:
        t.start()
    try:
        stop.wait(args.minutes * 60)
    finally:
        stop.set()
        for t in [*threads, chaos_thread]:
            t.join(300)
    traffic_seconds = time.monotonic() - started
    if not rf.running:
        restart(rf, chaos)
    traffic.flush()

    def drained() -> bool:
        return all(ledger.acked_dicom <= s.received() for s in sinks.values()) and \
            ledger.acked_hl7 <= set(mllp.control_ids)

    drain_started = time.monotonic()
    ok_drain = wait_drained(drained, args.drain_timeout)
    drain_seconds = time.monotonic() - drain_started
    rss, fds = proc_figures(rf.proc.pid) if rf.proc else (0.0, 0)
    chaos.samples.append({"t": round(time.time()), "run": -1, "rss_mb": round(rss, 1),
                          "fds": fds})

    dicom = check(ledger.acked_dicom, {n: s.received() for n, s in sinks.items()},
                  sent=ledger.sent_dicom, rf=rf)
    orders = check(ledger.acked_hl7, {"ris": mllp.control_ids}, sent=ledger.sent_hl7)
    dead = dead_letters(rf)
    rejected = rejected_hl7(rf)
    bad_reached = {n: sorted(ledger.bad_dicom & s.received()) for n, s in sinks.items()}
    max_rss = max((s["rss_mb"] for s in chaos.samples), default=0.0)
    max_fds = max((s["fds"] for s in chaos.samples), default=0)
    problems = []
    if not dicom.ok:
        problems.append("DICOM:\n" + dicom.report())
    if not orders.ok:
        problems.append("HL7:\n" + orders.report())
    if dead:
        problems.append(f"{len(dead)} dead letters (no injected input should reach a queue): "
                        f"{dead[:3]}")
    if rejected - ledger.bad_hl7 - {""}:
        problems.append(f"HL7 rejected but well-formed: {sorted(rejected - ledger.bad_hl7)[:5]}")
    if ledger.bad_dicom_acked or ledger.bad_hl7_acked:
        problems.append(f"malformed input acknowledged: {sorted(ledger.bad_dicom_acked)[:3]} "
                        f"{sorted(ledger.bad_hl7_acked)[:3]}")
    if any(bad_reached.values()):
        problems.append(f"malformed DICOM reached a destination: {bad_reached}")
    if max_rss > MAX_RSS_MB or max_fds > MAX_FDS:
        problems.append(f"growth: max RSS {max_rss:.0f} MiB, max fds {max_fds}")
    if not ok_drain:
        problems.append(f"queues not drained within {args.drain_timeout:g} s")

    figures = {
        "minutes": round(traffic_seconds / 60, 1), "seed": seed,
        "instances_sent": len(ledger.sent_dicom), "instances_acked": len(ledger.acked_dicom),
        "orders_sent": len(ledger.sent_hl7), "orders_acked": len(ledger.acked_hl7),
        "bad_dicom_injected": len(ledger.bad_dicom), "bad_hl7_injected": len(ledger.bad_hl7),
        "bad_hl7_rejected_listed": len(rejected & ledger.bad_hl7),
        "delivered": {**dicom.delivered, **orders.delivered},
        "kills": chaos.kills, "restart_failures": chaos.restart_failures,
        "outages": chaos.outages, "send_errors_retried": ledger.send_errors,
        "drain_seconds": round(drain_seconds, 1), "max_rss_mb": max_rss, "max_fds": max_fds,
        "final_rss_mb": round(rss, 1), "final_fds": fds,
        "dead_letters": len(dead), "verdict": "FAIL" if problems else "PASS",
    }
    for key, value in figures.items():
        print(f"{key:>24}: {value}")
    for problem in problems:
        print(problem)
    print(f"verdict: {figures['verdict']}")
    if args.report:
        args.report.write_text(json.dumps({**figures, "problems": problems,
                                           "samples": chaos.samples}, indent=1))
    rf.stop()
    for sink in sinks.values():
        sink.stop()
    mllp.down()
    if not args.keep and not problems:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())


