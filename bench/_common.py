"""Shared plumbing for radflow's hand-run benchmarks (``bench/*.py``).

This module owns what every benchmark needs and none should re-implement:

* synthetic DICOM data: generating CT-like instances with pydicom + numpy, split into
  sender groups and cached on disk (with a manifest) so reruns reuse them;
* locating the real DCMTK tools (on this machine ``storescu``/``storescp`` on ``PATH``
  may be pynetdicom's console scripts, not DCMTK);
* subprocess servers: free-port picking, starting in their own process group with logs
  to a file, waiting for a TCP port or an HTTP 200, stopping with SIGTERM then SIGKILL,
  and killing every child that is still alive when the benchmark exits;
* small utilities: timing, median, file counting, aligned table printing.

Nothing here asserts on timings: benchmarks report, they do not judge.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median

LOOPBACK = "127.0.0.1"
DEFAULT_DATA_DIR = Path("/tmp/radflow-bench-data")

# --------------------------------------------------------------------------- paths


def repo_root() -> Path:
    """The radflow checkout this file belongs to (the parent of ``bench/``)."""
    return Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- DCMTK


class ToolNotFound(RuntimeError):
    """A required external tool is missing."""


def dcmtk_tool(name: str) -> str:
    """Absolute path of DCMTK's ``name`` (e.g. ``storescu``).

    ``PATH`` may hold pynetdicom's apps of the same name (pyenv shims do), so each
    candidate is checked: DCMTK tools print ``$dcmtk: <name> v...`` for ``--version``.
    """
    candidates = [Path("/usr/bin") / name, Path("/usr/local/bin") / name]
    candidates += [Path(d) / name for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    seen: set[Path] = set()
    for cand in candidates:
        if cand in seen or not (cand.is_file() and os.access(cand, os.X_OK)):
            continue
        seen.add(cand)
        try:
            out = subprocess.run(
                [str(cand), "--version"], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "$dcmtk:" in out.stdout + out.stderr:
            return str(cand)
    raise ToolNotFound(f"DCMTK {name} not found (apt-get install dcmtk)")


def nodelay_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for DCMTK tools: Debian's DCMTK leaves Nagle on unless TCP_NODELAY=1."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    if extra:
        env.update(extra)
    return env


# --------------------------------------------------------------------------- ports


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on ``host`` a moment ago (bind to port 0, then release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """``n`` distinct free ports (held open together while picking so they differ)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------- processes

_LIVE: set[subprocess.Popen[bytes]] = set()


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send ``sig`` to the process group that ``proc`` leads (it was started in its own)."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _reap_all() -> None:
    for proc in list(_LIVE):
        _kill_group(proc, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        _LIVE.discard(proc)


atexit.register(_reap_all)


def install_signal_handlers() -> None:
    """Make SIGTERM/SIGHUP raise SystemExit and SIGINT raise KeyboardInterrupt.

    Then ``finally`` blocks and atexit cleanup run on every way of stopping a benchmark.
    SIGINT is set explicitly because a background job of a non-interactive shell inherits
    it as ignored.
    """

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGHUP, _exit)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session (own process group), stdout+stderr to ``log_path``.

    The process is tracked and SIGKILLed (with its group) at interpreter exit if still alive.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
        )
    _LIVE.add(proc)
    return proc


@dataclass(frozen=True)
class StopResult:
    returncode: int | None  # None: could not be reaped
    killed: bool  # True: it ignored SIGTERM for term_timeout s and was SIGKILLed
    seconds: float  # from SIGTERM to exit


