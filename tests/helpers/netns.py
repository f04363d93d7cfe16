"""Hosts on one machine for the scale-out scenarios: each "host" is a Linux network namespace
with its own address on a private /24, joined by veth pairs to a bridge in the root namespace.

The bridge's address (the gateway, ``.1``) is how the hosts reach what runs in the root
namespace: the sinks, the balancer's back side, and PostgreSQL through :class:`TcpForwarder`
(the shared server listens on 127.0.0.1 only, which a namespace cannot reach; a forwarder on the
gateway address leaves the server's configuration as it is). :class:`PrivateNetwork` makes all
of it and removes all of it on exit, also when the test failed; it never touches a namespace,
link or address it did not make. It needs root (``CAP_NET_ADMIN``, ``CAP_SYS_ADMIN``):
:func:`unavailable` says why it cannot be made, for a skip.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

IP = shutil.which("ip") or "/usr/sbin/ip"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([IP, *args], capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


@functools.cache
def unavailable() -> str | None:
    """Why network namespaces cannot be made here (None when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    if not os.access(IP, os.X_OK):
        return "iproute2's ip command is not installed"
    probe = f"rfprobe{secrets.token_hex(3)}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    try:
        bridge = _ip("link", "add", f"{probe}b", "type", "bridge", check=False)
        if bridge.returncode != 0:
            return f"cannot make a bridge: {bridge.stderr.strip()}"
        _ip("link", "del", f"{probe}b", check=False)
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.200.0.0/13 that no address or route of this machine overlaps (parallel
    runs pick at random and check, so they do not collide)."""
    taken: list[ipaddress.IPv4Network] = []
    for line in _ip("-4", "-o", "addr", "show").stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            taken.append(ipaddress.IPv4Interface(fields[fields.index("inet") + 1]).network)
    for line in _ip("-4", "route", "show", "table", "all").stdout.splitlines():
        first = line.split()[0] if line.split() else ""
        if first and first[0].isdigit():
            taken.append(ipaddress.IPv4Network(first, strict=False))
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{random.randint(200, 207)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(t) for t in taken if t.prefixlen > 0):
            return net
    raise RuntimeError("no free private /24 for the test network")


@dataclass(frozen=True)
class Host:
    """One namespace: its name, its address, and the prefix that runs a command in it."""

    netns: str
    address: str

    @property
    def launcher(self) -> list[str]:
        return [IP, "netns", "exec", self.netns]


class PrivateNetwork:
    """``hosts`` namespaces on a fresh /24 behind one bridge; a context manager."""

    def __init__(self, hosts: int) -> None:
        self.count = hosts
        self.token = secrets.token_hex(3)
        self.bridge = f"rfb{self.token}"
        self.subnet = _free_subnet()
        addresses = list(self.subnet.hosts())
        self.gateway = str(addresses[0])
        self.hosts = [Host(f"rf{self.token}n{i}", str(addresses[10 + i])) for i in range(hosts)]
        self._made_bridge = False
        self._made: list[Host] = []

    def __enter__(self) -> PrivateNetwork:
        try:
            self._make()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()

    def _make(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self._made_bridge = True
        _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, host in enumerate(self.hosts):
            _ip("netns", "add", host.netns)
            self._made.append(host)
            # The host's end is eth0 inside the namespace; the root end joins the bridge.
            outside = f"rf{self.token}v{i}"
            _ip("link", "add", outside, "type", "veth", "peer", "name", "eth0",
                "netns", host.netns)
            _ip("link", "set", outside, "master", self.bridge, "up")
            _ip("-n", host.netns, "addr", "add", f"{host.address}/{self.subnet.prefixlen}",
                "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "eth0", "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
            _ip("-n", host.netns, "route", "add", "default", "via", self.gateway)

    def pids(self, host: Host) -> list[int]:
        """Processes still running in ``host``'s namespace."""
        done = _ip("netns", "pids", host.netns, check=False)
        return [int(p) for p in done.stdout.split() if p.isdigit()]

    def remove(self) -> None:
        """Everything this network made, gone. A process still in a namespace (one the test
        started and did not end) is killed by its id first: a namespace with a process in it
        outlives ``ip netns del``."""
        for host in reversed(self._made):
            for pid in self.pids(host):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _ip("netns", "del", host.netns, check=False)  # its veth pair goes with it
        self._made.clear()
        if self._made_bridge:
            _ip("link", "del", self.bridge, check=False)
            self._made_bridge = False

    def wait_reachable(self, host: Host, port: int, timeout: float = 30.0) -> None:
        """Block until ``host:port`` accepts a TCP connection from the root namespace."""
        deadline = time.monotonic() + timeout
        while True:
            with socket.socket() as sock:
                sock.settimeout(0.5)
                if sock.connect_ex((host.address, port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{host.address}:{port} not reachable after {timeout:g} s")
            time.sleep(0.1)


class TcpForwarder:
    """``socat`` on ``listen`` (an address in the root namespace, e.g. the gateway) passing
    every connection on to ``target``: the hosts reach a server that listens on loopback only,
    the server's configuration untouched. One process per connection (``fork``)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], log: Path) -> None:
        self.listen = listen
        self.target = target
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def missing() -> str | None:
        return None if shutil.which("socat") else "socat is not installed (apt-get install socat)"

    def start(self) -> TcpForwarder:
        host, port = self.listen
        args: Sequence[str] = [
            shutil.which("socat") or "socat",
            f"TCP-LISTEN:{port},bind={host},fork,reuseaddr,nodelay",
            f"TCP:{self.target[0]}:{self.target[1]},nodelay"]
        with open(self.log, "ab") as log:
            # A session of its own, so stop() reaches the children serving connections too.
            self.proc = subprocess.Popen(list(args), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"socat exited with {self.proc.returncode}: "
                                   f"{self.log.read_text(errors='replace')[-1000:]}")
            with socket.socket() as sock:
                sock.settimeout(0.2)
                if sock.connect_ex(self.listen) == 0:
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"socat not listening on {host}:{port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
