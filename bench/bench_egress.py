"""Delivery benchmark: radflow's C-STORE sender and radflow as a router, beside the real peers.

Three parts, each measured in the same run as its peers, on the same cached data
(``bench/_common``: 500 CT-like 512x512 instances, 2,000 small 64x64 ones):

1. **sender**: radflow's DIMSE sender (``engine.egress.dimse``, one association, batches of 64,
   streamed from the files) against DCMTK ``storescu`` on the same files, both into a fresh DCMTK
   ``storescp``; plus the dispatcher path (outbox rows in SQLite, leases, verdicts) and, on a
   slice of the small set, stock pynetdicom ``send_c_store`` without TCP_NODELAY (the ~45 ms
   stall the sender removes).
2. **router end to end**: ``storescu → radflow → storescp`` (routing rules + dispatcher) beside
   ``storescu → storescp`` direct and ``storescu → Orthanc → storescp`` (Lua
   ``OnStoredInstance`` → ``SendToModality``), each timed until the sink's last arrival (the
   table also gives each path's ratio to direct within the same round, whose median stands up
   better to this machine's drifting speed than a ratio of medians); plus
   an "fsync-per-ack floor" row (no DICOM: each object written, fsync'd and journalled before a
   1-byte ack over loopback), the ceiling of any receiver that answers only once it is durable.
3. **backlog**: 50,000 outbox rows for a destination that is down; radflow's RSS while it waits,
   then the drain rate once the destination (storescp) comes up, and RSS while draining.

    python bench/bench_egress.py [--quick] [--repeat N] [--parts 1,2,3]

Every peer runs with ``TCP_NODELAY=1`` (Debian's DCMTK and Orthanc leave Nagle on otherwise).
Nothing here asserts: it prints figures and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (
    DEFAULT_DATA_DIR,
    LOOPBACK,
    BenchData,
    DataSpec,
    dcmtk_tool,
    ensure_dataset,
    free_port,
    install_signal_handlers,
    median_or_none,
    nodelay_env,
    print_table,
    python_exe,
    repo_root,
    spawn,
    stop_process,
    wait_for_http_ok,
    wait_for_port,
    warm_page_cache,
)

ORTHANC = "/usr/sbin/Orthanc"


def specs(quick: bool) -> list[DataSpec]:
    ct, small = (50, 200) if quick else (500, 2000)
    return [DataSpec(name="ct", count=ct, rows=512, cols=512, per_series=min(50, ct // 2)),
            DataSpec(name="small", count=small, rows=64, cols=64,
                     per_series=min(100, small // 2))]


# --------------------------------------------------------------------------- sinks
class Sink:
    """A fresh DCMTK storescp writing into its own folder; arrivals counted by files."""

    def __init__(self, work: Path, name: str, *, port: int | None = None) -> None:
        self.dir = work / f"sink-{name}-{time.time_ns()}"
        self.dir.mkdir(parents=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sink:
        self.proc = spawn([dcmtk_tool("storescp"), "-aet", "SINK", "-od", str(self.dir),
                           "-uf", str(self.port)], log_path=self.dir.parent / "storescp.log",
                          env=nodelay_env(), cwd=self.dir)
        wait_for_port(self.port, proc=self.proc)
        return self

    def count(self) -> int:
        with os.scandir(self.dir) as it:
            return sum(1 for _ in it)

    def wait_count(self, n: int, timeout: float) -> float | None:
        """perf_counter() when ``n`` files exist (polled every 10 ms), None on timeout."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.count() >= n:
                return time.perf_counter()
            time.sleep(0.01)
        return None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def storescu(port: int, files: Sequence[Path], ae: str = "SINK"
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dcmtk_tool("storescu"), "-aec", ae, LOOPBACK, str(port),
                           *map(str, files)], env=nodelay_env(), capture_output=True, text=True,
                          timeout=600, check=False)


