"""Query/Retrieve: radflow's Q/R SCP against Orthanc answering the same work, same run.

1. **C-FIND, study level**, at 10,000 and 100,000 stored studies (``--sizes``). The same
   synthetic studies (one instance each; header only) are put in both: radflow's database is
   bulk-filled straight through SQL (journal rows and their Q/R index rows, as the indexer
   writes them), Orthanc gets each file over its REST API (``POST /instances``, four at a
   time; its storage folder is cached under ``/tmp/radflow-bench-data`` per size, so a rerun
   skips that). Two queries with the return keys a viewer asks for: ``patient`` (one PatientID,
   1 match) and ``day`` (one StudyDate, 1 % of the studies). Clients: DCMTK ``findscu -S``
   started per query (process start included, the same for both) and a pynetdicom SCU keeping
   its association open. Median and p99 per line, and Orthanc's median over radflow's.
2. **C-MOVE of a 500-instance CT study** (512 x 512, ``--rows``) into a DCMTK storescp: the
   study is stored in both with storescu, then ``movescu`` asks radflow and Orthanc in turn
   (``--moves`` runs each, a fresh storescp folder per run); seconds and instances/s.

It never asserts on timings.

    python bench/bench_qr.py [--sizes 10000,100000] [--queries 20] [--budget 20]
                             [--rows 512] [--moves 2] [--skip-find] [--skip-move]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt

from bench._common import (
    DEFAULT_DATA_DIR,
    LOOPBACK,
    DataSpec,
    dcmtk_tool,
    ensure_dataset,
    free_port,
    install_signal_handlers,
    log_tail,
    nodelay_env,
    print_table,
    spawn,
    stop_process,
    wait_for_http_ok,
    wait_for_port,
)
from engine.durable.qr import COLUMNS
from engine.durable.sqlite import SqliteStore

ORTHANC = "/usr/sbin/Orthanc"
RADFLOW_AE = "RADFLOW"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
UID_ROOT = "1.2.826.0.1.3680043.8.498.77"
DAYS = 100
RETURN_KEYS = ["StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "StudyTime",
               "AccessionNumber", "StudyDescription", "ModalitiesInStudy"]


# --------------------------------------------------------------------------- data
def study(i: int) -> dict[str, str]:
    """Study ``i``'s attributes (one instance per study)."""
    return {
        "PatientID": f"P{i:07d}", "PatientName": f"DOE^PATIENT{i}",
        "PatientBirthDate": "19700101", "PatientSex": "O",
        "StudyInstanceUID": f"{UID_ROOT}.1.{i}", "StudyDate": f"2025{1 + (i % DAYS) // 28:02d}"
        f"{1 + (i % DAYS) % 28:02d}", "StudyTime": "120000", "AccessionNumber": f"A{i:07d}",
        "StudyID": "1", "StudyDescription": "CT HEAD", "ReferringPhysicianName": "REF^DOC",
        "SeriesInstanceUID": f"{UID_ROOT}.2.{i}", "SeriesNumber": "1",
        "SeriesDescription": "AXIAL", "Modality": ("CT", "MR", "US", "DX")[i % 4],
        "SOPInstanceUID": f"{UID_ROOT}.3.{i}", "SOPClassUID": CT, "InstanceNumber": "1"}


