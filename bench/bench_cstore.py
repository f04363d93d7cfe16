"""C-STORE intake benchmark: DCMTK storescu -> {radflow, storescp, bare pynetdicom SCP}.

This script owns the C-STORE *intake* comparison, measured in one run on the same data:

* data: CT-like instances (512x512, 16-bit, ~0.5 MB) and small ones (64x64, ~10 KB),
  Explicit VR Little Endian, generated once and cached (see ``_common.ensure_dataset``);
* sender: DCMTK ``storescu`` with ``TCP_NODELAY=1``, proposing Explicit VR LE first, over
  1 association (whole directory) and 4 parallel associations (4 storescu processes, one
  pre-split quarter of the files each);
* servers, each started fresh on a free port for every run, with a clean receive directory:
  ``storescp`` (DCMTK, writing files), ``bare`` / ``bare-fsync`` (``bare_pynetdicom_scp.py``,
  writing received bytes, optionally fsyncing each file), ``radflow``
  (``python -m engine run --config CFG`` from the repo root; ready on ``GET /readyz``) on
  SQLite, and ``radflow-pg``, the same on PostgreSQL (``--backend``, ``--pg-dsn``: a fresh
  schema per run);
* figure: wall time from the first sender's start to the last sender's exit, as inst/s and
  MB/s (1 MB = 10^6 bytes of Part 10 files sent), median over ``--repeat`` runs, plus
  radflow's ratio to each peer. After every run the received file count is checked.

It is a hand-run benchmark, not a test: it never asserts on timings. Every loop is bounded,
every child has a timeout, and all children are killed on exit.

    python bench/bench_cstore.py [--quick] [--repeat N] [--backend sqlite|postgresql|both]
                                 [--only radflow,radflow-pg,storescp,bare,bare-fsync]
                                 [--data-dir DIR] [--json OUT] [--keep-work] [--repo-root DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_DATA_DIR,
    LOOPBACK,
    BenchData,
    DataSpec,
    ServerNotReady,
    StopResult,
    ToolNotFound,
    clean_dir,
    count_files,
    dcmtk_tool,
    ensure_dataset,
    format_table,
    free_port,
    free_ports,
    install_signal_handlers,
    log_tail,
    median_or_none,
    nodelay_env,
    python_exe,
    repo_root,
    spawn,
    stop_process,
    wait_all,
    wait_for_http_ok,
    wait_for_port,
    warm_page_cache,
)

SERVER_NAMES = ("radflow", "radflow-pg", "storescp", "bare", "bare-fsync")
#: PostgreSQL for radflow-pg: each run gets a fresh schema there, dropped after
DEFAULT_PG_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
ASSOCIATIONS = (1, 4)
RADFLOW_READY_TIMEOUT = 30.0
PEER_READY_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0  # SIGTERM, then SIGKILL after this many seconds
SETTLE_TIMEOUT = 10.0  # how long to wait for the received count after the senders exit


def data_specs(quick: bool) -> list[DataSpec]:
    ct, small = (50, 200) if quick else (500, 2000)
    return [
        DataSpec(name="ct", count=ct, rows=512, cols=512, per_series=min(50, ct // 2)),
        DataSpec(name="small", count=small, rows=64, cols=64, per_series=min(100, small // 2)),
    ]


# --------------------------------------------------------------------------- servers


class ServerUnavailable(RuntimeError):
    """The server cannot be run at all here (missing package, tool, ...)."""


class Server(ABC):
    """One receiving server, started fresh for each run inside its own work directory."""

    name: str
    ae_title: str
    ready_timeout: float = PEER_READY_TIMEOUT

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.workdir = Path()
        self.log_path = Path()

    @abstractmethod
    def command(self) -> tuple[list[str], dict[str, str] | None, Path | None]:
        """(argv, env, cwd) to start the server; called after ``prepare``."""

    def prepare(self) -> None:
        """Create directories/config in ``self.workdir`` and pick ports."""
        self.port = free_port()

    def wait_ready(self) -> None:
        assert self.proc is not None
        wait_for_port(self.port, timeout=self.ready_timeout, proc=self.proc)

    @abstractmethod
    def received_dir(self) -> Path:
        """Where received instances land."""

    def received(self) -> int:
        return count_files(self.received_dir())

    def start(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{self.name}.log"
        self.prepare()
        argv, env, cwd = self.command()
        self.proc = spawn(argv, log_path=self.log_path, env=env, cwd=cwd)
        try:
            self.wait_ready()
        except ServerNotReady as exc:
            self.stop()
            last, tail = log_tail(self.log_path, 1), log_tail(self.log_path, 4)
            reason = f"{exc}: {last} (log tail: {tail})" if last else str(exc)
            raise ServerNotReady(reason) from None

    def stop(self) -> StopResult | None:
        if self.proc is None:
            return None
        res = stop_process(self.proc, term_timeout=STOP_TIMEOUT)
        self.proc = None
        return res


class StoreSCP(Server):
    """DCMTK storescp writing Part 10 files; ``--fork`` so parallel associations run at once."""

    name = "storescp"
    ae_title = "STORESCP"

    def __init__(self, binary: str) -> None:
        super().__init__()
        self.binary = binary

    def received_dir(self) -> Path:
        return self.workdir / "out"

    def prepare(self) -> None:
        super().prepare()
        self.received_dir().mkdir(parents=True, exist_ok=True)

    def command(self) -> tuple[list[str], dict[str, str] | None, Path | None]:
        argv = [
            self.binary,
            "--fork",  # one process per association (single-process serialises them)
            "+xe",  # prefer Explicit VR Little Endian
            "-dhl",  # no reverse DNS lookup of the peer
            "-aet",
            self.ae_title,
            "-od",
            str(self.received_dir()),
            str(self.port),
        ]
        return argv, nodelay_env(), None


class BareSCP(Server):
    """bench/bare_pynetdicom_scp.py: pynetdicom writing the received bytes (opt. fsync)."""

    ae_title = "BARESCP"

    def __init__(self, fsync: bool) -> None:
        super().__init__()
        self.fsync = fsync
        self.name = "bare-fsync" if fsync else "bare"

    def received_dir(self) -> Path:
        return self.workdir / "out"

    def command(self) -> tuple[list[str], dict[str, str] | None, Path | None]:
        script = Path(__file__).resolve().parent / "bare_pynetdicom_scp.py"
        argv = [
            python_exe(),
            str(script),
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
            "--out-dir",
            str(self.received_dir()),
            "--ae-title",
            self.ae_title,
        ]
        if self.fsync:
            argv.append("--fsync")
        return argv, None, None


class Radflow(Server):
    """radflow's engine: ``python -m engine run --config CFG`` with cwd at the repo root."""

    name = "radflow"
    ae_title = "RADFLOW"
    ready_timeout = RADFLOW_READY_TIMEOUT

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.http_port = 0
        pkg = root / "engine"
        if not ((pkg / "__main__.py").is_file() or (pkg / "__init__.py").is_file()):
            raise ServerUnavailable(f"no engine package at {pkg}")

    def received_dir(self) -> Path:
        return self.workdir / "spool"

    def received(self) -> int:
        return count_files(self.received_dir(), "*.dcm")

    def storage_yaml(self) -> str:
        return f"  sqlite_path: {self.workdir / 'radflow.db'}\n"

    def prepare(self) -> None:
        self.port, self.http_port = free_ports(2)
        cfg = (
            "storage:\n"
            f"{self.storage_yaml()}"
            f"  spool_dir: {self.received_dir()}\n"
            "dicom:\n"
            "  listeners:\n"
            "    - name: main\n"
            f"      ae_title: {self.ae_title}\n"
            f"      host: {LOOPBACK}\n"
            f"      port: {self.port}\n"
            "      accept_any_calling: true\n"
            "http:\n"
            f"  host: {LOOPBACK}\n"
            f"  port: {self.http_port}\n"
            "logging:\n"
            "  level: warning\n"
            f"worklist:\n  mapping_file: {self.root / 'routes' / 'worklist' / 'hl7-mwl.yaml'}\n"
            # intake alone: an empty routes folder (the shipped routes/ name other
            # destinations); bench/bench_rules.py measures routing
            f"routing:\n  routes_dir: {self.workdir / 'routes'}\n"
        )
        (self.workdir / "routes").mkdir(parents=True, exist_ok=True)
        (self.workdir / "radflow.yaml").write_text(cfg)

    def command(self) -> tuple[list[str], dict[str, str] | None, Path | None]:
        argv = [python_exe(), "-m", "engine", "run", "--config", str(self.workdir / "radflow.yaml")]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.root), env.get("PYTHONPATH", "")) if p
        )
        return argv, env, self.root

    def wait_ready(self) -> None:
        assert self.proc is not None
        url = f"http://{LOOPBACK}:{self.http_port}/readyz"
        wait_for_http_ok(url, timeout=self.ready_timeout, proc=self.proc)
        wait_for_port(self.port, timeout=5.0, proc=self.proc)