# --------------------------------------------------------------------------- part 1
def deliveries(data: BenchData) -> list[Any]:
    import pydicom

    from engine.egress.delivery import Delivery

    out = []
    for i, path in enumerate(data.files):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out.append(Delivery(i + 1, "sink", "dicom", {
            "spool_path": str(path.relative_to(data.root)),
            "sop_class_uid": str(ds.SOPClassUID), "sop_instance_uid": str(ds.SOPInstanceUID),
            "transfer_syntax_uid": str(ds.file_meta.TransferSyntaxUID),
            # as the router records them: each object is verified before it is sent
            "size_bytes": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}, 1))
    return out


def run_sender(data: BenchData, sink: Sink, items: list[Any]) -> float:
    from engine.egress.dimse import DimseSender
    from engine.settings import DimseDestination

    sender = DimseSender("sink", DimseDestination(type="dimse", ae_title="SINK", host=LOOPBACK,
                                                  port=sink.port, batch_size=64), data.root)
    t0 = time.perf_counter()
    errors = 0
    for k in range(0, len(items), 64):
        errors += sum(1 for o in sender.send_batch(items[k:k + 64]) if o.error)
    elapsed = time.perf_counter() - t0
    sender._release()
    if errors:
        raise RuntimeError(f"{errors} sends failed")
    return elapsed


def run_dispatcher(data: BenchData, sink: Sink, items: list[Any], work: Path) -> float:
    """Rows in a fresh SQLite outbox, one dispatcher worker: lease, send, verdicts."""
    from engine.durable.sqlite import SqliteStore
    from engine.durable.store import NewOutboxRow
    from engine.egress.dispatcher import Dispatcher
    from engine.settings import DeliverySettings, DimseDestination

    async def go() -> float:
        store = SqliteStore(work / f"outbox-{time.time_ns()}.db")
        await store.open()
        try:
            await store.enqueue_outbox([NewOutboxRow("sink", "dicom", json.dumps(d.payload))
                                        for d in items], time.time())
            dest = DimseDestination(type="dimse", ae_title="SINK", host=LOOPBACK,
                                    port=sink.port, batch_size=64, concurrency=1)
            disp = Dispatcher(store, {"sink": dest}, DeliverySettings(poll_interval=0.01),
                              data.root)
            t0 = time.perf_counter()
            await disp.start()
            while True:  # polled like an operator would, not in a tight loop
                (stats,) = await store.outbox_stats(["sink"])
                if stats.pending + stats.leased == 0:
                    break
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - t0
            await disp.stop(5)
            return elapsed
        finally:
            await store.close()

    return asyncio.run(go())


def run_stock_pynetdicom(data: BenchData, sink: Sink, n: int) -> float:
    """pynetdicom's own send_c_store(path), default socket (Nagle on): the stall."""
    import pydicom
    from pynetdicom import AE

    files = list(data.files[:n])
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    ae = AE(ae_title="STOCK")
    ae.add_requested_context(first.SOPClassUID, [first.file_meta.TransferSyntaxUID])
    assoc = ae.associate(LOOPBACK, sink.port, ae_title="SINK")
    t0 = time.perf_counter()
    for f in files:
        assoc.send_c_store(f)
    elapsed = time.perf_counter() - t0
    assoc.release()
    return elapsed


