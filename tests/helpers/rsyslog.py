"""A private rsyslogd (Debian's rsyslog and rsyslog-gnutls) as the audit repository in tests:
syslog over TLS (imtcp with the gtls driver, octet-counted framing, client certificates
required) and over UDP (imudp) on free loopback ports, writing every message it receives, as
received, one per line, to a file. Its own config, work folder and pid file under the test's
folder; it never touches the system's syslog."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.helpers.proc import HOST, free_port

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"


def have_rsyslog() -> bool:
    return Path(RSYSLOGD).exists() and any(
        Path(d).joinpath("lmnsd_gtls.so").exists()
        for d in ("/usr/lib/x86_64-linux-gnu/rsyslog", "/usr/lib/aarch64-linux-gnu/rsyslog",
                  "/usr/lib/rsyslog"))


class Rsyslog:
    """``start()`` it, send to ``tls_port`` / ``udp_port``, read ``messages()``."""

    def __init__(self, folder: Path, ca: tuple[Path, Path], server: tuple[Path, Path],
                 auth_mode: str = "x509/certvalid") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "work").mkdir(exist_ok=True)
        self.received = folder / "received.log"
        self.tls_port = free_port()
        self.udp_port = free_port()
        self.config = folder / "rsyslog.conf"
        self.config.write_text(f"""
global(workDirectory="{folder / 'work'}"
       maxMessageSize="64k"
       defaultNetstreamDriver="gtls"
       defaultNetstreamDriverCAFile="{ca[0]}"
       defaultNetstreamDriverCertFile="{server[0]}"
       defaultNetstreamDriverKeyFile="{server[1]}")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1"
       streamDriver.authMode="{auth_mode}")
module(load="imudp")
template(name="asReceived" type="string" string="%rawmsg%\\n")
ruleset(name="audit") {{
  action(type="omfile" file="{self.received}" template="asReceived")
}}
input(type="imtcp" address="{HOST}" port="{self.tls_port}" ruleset="audit")
input(type="imudp" address="{HOST}" port="{self.udp_port}" ruleset="audit")
""")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        check = subprocess.run([RSYSLOGD, "-N1", "-f", str(self.config)], capture_output=True,
                               text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        with open(self.folder / "rsyslogd.out", "wb") as out:
            self.proc = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(self.config), "-i",
                 str(self.folder / "rsyslogd.pid")], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.folder / "rsyslogd.out").read_text()
            try:
                with socket.create_connection((HOST, self.tls_port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("rsyslogd did not open its TLS port")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def messages(self) -> list[bytes]:
        if not self.received.exists():
            return []
        return [line for line in self.received.read_bytes().split(b"\n") if line]

    def wait_for(self, predicate: object, timeout: float = 30.0) -> list[bytes]:
        """Messages, once ``predicate(messages)`` holds (bounded wait)."""
        assert callable(predicate)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.messages()
            if predicate(found):
                return found
            time.sleep(0.2)
        raise AssertionError(f"rsyslog got {len(self.messages())} messages; "
                             f"{(self.folder / 'rsyslogd.out').read_text()[-2000:]}")
