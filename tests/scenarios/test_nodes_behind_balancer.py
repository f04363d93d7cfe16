"""Three radflow nodes on one PostgreSQL and one shared spool, behind HAProxy (Debian's, mode
tcp, leastconn), as a site deploys them, each node on a host of its own: DICOM senders and an
HL7 sender stream through the balancer, one node is killed with SIGKILL mid-flow and started
again. Afterwards every instance that got Success is at every destination its routes name
(repeats at each sink counted and reported), every order answered AA is in the worklist once,
and every study's completeness route fired once.

The three hosts are network namespaces on a private /24 (tests/helpers/netns.py), each node
listening on its own address with the well-known ports (DICOM 11112, MLLP 2575, HTTP 8080);
the balancer, the senders, the two sinks and PostgreSQL are in the root namespace, which the
hosts reach at the bridge's address (PostgreSQL through a TCP forwarder, its configuration
untouched). Without root the scenario is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.helpers import dicomgen, netns, pg
from tests.helpers.netns import PrivateNetwork, TcpForwarder
from tests.helpers.peers import Storescp, wait_port
from tests.helpers.proc import HOST, RadflowFactory, RadflowProcess, StorescuRun, free_port
from tests.integration.test_hl7_ingress import msa, order, send, worklist

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(420)]

LEASE_SECONDS = 6.0
DICOM_PORT, MLLP_PORT, HTTP_PORT = 11112, 2575, 8080
TOKEN = "scenario-admin-token"
ROUTES = """\
version: 1
routes:
  - name: ct-to-pacs
    match: {attr: Modality, equals: CT}
    destinations: [pacs]
  - name: ct-study-to-ai
    trigger: {on: study, quiet_seconds: 12, max_wait_seconds: 600}
    match: {attr: Modality, equals: CT}
    destinations: [ai]