def part_sender(datas: list[BenchData], work: Path, repeat: int) -> None:
    print("\n== 1. C-STORE sending into DCMTK storescp (one association) ==", flush=True)
    rows = []
    for data in datas:
        warm_page_cache(data.files)
        items = deliveries(data)
        results: dict[str, list[float]] = {"storescu": [], "radflow sender": [],
                                           "radflow dispatcher": []}
        for _ in range(repeat):
            for name in results:
                sink = Sink(work, name).start()
                try:
                    if name == "storescu":
                        t0 = time.perf_counter()
                        proc = storescu(sink.port, data.files)
                        if proc.returncode != 0:
                            raise RuntimeError(proc.stdout[-500:] + proc.stderr[-500:])
                        elapsed = time.perf_counter() - t0
                    elif name == "radflow sender":
                        elapsed = run_sender(data, sink, items)
                    else:
                        elapsed = run_dispatcher(data, sink, items, work)
                    got = sink.count()
                    if got != data.count:
                        raise RuntimeError(f"{name}: sink has {got} of {data.count}")
                    results[name].append(data.count / elapsed)
                finally:
                    sink.stop()
        med = {k: median_or_none(v) or 0.0 for k, v in results.items()}
        for name, rate in med.items():
            rows.append([f"{data.spec.name} x{data.count}", name, f"{rate:,.0f}",
                         f"{rate / med['storescu']:.2f}"])
        if data.spec.name == "small":
            n = min(100, data.count)
            sink = Sink(work, "stock").start()
            try:
                rate = n / run_stock_pynetdicom(data, sink, n)
            finally:
                sink.stop()
            rows.append([f"small x{n}", "stock pynetdicom (Nagle on)", f"{rate:,.0f}",
                         f"{rate / med['storescu']:.2f}"])
    print_table(["data", "client", "inst/s (median)", "ratio to storescu"], rows)


# --------------------------------------------------------------------------- part 2
def radflow_config(work: Path, sink_port: int, *, dicom_port: int, http_port: int,
                   mllp_port: int, destination_port: int | None = None,
                   retry: dict[str, Any] | None = None) -> Path:
    import yaml

    base = work / f"radflow-{time.time_ns()}"
    routes = base / "routes"
    routes.mkdir(parents=True)
    (routes / "10-all.yaml").write_text(
        "version: 1\nroutes:\n  - name: all-to-sink\n    destinations: [sink]\n")
    config = {
        "storage": {"sqlite_path": str(base / "radflow.db"), "spool_dir": str(base / "spool"),
                    "min_free_mb": 1},
        "dicom": {"listeners": [{"ae_title": "RADFLOW", "host": LOOPBACK, "port": dicom_port,
                                 "max_pdu_size": 131072, "accept_any_calling": True}]},
        "hl7": {"listeners": [{"host": LOOPBACK, "port": mllp_port}]},
        "http": {"host": LOOPBACK, "port": http_port},
        "routing": {"routes_dir": str(routes), "reload_poll_seconds": 0},
        "worklist": {"mapping_file": str(repo_root() / "routes" / "worklist" / "hl7-mwl.yaml")},
        "destinations": {"sink": {"type": "dimse", "ae_title": "SINK", "host": LOOPBACK,
                                  "port": destination_port or sink_port, "concurrency": 1,
                                  "batch_size": 64, "retry": retry or {}}},
        "delivery": {"poll_interval": 0.05, "stats_interval": 1.0},
        "logging": {"level": "warning", "format": "json"},
        "engine": {"shutdown_grace": 10},
    }
    path = base / "radflow.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_radflow(config: Path, http_port: int, dicom_port: int) -> subprocess.Popen[bytes]:
    proc = spawn([python_exe(), "-m", "engine", "run", "--config", str(config)],
                 log_path=config.parent / "radflow.log", cwd=repo_root(),
                 env={k: v for k, v in os.environ.items() if not k.startswith("RADFLOW_")})
    wait_for_http_ok(f"http://{LOOPBACK}:{http_port}/readyz", timeout=60, proc=proc)
    wait_for_port(dicom_port, proc=proc)
    return proc