class RadflowPg(Radflow):
    """radflow on PostgreSQL (``storage.backend: postgresql``), a fresh schema per run."""

    name = "radflow-pg"

    def __init__(self, root: Path, dsn: str) -> None:
        super().__init__(root)
        self.dsn = dsn
        self.schema = ""
        try:
            import psycopg

            with psycopg.connect(dsn, connect_timeout=3):
                pass
        except Exception as exc:
            raise ServerUnavailable(f"PostgreSQL at {dsn!r}: {str(exc).strip()}") from None

    def storage_yaml(self) -> str:
        self.schema = f"bench_{os.getpid()}_{time.monotonic_ns() % 10**9}"
        return ("  backend: postgresql\n"
                f"  postgresql: {{dsn: \"{self.dsn}\", schema: {self.schema}}}\n")

    def stop(self) -> StopResult | None:
        res = super().stop()
        if self.schema:
            import psycopg

            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
            self.schema = ""
        return res


# --------------------------------------------------------------------------- results


@dataclass
class RunResult:
    elapsed_s: float
    inst_per_s: float
    mb_per_s: float
    expected: int
    received: int
    settle_s: float  # time after the last sender exit until the count was complete
    stop_s: float  # server: SIGTERM to exit (not part of the timed figure)
    sender_rcs: list[int | None]
    warnings: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """Every file arrived and every sender exited 0: only then does the time count."""
        return self.received == self.expected and all(rc == 0 for rc in self.sender_rcs)


