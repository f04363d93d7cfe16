"""Nodes benchmark: a delivery backlog drained by 1 radflow node against 2 nodes on one
PostgreSQL and one shared spool, and the failover time when a node is killed with SIGKILL.

1. **drain**: ``--rows`` (default 50,000) outbox rows for a DCMTK ``storescp`` sink, written
   straight into a fresh schema once the node(s) are up (the small 64x64 set, each file named
   by many rows: a drain measures the queue, not the disk); time from the sink coming up to
   the last row done, with 1 node and then with 2 (each node: one association to the sink,
   a forking storescp).
2. **failover**: 2 nodes draining with ``delivery.lease_seconds`` = ``--lease``, behind HAProxy
   (the settings of deploy/haproxy/haproxy.cfg: ``/readyz`` every ``--check-inter`` s, down
   after 2 failures, a refused connection sent to another node at once unless
   ``--no-redispatch``); two DCMTK ``storescu`` senders stream through the balancer (100
   files per association, a failed association sent again at once with the files that got no
   Success, as a modality would, only faster). Node A is killed (SIGKILL) while it holds leases
   and a sender's association. Figures: time from the kill to the last of the rows A had
   leased being delivered by node B (target: lease time + 5 s), and the intake pause each
   sender saw: the longest gap between two successive Success responses from the kill on
   (beside the longest gap before it, the machine's own jitter).

    python bench/bench_nodes.py [--rows N] [--lease S] [--check-inter S] [--pg-dsn DSN]
                                [--no-redispatch] [--parts 1,2]

Nothing here asserts: it prints figures and the ratio 2 nodes / 1 node.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg
import yaml
from _common import (
    DEFAULT_DATA_DIR,
    LOOPBACK,
    DataSpec,
    dcmtk_tool,
    ensure_dataset,
    free_port,
    install_signal_handlers,
    nodelay_env,
    print_table,
    python_exe,
    repo_root,
    spawn,
    stop_process,
    wait_for_http_ok,
    wait_for_port,
)
from bench_egress import Sink

DEFAULT_PG_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"


class ForkingSink(Sink):
    """storescp with ``--fork``: one process per association, so two nodes' associations are
    served at once (a plain storescp serves one association at a time)."""

    def start(self) -> ForkingSink:
        self.proc = spawn([dcmtk_tool("storescp"), "--fork", "-aet", "SINK", "-od",
                           str(self.dir), "-uf", str(self.port)],
                          log_path=self.dir.parent / "storescp.log", env=nodelay_env(),
                          cwd=self.dir)
        wait_for_port(self.port, proc=self.proc)
        return self


class Site:
    """Nodes on one schema and one spool, delivering to one sink."""

    def __init__(self, work: Path, dsn: str, sink_port: int, lease: float) -> None:
        self.work = work
        self.dsn = dsn
        self.schema = f"bench_nodes_{os.getpid()}_{time.monotonic_ns() % 10**9}"
        self.spool = work / "spool"
        self.routes = work / "routes"
        self.routes.mkdir(parents=True, exist_ok=True)
        self.sink_port = sink_port
        self.lease = lease
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        #: node name -> (DICOM port, HTTP port)
        self.ports: dict[str, tuple[int, int]] = {}

    def start_node(self, name: str) -> None:
        http, dicom, mllp = free_port(), free_port(), free_port()
        config = {
            "storage": {"backend": "postgresql",
                        "postgresql": {"dsn": self.dsn, "schema": self.schema},
                        "spool_dir": str(self.spool), "min_free_mb": 1},
            "engine": {"node_id": name, "shutdown_grace": 5},
            "dicom": {"listeners": [{"ae_title": "RADFLOW", "host": LOOPBACK, "port": dicom,
                                     "accept_any_calling": True}]},
            "hl7": {"listeners": [{"host": LOOPBACK, "port": mllp}]},
            "http": {"host": LOOPBACK, "port": http},
            "routing": {"routes_dir": str(self.routes), "reload_poll_seconds": 0},
            "worklist": {"mapping_file": str(repo_root() / "routes" / "worklist" /
                                             "hl7-mwl.yaml")},
            "destinations": {"sink": {"type": "dimse", "ae_title": "SINK", "host": LOOPBACK,
                                      "port": self.sink_port, "concurrency": 1,
                                      "batch_size": 64,
                                      "retry": {"initial_delay": 0.5, "max_delay": 1.0,
                                                "circuit_failures": 1000}}},
            "delivery": {"poll_interval": 0.05, "stats_interval": 1.0,
                         "lease_seconds": self.lease},
            "logging": {"level": "warning", "format": "json"},
        }
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        proc = spawn([python_exe(), "-m", "engine", "run", "--config", str(path)],
                     log_path=self.work / f"{name}.log", cwd=repo_root(),
                     env={k: v for k, v in os.environ.items() if not k.startswith("RADFLOW_")})
        wait_for_http_ok(f"http://{LOOPBACK}:{http}/readyz", timeout=120, proc=proc)
        self.nodes[name] = proc
        self.ports[name] = (dicom, http)

    def fill(self, data_root: Path, rows: int) -> None:
        """The backlog: rows naming the small set's files, copied into the shared spool after
        the nodes started (a node's start-up sweep removes spool files no row names)."""
        target = self.spool / "objects" / "bench"
        shutil.copytree(data_root, target)
        import pydicom

        objects = []
        for path in sorted(target.rglob("*.dcm")):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            objects.append({"spool_path": str(path.relative_to(self.spool)),
                            "sop_class_uid": str(ds.SOPClassUID),
                            "sop_instance_uid": str(ds.SOPInstanceUID),
                            "transfer_syntax_uid": str(ds.file_meta.TransferSyntaxUID),
                            "size_bytes": path.stat().st_size,
                            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
        now = time.time()
        with self.connect() as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO outbox (destination, kind, source_table, source_id, route, "
                "payload, state, attempts, next_attempt_at, created_at, updated_at) "
                "VALUES ('sink', 'dicom', 'instances', 0, 'bench', %s, 'pending', 0, %s, %s, %s)",
                [(json.dumps({"v": 1, "kind": "dicom", "object": objects[i % len(objects)],
                              "morph": []}), now, now, now) for i in range(rows)])

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True,
                               options=f"-c search_path={self.schema}")

    def count(self, where: str) -> int:
        with self.connect() as conn:
            row = conn.execute(f"SELECT count(*) FROM outbox WHERE {where}").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        for proc in self.nodes.values():
            stop_process(proc, term_timeout=20)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


def drain(work: Path, dsn: str, data_root: Path, rows: int, nodes: int) -> float:
    sink = ForkingSink(work, f"drain{nodes}")
    site = Site(work / f"site{nodes}", dsn, sink.port, lease=60)
    try:
        for n in range(nodes):
            site.start_node(f"node-{n}")
        site.fill(data_root, rows)
        time.sleep(3)  # the nodes find the destination down and rest
        sink.start()
        t0 = time.perf_counter()
        deadline = t0 + 1800
        while site.count("state = 'done'") < rows and time.perf_counter() < deadline:
            time.sleep(0.2)
        return time.perf_counter() - t0
    finally:
        site.close()
        sink.stop()


class Balancer:
    """HAProxy in front of the nodes' DICOM ports, with deploy/haproxy/haproxy.cfg's settings
    (mode tcp, leastconn, health from /readyz, ``fall 2 rise 2``, redispatch) and ``inter``
    as given."""

    def __init__(self, work: Path, nodes: list[tuple[int, int]], inter: float,
                 redispatch: bool = True) -> None:
        self.port = free_port()
        self.work = work
        lines = ["global", "    maxconn 1000", "defaults", "    mode tcp",
                 "    timeout connect 5s", "    timeout client 1h", "    timeout server 1h",
                 "    timeout tunnel 1h", "    timeout client-fin 30s",
                 "    timeout server-fin 30s", "backend radflow_dicom", "    balance leastconn",
                 "    option httpchk GET /readyz", "    http-check expect status 200",
                 f"    default-server inter {int(inter * 1000)}ms fall 2 rise 2"]
        if redispatch:  # a refused connection goes to another node at its last retry
            lines += ["    option redispatch", "    retries 1"]
        lines += [f"    server n{i} {LOOPBACK}:{dicom} check port {http}"
                  for i, (dicom, http) in enumerate(nodes)]
        lines += ["frontend dicom", f"    bind {LOOPBACK}:{self.port}",
                  "    default_backend radflow_dicom"]
        work.mkdir(parents=True, exist_ok=True)
        self.config = work / "haproxy.cfg"
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Balancer:
        exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
        self.proc = spawn([exe, "-db", "-f", str(self.config)], log_path=self.work / "haproxy.log")
        wait_for_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, term_timeout=10)


class Sender:
    """A modality behind the balancer: DCMTK storescu sending ``files`` over and over, 100 per
    association; an association that fails is sent again at once with the files that got no
    Success. Records the time of every Success response."""

    PER_ASSOCIATION = 100

    def __init__(self, name: str, port: int, files: list[Path]) -> None:
        self.name = name
        self.port = port
        self.files = files
        self.successes: list[float] = []
        self.failed_associations = 0
        self._stop = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._run, name=f"sender-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = 0
        pending: list[Path] = []
        while not self._stop.is_set():
            if not pending:
                pending = [self.files[(start + i) % len(self.files)]
                           for i in range(self.PER_ASSOCIATION)]
                start += self.PER_ASSOCIATION
            acknowledged = self._associate(pending)
            if self._stop.is_set():
                break
            if len(acknowledged) < len(pending):
                self.failed_associations += 1
                time.sleep(0.1)  # a modality retries after a while; this one at once
            pending = [f for f in pending if f not in acknowledged]

    def _associate(self, files: list[Path]) -> set[Path]:
        done: set[Path] = set()
        proc = subprocess.Popen(
            [dcmtk_tool("storescu"), "-v", "-aec", "RADFLOW", LOOPBACK, str(self.port),
             *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True, env=nodelay_env())
        self._proc = proc
        in_flight: Path | None = None
        assert proc.stdout is not None
        for line in proc.stdout:
            if "Sending file: " in line:
                in_flight = Path(line.split("Sending file: ", 1)[1].strip())
            elif "Received Store Response (Success)" in line and in_flight is not None:
                self.successes.append(time.perf_counter())
                done.add(in_flight)
                in_flight = None
        proc.wait()
        return done

    def stop(self) -> None:
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
        self._thread.join(30)

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time between successive Successes in [start, end] (the stretches
        from ``start`` to the first one and from the last one to ``end`` included)."""
        times = [start, *(t for t in self.successes if start < t <= end), end]
        return max(b - a for a, b in itertools.pairwise(times))


def open_associations(http_port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{http_port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("radflow_dimse_open_associations"))


@dataclass
class Failover:
    seconds: float  # kill -9 to the last of the killed node's leased rows delivered
    taken: float  # kill -9 to the first of them taken by the other node
    held: int  # rows the killed node had leased
    pause: float  # longest gap between Successes after the kill, at the sender it hit
    other_pause: float  # the same at the other sender
    before: float  # longest gap before the kill, either sender
    retried: int  # associations that failed and were sent again


def failover(work: Path, dsn: str, data: Any, rows: int, lease: float, inter: float,
             redispatch: bool = True) -> Failover:
    sink = ForkingSink(work, "failover").start()
    site = Site(work / "failover", dsn, sink.port, lease=lease)
    balancer: Balancer | None = None
    senders: list[Sender] = []
    try:
        site.start_node("node-a")
        site.start_node("node-b")
        site.fill(data.root, rows)
        balancer = Balancer(work / "haproxy", [site.ports["node-a"], site.ports["node-b"]],
                            inter, redispatch).start()
        time.sleep(2 * inter + 0.5)  # both servers up (rise 2)
        t_start = time.perf_counter()
        senders = [Sender(f"s{i}", balancer.port, sorted(data.groups[i].glob("*.dcm")))
                   for i in range(2)]
        a_http = site.ports["node-a"][1]
        deadline = time.monotonic() + 120
        # Mid-flow: both senders streaming, node A holding leases and a sender's association.
        # Three seconds of streaming first: the "before" gap needs a stretch to judge.
        while (min(len(s.successes) for s in senders) < 50
               or time.perf_counter() - t_start < 3
               or site.count("state = 'leased' AND lease_owner LIKE 'node-a/%'") == 0
               or open_associations(a_http) < 1):
            if time.monotonic() > deadline:
                raise RuntimeError("node-a never held a lease and an association at once")
            time.sleep(0.02)
        victim = site.nodes.pop("node-a")
        os.kill(victim.pid, signal.SIGKILL)
        t_kill = time.perf_counter()
        victim.wait(10)
        counts = [len(s.successes) for s in senders]
        with site.connect() as conn:
            held = [r[0] for r in conn.execute(
                "SELECT id FROM outbox WHERE state = 'leased' AND lease_owner LIKE 'node-a/%'")]
        ids = ",".join(map(str, held)) or "0"
        taken = None
        while site.count(f"id IN ({ids}) AND state <> 'done'") > 0:
            if taken is None and site.count(
                    f"id IN ({ids}) AND coalesce(lease_owner, '') NOT LIKE 'node-a/%'") > 0:
                taken = time.perf_counter() - t_kill
            if time.perf_counter() - t_kill > lease + 600:
                break
            time.sleep(0.1)
        seconds = time.perf_counter() - t_kill
        # Intake: every sender back to streaming for a while after the kill.
        while time.perf_counter() - t_kill < 120 and any(
                len(s.successes) < n + 200 for s, n in zip(senders, counts, strict=True)):
            time.sleep(0.2)
        t_end = time.perf_counter()
        for sender in senders:
            sender.stop()
        pauses = sorted((s.longest_gap(t_kill, t_end) for s in senders), reverse=True)
        before = max(s.longest_gap(t_start + 1, t_kill) for s in senders)
        return Failover(seconds, taken or seconds, len(held), pauses[0], pauses[-1], before,
                        sum(s.failed_associations for s in senders))
    finally:
        for sender in senders:
            sender.stop()
        if balancer is not None:
            balancer.stop()
        site.close()
        sink.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--lease", type=float, default=10.0)
    p.add_argument("--check-inter", type=float, default=2.0,
                   help="HAProxy health check interval, s (deploy/haproxy/haproxy.cfg: 2)")
    p.add_argument("--no-redispatch", dest="redispatch", action="store_false",
                   help="without deploy/haproxy/haproxy.cfg's option redispatch: a connection "
                        "refused by a dead node fails at the sender until the health check "
                        "takes the node out")
    p.add_argument("--pg-dsn", default=DEFAULT_PG_DSN)
    p.add_argument("--parts", default="1,2")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    args = p.parse_args(argv)
    install_signal_handlers()
    data = ensure_dataset(args.data_dir, DataSpec(name="small", count=2000, rows=64, cols=64,
                                                  per_series=100))
    work = Path(tempfile.mkdtemp(prefix="radflow-bench-nodes-"))
    parts = {s.strip() for s in args.parts.split(",")}
    results: list[list[str]] = []
    try:
        if "1" in parts:
            one = drain(work, args.pg_dsn, data.root, args.rows, 1)
            print(f"  drain, 1 node: {args.rows / one:,.0f} rows/s ({one:.1f} s)", flush=True)
            two = drain(work, args.pg_dsn, data.root, args.rows, 2)
            print(f"  drain, 2 nodes: {args.rows / two:,.0f} rows/s ({two:.1f} s)", flush=True)
            results += [[f"drain {args.rows:,} rows, 1 node", f"{args.rows / one:,.0f} rows/s"],
                        [f"drain {args.rows:,} rows, 2 nodes", f"{args.rows / two:,.0f} rows/s"],
                        ["2 nodes / 1 node", f"{one / two:.2f}x (target >= 1.6x)"]]
        if "2" in parts:
            # Enough backlog that both nodes still hold leases once the balancer is up and
            # the senders are streaming (5,000 rows drained before that on a quiet machine).
            f = failover(work, args.pg_dsn, data, min(args.rows, 20_000), args.lease,
                         args.check_inter, args.redispatch)
            results.append([f"failover: kill -9 to the last of {f.held} leased rows delivered "
                            f"by the other node (lease {args.lease:g} s)",
                            f"{f.seconds:.1f} s (target <= {args.lease + 5:g} s)"])
            results.append(["  of which: kill -9 to the first of them taken over",
                            f"{f.taken:.1f} s"])
            how = "; option redispatch, retries 1" if args.redispatch else "; no redispatch"
            results.append([f"intake pause at the sender on the killed node, behind HAProxy "
                            f"(health check every {args.check_inter:g} s, fall 2{how})",
                            f"{f.pause:.1f} s ({f.retried} associations sent again)"])
            results.append(["intake pause at the other sender",
                             f"{f.other_pause:.1f} s"])
            results.append(["longest gap between Successes before the kill (either sender)",
                            f"{f.before:.1f} s"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(["figure", "value"], results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
