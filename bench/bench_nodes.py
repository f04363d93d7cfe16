"""Nodes benchmark: a delivery backlog drained by 1 radflow node against 2 nodes on one
PostgreSQL and one shared spool, and the failover time when a node is killed with SIGKILL.

1. **drain**: ``--rows`` (default 50,000) outbox rows for a DCMTK ``storescp`` sink, written
   straight into a fresh schema once the node(s) are up (the small 64x64 set, each file named
   by many rows: a drain measures the queue, not the disk); time from the sink coming up to
   the last row done, with 1 node and then with 2 (each node: one association to the sink,
   a forking storescp).
2. **failover**: 2 nodes draining with ``delivery.lease_seconds`` = ``--lease``; node A is
   killed (SIGKILL) while it holds leases; figure: time from the kill to the last of the rows
   A had leased being delivered by node B (target: lease time + 5 s).

    python bench/bench_nodes.py [--rows N] [--lease S] [--pg-dsn DSN] [--parts 1,2]

Nothing here asserts: it prints figures and the ratio 2 nodes / 1 node.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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


def failover(work: Path, dsn: str, data_root: Path, rows: int, lease: float
             ) -> tuple[float, int]:
    sink = ForkingSink(work, "failover").start()
    site = Site(work / "failover", dsn, sink.port, lease=lease)
    try:
        site.start_node("node-a")
        site.start_node("node-b")
        site.fill(data_root, rows)
        deadline = time.monotonic() + 120
        while site.count("state = 'leased' AND lease_owner LIKE 'node-a/%'") == 0:
            if time.monotonic() > deadline:
                raise RuntimeError("node-a never leased a row")
            time.sleep(0.02)
        victim = site.nodes.pop("node-a")
        os.kill(victim.pid, signal.SIGKILL)
        t_kill = time.perf_counter()
        victim.wait(10)
        with site.connect() as conn:
            held = [r[0] for r in conn.execute(
                "SELECT id FROM outbox WHERE state = 'leased' AND lease_owner LIKE 'node-a/%'")]
        ids = ",".join(map(str, held)) or "0"
        while site.count(f"id IN ({ids}) AND state <> 'done'") > 0:
            if time.perf_counter() - t_kill > lease + 600:
                break
            time.sleep(0.1)
        return time.perf_counter() - t_kill, len(held)
    finally:
        site.close()
        sink.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--lease", type=float, default=10.0)
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
            seconds, held = failover(work, args.pg_dsn, data.root, min(args.rows, 5000),
                                     args.lease)
            results.append([f"failover: kill -9 to the last of {held} leased rows delivered "
                            f"by the other node (lease {args.lease:g} s)",
                            f"{seconds:.1f} s (target <= {args.lease + 5:g} s)"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(["figure", "value"], results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