@dataclass
class Cell:
    dataset: str
    associations: int
    server: str
    runs: list[RunResult] = field(default_factory=list)
    unavailable: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def valid_runs(self) -> list[RunResult]:
        return [r for r in self.runs if r.valid]

    @property
    def inst_per_s(self) -> float | None:
        return median_or_none([r.inst_per_s for r in self.valid_runs])

    @property
    def mb_per_s(self) -> float | None:
        return median_or_none([r.mb_per_s for r in self.valid_runs])

    @property
    def elapsed_s(self) -> float | None:
        return median_or_none([r.elapsed_s for r in self.valid_runs])


# --------------------------------------------------------------------------- one run


def run_senders(
    storescu: str,
    dirs: list[Path],
    port: int,
    called_ae: str,
    log_dir: Path,
    timeout: float,
) -> tuple[float, list[int | None], list[str]]:
    """Run one storescu per directory at once; (elapsed to last exit, exit codes, problems)."""
    procs: list[subprocess.Popen[bytes]] = []
    logs = [log_dir / f"storescu-{i}.log" for i in range(len(dirs))]
    env = nodelay_env()
    start = time.perf_counter()
    for d, log in zip(dirs, logs, strict=True):
        argv = [
            storescu,
            "-aet",
            "BENCHSCU",
            "-aec",
            called_ae,
            "-xe",  # propose all uncompressed TS, Explicit VR LE first
            "-to",
            "10",
            "+sd",
            "+r",
            LOOPBACK,
            str(port),
            str(d),
        ]
        procs.append(spawn(argv, log_path=log, env=env))
    end, timed_out = wait_all(procs, timeout=timeout)
    elapsed = end - start
    problems: list[str] = []
    rcs: list[int | None] = []
    for proc, log in zip(procs, logs, strict=True):
        if proc in timed_out:
            stop_process(proc, term_timeout=2.0)
            problems.append(f"storescu killed after the {timeout:g} s run timeout")
            rcs.append(None)
            continue
        rcs.append(proc.returncode)
        if proc.returncode != 0:
            problems.append(f"storescu exit {proc.returncode}: {log_tail(log, 3)}")
    counts = Counter(problems)
    summary = [m if n == 1 else f"{m} (x{n})" for m, n in counts.items()]
    return elapsed, rcs, summary


