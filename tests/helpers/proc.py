"""Run radflow as a real subprocess, and DCMTK's tools against it, on loopback.

:class:`RadflowProcess` writes a YAML config (the defaults of :func:`default_config` deep-merged
with a test's overrides) into a private directory, starts ``python -m engine run --config FILE``
with stdout and stderr in log files, and waits (bounded) until ``/readyz`` answers 200. It then
gives tests what a user would look at: the JSON log lines, ``/readyz``, ``/metrics``,
``/api/v1/instances``, the journal's SQLite rows and the spool's files. ``stop()`` sends SIGTERM
and expects exit code 0, ``kill()`` sends SIGKILL, ``restart()`` starts again on the same config
and data. :func:`dcmtk` runs a DCMTK tool with ``TCP_NODELAY=1`` and a timeout; the binaries are
looked up outside pyenv's shims, which shadow them with pynetdicom's same-named apps.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from engine.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
_DCMTK_PATH = "/usr/local/bin:/usr/bin:/bin"


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral (client-side) range."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago.

    Taken below the ephemeral range when possible, so the client side of another test's
    connection cannot grab it between this check and radflow's bind (port 0 would pick from
    exactly that range).
    """
    low = _ephemeral_low()
    for _ in range(50):
        port = random.randint(10_000, low - 1) if low > 11_000 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free TCP port found on loopback")


def deep_merge(base: Any, override: Any) -> Any:
    """``override`` merged into a copy of ``base``: dicts key by key, lists of dicts item by
    item (so ``{"dicom": {"listeners": [{"allowed_calling": [...]}]}}`` keeps the default
    listener's port), anything else replaced."""
    if isinstance(base, dict) and isinstance(override, Mapping):
        out = copy.deepcopy(base)
        for key, value in override.items():
            out[key] = deep_merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(override, list) and \
            all(isinstance(item, Mapping) for item in override):
        return [deep_merge(base[i], item) if i < len(base) else copy.deepcopy(item)
                for i, item in enumerate(override)]
    return copy.deepcopy(override)


