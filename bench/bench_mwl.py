"""Modality Worklist C-FIND latency: radflow against DCMTK ``wlmscpfs`` on the same items.

For each size (1,000, 10,000 and 100,000 scheduled items by default) the same synthetic items
are served by radflow (seeded straight into its store with the bulk insert; on SQLite and, as
``radflow-pg``, on PostgreSQL: ``--backend``) and by
``wlmscpfs`` (one ``.wl`` file per item, written with pydicom, cached under
``/tmp/radflow-bench-data``). Two queries, each with the same return keys a scanner asks for:

* ``patient``: one PatientID (1 match);
* ``ct-today``: Modality CT on one day (~1 % of the items match).

Clients: DCMTK ``findscu -W`` started once per query (process start included, identical for
both servers); ``findscu --repeat`` asking the query again and again over one association
(per-query time with process start and association set-up taken out: a C++ client keeping its
association open); and a pynetdicom client keeping its association open (TCP_NODELAY on),
which is what the "< 10 ms p50 at 100,000 items" target refers to. With many matches the
pynetdicom client's own decoding of each answer (~0.6 ms) dominates its figure for both
servers, which is why the C++ line is there. A C-ECHO line over the same kind of association
shows pynetdicom's own round-trip floor. Each measurement is bounded by a
query count and a time budget; the script prints median and p99 per line and radflow's ratio.
It never asserts on timings.

    python bench/bench_mwl.py [--sizes 1000,10000,100000] [--queries 30] [--budget 20]
                              [--backend sqlite|postgresql|both] [--pg-dsn DSN]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

from bench._common import (
    DEFAULT_DATA_DIR,
    LOOPBACK,
    dcmtk_tool,
    free_port,
    install_signal_handlers,
    log_tail,
    nodelay_env,
    print_table,
    repo_root,
    spawn,
    stop_process,
    wait_for_port,
)
from engine.durable.postgresql import PostgresStore
from engine.durable.sqlite import SqliteStore
from engine.records.worklist import WorklistItem
from engine.settings import PostgresSettings

DAY = "20261125"  # "today" in the data
DAYS = 25  # items spread over 25 days, CT one in four: CT today ≈ 1 %
MODALITIES = ("CT", "MR", "US", "DX")
WL_AE = "WLMSCP"
RADFLOW_AE = "RADFLOW"


# --------------------------------------------------------------------------- data
_FIRST_DAY = date(2026, 11, 13)  # items run from 13 Nov to 7 Dec; DAY is inside


def _day(i: int) -> str:
    return (_FIRST_DAY + timedelta(days=(i // 4) % DAYS)).strftime("%Y%m%d")


def item(i: int) -> WorklistItem:
    modality = MODALITIES[i % 4]
    day = _day(i)
    return WorklistItem(
        patient_id=f"P{i:07d}", issuer_of_patient_id="HOSP",
        patient_name=f"Name{i:07d}^Given^^Dr", patient_birth_date="19700101",
        patient_sex="FM"[i % 2], accession_number=f"A{i:07d}",
        requested_procedure_id=f"RP{i:07d}", requested_procedure_description="Procedure",
        study_instance_uid=f"1.2.826.0.1.3680043.8.498.1.{i}",
        referring_physician_name="Smith^Anna", placer_order_number=f"O{i:07d}",
        filler_order_number=f"F{i:07d}", scheduled_procedure_step_id=f"S{i:07d}",
        modality=modality, scheduled_station_ae_title=f"{modality}_SCANNER_1",
        scheduled_station_name=f"{modality}1", scheduled_procedure_step_start_date=day,
        scheduled_procedure_step_start_time=f"{8 + i % 10:02d}{(i * 7) % 60:02d}00",
        scheduled_performing_physician_name="Tech^Tom",
        scheduled_procedure_step_description="Step", specific_character_set=("ISO_IR 100",),
        created_at="2026-11-25T00:00:00", updated_at="2026-11-25T00:00:00")


def wl_dataset(it: WorklistItem) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.AccessionNumber = it.accession_number
    ds.ReferringPhysicianName = it.referring_physician_name
    ds.PatientName = it.patient_name
    ds.PatientID = it.patient_id
    ds.IssuerOfPatientID = it.issuer_of_patient_id
    ds.PatientBirthDate = it.patient_birth_date
    ds.PatientSex = it.patient_sex
    ds.StudyInstanceUID = it.study_instance_uid
    ds.RequestedProcedureDescription = it.requested_procedure_description
    ds.RequestedProcedureID = it.requested_procedure_id
    ds.PlacerOrderNumberImagingServiceRequest = it.placer_order_number
    ds.FillerOrderNumberImagingServiceRequest = it.filler_order_number
    sps = Dataset()
    sps.Modality = it.modality
    sps.ScheduledStationAETitle = it.scheduled_station_ae_title
    sps.ScheduledStationName = it.scheduled_station_name
    sps.ScheduledProcedureStepStartDate = it.scheduled_procedure_step_start_date
    sps.ScheduledProcedureStepStartTime = it.scheduled_procedure_step_start_time
    sps.ScheduledPerformingPhysicianName = it.scheduled_performing_physician_name
    sps.ScheduledProcedureStepDescription = it.scheduled_procedure_step_description
    sps.ScheduledProcedureStepID = it.scheduled_procedure_step_id
    ds.ScheduledProcedureStepSequence = [sps]
    # Type 2 sequences wlmscpfs otherwise adds itself, with a warning per file per query.
    ds.ReferencedStudySequence = []
    ds.ReferencedPatientSequence = []
    return ds


def wl_files(n: int, root: Path) -> Path:
    """``root/mwl-<n>/`` with ``WLMSCP/`` holding n ``.wl`` files and the lockfile (cached)."""
    base = root / f"mwl-v3-{n}"
    folder = base / WL_AE
    done = base / "complete"
    if done.exists():
        return base
    shutil.rmtree(base, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "lockfile").touch()  # wlmscpfs refuses a folder without it
    started = time.perf_counter()
    for i in range(n):
        ds = wl_dataset(item(i))
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ModalityWorklistInformationFind
        ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.2.{i}"
        # A complete Part 10 header (group length included): wlmscpfs warns about each file
        # on every query otherwise, and those log writes would be counted against it.
        dcmwrite(folder / f"item{i:07d}.wl", ds, enforce_file_format=True)
    done.touch()
    print(f"  wrote {n} .wl files in {time.perf_counter() - started:.0f} s", flush=True)
    return base


async def seed_radflow(db: Path, n: int, pg_schema: str | None = None,
                       pg_dsn: str = "") -> None:
    store: SqliteStore | PostgresStore
    if pg_schema is None:
        store = SqliteStore(db)
    else:
        store = PostgresStore(PostgresSettings.model_validate(
            {"dsn": pg_dsn, "schema": pg_schema}), connect_attempts=1)
    await store.open()
    try:
        for start in range(0, n, 20_000):
            await store.add_worklist_items([item(i) for i in range(start, min(n, start + 20_000))])
        if isinstance(store, SqliteStore):
            await store._write(lambda c: c.execute("PRAGMA optimize"))
        else:
            await store._write(lambda c: c.execute("ANALYZE worklist_items"))
    finally:
        await store.close()


# --------------------------------------------------------------------------- queries
RETURN_KEYS = ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
               "RequestedProcedureID", "RequestedProcedureDescription", "StudyInstanceUID",
               "ReferringPhysicianName"]
SPS_KEYS = ["Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
            "ScheduledProcedureStepStartTime", "ScheduledPerformingPhysicianName",
            "ScheduledProcedureStepDescription", "ScheduledProcedureStepID"]


def query(kind: str, n: int) -> tuple[dict[str, str], dict[str, str]]:
    """(top-level matching keys, SPS matching keys) of one query kind."""
    if kind == "patient":
        return {"PatientID": f"P{(n * 7) // 11:07d}"}, {}
    return {}, {"Modality": "CT", "ScheduledProcedureStepStartDate": DAY}


def findscu_keys(kind: str, n: int) -> list[str]:
    top, sps = query(kind, n)
    keys = [f"{k}={top.get(k, '')}" if k in top else k for k in RETURN_KEYS]
    keys += [f"ScheduledProcedureStepSequence[0].{k}" + (f"={sps[k]}" if k in sps else "")
             for k in SPS_KEYS]
    out: list[str] = []
    for k in keys:
        out += ["-k", k]
    return out


def identifier(kind: str, n: int) -> Dataset:
    top, sps_keys = query(kind, n)
    ds = Dataset()
    for k in RETURN_KEYS:
        setattr(ds, k, top.get(k, ""))
    sps = Dataset()
    for k in SPS_KEYS:
        setattr(sps, k, sps_keys.get(k, ""))
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def expected_matches(kind: str, n: int) -> int:
    if kind == "patient":
        return 1
    return sum(1 for i in range(n) if i % 4 == 0 and _day(i) == DAY)


# --------------------------------------------------------------------------- measuring
def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def measure(once: Callable[[], int], count: int, budget: float) -> tuple[list[float], int]:
    """Run ``once`` up to ``count`` times within ``budget`` seconds (at least 3 runs)."""
    once()  # warm-up (page cache, prepared statements, first fork)
    times: list[float] = []
    matches = 0
    deadline = time.perf_counter() + budget
    while len(times) < count and (len(times) < 3 or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        matches = once()
        times.append(time.perf_counter() - t0)
    return times, matches


def findscu_once(exe: str, called: str, port: int, keys: list[str]) -> Callable[[], int]:
    env = nodelay_env()

    def once() -> int:
        out = subprocess.run([exe, "-W", "-aec", called, *keys, LOOPBACK, str(port)],
                             env=env, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"findscu failed: {out.stderr[-300:]}")
        # One "Find Response: n (Pending)" line per match at findscu's default verbosity.
        return (out.stdout + out.stderr).count("(Pending)")
    return once


def findscu_repeat(exe: str, called: str, port: int, keys: list[str], repeat: int,
                   runs: int, single: float) -> tuple[list[float], int]:
    """DCMTK findscu asking the same query ``repeat`` times over ONE association (``--repeat``):
    per-query seconds of each run = (run time - ``single``, the median of one-query runs) /
    (repeat - 1), i.e. process start and association set-up taken out. A C++ client, so the
    figure is the server's, not a Python client's decoding."""
    env = nodelay_env()
    per_query: list[float] = []
    matches = 0
    for _ in range(runs):
        t0 = time.perf_counter()
        out = subprocess.run([exe, "-W", "--repeat", str(repeat), "-aec", called, *keys,
                              LOOPBACK, str(port)], env=env, capture_output=True, text=True,
                             timeout=900)
        elapsed = time.perf_counter() - t0
        if out.returncode != 0:
            raise RuntimeError(f"findscu --repeat failed: {out.stderr[-300:]}")
        matches = (out.stdout + out.stderr).count("(Pending)") // repeat
        per_query.append(max(elapsed - single, 0.0) / (repeat - 1))
    return per_query, matches


class PersistentClient:
    """A pynetdicom SCU with one open association and TCP_NODELAY on its socket."""

    def __init__(self, called: str, port: int) -> None:
        self.ae = AE(ae_title="BENCH")
        self.ae.add_requested_context(ModalityWorklistInformationFind)
        self.ae.add_requested_context("1.2.840.10008.1.1")
        self.ae.dimse_timeout = 600
        self.ae.network_timeout = 600

        def nodelay(event: evt.Event) -> None:
            event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        self.assoc = self.ae.associate(LOOPBACK, port, ae_title=called,
                                       evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)])
        if not self.assoc.is_established:
            raise RuntimeError(f"association to {called}:{port} failed")

    def once(self, ds: Dataset) -> Callable[[], int]:
        def run() -> int:
            n = 0
            for status, answer in self.assoc.send_c_find(ds, ModalityWorklistInformationFind):
                if status and status.Status in (0xFF00, 0xFF01) and answer is not None:
                    n += 1
            return n
        return run

    def echo(self) -> int:
        self.assoc.send_c_echo()
        return 0

    def close(self) -> None:
        self.assoc.release()
        self.ae.shutdown()


# --------------------------------------------------------------------------- servers
DEFAULT_PG_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"


def drop_pg_schema(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def start_radflow(work: Path, n: int, pg_schema: str | None = None, pg_dsn: str = ""
                  ) -> tuple[subprocess.Popen[bytes], int, Path]:
    data = work / f"radflow-{n}{'-pg' if pg_schema else ''}"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    db = data / "radflow.db"
    t0 = time.perf_counter()
    asyncio.run(seed_radflow(db, n, pg_schema, pg_dsn))
    print(f"  seeded radflow{'-pg' if pg_schema else ''} with {n} items in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    port, http_port, mllp_port = free_port(), free_port(), free_port()
    storage: dict[str, object] = {"sqlite_path": str(db), "spool_dir": str(data / "spool"),
                                  "min_free_mb": 1}
    if pg_schema is not None:
        storage |= {"backend": "postgresql",
                    "postgresql": {"dsn": pg_dsn, "schema": pg_schema}}
    config = {
        "storage": storage,
        "dicom": {"listeners": [{"ae_title": RADFLOW_AE, "host": LOOPBACK, "port": port,
                                 "dimse_timeout": 600, "network_timeout": 600,
                                 "accept_any_calling": True}]},
        "hl7": {"listeners": [{"host": LOOPBACK, "port": mllp_port}]},
        "http": {"host": LOOPBACK, "port": http_port},
        "worklist": {"find_limit": 100_000, "retention_days": 0,
                     "mapping_file": str(repo_root() / "routes" / "worklist" / "hl7-mwl.yaml")},
        "logging": {"level": "warning", "format": "json"},
        # no routes: the shipped routes/ name destinations this config does not have
        "routing": {"routes_dir": str(data / "routes")},
    }
    (data / "routes").mkdir(parents=True, exist_ok=True)
    cfg = data / "radflow.yaml"
    cfg.write_text(yaml.safe_dump(config), encoding="utf-8")
    log = data / "radflow.log"
    proc = spawn([sys.executable, "-m", "engine", "run", "--config", str(cfg)], log_path=log,
                 cwd=Path(__file__).resolve().parent.parent)
    try:
        wait_for_port(port, proc=proc, timeout=60)
    except Exception:
        print(log_tail(log), file=sys.stderr)
        raise
    return proc, port, log


def start_wlmscpfs(base: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = spawn([dcmtk_tool("wlmscpfs"), "-ll", "error", "-dfp", str(base), str(port)],
                 log_path=base.parent / f"{base.name}-wlmscpfs.log", env=nodelay_env())
    wait_for_port(port, proc=proc, timeout=30)
    return proc, port


# --------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--queries", type=int, default=30, help="findscu runs per line")
    parser.add_argument("--assoc-queries", type=int, default=200,
                        help="queries per line over one open association")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per line at most")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both",
                        help="radflow's storage: radflow (SQLite), radflow-pg, or both")
    parser.add_argument("--pg-dsn", default=DEFAULT_PG_DSN,
                        help="PostgreSQL for radflow-pg (a schema per size, dropped after)")
    args = parser.parse_args()
    install_signal_handlers()
    findscu = dcmtk_tool("findscu")
    work = args.data_dir / "mwl-run"
    work.mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    summary: list[list[str]] = []

    def ms(v: float) -> str:
        return f"{v * 1000:.1f}"

    radflows = {"sqlite": ["radflow"], "postgresql": ["radflow-pg"],
                "both": ["radflow", "radflow-pg"]}[args.backend]
    for n in (int(s) for s in args.sizes.split(",")):
        print(f"== {n} items", flush=True)
        base = wl_files(n, args.data_dir)
        schema = f"bench_mwl_{os.getpid()}_{n}"
        procs: list[subprocess.Popen[bytes]] = []
        ports: dict[str, tuple[int, str]] = {}
        try:
            for name in radflows:
                rf, rf_port, _ = start_radflow(
                    work, n, schema if name == "radflow-pg" else None, args.pg_dsn)
                procs.append(rf)
                ports[name] = (rf_port, RADFLOW_AE)
            wl, wl_port = start_wlmscpfs(base)
            procs.append(wl)
            ports["wlmscpfs"] = (wl_port, WL_AE)
            # The transport floor: a C-ECHO over the same kind of open association.
            for name, (port, called) in ports.items():
                client = PersistentClient(called, port)
                try:
                    times, _ = measure(client.echo, args.assoc_queries, args.budget)
                finally:
                    client.close()
                rows.append([str(n), "C-ECHO", f"{name} assoc", str(len(times)), "-",
                             ms(percentile(times, 50)), ms(percentile(times, 99))])
            for kind in ("patient", "ct-today"):
                keys = findscu_keys(kind, n)
                want = expected_matches(kind, n)
                results: dict[str, tuple[list[float], int]] = {}
                repeat = 10 if n <= 10_000 else 4
                for name, (port, called) in ports.items():
                    results[f"{name} findscu"] = measure(
                        findscu_once(findscu, called, port, keys), args.queries, args.budget)
                    single = percentile(results[f"{name} findscu"][0], 50)
                    results[f"{name} findscu-repeat"] = findscu_repeat(
                        findscu, called, port, keys, repeat, 3, single)
                    client = PersistentClient(called, port)
                    try:
                        results[f"{name} assoc"] = measure(client.once(identifier(kind, n)),
                                                           args.assoc_queries, args.budget)
                    finally:
                        client.close()
                for name, (times, matches) in results.items():
                    flag = "" if matches == want else f" (expected {want})"
                    rows.append([str(n), kind, name, str(len(times)), f"{matches}{flag}",
                                 ms(percentile(times, 50)), ms(percentile(times, 99))])
                for client_kind in ("findscu", "findscu-repeat", "assoc"):
                    w = percentile(results[f"wlmscpfs {client_kind}"][0], 50)
                    for name in radflows:
                        r = percentile(results[f"{name} {client_kind}"][0], 50)
                        summary.append([str(n), kind, client_kind, name, ms(r), ms(w),
                                        f"{w / r:.1f}x" if r else "n/a"])
        finally:
            for proc in procs:
                stop_process(proc)
            if "radflow-pg" in radflows:
                drop_pg_schema(args.pg_dsn, schema)
    print()
    print_table(["items", "query", "server / client", "runs", "matches", "p50 ms", "p99 ms"],
                rows, "llllrrr")
    print()
    print_table(["items", "query", "client", "radflow", "radflow p50 ms", "wlmscpfs p50 ms",
                 "radflow faster by"], summary, "llllrrr")
    os.sync()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