def run_once(
    server: Server,
    ds: BenchData,
    associations: int,
    storescu: str,
    run_dir: Path,
    run_timeout: float,
) -> RunResult:
    """Start ``server`` fresh, send ``ds`` over ``associations`` associations, stop, verify."""
    dirs = [ds.root] if associations == 1 else list(ds.groups)
    if associations not in (1, len(ds.groups)):
        raise ValueError(f"dataset has {len(ds.groups)} groups, cannot use {associations}")
    server.start(run_dir)  # raises ServerNotReady
    try:
        os.sync()  # do not let earlier dirty pages be written back during the timed part
        elapsed, rcs, warnings = run_senders(
            storescu, dirs, server.port, server.ae_title, run_dir, run_timeout
        )
        t_exit = time.perf_counter()
        received = server.received()
        while received < ds.count and time.perf_counter() - t_exit < SETTLE_TIMEOUT:
            time.sleep(0.05)
            received = server.received()
        settle = time.perf_counter() - t_exit
    finally:
        stopped = server.stop()
    if received != ds.count:
        warnings.append(f"received {received} of {ds.count} files")
    elif settle > 0.2:
        warnings.append(f"last files appeared {settle:.1f} s after the senders exited")
    if stopped is not None:
        if stopped.killed:
            warnings.append(f"server ignored SIGTERM for {STOP_TIMEOUT:.0f} s, SIGKILLed")
        elif stopped.returncode not in (0, -15):
            tail = log_tail(server.log_path, 3)
            warnings.append(
                f"server exit code {stopped.returncode}" + (f": {tail}" if tail else "")
            )
    return RunResult(
        elapsed_s=elapsed,
        inst_per_s=ds.count / elapsed,
        mb_per_s=ds.total_bytes / 1e6 / elapsed,
        expected=ds.count,
        received=received,
        settle_s=settle,
        stop_s=stopped.seconds if stopped is not None else 0.0,
        sender_rcs=rcs,
        warnings=warnings,
    )


# --------------------------------------------------------------------------- output


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


NOTE_WIDTH = 110


