"""Real delivery peers on loopback for the egress tests: DCMTK ``storescp``, Orthanc (C-STORE
and its DICOMweb plugin), an MLLP receiver built on the ``hl7`` package, a FHIR endpoint on
aiohttp, and small pynetdicom SCPs for the faults real products do not make on demand (Out of
Resources, a chosen refusal, an SCP that never answers).

Every server runs on a free loopback port with its files under the test's temporary folder;
``stop()``/``kill()`` end only the process the helper started. What arrived is read back from the
peer itself (storescp's files, Orthanc's REST API, the receiver's own record).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hl7
import hl7.mllp
from aiohttp import web
from pydicom.dataset import Dataset

from tests.helpers.proc import HOST, free_port

STORESCP = "/usr/bin/storescp"  # DCMTK's, not pynetdicom's app of the same name on PATH
ORTHANC = "/usr/sbin/Orthanc"
_DICOMWEB_PLUGINS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
                     "/usr/lib/orthanc/libOrthancDicomWeb.so.1.7")


def have_storescp() -> bool:
    return os.access(STORESCP, os.X_OK)


def dicomweb_plugin() -> str | None:
    for path in _DICOMWEB_PLUGINS:
        if os.path.exists(path):
            return path
    plugin_dir = Path("/usr/share/orthanc/plugins")
    found = sorted(plugin_dir.glob("libOrthancDicomWeb*")) if plugin_dir.is_dir() else []
    return str(found[0]) if found else None


def have_orthanc() -> bool:
    return os.access(ORTHANC, os.X_OK) and dicomweb_plugin() is not None


def wait_port(port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None
              ) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"peer exited with {proc.returncode} before listening")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


class Storescp:
    """DCMTK storescp writing every received instance to ``out`` (file name = SOP UID)."""

    def __init__(self, base: Path, *, ae_title: str = "SINK", port: int | None = None,
                 fork: bool = False, extra: tuple[str, ...] = ()) -> None:
        self.out = base / "received"
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = base / "storescp.log"
        self.ae_title = ae_title
        self.port = port or free_port()
        self.fork = fork
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Storescp:
        args = [STORESCP, "-aet", self.ae_title, "-od", str(self.out), "-uf",
                *(("--fork",) if self.fork else ()), *self.extra, str(self.port)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.out,
                                         env=dict(os.environ, TCP_NODELAY="1"),
                                         start_new_session=True)
        wait_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def received(self) -> set[str]:
        """SOP Instance UIDs of complete files (``-uf``: the file is named by its UID)."""
        uids = set()
        for path in self.out.iterdir():
            name = path.name
            if path.is_file() and "." in name and not name.endswith(".tmp"):
                uids.add(name.split(".", 1)[1])
        return uids

    def repeats(self) -> dict[str, int]:
        """SOP Instance UID -> how many times it arrived again after the first (storescp logs
        a warning each time it overwrites a file of the same name)."""
        counts: dict[str, int] = {}
        marker = "DICOM file already exists, overwriting: "
        if self.log.exists():
            for line in self.log.read_text("utf-8", "replace").splitlines():
                if marker in line:
                    uid = Path(line.split(marker, 1)[1].strip()).name.split(".", 1)[1]
                    counts[uid] = counts.get(uid, 0) + 1
        return counts

    def received_files(self) -> list[Path]:
        return sorted(p for p in self.out.iterdir() if p.is_file())

    def wait_for(self, uids: set[str], timeout: float = 30.0) -> set[str]:
        """Wait until every UID arrived (or the timeout); return the ones still missing."""
        deadline = time.monotonic() + timeout
        while True:
            missing = uids - self.received()
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.1)


class Orthanc:
    """Orthanc with its own storage folder, DICOM and HTTP on free ports, DICOMweb enabled."""

    def __init__(self, base: Path, *, ae_title: str = "ORTHANC", lua: str | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.log = base / "orthanc.log"
        config: dict[str, Any] = {
            "Name": "radflow-test", "StorageDirectory": str(base / "storage"),
            "IndexDirectory": str(base / "storage"), "DicomAet": ae_title,
            "DicomPort": self.dicom_port, "HttpPort": self.http_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False, "UnknownSopClassAccepted": True,
            "Plugins": [dicomweb_plugin()], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StableAge": 1, "SaveJobs": False, "StorageCompression": False,
        }
        if lua is not None:
            script = base / "forward.lua"
            script.write_text(lua)
            config["LuaScripts"] = [str(script)]
        config.update(extra or {})
        self.config_path = base / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def stow_url(self) -> str:
        return f"http://{HOST}:{self.http_port}/dicom-web/studies"

    def start(self) -> Orthanc:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([ORTHANC, str(self.config_path)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.base, env=dict(os.environ, TCP_NODELAY="1"),
                                         start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}: "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            try:
                self.get("/system")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        wait_port(self.dicom_port, proc=self.proc)
        return self

    def get(self, path: str) -> Any:
        request = urllib.request.Request(f"http://{HOST}:{self.http_port}{path}")
        users = json.loads(self.config_path.read_text()).get("RegisteredUsers") or {}
        if users:  # AuthenticationEnabled: the first registered user's basic auth
            user, password = next(iter(users.items()))
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, body: bytes | dict[str, Any] | list[Any],
             timeout: float = 60) -> Any:
        """POST JSON (or raw bytes, e.g. a DICOM file to ``/instances``); the JSON answer."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(f"http://{HOST}:{self.http_port}{path}", data=data,
                                     method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def received(self) -> set[str]:
        return {str(i["MainDicomTags"]["SOPInstanceUID"])
                for i in self.get("/instances?expand")}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