def plain(value: Any) -> Any:
    """``value`` with str subclasses (pydicom's ``UID``) made plain, so YAML can dump it."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


def default_config(data_dir: Path, dicom_port: int, http_port: int) -> dict[str, Any]:
    """A config with every path under ``data_dir`` and every socket on loopback."""
    config: dict[str, Any] = {
        "site": {"name": "radflow-test"},
        "storage": {
            "backend": "sqlite",
            "sqlite_path": str(data_dir / "radflow.db"),
            "spool_dir": str(data_dir / "spool"),
            "min_free_mb": 1,
        },
        "dicom": {
            "duplicate_policy": "version",
            "store_timeout": 30,
            "listeners": [{
                "name": "main", "ae_title": "RADFLOW", "host": HOST, "port": dicom_port,
                "acse_timeout": 10, "dimse_timeout": 20, "network_timeout": 20,
                # Tests call from many AE titles (DCMTK's defaults, pynetdicom's, their own);
                # those about the allow list set it and turn this off.
                "accept_any_calling": True,
            }],
        },
        "http": {"enabled": True, "host": HOST, "port": http_port},
        # Relative paths resolve against the config's folder (a temporary one here): name the
        # shipped HL7 -> worklist mapping by its absolute path.
        "worklist": {"mapping_file": str(REPO_ROOT / "routes" / "worklist" / "hl7-mwl.yaml")},
        "logging": {"level": "info", "format": "json"},
        "engine": {"shutdown_grace": 10},
    }
    if "hl7" in Settings.model_fields:
        # Keep the MLLP listener off its well-known port, which parallel tests would share.
        # Senders on the whole loopback network: tests that play an abusive client bind a
        # second loopback address (127.0.0.2) so its limits do not hit the well-behaved one.
        config["hl7"] = {"listeners": [{"host": HOST, "port": free_port()}],
                         "allowed_sources": ["127.0.0.0/8"]}
    if "routing" in Settings.model_fields:
        # An empty routes folder of the test's own: the shipped routes/ name destinations
        # this config does not have. Tests about routing put their route files here.
        routes = data_dir / "routes"
        routes.mkdir(parents=True, exist_ok=True)
        config["routing"] = {"routes_dir": str(routes), "reload_poll_seconds": 0.5}
    return config


class RadflowError(AssertionError):
    """radflow did not start or stop as expected; the message carries its log."""


class _PortTaken(Exception):
    """radflow could not bind a port: another process took it after it was picked."""


_START_ATTEMPTS = 3


class RadflowProcess:
    """One radflow engine under test, with its own config, data and ports."""

    def __init__(self, base_dir: Path, overrides: Mapping[str, Any] | None = None) -> None:
        self.base_dir = base_dir
        self.data_dir = base_dir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._overrides = overrides or {}
        self.config_path = base_dir / "radflow.yaml"
        self._write_config()
        self.log_path = base_dir / "radflow.log"
        self.stderr_path = base_dir / "radflow.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        #: extra environment for the next start (e.g. ``RADFLOW_CRASH_AT`` of engine.crashpoints)
        self.env: dict[str, str] = {}
        #: where the test reaches it (its host's address when it runs in a network namespace)
        self.address = HOST
        #: a command that runs radflow elsewhere, e.g. ``ip netns exec NAME`` (empty: here)
        self.launcher: list[str] = []
        self.starts = 0
        self._run_offset = 0  # log file offset where the current run began

    def _write_config(self) -> None:
        """(Re)write the config, with fresh ports where the test did not set one."""
        self.config = plain(deep_merge(
            default_config(self.data_dir, free_port(), free_port()), self._overrides))
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False),
                                    encoding="utf-8")

    # --- what the config says ----------------------------------------------------------------
    @property
    def listener(self) -> dict[str, Any]:
        first: dict[str, Any] = self.config["dicom"]["listeners"][0]
        return first

    @property
    def port(self) -> int:
        return int(self.listener["port"])

    @property
    def ae_title(self) -> str:
        return str(self.listener["ae_title"])

    @property
    def http_port(self) -> int:
        return int(self.config["http"]["port"])

    @property
    def spool_dir(self) -> Path:
        return Path(self.config["storage"]["spool_dir"])

    @property
    def db_path(self) -> Path:
        return Path(self.config["storage"]["sqlite_path"])

    # --- life cycle ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *, wait_ready: bool = True, timeout: float = START_TIMEOUT) -> None:
        """Start radflow and wait until ``/readyz`` is 200 (or, with ``wait_ready=False``, until
        the engine has logged ``engine.started``: for configs that are deliberately not ready).

        If a port was taken in the meantime (by a parallel test), the first start tries again
        on fresh ports; a restart keeps its ports, as a real restart would.
        """
        first_start = self.starts == 0
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                self._start_once(wait_ready, timeout)
            except _PortTaken:
                if attempt == _START_ATTEMPTS:
                    raise RadflowError(f"ports stayed taken\n{self.diagnostics()}") from None
                if first_start:
                    # That run never started: forget its logs, pick other ports.
                    self.log_path.unlink(missing_ok=True)
                    self.stderr_path.unlink(missing_ok=True)
                    self._write_config()
                else:
                    time.sleep(0.5)
                continue
            self.starts += 1
            return

    def _start_once(self, wait_ready: bool, timeout: float) -> None:
        if self.running:
            raise RadflowError("radflow is already running")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RADFLOW_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env)
        self._run_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        err_offset = self.stderr_path.stat().st_size if self.stderr_path.exists() else 0
        with open(self.log_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [*self.launcher, sys.executable, "-m", "engine", "run", "--config",
                 str(self.config_path)],
                cwd=REPO_ROOT, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                with open(self.stderr_path, "rb") as fh:
                    fh.seek(err_offset)
                    if b"address already in use" in fh.read().lower():  # asyncio says it lower-case
                        raise _PortTaken
                raise RadflowError(f"radflow exited with {self.proc.returncode} while starting"
                                   f"\n{self.diagnostics()}")
            # engine.started in this run's log: the /readyz that answers is this process's.
            if self.events("engine.started", current_run=True) and \
                    (not wait_ready or self.readyz()[0] == 200):
                return
            time.sleep(0.1)
        self.kill()
        raise RadflowError(f"radflow not ready within {timeout:g} s\n{self.diagnostics()}")

    def stop(self, timeout: float = STOP_TIMEOUT, expect_code: int | None = 0) -> int:
        """SIGTERM, wait up to ``timeout`` seconds, and check the exit code."""
        proc = self._require_proc()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RadflowError(f"radflow did not exit within {timeout:g} s of SIGTERM"
                               f"\n{self.diagnostics()}") from None
        if expect_code is not None and code != expect_code:
            raise RadflowError(f"radflow exited with {code}, expected {expect_code}"
                               f"\n{self.diagnostics()}")
        return code

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to clean up."""
        proc = self._require_proc()
        if proc.poll() is None:
            proc.kill()
        proc.wait(STOP_TIMEOUT)

    def restart(self, **start_args: Any) -> None:
        """Start again with the same config and data (after ``stop`` or ``kill``)."""
        if self.running:
            self.stop()
        self.start(**start_args)

    def close(self) -> None:
        """Make sure nothing is left running (teardown)."""
        if self.running:
            self.kill()

    def _require_proc(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise RadflowError("radflow was never started")
        return self.proc

    # --- logs ----------------------------------------------------------------------------------
    def logs(self, current_run: bool = False) -> list[dict[str, Any]]:
        """Every JSON log line so far (of all runs, or of the current one), parsed."""
        if not self.log_path.exists():
            return []
        with open(self.log_path, "rb") as fh:
            if current_run:
                fh.seek(self._run_offset)
            text = fh.read().decode("utf-8", "replace")
        out: list[dict[str, Any]] = []
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
        return out

    def events(self, event: str, current_run: bool = False, **fields: Any) -> list[dict[str, Any]]:
        """Log lines named ``event`` whose keys equal ``fields``."""
        return [rec for rec in self.logs(current_run) if rec.get("event") == event
                and all(rec.get(k) == v for k, v in fields.items())]

    def wait_for_event(self, event: str, timeout: float = 10.0, **fields: Any
                       ) -> dict[str, Any]:
        """The first log line named ``event`` (with ``fields``), waiting up to ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(event, **fields)
            if found:
                return found[0]
            if time.monotonic() >= deadline:
                raise AssertionError(f"no log event {event} {fields} within {timeout:g} s"
                                     f"\n{self.diagnostics()}")
            time.sleep(0.05)

    def diagnostics(self, tail: int = 60) -> str:
        """The end of radflow's stdout and stderr, for assertion messages."""
        parts = []
        for path in (self.log_path, self.stderr_path):
            if path.exists():
                lines = path.read_text("utf-8", "replace").splitlines()[-tail:]
                parts.append(f"--- {path.name} (last {len(lines)} lines) ---\n" + "\n".join(lines))
        return "\n".join(parts)

    # --- HTTP admin ----------------------------------------------------------------------------
    def http_get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """``GET`` on the admin server: (status, body); status 0 when nothing answers."""
        request = urllib.request.Request(f"http://{self.address}:{self.http_port}{path}")
        if token := self.config["http"].get("token"):
            # Beyond loopback the API needs the token (health and metrics are open anyway).
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return 0, b""

    def readyz(self) -> tuple[int, dict[str, Any]]:
        status, body = self.http_get("/readyz")
        try:
            return status, json.loads(body) if body else {}
        except json.JSONDecodeError:
            return status, {}

    def api_instances(self, limit: int = 1000) -> dict[str, Any]:
        status, body = self.http_get(f"/api/v1/instances?limit={limit}")
        assert status == 200, f"/api/v1/instances answered {status}: {body[:200]!r}"
        result: dict[str, Any] = json.loads(body)
        return result

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` (with ``labels``) in ``/metrics``; 0 if absent."""
        status, body = self.http_get("/metrics")
        assert status == 200, f"/metrics answered {status}"
        return metric_value(body.decode(), name, **labels)

    # --- durable state -------------------------------------------------------------------------
    def journal_rows(self) -> list[dict[str, Any]]:
        """Every row of the ``instances`` table, read directly from the database."""
        return self._table("instances")

    def hl7_rows(self) -> list[dict[str, Any]]:
        """Every row of the ``hl7_messages`` table, read directly from the database."""
        return self._table("hl7_messages")

    def outbox_rows(self) -> list[dict[str, Any]]:
        """Every row of the ``outbox`` table (the delivery queues), read from the database."""
        return self._table("outbox")

    def _table(self, table: str) -> list[dict[str, Any]]:
        storage = self.config["storage"]
        if storage.get("backend") == "postgresql":
            import psycopg
            from psycopg.rows import dict_row

            pg = storage["postgresql"]
            with psycopg.connect(pg["dsn"], options=f"-c search_path={pg['schema']}",
                                 row_factory=dict_row, connect_timeout=10) as pconn:
                return list(pconn.execute(f"SELECT * FROM {table} ORDER BY id"))
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        try:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY id")]
        finally:
            conn.close()

    def spool_objects(self) -> list[Path]:
        objects = self.spool_dir / "objects"
        return sorted(objects.rglob("*.dcm")) if objects.exists() else []

    def spool_temp_files(self) -> list[Path]:
        tmp = self.spool_dir / "tmp"
        return sorted(tmp.iterdir()) if tmp.exists() else []


#: the ``radflow`` fixture: ``radflow(overrides=None, *, start=True, wait_ready=True)``
RadflowFactory = Callable[..., RadflowProcess]


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# --- DCMTK ------------------------------------------------------------------------------------
def dcmtk_tool(name: str) -> str | None:
    """The path of DCMTK's ``name`` (never pyenv's shim of a pynetdicom app of the same name)."""
    return shutil.which(name, path=_DCMTK_PATH)


def dcmtk(tool: str, *args: str | Path, timeout: float = 60.0,
          check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool with ``TCP_NODELAY=1``; output is text, stderr folded into stdout."""
    exe = dcmtk_tool(tool)
    if exe is None:
        raise FileNotFoundError(f"DCMTK tool {tool} is not installed")
    env = dict(os.environ, TCP_NODELAY="1")
    result = subprocess.run([exe, *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{tool} exited with {result.returncode}:\n{result.stdout}")
    return result


#: storescu options that make it propose (and so send, unconverted) a file's own transfer syntax
STORESCU_PROPOSE: dict[str, tuple[str, ...]] = {
    ExplicitVRLittleEndian: ("-R", "-xe"),
    ImplicitVRLittleEndian: ("-R", "-xi"),
    DeflatedExplicitVRLittleEndian: ("-R", "-xd"),
    RLELossless: ("-R", "-xr"),
}


def echoscu(rf: RadflowProcess, *args: str, called_ae: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    return dcmtk("echoscu", "-aec", called_ae or rf.ae_title, *args, HOST, str(rf.port),
                 timeout=30)


def storescu(rf: RadflowProcess, files: list[Path] | Path, *args: str,
             called_ae: str | None = None, timeout: float = 120.0
             ) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu to ``rf``, verbose, continuing after a failed store (``-nh``)."""
    paths = [files] if isinstance(files, Path) else list(files)
    return dcmtk("storescu", "-v", "-nh", "-aec", called_ae or rf.ae_title, *args,
                 HOST, str(rf.port), *map(str, paths), timeout=timeout)


_STORE_RESPONSE = re.compile(r"Received Store Response \((?P<status>[^)]*)\)")


def store_responses(output: str) -> list[str]:
    """The status text of every C-STORE response storescu reported (``Success``, ...)."""
    return [m.group("status") for m in _STORE_RESPONSE.finditer(output)]


_CONVERSION = re.compile(r"Converting transfer syntax: (?P<source>.+?) -> (?P<target>.+?)\s*$",
                         re.MULTILINE)


def storescu_conversions(output: str) -> list[tuple[str, str]]:
    """(file's syntax, sent syntax) for every file storescu sent; equal when unconverted."""
    return [(m.group("source"), m.group("target")) for m in _CONVERSION.finditer(output)]


class StorescuRun:
    """storescu running in the background (``-v``), tracking which files got a Success response.

    A reader thread follows storescu's output: ``Sending file: PATH`` names the file in flight,
    ``Received Store Response (Success)`` acknowledges it. :meth:`wait_acknowledged` blocks until
    enough are acknowledged; :meth:`finish` waits for storescu to exit.
    """

    def __init__(self, rf: RadflowProcess, files: Sequence[Path], *args: str) -> None:
        exe = dcmtk_tool("storescu")
        if exe is None:
            raise FileNotFoundError("DCMTK tool storescu is not installed")
        self.acknowledged: list[Path] = []
        self.responses: list[str] = []
        self.output: list[str] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.proc = subprocess.Popen(
            [exe, "-v", "-aec", rf.ae_title, *args, HOST, str(rf.port), *map(str, files)],
            env=dict(os.environ, TCP_NODELAY="1"), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, name="storescu-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        in_flight: Path | None = None
        for line in self.proc.stdout:
            with self._changed:
                self.output.append(line)
                if "Sending file: " in line:
                    in_flight = Path(line.split("Sending file: ", 1)[1].strip())
                response = _STORE_RESPONSE.search(line)
                if response:
                    self.responses.append(response.group("status"))
                    if response.group("status") == "Success" and in_flight is not None:
                        self.acknowledged.append(in_flight)
                    in_flight = None
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_acknowledged(self, count: int, timeout: float = 60.0) -> int:
        """Block until ``count`` files are acknowledged or storescu ended; return how many."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.acknowledged) < count and self._reader.is_alive():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(min(remaining, 0.5))
            return len(self.acknowledged)

    def finish(self, timeout: float = 120.0) -> int:
        """Wait for storescu to exit (killing it after ``timeout``); return its exit code."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self._reader.join(10)
        return code

    def text(self) -> str:
        with self._lock:
            return "".join(self.output)