def _short(text: str, width: int = NOTE_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def dataset_label(ds: BenchData) -> str:
    return f"{ds.spec.name} x{ds.count} ({ds.mean_bytes / 1e3:,.0f} KB)"


def render(cells: list[Cell], datasets: list[BenchData], servers: list[str]) -> str:
    by_key = {(c.dataset, c.associations, c.server): c for c in cells}
    rows: list[list[str]] = []
    notes: list[str] = []
    for ds in datasets:
        for assoc in ASSOCIATIONS:
            for name in servers:
                c = by_key.get((ds.spec.name, assoc, name))
                if c is None:
                    continue
                label = dataset_label(ds)
                if c.unavailable is not None:
                    rows.append(
                        [
                            label,
                            str(assoc),
                            name,
                            "-",
                            "-",
                            "-",
                            "-",
                            _short(f"{name}: unavailable ({c.unavailable})"),
                        ]
                    )
                    continue
                files = f"{len(c.valid_runs)}/{len(c.runs)} ok" if c.runs else "-"
                note = "; ".join(dict.fromkeys(w for r in c.runs for w in r.warnings))
                note = _short("; ".join(x for x in (note, *c.errors) if x))
                rows.append(
                    [
                        label,
                        str(assoc),
                        name,
                        _fmt(c.inst_per_s),
                        _fmt(c.mb_per_s),
                        _fmt(c.elapsed_s, 3),
                        files,
                        note,
                    ]
                )
    out = [
        format_table(
            ["dataset", "assoc", "server", "inst/s", "MB/s", "time s", "count", "notes"],
            rows,
            align="lrlrrrrl",
        )
    ]

    if "radflow" in servers:
        rrows: list[list[str]] = []
        peers = [s for s in ("radflow-pg", "storescp", "bare", "bare-fsync") if s in servers]
        for ds in datasets:
            for assoc in ASSOCIATIONS:
                rad = by_key.get((ds.spec.name, assoc, "radflow"))
                rad_v = rad.inst_per_s if rad is not None else None
                row = [dataset_label(ds), str(assoc)]
                for p in peers:
                    pc = by_key.get((ds.spec.name, assoc, p))
                    row.append(_ratio(rad_v, pc.inst_per_s if pc is not None else None))
                rrows.append(row)
        if peers:
            out.append("")
            out.append("radflow (SQLite) inst/s ratio to each peer (same run, same data); "
                       "radflow/radflow-pg above 1 means SQLite is faster:")
            out.append(
                format_table(
                    ["dataset", "assoc", *(f"radflow/{p}" for p in peers)],
                    rrows,
                    align="lr" + "r" * len(peers),
                )
            )
        reasons = dict.fromkeys(
            c.unavailable for c in cells if c.server == "radflow" and c.unavailable
        )
        for reason in reasons:
            notes.append(f"radflow: unavailable ({reason})")
    for err in dict.fromkeys(f"{c.server}: {e}" for c in cells for e in c.errors):
        notes.append(err)
    if notes:
        out.append("")
        out.extend(notes)
    return "\n".join(out)


def environment_info(storescu: str) -> dict[str, Any]:
    import numpy
    import pydicom
    import pynetdicom

    ver = subprocess.run([storescu, "--version"], capture_output=True, text=True, timeout=10)
    first = (ver.stdout or ver.stderr).splitlines()[0] if (ver.stdout or ver.stderr) else ""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "numpy": numpy.__version__,
        "dcmtk": first.strip("$ ").strip(),
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="C-STORE intake benchmark: storescu -> radflow / storescp / bare pynetdicom",
    )
    p.add_argument("--quick", action="store_true", help="50 CT + 200 small instead of 500 + 2000")
    p.add_argument("--repeat", type=int, default=1, help="runs per cell; the median is shown")
    p.add_argument(
        "--only",
        default=",".join(SERVER_NAMES),
        help=f"comma-separated subset of {','.join(SERVER_NAMES)}",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="where generated datasets are cached (default %(default)s)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write results as JSON here")
    p.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both",
                   help="radflow's storage backend(s): radflow (SQLite) and/or radflow-pg "
                        "(default %(default)s)")
    p.add_argument("--pg-dsn", default=DEFAULT_PG_DSN,
                   help="PostgreSQL for radflow-pg (a schema per run; default %(default)s)")
    p.add_argument(
        "--run-timeout",
        type=float,
        default=300.0,
        help="max seconds for one sender run (default %(default)s)",
    )
    p.add_argument(
        "--repo-root",
        type=Path,
        default=repo_root(),
        help="radflow checkout to run `python -m engine` from (default %(default)s)",
    )
    p.add_argument(
        "--keep-work", action="store_true", help="keep the temporary work directory (logs, configs)"
    )
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SERVER_NAMES]
    if unknown or not only:
        p.error(f"--only: unknown {unknown}; choose from {','.join(SERVER_NAMES)}")
    skip = {"sqlite": {"radflow-pg"}, "postgresql": {"radflow"}, "both": set()}[args.backend]
    args.servers = [s for s in SERVER_NAMES if s in only and s not in skip]
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    return args


def give_up(cells: dict[tuple[str, int, str], Cell], server: str, reason: str) -> None:
    """Stop running ``server``: cells without results become unavailable, others get a note."""
    for c in cells.values():
        if c.server != server or c.unavailable is not None:
            continue
        if c.runs:
            c.errors.append(f"start failed after {len(c.runs)} run(s), rest skipped: {reason}")
        else:
            c.unavailable = reason