def stop_process(proc: subprocess.Popen[bytes], *, term_timeout: float = 15.0) -> StopResult:
    """SIGTERM the process, SIGKILL its whole group after ``term_timeout`` s; reap it.

    Leftovers in its process group (e.g. forked children) are SIGKILLed afterwards too.
    """
    t0 = time.perf_counter()
    killed = False
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=term_timeout)
        except subprocess.TimeoutExpired:
            killed = True
            _kill_group(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                return StopResult(None, True, time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    _kill_group(proc, signal.SIGKILL)
    _LIVE.discard(proc)
    return StopResult(proc.returncode, killed, seconds)


def wait_all(
    procs: Sequence[subprocess.Popen[bytes]], *, timeout: float
) -> tuple[float, set[subprocess.Popen[bytes]]]:
    """Wait for all ``procs`` to exit, at most ``timeout`` s in total.

    Returns ``(t_last, still_running)`` where ``t_last`` is the ``time.perf_counter()`` at
    which the last process was seen to exit (or the deadline). Uses pidfds, so the exit is
    noticed at once (``Popen.wait(timeout)`` polls with sleeps of up to 50 ms, too coarse
    for runs of a fraction of a second); falls back to ``Popen.wait`` without pidfd support.
    """
    deadline = time.perf_counter() + timeout
    pending = {p for p in procs if p.poll() is None}
    t_last = time.perf_counter()
    if not hasattr(os, "pidfd_open"):
        for p in list(pending):
            try:
                p.wait(timeout=max(0.0, deadline - time.perf_counter()))
                pending.discard(p)
                t_last = time.perf_counter()
            except subprocess.TimeoutExpired:
                pass
        return (t_last if not pending else time.perf_counter()), pending
    fds: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for p in pending:
            with suppress(ProcessLookupError):
                fds[os.pidfd_open(p.pid)] = p
        while fds:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            ready, _, _ = select.select(list(fds), [], [], remaining)
            now = time.perf_counter()
            for fd in ready:
                proc = fds.pop(fd)
                os.close(fd)
                proc.wait()
                _LIVE.discard(proc)
                t_last = now
    finally:
        for fd in fds:
            os.close(fd)
    still = {p for p in procs if p.poll() is None}
    for p in procs:
        if p not in still:
            _LIVE.discard(p)
    return (t_last if not still else time.perf_counter()), still


def log_tail(path: Path, lines: int = 5, max_chars: int = 400) -> str:
    """Last non-empty lines of a log file, joined with `` | `` (for one-line reasons)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    # skip blank lines and traceback caret/tilde markers ("^^^^", "~~~^^^")
    kept = [ln.strip() for ln in text.splitlines() if ln.strip().strip("^~ ")]
    joined = " | ".join(kept[-lines:])
    return joined if len(joined) <= max_chars else "..." + joined[-max_chars:]


class ServerNotReady(RuntimeError):
    """A server process died or did not become ready in time."""


_TCP_LISTEN = "0A"


def is_listening(port: int) -> bool | None:
    """Whether some socket is in LISTEN state on TCP ``port`` (from ``/proc/net/tcp*``).

    Returns None where ``/proc/net/tcp`` cannot be read (not Linux).
    """
    found_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                lines = fh.read().splitlines()[1:]
        except OSError:
            continue
        found_table = True
        for line in lines:
            fields = line.split()
            if (
                len(fields) > 3
                and fields[3] == _TCP_LISTEN
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                return True
    return False if found_table else None


def wait_for_port(
    port: int,
    *,
    host: str = LOOPBACK,
    timeout: float = 30.0,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll until TCP ``port`` is listening; fail early if ``proc`` exits.

    Checks the LISTEN state in ``/proc/net/tcp`` rather than connecting: a probe
    connection that sends nothing is not free for every server (radflow's shutdown
    waited its whole grace period for one). Falls back to a connect where /proc is absent.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServerNotReady(f"exited with code {proc.returncode} before listening")
        listening = is_listening(port)
        if listening:
            return
        if listening is None:
            try:
                with socket.create_connection((host, port), timeout=1.0):
                    return
            except OSError:
                pass
        if time.monotonic() >= deadline:
            raise ServerNotReady(f"port {port} not open after {timeout:.0f} s")
        time.sleep(0.05)


def wait_for_http_ok(
    url: str,
    *,
    timeout: float = 30.0,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll ``url`` until it answers HTTP 200; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServerNotReady(f"exited with code {proc.returncode} before ready")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = type(exc).__name__
        if time.monotonic() >= deadline:
            raise ServerNotReady(f"{url} not 200 after {timeout:.0f} s (last: {last})")
        time.sleep(0.1)


# --------------------------------------------------------------------------- timing & files


@contextmanager
def timed() -> Iterator[list[float]]:
    """``with timed() as t: ...`` then ``t[0]`` is the elapsed wall time in seconds."""
    out: list[float] = []
    start = time.perf_counter()
    try:
        yield out
    finally:
        out.append(time.perf_counter() - start)


def median_or_none(values: Sequence[float]) -> float | None:
    return float(median(values)) if values else None


def count_files(root: Path, pattern: str = "*") -> int:
    """Regular files matching ``pattern`` under ``root``, recursively (0 if it is missing)."""
    if not root.is_dir():
        return 0
    return sum(1 for p in root.rglob(pattern) if p.is_file())


def clean_dir(path: Path) -> None:
    """Remove ``path`` entirely (if present) and flush the deletes to disk."""
    shutil.rmtree(path, ignore_errors=True)
    os.sync()


def warm_page_cache(files: Sequence[Path]) -> None:
    """Read every file once so the first timed run does not pay for cold reads."""
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(1 << 20):
                pass


# --------------------------------------------------------------------------- table


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None
) -> str:
    """Plain aligned text table.

    ``align`` has one letter per column, ``l`` or ``r``; by default the first column is
    left-aligned and the others right-aligned.
    """
    if align is None:
        align = "l" + "r" * (len(headers) - 1)
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(widths[i]) if align[i] == "l" else c.rjust(widths[i])
            for i, c in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None
) -> None:
    print(format_table(headers, rows, align), flush=True)


# --------------------------------------------------------------------------- DICOM data

GENERATOR_VERSION = 1


@dataclass(frozen=True)
class DataSpec:
    """What to generate: ``count`` CT Image Storage instances of ``rows`` x ``cols`` 16-bit."""

    name: str  # e.g. "ct", "small"
    count: int
    rows: int
    cols: int
    per_series: int  # instances per series
    series_per_study: int = 2
    groups: int = 4  # sender groups (one sub-directory each)
    seed: int = 1

    @property
    def dirname(self) -> str:
        return f"{self.name}-{self.rows}x{self.cols}-n{self.count}-g{self.groups}"


@dataclass(frozen=True)
class BenchData:
    """A generated, cached dataset: ``root`` holds ``g0 .. g{groups-1}`` with the files."""

    spec: DataSpec
    root: Path
    groups: tuple[Path, ...]
    files: tuple[Path, ...]
    total_bytes: int

    @property
    def count(self) -> int:
        return len(self.files)

    @property
    def mean_bytes(self) -> float:
        return self.total_bytes / max(1, self.count)


def _load_cached(base: Path, spec: DataSpec) -> BenchData | None:
    manifest = base / "manifest.json"
    try:
        meta = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("generator_version") != GENERATOR_VERSION or meta.get("spec") != asdict(spec):
        return None
    root = base / "files"
    groups = tuple(root / f"g{i}" for i in range(spec.groups))
    files = tuple(sorted(p for g in groups if g.is_dir() for p in g.glob("*.dcm")))
    if len(files) != spec.count:
        return None
    total = sum(p.stat().st_size for p in files)
    return BenchData(spec, root, groups, files, total)


def ensure_dataset(data_dir: Path, spec: DataSpec, *, log: bool = True) -> BenchData:
    """Return the cached dataset for ``spec`` under ``data_dir``, generating it if needed.

    Layout: ``data_dir/<spec.dirname>/manifest.json`` and ``.../files/g<i>/<n>.dcm``
    (instances dealt round-robin to the groups). Generation goes to a temporary sibling
    directory that is renamed into place when complete, so an interrupted run never leaves
    a half-written cache behind.
    """
    base = data_dir / spec.dirname
    cached = _load_cached(base, spec)
    if cached is not None:
        return cached
    if log:
        print(
            f"generating {spec.count} x {spec.rows}x{spec.cols} instances in {base} ...", flush=True
        )
    tmp = data_dir / f".{spec.dirname}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    _generate(tmp, spec)
    (tmp / "manifest.json").write_text(
        json.dumps({"generator_version": GENERATOR_VERSION, "spec": asdict(spec)}, indent=2)
    )
    shutil.rmtree(base, ignore_errors=True)
    tmp.rename(base)
    result = _load_cached(base, spec)
    if result is None:
        raise RuntimeError(f"generated dataset in {base} did not verify")
    if log:
        print(
            f"  done in {time.perf_counter() - t0:.1f} s ({result.total_bytes / 1e6:.1f} MB)",
            flush=True,
        )
    return result


def _generate(out: Path, spec: DataSpec) -> None:
    """Write ``spec.count`` Explicit VR LE CT Image Storage files into ``out/files/g<i>/``."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        CTImageStorage,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    rng = np.random.default_rng(spec.seed)
    root = out / "files"
    for g in range(spec.groups):
        (root / f"g{g}").mkdir(parents=True, exist_ok=True)

    # A water-cylinder phantom (stored values, rescale intercept -1024) plus per-slice noise.
    yy, xx = np.mgrid[0 : spec.rows, 0 : spec.cols]
    cy, cx = (spec.rows - 1) / 2, (spec.cols - 1) / 2
    radius = 0.42 * min(spec.rows, spec.cols)
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    phantom = np.where(inside, 1024, 0).astype(np.int32)

    per_study = spec.per_series * spec.series_per_study
    study_uid = series_uid = ""
    patient_id = ""
    for i in range(spec.count):
        study_no, in_study = divmod(i, per_study)
        series_no, instance_no = divmod(in_study, spec.per_series)
        if in_study == 0:
            study_uid = generate_uid()
            patient_id = f"BENCH{spec.name.upper()}{study_no:04d}"
        if instance_no == 0:
            series_uid = generate_uid()
        sop_uid = generate_uid()

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = "20260101"
        ds.StudyTime = "120000"
        ds.AccessionNumber = f"ACC{spec.name.upper()}{study_no:05d}"
        ds.Modality = "CT"
        ds.Manufacturer = "radflow-bench"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = f"Bench {spec.name} study {study_no}"
        ds.SeriesDescription = f"Axial {series_no}"
        ds.PatientName = f"Bench^{spec.name.capitalize()}{study_no:04d}"
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.SliceThickness = "1.0"
        ds.KVP = "120"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = str(study_no + 1)
        ds.SeriesNumber = str(series_no + 1)
        ds.InstanceNumber = str(instance_no + 1)
        ds.ImagePositionPatient = ["-250.0", "-250.0", f"{-float(instance_no):.1f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.FrameOfReferenceUID = series_uid
        ds.SliceLocation = f"{-float(instance_no):.1f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = spec.rows
        ds.Columns = spec.cols
        ds.PixelSpacing = ["0.9765625", "0.9765625"]
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        noise = rng.integers(-40, 41, size=(spec.rows, spec.cols), dtype=np.int32)
        ds.PixelData = np.clip(phantom + noise, 0, 4095).astype("<u2").tobytes()

        ds.save_as(root / f"g{i % spec.groups}" / f"{i:06d}.dcm", enforce_file_format=True)


def python_exe() -> str:
    """The interpreter running the benchmark (used for Python subprocess servers)."""
    return sys.executable
