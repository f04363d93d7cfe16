"""HL7 intake benchmark: ORM^O01 over MLLP, each answered after a durable commit.

Runs, in one invocation and on the same messages:

* ``radflow`` — ``python -m engine run`` on SQLite; every ``AA`` follows the group commit of
  the message and its worklist item (WAL, ``synchronous=FULL``);
* ``radflow-pg`` — the same on PostgreSQL (``--backend``, ``--pg-dsn``; a fresh schema per run,
  ``synchronous_commit`` on);
* ``hl7-server`` — the ``hl7`` package's asyncio MLLP server answering an ``AA`` after
  ``hl7.parse`` (no durability at all: the floor a Python MLLP server reaches here);
* ``hl7apy-parse`` — the same server parsing with hl7apy's ``parse_message`` instead, to show
  why radflow keeps hl7apy off the per-message path.

The client is an asyncio MLLP sender written here (one request in flight per connection, as
HL7 original mode requires), over 1 and 8 connections. Prints messages/s and the ratios. Not a
test: no thresholds. Bounded: a fixed message count and a timeout per phase.

    python bench/bench_hl7.py [--messages 2000] [--quick] [--backend sqlite|postgresql|both]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    LOOPBACK,
    format_table,
    free_ports,
    install_signal_handlers,
    python_exe,
    repo_root,
    spawn,
    stop_process,
    wait_for_http_ok,
    wait_for_port,
)

SB, EB = b"\x0b", b"\x1c\x0d"
PEER_SERVER = r'''
import asyncio, sys, hl7
from hl7.mllp import start_hl7_server
mode = sys.argv[2]
if mode == "hl7apy":
    from hl7apy.parser import parse_message
async def handle(reader, writer):
    try:
        while not writer.is_closing():
            msg = await reader.readmessage()
            if mode == "hl7apy":
                parse_message(str(msg).replace("\n", "\r"), find_groups=False)
            writer.writemessage(msg.create_ack("AA"))
            await writer.drain()
    except asyncio.IncompleteReadError:
        pass
    finally:
        writer.close()
async def main():
    async with await start_hl7_server(handle, host="127.0.0.1", port=int(sys.argv[1]),
                                      encoding="latin-1") as srv:
        await srv.serve_forever()
asyncio.run(main())
'''


def order(i: int) -> bytes:
    """A ~1 KB ORM^O01 new order, unique control id, placer and accession per message."""
    segs = [
        f"MSH|^~\\&|RIS|HOSP|RADFLOW|HOSP|20261125120000||ORM^O01^ORM_O01|BENCH{i:08d}|P|2.5.1"
        "|||||8859/1",
        f"PID|1||PID{i % 5000:06d}^^^HOSP^MR||Müller^Jürgen^Karl^^Dr.||19700101|M|||"
        "Hauptstraße 1^^Berlin^^10115^DE||030-123456",
        "PV1|1|O|RAD^^^HOSP||||1234^Referrer^Rita|||||||||||V0001",
        f"ORC|NW|PL{i:08d}^RIS|FL{i:08d}^RADFLOW||SC||^^^20261125120000^^R||20261125115500|"
        "5678^Clerk^Carl",
        f"OBR|1|PL{i:08d}^RIS|FL{i:08d}^RADFLOW|CTHEAD^CT Head without contrast^LOCAL|||"
        f"20261125115500|||||||||1234^Referrer^Rita||ACC{i:08d}|RP{i:08d}|||||CT||||||||||"
        "||||20261125120000",
        f"ZDS|1.2.826.0.1.3680043.10.1138.{i}^RADFLOW^Application^DICOM",
    ]
    return "\r".join(segs).encode("latin-1") + b"\r"


async def _sender(port: int, messages: list[bytes], acks: dict[str, int]) -> None:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        for payload in messages:
            writer.write(SB + payload + EB)
            await writer.drain()
            frame = await asyncio.wait_for(reader.readuntil(EB), 30)
            msa = frame.split(b"\rMSA|", 1)[1][:2].decode() if b"\rMSA|" in frame else "??"
            acks[msa] = acks.get(msa, 0) + 1
    finally:
        writer.close()


async def send_all(port: int, messages: list[bytes], connections: int
                   ) -> tuple[float, dict[str, int]]:
    groups = [messages[i::connections] for i in range(connections)]
    acks: dict[str, int] = {}
    started = time.perf_counter()
    async with asyncio.timeout(600):
        await asyncio.gather(*(_sender(port, g, acks) for g in groups))
    return time.perf_counter() - started, acks


DEFAULT_PG_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"


def pg_storage(dsn: str, schema: str) -> str:
    return f"backend: postgresql, postgresql: {{dsn: \"{dsn}\", schema: {schema}}}, "


def drop_pg_schema(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def start_radflow(work: Path, storage: str = "") -> tuple[object, int]:
    dicom, mllp, http = free_ports(3)
    cfg = work / "radflow.yaml"
    cfg.write_text(
        f"storage: {{{storage}sqlite_path: {work / 'radflow.db'}, spool_dir: {work / 'spool'}}}\n"
        f"dicom: {{listeners: [{{name: main, host: {LOOPBACK}, port: {dicom}, "
        "accept_any_calling: true}]}\n"
        f"hl7: {{accept_any_source: true, listeners: [{{name: mllp, host: {LOOPBACK}, "
        f"port: {mllp}}}]}}\n"
        f"http: {{host: {LOOPBACK}, port: {http}}}\n"
        "logging: {level: warning}\n"
        f"worklist: {{mapping_file: {repo_root() / 'routes' / 'worklist' / 'hl7-mwl.yaml'}}}\n"
        f"routing: {{routes_dir: {work / 'routes'}}}\n")  # no routes: the HL7 path alone
    (work / "routes").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(repo_root()))
    proc = spawn([python_exe(), "-m", "engine", "run", "--config", str(cfg)],
                 log_path=work / "radflow.log", env=env, cwd=repo_root())
    wait_for_http_ok(f"http://{LOOPBACK}:{http}/readyz", timeout=60, proc=proc)
    return proc, mllp


def start_peer(work: Path, mode: str) -> tuple[object, int]:
    (port,) = free_ports(1)
    script = work / "peer_server.py"
    script.write_text(PEER_SERVER)
    proc = spawn([python_exe(), str(script), str(port), mode], log_path=work / f"{mode}.log")
    wait_for_port(port, timeout=30, proc=proc)
    return proc, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="400 messages")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--pg-dsn", default=DEFAULT_PG_DSN)
    args = parser.parse_args()
    install_signal_handlers()
    count = 400 if args.quick else args.messages
    rows: list[list[str]] = []
    rates: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory(prefix="radflow-bench-hl7-") as tmp:
        base = Path(tmp)
        servers: list[tuple[str, str | None]] = [
            ("radflow", None), ("radflow-pg", "pg"), ("hl7-server", "hl7"),
            ("hl7apy-parse", "hl7apy")]
        servers = [s for s in servers if not (
            (args.backend == "sqlite" and s[0] == "radflow-pg")
            or (args.backend == "postgresql" and s[0] == "radflow"))]
        for name, mode in servers:
            for connections in (1, 8):
                work = base / f"{name}-{connections}"
                work.mkdir()
                n = min(count, 300) if mode == "hl7apy" else count
                offset = connections * 1_000_000  # fresh control ids: no duplicates
                messages = [order(offset + i) for i in range(n)]
                schema = f"bench_hl7_{os.getpid()}_{connections}"
                if mode is None:
                    proc, port = start_radflow(work)
                elif mode == "pg":
                    proc, port = start_radflow(work, pg_storage(args.pg_dsn, schema))
                else:
                    proc, port = start_peer(work, mode)
                try:
                    elapsed, acks = asyncio.run(send_all(port, messages, connections))
                finally:
                    stop_process(proc)  # type: ignore[arg-type]
                    if mode == "pg":
                        drop_pg_schema(args.pg_dsn, schema)
                rate = n / elapsed
                rates[(name, connections)] = rate
                ack_codes = " ".join(f"{k}={v}" for k, v in sorted(acks.items()))
                rows.append([name, str(connections), str(n), f"{rate:8.1f}",
                             f"{elapsed:6.2f}", ack_codes])
                print(f"  {name:13s} conn={connections}: {rate:8.1f} msg/s {acks}", flush=True)
    print()
    print("HL7 ORM^O01 over MLLP, each answered before the next is sent on its connection")
    print(format_table(["server", "conns", "msgs", "msg/s", "time s", "ACKs"], rows))
    print()
    ratio_rows = []
    peers = ("hl7-server", "hl7apy-parse")
    for connections in (1, 8):
        row = [str(connections)]
        for rad in ("radflow", "radflow-pg"):
            for p in peers:
                a, b = rates.get((rad, connections)), rates.get((p, connections))
                row.append(f"{a / b:.2f}x" if a and b else "n/a")
        a, b = rates.get(("radflow-pg", connections)), rates.get(("radflow", connections))
        row.append(f"{a / b:.2f}x" if a and b else "n/a")
        ratio_rows.append(row)
    print("radflow (durable) msg/s ratio to each peer (not durable), and PostgreSQL to SQLite:")
    print(format_table(["conns", *(f"{r}/{p}" for r in ("radflow", "radflow-pg") for p in peers),
                        "radflow-pg/radflow"], ratio_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