def build_servers(names: list[str], radflow_root: Path, pg_dsn: str = DEFAULT_PG_DSN
                  ) -> tuple[dict[str, Server], dict[str, str]]:
    """Instantiate the selected servers; those that cannot exist here get a reason instead."""
    servers: dict[str, Server] = {}
    unavailable: dict[str, str] = {}
    for name in names:
        try:
            if name == "radflow":
                servers[name] = Radflow(radflow_root)
            elif name == "radflow-pg":
                servers[name] = RadflowPg(radflow_root, pg_dsn)
            elif name == "storescp":
                servers[name] = StoreSCP(dcmtk_tool("storescp"))
            elif name == "bare":
                servers[name] = BareSCP(fsync=False)
            elif name == "bare-fsync":
                servers[name] = BareSCP(fsync=True)
        except (ServerUnavailable, ToolNotFound) as exc:
            unavailable[name] = str(exc)
    return servers, unavailable


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_signal_handlers()
    storescu = dcmtk_tool("storescu")
    env_info = environment_info(storescu)

    args.data_dir.mkdir(parents=True, exist_ok=True)
    datasets = [ensure_dataset(args.data_dir, spec) for spec in data_specs(args.quick)]
    servers, unavailable = build_servers(args.servers, args.repo_root.resolve(), args.pg_dsn)

    work = Path(tempfile.mkdtemp(prefix="radflow-bench-cstore-"))
    cells: dict[tuple[str, int, str], Cell] = {}
    for ds in datasets:
        for assoc in ASSOCIATIONS:
            for name in args.servers:
                cells[(ds.spec.name, assoc, name)] = Cell(
                    ds.spec.name, assoc, name, unavailable=unavailable.get(name)
                )
    had_problem = False
    gave_up: set[str] = set()
    print(
        f"storescu ({env_info['dcmtk']}), TCP_NODELAY=1, loopback; "
        f"repeat={args.repeat}; work dir {work}",
        flush=True,
    )
    try:
        run_no = 0
        for ds in datasets:
            warm_page_cache(ds.files)
            for assoc in ASSOCIATIONS:
                for rep in range(args.repeat):
                    # servers interleaved within each repetition so drift hits them alike
                    for name in args.servers:
                        cell = cells[(ds.spec.name, assoc, name)]
                        server = servers.get(name)
                        if server is None or cell.unavailable is not None or name in gave_up:
                            continue
                        run_no += 1
                        run_dir = work / f"run{run_no:03d}-{ds.spec.name}-a{assoc}-{name}"
                        try:
                            res = run_once(server, ds, assoc, storescu, run_dir, args.run_timeout)
                        except ServerNotReady as exc:
                            had_problem = True
                            if name == "radflow":  # likely to fail again: skip its other runs
                                give_up(cells, name, str(exc))
                                gave_up.add(name)
                            else:
                                cell.errors.append(f"start failed: {exc}")
                            print(
                                f"  {ds.spec.name:5} a{assoc} {name:10} start failed: {exc}",
                                flush=True,
                            )
                            continue
                        finally:
                            clean_dir(run_dir / "out")
                            clean_dir(run_dir / "spool")
                        cell.runs.append(res)
                        had_problem |= bool(res.warnings)
                        warn = f"  WARNING: {'; '.join(res.warnings)}" if res.warnings else ""
                        if not res.valid:
                            warn += " (run not counted)"
                        print(
                            f"  {ds.spec.name:5} a{assoc} {name:10} run {rep + 1}: "
                            f"{res.inst_per_s:8.1f} inst/s {res.mb_per_s:7.1f} MB/s "
                            f"({res.elapsed_s:.3f} s, {res.received}/{res.expected}){warn}",
                            flush=True,
                        )
    finally:
        for s in servers.values():
            s.stop()
        if args.keep_work or had_problem:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(
        f"C-STORE intake: DCMTK storescu -> server on {LOOPBACK}, "
        f"median of {args.repeat} run(s); time = first sender start to last sender exit; "
        f"MB = 10^6 bytes"
    )
    print(render(list(cells.values()), datasets, args.servers))

    if args.json is not None:
        doc = {
            "benchmark": "cstore_intake",
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "environment": env_info,
            "args": {"quick": args.quick, "repeat": args.repeat, "only": args.servers},
            "datasets": [
                {
                    "name": ds.spec.name,
                    "count": ds.count,
                    "rows": ds.spec.rows,
                    "cols": ds.spec.cols,
                    "total_bytes": ds.total_bytes,
                    "path": str(ds.root),
                }
                for ds in datasets
            ],
            "results": [
                {
                    **asdict(c),
                    "runs": [{**asdict(r), "valid": r.valid} for r in c.runs],
                    "median_inst_per_s": c.inst_per_s,
                    "median_mb_per_s": c.mb_per_s,
                    "median_elapsed_s": c.elapsed_s,
                }
                for c in cells.values()
            ],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2))
        print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