"""


class Balancer:
    """HAProxy on loopback in front of the nodes' DICOM and MLLP ports, health from each
    node's /readyz (as deploy/haproxy/haproxy.cfg)."""

    def __init__(self, base: Path, nodes: list[RadflowProcess]) -> None:
        self.dicom_port, self.mllp_port = free_port(), free_port()
        lines = ["global", "    maxconn 1000", "defaults", "    mode tcp",
                 "    timeout connect 3s", "    timeout client 1h", "    timeout server 1h",
                 "    timeout tunnel 1h", "    timeout client-fin 5s"]
        for name, front, back in (("dicom", self.dicom_port, DICOM_PORT),
                                  ("mllp", self.mllp_port, MLLP_PORT)):
            lines += [f"frontend {name}", f"    bind {HOST}:{front}",
                      f"    default_backend {name}_nodes", f"backend {name}_nodes",
                      "    balance leastconn", "    option httpchk GET /readyz",
                      "    http-check expect status 200",
                      "    default-server inter 500ms fall 2 rise 2"]
            lines += [f"    server n{i} {rf.address}:{back} check port {rf.http_port}"
                      for i, rf in enumerate(nodes)]
        self.config = base / "haproxy.cfg"
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.log = base / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Balancer:
        exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([exe, "-db", "-f", str(self.config)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_port(self.dicom_port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Through:
    """What the senders are configured with: the balancer's address, radflow's AE title."""

    def __init__(self, balancer: Balancer, ae_title: str) -> None:
        self.port = balancer.dicom_port
        self.ae_title = ae_title
        self.config = {"hl7": {"listeners": [{"port": balancer.mllp_port}]}}


def wait_until(check: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def send_order(through: Through, n: int) -> str | None:
    """One order through the balancer; the code of the answer, None when the connection
    failed (the RIS sends again)."""
    try:
        ack = send(through, order(f"NB{n}", placer=f"P-NB{n}", accession=f"A-NB{n}"))
    except Exception:  # refused, cut, or an empty answer: the RIS sends again
        return None
    return msa(ack)[0]


@pytest.fixture
def hosts() -> Iterator[PrivateNetwork]:
    """Three hosts (network namespaces) on a private /24; removed after the test, also when
    it failed."""
    for why in (netns.unavailable(), TcpForwarder.missing(), pg.unavailable(),
                None if shutil.which("haproxy") or Path("/usr/sbin/haproxy").exists()
                else "HAProxy is not installed (apt-get install haproxy)"):
        if why is not None:
            pytest.skip(why)
    with PrivateNetwork(3) as network:
        yield network


def test_three_hosts_behind_haproxy_one_killed_nothing_acknowledged_lost(
        hosts: PrivateNetwork, radflow: RadflowFactory, tmp_path: Path) -> None:
    gateway = hosts.gateway
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "10-site.yaml").write_text(ROUTES, encoding="utf-8")
    shared_spool = tmp_path / "shared-spool"
    nodes: list[RadflowProcess] = []
    # Undone in reverse order, also when the test fails: balancer, nodes, schema, sinks,
    # forwarder.
    with contextlib.ExitStack() as stack:
        # PostgreSQL listens on loopback: the hosts reach it through a forwarder on the
        # gateway.
        server = conninfo_to_dict(pg.DSN)
        database = TcpForwarder((gateway, free_port()),
                                (str(server.get("host", HOST)), int(server.get("port", 5432))),
                                tmp_path / "forwarder.log")
        stack.callback(database.stop)
        database.start()
        hosts_dsn = make_conninfo(pg.DSN, host=gateway, port=database.listen[1])
        # The sinks listen on every address; one process per association, as a PACS serves
        # several nodes at once.
        pacs = Storescp(tmp_path / "pacs", ae_title="PACS", fork=True)
        stack.callback(pacs.stop)
        pacs.start()
        ai = Storescp(tmp_path / "ai", ae_title="AI", fork=True)
        stack.callback(ai.stop)
        ai.start()
        dest = {"type": "dimse", "host": gateway}
        schema = stack.enter_context(pg.schema())

        @stack.callback
        def close_nodes() -> None:  # kill -9: before their schema goes
            for rf in nodes:
                rf.close()

        def node_config(i: int) -> dict[str, Any]:
            address = hosts.hosts[i].address
            return {
                "storage": {**pg.radflow_storage(schema, hosts_dsn),
                            "spool_dir": str(shared_spool)},
                "engine": {"node_id": f"node-{i}", "shutdown_grace": 5},
                "dicom": {"listeners": [{"host": address, "port": DICOM_PORT}]},
                # The balancer connects from the gateway: the site network may send HL7.
                "hl7": {"listeners": [{"host": address, "port": MLLP_PORT}],
                        "allowed_sources": [str(hosts.subnet)]},
                "http": {"host": address, "port": HTTP_PORT, "token": TOKEN},
                "routing": {"routes_dir": str(routes), "sweep_seconds": 1},
                "delivery": {"lease_seconds": LEASE_SECONDS, "poll_interval": 0.2},
                "destinations": {"pacs": {**dest, "ae_title": "PACS", "port": pacs.port},
                                 "ai": {**dest, "ae_title": "AI", "port": ai.port}}}

        for i, host in enumerate(hosts.hosts):
            rf = radflow(node_config(i), start=False)
            rf.address, rf.launcher = host.address, host.launcher
            rf.start()
            nodes.append(rf)
        # Each node is a host of its own: same ports, its own address.
        assert len({rf.address for rf in nodes}) == 3
        assert {rf.port for rf in nodes} == {DICOM_PORT}
        assert all(ipaddress.ip_address(rf.address) in hosts.subnet for rf in nodes)

        balancer = Balancer(tmp_path, nodes)
        stack.callback(balancer.stop)
        balancer.start()
        through = Through(balancer, nodes[0].ae_title)
        wait_until(lambda: send_order(through, 0) == "AA", "the balancer to pass MLLP", 30)
        studies = []
        for s in range(6):
            folder = tmp_path / f"study{s}"
            folder.mkdir()
            studies.append(dicomgen.write_series(folder, 20))
        by_path = {i.path: i for study in studies for i in study}
        # Each study from its own sender; three at a time, through the balancer.
        runs = [StorescuRun(through, [i.path for i in study]) for study in studies[:3]]
        accepted = ["P-NB0"]
        for n in range(1, 16):
            if n == 6:
                runs[0].wait_acknowledged(5)
                nodes[1].kill()  # kill -9 mid-flow: the host's radflow dies
            if send_order(through, n) == "AA":
                accepted.append(f"P-NB{n}")
        runs += [StorescuRun(through, [i.path for i in study]) for study in studies[3:]]
        for run in runs:
            run.finish()
        # What a modality does after a failed association: send the rest again (within
        # the study's quiet period: a longer pause makes a second "complete" by design).
        for _attempt in range(5):
            acknowledged = {p for run in runs for p in run.acknowledged}
            missing = [p for p in by_path if p not in acknowledged]
            if not missing:
                break
            again = StorescuRun(through, missing)
            again.finish()
            runs.append(again)
        nodes[1].start()  # rejoins with no manual step
        acknowledged_uids = {by_path[p].sop_instance_uid
                             for run in runs for p in run.acknowledged}
        assert acknowledged_uids == {i.sop_instance_uid for i in by_path.values()}

        # Every Success at the PACS; the AI receives each study once its quiet period ends.
        assert not pacs.wait_for(acknowledged_uids, timeout=LEASE_SECONDS + 90)
        assert not ai.wait_for(acknowledged_uids, timeout=LEASE_SECONDS + 90)

        rows = nodes[0].journal_rows()
        stored = Counter(str(r["sop_instance_uid"]) for r in rows)
        assert set(stored) == acknowledged_uids and max(stored.values()) == 1
        # The spool file is named <node_id>-<id>.dcm by the node that took the instance.
        by_node = Counter(Path(str(r["spool_path"])).name.rsplit("-", 1)[0] for r in rows)
        outbox = nodes[0]._table("outbox")
        sent = Counter((r["destination"], r["payload"]) for r in outbox)
        duplicates = sum(c - 1 for c in sent.values() if c > 1)
        resent = sum(len(run.acknowledged) for run in runs[len(studies):])
        # Delivery is at least once: a row sent just before its node died is sent again
        # by another. Counted and reported, not an error (the PACS keeps one copy).
        repeats = {"pacs": sum(pacs.repeats().values()), "ai": sum(ai.repeats().values())}
        print(f"\nhosts {', '.join(rf.address for rf in nodes)} on {hosts.subnet}; "
              f"instances by node: {dict(by_node)}; outbox rows: {len(outbox)}, routed "
              f"twice: {duplicates}; instances the senders sent again after the kill: "
              f"{resent}; repeats at the sinks (same SOP Instance UID again): {repeats}")
        assert duplicates == 0

        groups = nodes[0]._table("routing_groups")
        fired = Counter(g["study_instance_uid"] for g in groups
                        if g["route"] == "ct-study-to-ai" and g["state"] == "fired")
        study_uids = {str(r["study_instance_uid"]) for r in rows}
        assert len(study_uids) == len(studies)
        assert set(fired) == study_uids
        assert set(fired.values()) == {1}, [
            (g["id"], g["study_instance_uid"][-6:], g["fire_reason"], g["first_at"],
             g["last_at"], g["fired_at"]) for g in groups]

        placers = [str(item.get("placer_order_number")) for item in worklist(nodes[0])]
        for placer in accepted:
            assert placers.count(placer) == 1, (placer, placers)