def part10(i: int) -> bytes:
    ds = Dataset()
    for key, value in study(i).items():
        setattr(ds, key, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def seed_radflow(db: Path, n: int) -> None:
    async def migrate() -> None:
        store = SqliteStore(db)
        await store.open()
        await store.close()

    asyncio.run(migrate())
    conn = sqlite3.connect(db)
    keyword = dict(zip(COLUMNS, ("PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                                 "StudyInstanceUID", "StudyDate", "StudyTime",
                                 "AccessionNumber", "StudyID", "StudyDescription",
                                 "ReferringPhysicianName", "SeriesInstanceUID", "SeriesNumber",
                                 "SeriesDescription", "Modality", "SOPInstanceUID",
                                 "SOPClassUID", "InstanceNumber"), strict=True))
    with conn:
        for start in range(0, n, 20_000):
            rows = [study(i) for i in range(start, min(n, start + 20_000))]
            conn.executemany(
                "INSERT INTO instances (id, object_id, spool_path, sop_class_uid, "
                "sop_instance_uid, version, transfer_syntax_uid, study_instance_uid, "
                "series_instance_uid, patient_id, accession_number, modality, calling_ae, "
                "called_ae, peer_host, listener, size_bytes, sha256, received_at, routed_at) "
                "VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, 'BENCH', 'RADFLOW', '127.0.0.1', "
                "'main', 0, '', '2025-01-01T00:00:00+00:00', '2025-01-01T00:00:00+00:00')",
                [(start + k + 1, f"o{start + k}", f"none/{start + k}.dcm", CT,
                  r["SOPInstanceUID"], ExplicitVRLittleEndian, r["StudyInstanceUID"],
                  r["SeriesInstanceUID"], r["PatientID"], r["AccessionNumber"], r["Modality"])
                 for k, r in enumerate(rows)])
            conn.executemany(
                f"INSERT INTO qr_instances (instance_id, {', '.join(COLUMNS)}) VALUES "
                f"(?, {', '.join('?' * len(COLUMNS))})",
                [(start + k + 1, *(r[keyword[c]] for c in COLUMNS))
                 for k, r in enumerate(rows)])
        conn.execute("INSERT INTO qr_index_state (id, last_instance_id) VALUES (1, ?)", (n,))
    conn.execute("ANALYZE")
    conn.close()


def seed_orthanc(http_port: int, n: int) -> None:
    def post(i: int) -> None:
        req = urllib.request.Request(f"http://{LOOPBACK}:{http_port}/instances",
                                     data=part10(i), method="POST")
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        for done, _ in enumerate(pool.map(post, range(n)), 1):
            if done % 10_000 == 0:
                print(f"    orthanc: {done}/{n} ({done / (time.perf_counter() - t0):.0f}/s)",
                      flush=True)


# --------------------------------------------------------------------------- servers
def start_radflow(data: Path, *, move_to: tuple[str, int] | None = None
                  ) -> tuple[subprocess.Popen[bytes], int]:
    port, http_port, mllp_port = free_port(), free_port(), free_port()
    (data / "routes").mkdir(parents=True, exist_ok=True)
    config = {
        "storage": {"sqlite_path": str(data / "radflow.db"), "spool_dir": str(data / "spool"),
                    "min_free_mb": 1},
        "dicom": {"listeners": [{"ae_title": RADFLOW_AE, "host": LOOPBACK, "port": port,
                                 "dimse_timeout": 600, "network_timeout": 600,
                                 "max_pdu_size": 262_144, "accept_any_calling": True}]},
        "hl7": {"listeners": [{"host": LOOPBACK, "port": mllp_port}]},
        "http": {"host": LOOPBACK, "port": http_port},
        "query_retrieve": {"find_limit": 1_000_000, "move_destinations": [
            {"ae_title": "SINK", "host": LOOPBACK, "port": move_to[1]}] if move_to else []},
        "logging": {"level": "warning", "format": "json"},
        "routing": {"routes_dir": str(data / "routes")},
        "worklist": {"mapping_file": str(Path(__file__).resolve().parent.parent / "routes"
                                         / "worklist" / "hl7-mwl.yaml")},
    }
    cfg = data / "radflow.yaml"
    cfg.write_text(yaml.safe_dump(config), encoding="utf-8")
    log = data / "radflow.log"
    proc = spawn([sys.executable, "-m", "engine", "run", "--config", str(cfg)], log_path=log,
                 cwd=Path(__file__).resolve().parent.parent)
    try:
        wait_for_port(port, proc=proc, timeout=120)
    except Exception:
        print(log_tail(log), file=sys.stderr)
        raise
    return proc, port


def start_orthanc(base: Path, *, sink_port: int | None = None
                  ) -> tuple[subprocess.Popen[bytes], int, int]:
    base.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    (base / "orthanc.json").write_text(json.dumps({
        "Name": "bench", "StorageDirectory": str(base / "storage"),
        "IndexDirectory": str(base / "storage"), "DicomAet": "ORTHANC",
        "DicomPort": dicom_port, "HttpPort": http_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
        "StorageCompression": False, "SaveJobs": False, "LimitFindResults": 0,
        "LimitFindInstances": 0, "Plugins": [],
        # Orthanc answers C-FIND / C-MOVE only for AE titles it knows: the benchmark's clients.
        "DicomModalities": {
            **({"sink": ["SINK", LOOPBACK, sink_port]} if sink_port else {}),
            "findscu": ["FINDSCU", LOOPBACK, 104], "bench": ["BENCH", LOOPBACK, 104],
            "movescu": ["MOVESCU", LOOPBACK, 104]}}))
    proc = spawn([ORTHANC, str(base / "orthanc.json")], log_path=base / "orthanc.log",
                 env=nodelay_env(), cwd=base)
    wait_for_http_ok(f"http://{LOOPBACK}:{http_port}/system", timeout=120, proc=proc)
    wait_for_port(dicom_port, proc=proc)
    return proc, dicom_port, http_port


# --------------------------------------------------------------------------- C-FIND
def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def measure(once: Callable[[], int], count: int, budget: float) -> tuple[list[float], int]:
    once()  # warm-up
    times: list[float] = []
    matches = 0
    deadline = time.perf_counter() + budget
    while len(times) < count and (len(times) < 3 or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        matches = once()
        times.append(time.perf_counter() - t0)
    return times, matches


def query_keys(kind: str, n: int) -> dict[str, str]:
    middle = study(n // 2)
    keys = dict.fromkeys(RETURN_KEYS, "")
    if kind == "patient":
        keys["PatientID"] = middle["PatientID"]
    else:
        keys["StudyDate"] = middle["StudyDate"]
    return keys


def findscu_once(called: str, port: int, keys: dict[str, str]) -> Callable[[], int]:
    exe, env = dcmtk_tool("findscu"), nodelay_env()
    args = ["-S", "-aec", called, "-k", "QueryRetrieveLevel=STUDY"]
    for key, value in keys.items():
        args += ["-k", f"{key}={value}" if value else key]

    def once() -> int:
        out = subprocess.run([exe, *args, LOOPBACK, str(port)], env=env, capture_output=True,
                             text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"findscu failed: {out.stderr[-300:]}")
        return (out.stdout + out.stderr).count("(Pending)")
    return once


class PersistentClient:
    def __init__(self, called: str, port: int) -> None:
        self.ae = AE(ae_title="BENCH")
        self.ae.add_requested_context(STUDY_ROOT_FIND)
        self.ae.dimse_timeout = self.ae.network_timeout = 600

        def nodelay(event: evt.Event) -> None:
            event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        self.assoc = self.ae.associate(LOOPBACK, port, ae_title=called,
                                       evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)])
        if not self.assoc.is_established:
            raise RuntimeError(f"association to {called}:{port} failed")

    def once(self, keys: dict[str, str]) -> Callable[[], int]:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        for key, value in keys.items():
            setattr(ds, key, value)

        def run() -> int:
            return sum(1 for status, answer in self.assoc.send_c_find(ds, STUDY_ROOT_FIND)
                       if status and status.Status in (0xFF00, 0xFF01) and answer is not None)
        return run

    def close(self) -> None:
        self.assoc.release()
        self.ae.shutdown()


def bench_find(args: argparse.Namespace, work: Path, rows: list[list[str]],
               summary: list[list[str]]) -> None:
    def ms(v: float) -> str:
        return f"{v * 1000:.1f}"

    for n in (int(s) for s in args.sizes.split(",")):
        print(f"== C-FIND over {n} studies", flush=True)
        rf_data = work / f"find-radflow-{n}"
        shutil.rmtree(rf_data, ignore_errors=True)
        rf_data.mkdir(parents=True)
        t0 = time.perf_counter()
        seed_radflow(rf_data / "radflow.db", n)
        print(f"  radflow seeded in {time.perf_counter() - t0:.1f} s", flush=True)
        orthanc_base = args.data_dir / f"qr-orthanc-{n}"
        seeded = (orthanc_base / "seeded").exists()
        if not seeded:
            shutil.rmtree(orthanc_base, ignore_errors=True)
        rf, rf_port = start_radflow(rf_data)
        orthanc, or_port, or_http = start_orthanc(orthanc_base)
        try:
            if not seeded:
                t0 = time.perf_counter()
                seed_orthanc(or_http, n)
                (orthanc_base / "seeded").touch()
                print(f"  orthanc seeded in {time.perf_counter() - t0:.1f} s", flush=True)
            for kind in ("patient", "day"):
                keys = query_keys(kind, n)
                want = 1 if kind == "patient" else sum(
                    1 for i in range(n) if study(i)["StudyDate"] == keys["StudyDate"])
                results: dict[str, tuple[list[float], int]] = {}
                for name, port, called in (("radflow", rf_port, RADFLOW_AE),
                                           ("orthanc", or_port, "ORTHANC")):
                    results[f"{name} findscu"] = measure(findscu_once(called, port, keys),
                                                         args.queries, args.budget)
                    client = PersistentClient(called, port)
                    try:
                        results[f"{name} assoc"] = measure(client.once(keys),
                                                           args.assoc_queries, args.budget)
                    finally:
                        client.close()
                for name, (times, matches) in results.items():
                    flag = "" if matches == want else f" (expected {want})"
                    rows.append([str(n), kind, name, str(len(times)), f"{matches}{flag}",
                                 ms(percentile(times, 50)), ms(percentile(times, 99))])
                for client_kind in ("findscu", "assoc"):
                    r = percentile(results[f"radflow {client_kind}"][0], 50)
                    o = percentile(results[f"orthanc {client_kind}"][0], 50)
                    summary.append([str(n), kind, client_kind, ms(r), ms(o), f"{o / r:.2f}x"])
        finally:
            stop_process(rf)
            stop_process(orthanc)


# --------------------------------------------------------------------------- C-MOVE
def bench_move(args: argparse.Namespace, work: Path, out: list[list[str]]) -> None:
    spec = DataSpec(name="qrmove", count=500, rows=args.rows, cols=args.rows, per_series=250,
                    groups=1)
    data = ensure_dataset(args.data_dir, spec)
    print(f"== C-MOVE of one {data.count}-instance study "
          f"({data.total_bytes / 1e6:.0f} MB)", flush=True)
    sink_port = free_port()
    rf_data = work / "move-radflow"
    shutil.rmtree(rf_data, ignore_errors=True)
    rf_data.mkdir(parents=True)
    orthanc_base = work / "move-orthanc"
    shutil.rmtree(orthanc_base, ignore_errors=True)
    rf, rf_port = start_radflow(rf_data, move_to=("SINK", sink_port))
    orthanc, or_port, _ = start_orthanc(orthanc_base, sink_port=sink_port)
    storescu, movescu = dcmtk_tool("storescu"), dcmtk_tool("movescu")
    import pydicom

    study_uid = str(pydicom.dcmread(data.files[0], stop_before_pixels=True).StudyInstanceUID)
    try:
        for called, port in ((RADFLOW_AE, rf_port), ("ORTHANC", or_port)):
            res = subprocess.run([storescu, "-aec", called, "+sd", "+r", LOOPBACK, str(port),
                                  str(data.root)], env=nodelay_env(), capture_output=True,
                                 text=True, timeout=1800)
            if res.returncode != 0:
                raise RuntimeError(f"storescu to {called} failed: {res.stderr[-300:]}")
        wait_indexed(rf_data / "radflow.db", data.count)
        results: dict[str, list[float]] = {"radflow": [], "orthanc": []}
        for run in range(args.moves):
            for name, called, port in (("radflow", RADFLOW_AE, rf_port),
                                       ("orthanc", "ORTHANC", or_port)):
                sink_dir = work / f"move-sink-{name}-{run}"
                shutil.rmtree(sink_dir, ignore_errors=True)
                sink_dir.mkdir(parents=True)
                sink = spawn([dcmtk_tool("storescp"), "-aet", "SINK", "-od", str(sink_dir),
                              "-uf", str(sink_port)], log_path=work / "move-storescp.log",
                             env=nodelay_env(), cwd=sink_dir)
                wait_for_port(sink_port, proc=sink)
                try:
                    t0 = time.perf_counter()
                    res = subprocess.run([movescu, "-S", "-aec", called, "-aem", "SINK",
                                          "-k", "QueryRetrieveLevel=STUDY", "-k",
                                          f"StudyInstanceUID={study_uid}", LOOPBACK,
                                          str(port)], env=nodelay_env(), capture_output=True,
                                         text=True, timeout=1800)
                    elapsed = time.perf_counter() - t0
                finally:
                    stop_process(sink)
                got = sum(1 for p in sink_dir.iterdir() if p.is_file())
                if res.returncode != 0 or got != data.count:
                    print(f"  {name}: movescu rc={res.returncode}, {got} received: "
                          f"{res.stderr[-300:]}", flush=True)
                results[name].append(elapsed)
                shutil.rmtree(sink_dir, ignore_errors=True)
        for name, times in results.items():
            med = sorted(times)[len(times) // 2]
            out.append([name, str(len(times)), f"{med:.2f}", f"{data.count / med:.0f}",
                        f"{data.total_bytes / 1e6 / med:.0f}"])
        r = sorted(results["radflow"])[len(results["radflow"]) // 2]
        o = sorted(results["orthanc"])[len(results["orthanc"]) // 2]
        out.append(["ratio (orthanc s / radflow s)", "", f"{o / r:.2f}x", "", ""])
    finally:
        stop_process(rf)
        stop_process(orthanc)


def wait_indexed(db: Path, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = sqlite3.connect(db)
        try:
            if conn.execute("SELECT COUNT(*) FROM qr_instances").fetchone()[0] >= count:
                return
        finally:
            conn.close()
        time.sleep(0.5)
    raise RuntimeError("radflow did not index the study in time")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=20, help="findscu runs per line")
    parser.add_argument("--assoc-queries", type=int, default=100)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per line at most")
    parser.add_argument("--rows", type=int, default=512, help="C-MOVE image size")
    parser.add_argument("--moves", type=int, default=2)
    parser.add_argument("--skip-find", action="store_true")
    parser.add_argument("--skip-move", action="store_true")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    args = parser.parse_args()
    install_signal_handlers()
    work = args.data_dir / "qr-run"
    work.mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    summary: list[list[str]] = []
    moves: list[list[str]] = []
    if not args.skip_find:
        bench_find(args, work, rows, summary)
    try:
        if not args.skip_move:
            bench_move(args, work, moves)
    finally:
        report(rows, summary, moves)
    return 0


def report(rows: list[list[str]], summary: list[list[str]], moves: list[list[str]]) -> None:
    if rows:
        print()
        print_table(["studies", "query", "server / client", "runs", "matches", "p50 ms",
                     "p99 ms"], rows, "llllrrr")
        print()
        print_table(["studies", "query", "client", "radflow p50 ms", "orthanc p50 ms",
                     "orthanc / radflow"], summary, "lllrrr")
    if moves:
        print()
        print_table(["C-MOVE 500-instance study", "runs", "median s", "instances/s", "MB/s"],
                    moves, "lrrrr")


if __name__ == "__main__":
    sys.exit(main())