# --- TLS in front of a plain peer ------------------------------------------------------------
class TlsProxy:
    """Terminates TLS on a free port and relays each connection to ``target_port``: HTTPS in
    front of Orthanc, as hospitals often put a reverse proxy in front of a PACS. (Debian's
    Orthanc 1.10.1 crashes on its first HTTPS request with ``SslEnabled``.)"""

    def __init__(self, cert: Path, key: Path, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self._ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ctx.load_cert_chain(str(cert), str(key))
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> TlsProxy:
        self._server = await asyncio.start_server(self._relay, HOST, self.port, ssl=self._ctx)
        return self

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)


# --- HL7 MLLP receiver (hl7 package) ---------------------------------------------------------
@dataclass
class MllpReceiver:
    """An MLLP server on the ``hl7`` package: records each message and answers with the ACK
    code ``answer(message)`` returns (default AA)."""

    answer: Callable[[hl7.Message], str | None] = lambda m: "AA"
    port: int = field(default_factory=free_port)
    received: list[hl7.Message] = field(default_factory=list)
    _server: asyncio.AbstractServer | None = None

    async def start(self) -> MllpReceiver:
        async def on_client(reader: Any, writer: Any) -> None:
            try:
                while True:
                    message = await reader.readmessage()
                    self.received.append(message)
                    code = self.answer(message)
                    if code is None:
                        continue  # never answer: the sender's ACK timeout
                    ack = message.create_ack(code, message_id=f"ACK{len(self.received)}")
                    writer.writemessage(ack)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self._server = await hl7.mllp.start_hl7_server(on_client, HOST, self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def control_ids(self) -> list[str]:
        return [str(m.segment("MSH")[10]) for m in self.received]


# --- FHIR endpoint (aiohttp) -----------------------------------------------------------------
@dataclass
class FhirServer:
    """A small FHIR R4 server: conditional update by identifier, create, and scripted failures
    (``fail`` maps a resourceType to a status to answer instead)."""

    port: int = field(default_factory=free_port)
    resources: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    fail: dict[str, int] = field(default_factory=dict)
    token: str | None = None
    _runner: web.AppRunner | None = None

    async def start(self) -> FhirServer:
        async def handle(request: web.Request) -> web.Response:
            self.requests.append((request.method, str(request.rel_url)))
            if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
                return web.json_response({"resourceType": "OperationOutcome"}, status=401)
            rtype = request.match_info["rtype"]
            if rtype in self.fail:
                return web.json_response(
                    {"resourceType": "OperationOutcome",
                     "issue": [{"severity": "error", "code": "invalid",
                                "diagnostics": f"scripted {self.fail[rtype]}"}]},
                    status=self.fail[rtype])
            body = await request.json()
            ident = request.query.get("identifier") or request.match_info.get("rid") or \
                str(len(self.resources) + 1)
            created = (rtype, ident) not in self.resources
            self.resources[(rtype, ident)] = body
            return web.json_response(body, status=201 if created else 200,
                                     content_type="application/fhir+json")

        async def metadata(request: web.Request) -> web.Response:
            self.requests.append((request.method, str(request.rel_url)))
            if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
                return web.json_response({"resourceType": "OperationOutcome"}, status=401)
            return web.json_response(
                {"resourceType": "CapabilityStatement", "status": "active",
                 "kind": "instance", "fhirVersion": "4.0.1", "format": ["json"]},
                content_type="application/fhir+json")

        app = web.Application()
        app.router.add_get("/fhir/metadata", metadata)
        app.router.add_route("*", "/fhir/{rtype}", handle)
        app.router.add_route("*", "/fhir/{rtype}/{rid}", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, self.port).start()
        return self

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/fhir"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


# --- pynetdicom SCPs for scripted faults ------------------------------------------------------
class ScriptedScp:
    """A pynetdicom storage SCP whose answer per instance comes from ``status(ds, count)``
    (``count``: how often this SOP Instance UID was seen, 1 on the first) - or that never
    answers when ``status`` returns None. Success answers record the UID."""

    def __init__(self, status: Callable[[Dataset, int], int | None], ae_title: str = "FAULTY"
                 ) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.port = free_port()
        self.seen: dict[str, int] = {}
        self.stored: set[str] = set()
        self._lock = threading.Lock()
        self._never = threading.Event()

        def on_store(event: Any) -> int:
            ds = event.dataset
            uid = str(ds.SOPInstanceUID)
            with self._lock:
                self.seen[uid] = self.seen.get(uid, 0) + 1
                count = self.seen[uid]
            answer = status(ds, count)
            if answer is None:
                self._never.wait(600)  # hold the association: the sender must time out
                return 0xA700
            if answer in (0x0000, 0xB000):
                with self._lock:
                    self.stored.add(uid)
            return answer

        ae = AE(ae_title=ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.maximum_associations = 8
        self._server = ae.start_server((HOST, self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, on_store)])

    def stop(self) -> None:
        self._never.set()
        self._server.shutdown()


# --- a byte-exact MLLP sink (threads; for tests around a radflow process) --------------------
class MllpSink:
    """An MLLP receiver in a thread that keeps every message's exact bytes (``raw``) and
    answers AA: what a RIS interface engine would log as received. The ``hl7`` package parses
    each message (decoded as Latin-1, which maps every byte) to build the acknowledgement."""

    def __init__(self) -> None:
        import socketserver

        self.raw: list[bytes] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                buffer = b""
                self.request.settimeout(30)
                while True:
                    try:
                        chunk = self.request.recv(65536)
                    except OSError:
                        return
                    if not chunk:
                        return
                    buffer += chunk
                    while b"\x1c\r" in buffer:
                        block, buffer = buffer.split(b"\x1c\r", 1)
                        payload = block[block.index(b"\x0b") + 1:]
                        with sink._lock:
                            sink.raw.append(payload)
                        message = hl7.parse(payload.decode("latin-1"))
                        ack = message.create_ack("AA", message_id=f"SINK{len(sink.raw)}")
                        self.request.sendall(b"\x0b" + str(ack).encode("latin-1") + b"\x1c\r")

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server((HOST, 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> MllpSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, count: int, timeout: float = 30.0) -> list[bytes]:
        """The first ``count`` messages (fewer if they do not come within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.raw) >= count:
                    return list(self.raw[:count])
            time.sleep(0.05)
        with self._lock:
            return list(self.raw)


class FhirServerThread:
    """:class:`FhirServer` on an event loop of its own thread, for tests around a radflow
    process (which are synchronous)."""

    def __init__(self, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(FhirServer(**options).start(),
                                                       self.loop).result(10)

    def wait_for(self, key: tuple[str, str], timeout: float = 30.0,
                 check: Callable[[dict[str, Any]], bool] = lambda r: True
                 ) -> dict[str, Any] | None:
        """The resource stored under ``key`` once ``check`` holds for it (None on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.server.resources.get(key)
            if found is not None and check(found):
                return found
            time.sleep(0.1)
        return None

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