def orthanc_router(work: Path, sink_port: int) -> tuple[subprocess.Popen[bytes], int]:
    base = work / f"orthanc-{time.time_ns()}"
    base.mkdir()
    dicom_port, http_port = free_port(), free_port()
    (base / "forward.lua").write_text(
        "function OnStoredInstance(instanceId, tags, metadata, origin)\n"
        "  SendToModality(instanceId, 'sink')\nend\n")
    (base / "orthanc.json").write_text(json.dumps({
        "Name": "bench-router", "StorageDirectory": str(base / "db"),
        "IndexDirectory": str(base / "db"), "DicomAet": "ORTHANC", "DicomPort": dicom_port,
        "HttpPort": http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False, "LuaScripts": [str(base / "forward.lua")],
        "DicomModalities": {"sink": ["SINK", LOOPBACK, sink_port]}, "Plugins": []}))
    proc = spawn([ORTHANC, str(base / "orthanc.json")], log_path=base / "orthanc.log",
                 env=nodelay_env(), cwd=base)
    wait_for_http_ok(f"http://{LOOPBACK}:{http_port}/system", timeout=60, proc=proc)
    wait_for_port(dicom_port, proc=proc)
    return proc, dicom_port


FLOOR = "fsync-per-ack floor"


def fsync_floor(data: BenchData, work: Path) -> float:
    """Objects/s of the fsync-per-ack floor: the ceiling of any receiver that must make each
    object durable before it answers, on this machine's disk.

    radflow's success status waits for an fsync'd file plus a committed (fsync'd) journal row;
    DCMTK storescp does neither, so the "direct" row is not a bar a durable receiver can reach.
    This strips out DICOM and almost all Python work: a sender thread streams ``data.files``
    (read once up front) over one loopback TCP connection (TCP_NODELAY both sides) as a 4-byte
    big-endian length plus the bytes, and waits for a 1-byte ack after each, like one storescu
    association waiting for each response. The receiver thread, per blob: receives it fully,
    writes it to a new file (O_CREAT|O_EXCL) in a fresh temp dir under ``work``, fsyncs and
    closes it, appends ~200 bytes to a journal file and fdatasyncs that (the committed row),
    then acks. Returns count / elapsed, timed by the sender from its first send to its last ack.
    """
    blobs = [p.read_bytes() for p in data.files]
    root = Path(tempfile.mkdtemp(prefix="fsync-floor-", dir=work))
    errors: list[BaseException] = []
    listener = socket.create_server((LOOPBACK, 0))
    listener.settimeout(60)

    def recv_exact(sock: socket.socket, n: int) -> bytearray:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = sock.recv_into(view[got:])
            if not k:
                raise ConnectionError(f"peer closed after {got} of {n} bytes")
            got += k
        return buf

    def receive() -> None:
        try:
            conn, _ = listener.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.settimeout(60)
                journal = os.open(root / "journal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                try:
                    for i in range(len(blobs)):
                        (size,) = struct.unpack(">I", recv_exact(conn, 4))
                        blob = recv_exact(conn, size)
                        fd = os.open(root / f"{i:08d}.dcm",
                                     os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                        try:
                            view, done = memoryview(blob), 0
                            while done < size:
                                done += os.write(fd, view[done:])
                            os.fsync(fd)
                        finally:
                            os.close(fd)
                        row = f"{i:08d} {size} {time.time_ns()} ".encode().ljust(199, b".")
                        os.write(journal, row + b"\n")
                        os.fdatasync(journal)
                        conn.sendall(b"\x01")
                finally:
                    os.close(journal)
        except BaseException as exc:  # surfaced by the caller after join()
            errors.append(exc)

    receiver = threading.Thread(target=receive, name="fsync-floor-receiver", daemon=True)
    receiver.start()
    try:
        with socket.create_connection((LOOPBACK, listener.getsockname()[1]), timeout=60) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t0 = time.perf_counter()
            for blob in blobs:
                s.sendall(struct.pack(">I", len(blob)))
                s.sendall(blob)
                if s.recv(1) != b"\x01":
                    raise ConnectionError("receiver closed without acknowledging")
            elapsed = time.perf_counter() - t0
        receiver.join(60)
        if errors:
            raise errors[0]
        return len(blobs) / elapsed
    finally:
        listener.close()
        receiver.join(60)
        shutil.rmtree(root, ignore_errors=True)


def part_router(datas: list[BenchData], work: Path, repeat: int) -> None:
    print("\n== 2. End to end: storescu -> router -> storescp, until the sink's last "
          "arrival ==", flush=True)
    rows = []
    for data in datas:
        warm_page_cache(data.files)
        results: dict[str, list[float]] = {"direct": [], "radflow": [], "orthanc (lua)": [],
                                           FLOOR: []}
        sender_done: dict[str, list[float]] = {k: [] for k in results}
        # This machine's speed drifts by 2x within minutes: a ratio taken inside one round
        # (each path ran back to back) is steadier than the ratio of two medians.
        rounds: list[dict[str, float]] = []
        for _ in range(repeat):
            rounds.append({})
            for name in results:
                if name == "orthanc (lua)" and not os.access(ORTHANC, os.X_OK):
                    continue
                if name == FLOOR:  # no sink, no DICOM: its sender's view is the whole story
                    floor_rate = fsync_floor(data, work)
                    results[name].append(floor_rate)
                    rounds[-1][name] = floor_rate
                    sender_done[name].append(data.count / floor_rate)
                    continue
                sink = Sink(work, name).start()
                router: subprocess.Popen[bytes] | None = None
                try:
                    if name == "direct":
                        port, ae = sink.port, "SINK"
                    elif name == "radflow":
                        port, http, mllp = free_port(), free_port(), free_port()
                        cfg = radflow_config(work, sink.port, dicom_port=port, http_port=http,
                                             mllp_port=mllp)
                        router, ae = start_radflow(cfg, http, port), "RADFLOW"
                    else:
                        router, port = orthanc_router(work, sink.port)
                        ae = "ORTHANC"
                    t0 = time.perf_counter()
                    proc = subprocess.Popen(
                        [dcmtk_tool("storescu"), "-aec", ae, LOOPBACK, str(port),
                         *map(str, data.files)], env=nodelay_env(), stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
                    proc.wait(600)
                    t_sender = time.perf_counter() - t0
                    t_last = sink.wait_count(data.count, timeout=600)
                    if t_last is None:
                        print(f"  {name}: only {sink.count()} of {data.count} arrived",
                              flush=True)
                        continue
                    results[name].append(data.count / (t_last - t0))
                    rounds[-1][name] = data.count / (t_last - t0)
                    sender_done[name].append(t_sender)
                finally:
                    if router is not None:
                        stop_process(router, term_timeout=30)
                    sink.stop()
        direct = median_or_none(results["direct"]) or 0.0
        for name, rates in results.items():
            rate = median_or_none(rates)
            if rate is None:
                rows.append([f"{data.spec.name} x{data.count}", name, "n/a", "", "", ""])
                continue
            paired = median_or_none([r[name] / r["direct"] for r in rounds
                                     if name in r and r.get("direct")])
            rows.append([f"{data.spec.name} x{data.count}", name, f"{rate:,.0f}",
                         f"{median_or_none(sender_done[name]) or 0:.2f} s",
                         f"{rate / direct:.2f}" if direct else "",
                         f"{paired:.2f}" if paired is not None else ""])
    print_table(["data", "path", "inst/s at the sink", "sender done after",
                 "ratio to direct", "same-round ratio (median)"], rows)


# --------------------------------------------------------------------------- part 3
def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def part_backlog(data: BenchData, work: Path, rows_total: int) -> None:
    print(f"\n== 3. A {rows_total:,}-row backlog: waiting while the destination is down, then "
          "draining into storescp ==", flush=True)
    dest_port, port, http, mllp = free_port(), free_port(), free_port(), free_port()
    cfg = radflow_config(work, dest_port, dicom_port=port, http_port=http, mllp_port=mllp,
                         retry={"initial_delay": 0.5, "max_delay": 2.0,
                                "circuit_failures": 3, "circuit_cooldown": 1.0})
    proc = start_radflow(cfg, http, port)
    sink: Sink | None = None
    try:
        spool = cfg.parent / "spool"
        # Copied after start-up (radflow removes spool files without a journal row at start).
        # The backlog's objects: the small set copied into radflow's spool, each referenced by
        # many rows (a drain measures the queue, not the disk).
        target = spool / "objects" / "bench"
        shutil.copytree(data.root, target)
        import pydicom

        objects = []
        for path in sorted(target.rglob("*.dcm")):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            objects.append({"spool_path": str(path.relative_to(spool)),
                            "sop_class_uid": str(ds.SOPClassUID),
                            "sop_instance_uid": str(ds.SOPInstanceUID),
                            "transfer_syntax_uid": str(ds.file_meta.TransferSyntaxUID),
                            "size_bytes": path.stat().st_size,
                            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
        rss_idle = rss_mb(proc.pid)
        db = sqlite3.connect(cfg.parent / "radflow.db", timeout=60)
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO outbox (destination, kind, source_table, source_id, route, payload, "
            "study_instance_uid, state, attempts, next_attempt_at, created_at, updated_at) "
            "VALUES ('sink', 'dicom', 'instances', 0, 'bench', ?, NULL, 'pending', 0, ?, ?, ?)",
            ((json.dumps({"v": 1, "kind": "dicom", "object": objects[i % len(objects)],
                          "morph": []}), now, now, now) for i in range(rows_total)))
        db.execute("COMMIT")
        waiting: list[float] = []
        for _ in range(20):  # 10 s with the destination down
            time.sleep(0.5)
            waiting.append(rss_mb(proc.pid))

        def done() -> int:
            return int(db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'done'"
                                  ).fetchone()[0])

        def settled() -> int:
            return int(db.execute("SELECT COUNT(*) FROM outbox WHERE state IN ('done', 'dead')"
                                  ).fetchone()[0])

        tried = int(db.execute("SELECT COUNT(*) FROM outbox WHERE attempts > 0").fetchone()[0])
        sink = Sink(work, "backlog", port=dest_port).start()
        t0 = time.perf_counter()
        draining: list[float] = []
        last = time.perf_counter()
        while settled() < rows_total:
            time.sleep(0.25)
            draining.append(rss_mb(proc.pid))
            if time.perf_counter() - last > 900:
                break
        elapsed = time.perf_counter() - t0
        finished = done()
        db.close()
    finally:
        stop_process(proc, term_timeout=30)
        if sink is not None:
            sink.stop()
    print_table(["figure", "value"], [
        ["rows", f"{rows_total:,} ({len(objects)} distinct small instances)"],
        ["rows tried while down (circuit breaker rests)", f"{tried:,}"],
        ["RSS before the backlog", f"{rss_idle:.0f} MB"],
        ["RSS while waiting (min / max)", f"{min(waiting):.0f} / {max(waiting):.0f} MB"],
        ["drain: delivered", f"{finished:,} in {elapsed:.1f} s = "
                             f"{finished / elapsed:,.0f} rows/s"],
        ["RSS while draining (min / max)",
         f"{min(draining, default=0):.0f} / {max(draining, default=0):.0f} MB"]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 CT / 200 small, 5,000 rows")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--parts", default="1,2,3")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--backlog", type=int, default=None)
    args = parser.parse_args(argv)
    install_signal_handlers()
    from engine.observability.logging import configure_logging

    configure_logging("warning", "console")  # the in-process sender's per-row lines are debug
    parts = {int(p) for p in args.parts.split(",")}
    datas = [ensure_dataset(args.data_dir, s) for s in specs(args.quick)]
    work = Path(tempfile.mkdtemp(prefix="radflow-bench-egress-"))
    try:
        if 1 in parts:
            part_sender(datas, work, args.repeat)
        if 2 in parts:
            part_router(datas, work, args.repeat)
        if 3 in parts:
            small = next(d for d in datas if d.spec.name == "small")
            part_backlog(small, work, args.backlog or (5000 if args.quick else 50_000))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
