"""PostgreSQL goes away and comes back: radflow answers failures a sender retries (never a
success it cannot keep), reports not ready, and resumes by itself; nothing it acknowledged is
lost across a server restart or a backend connection terminated mid-transaction.

The restart runs against a PostgreSQL instance of the test's own (initdb on a free port), so
the shared server is never disturbed; the terminated connections are radflow's own on the
shared server (``pg_terminate_backend`` on its ``application_name``).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.helpers import dicomgen, pg
from tests.helpers.proc import (
    RadflowFactory,
    RadflowProcess,
    StorescuRun,
    free_port,
    store_responses,
    storescu,
)
from tests.integration.test_hl7_ingress import msa, order, send, worklist

pytestmark = pytest.mark.dcmtk


def wait_until(check: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def acknowledged_kept(rf: RadflowProcess, uids: set[str]) -> None:
    rows = {str(r["sop_instance_uid"]) for r in rf.journal_rows()}
    assert uids <= rows, sorted(uids - rows)


def orders_once(rf: RadflowProcess, accepted: list[str]) -> None:
    """Every order answered AA is in the worklist exactly once."""
    placers = [str(item.get("placer_order_number")) for item in worklist(rf)]
    for placer in accepted:
        assert placers.count(placer) == 1, (placer, placers)


@pytest.fixture
def private_server() -> Iterator[pg.PrivateServer]:
    if (why := pg.PrivateServer.missing()) is not None:
        pytest.skip(why)
    # Not under tmp_path: the postgres user must be able to reach it.
    base = Path(tempfile.mkdtemp(prefix="radflow-pg-"))
    base.chmod(0o755)
    server = pg.PrivateServer(base / "server", free_port())
    server.init()
    server.start()
    server.wait_ready()
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def test_a_postgresql_restart_answers_retryable_failures_then_resumes(
        radflow: RadflowFactory, dicom_dir: Path, private_server: pg.PrivateServer) -> None:
    rf = radflow({"storage": pg.radflow_storage("radflow", private_server.dsn)})
    files = [i.path for i in dicomgen.write_series(dicom_dir, 6)]
    before = storescu(rf, files[:2])
    assert store_responses(before.stdout) == ["Success"] * 2, before.stdout[-2000:]
    assert msa(send(rf, order("PGR1", placer="P-R1")))[0] == "AA"

    private_server.stop()
    wait_until(lambda: rf.readyz()[0] != 200, "/readyz to turn red")
    during = storescu(rf, files[2:4])
    answers = store_responses(during.stdout)
    assert answers and "Success" not in answers, during.stdout[-2000:]
    code = msa(send(rf, order("PGR2", placer="P-R2")))[0]
    assert code in ("AE", "AR"), code  # a negative ACK the sender retries, never AA

    private_server.start()
    private_server.wait_ready()
    wait_until(lambda: rf.readyz()[0] == 200, "/readyz to turn green again")
    after = storescu(rf, files[2:])
    assert store_responses(after.stdout) == ["Success"] * 4, after.stdout[-2000:]
    assert msa(send(rf, order("PGR2", placer="P-R2")))[0] == "AA"  # the sender's retry

    uids = {str(r["sop_instance_uid"]) for r in rf.journal_rows()}
    assert len(uids) == 6
    orders_once(rf, ["P-R1", "P-R2"])
    assert rf.proc is not None and rf.proc.poll() is None  # never restarted


def test_backends_terminated_mid_flow_lose_nothing_acknowledged(
        radflow: RadflowFactory, dicom_dir: Path) -> None:
    if (why := pg.unavailable()) is not None:
        pytest.skip(why)
    schema = pg.new_schema_name()
    try:
        rf = radflow({"storage": pg.radflow_storage(schema)})
        instances = dicomgen.write_series(dicom_dir, 60)
        sent = {i.path: i for i in instances}
        stop = threading.Event()
        kills: list[int] = []

        def terminator() -> None:
            with psycopg.connect(pg.DSN, autocommit=True) as conn:
                while not stop.is_set() and len(kills) < 8:
                    got = conn.execute(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = %s", (f"radflow:{schema}",)).fetchone()
                    kills.append(int(got[0]) if got else 0)
                    stop.wait(0.3)

        accepted: list[str] = []
        killer = threading.Thread(target=terminator, daemon=True)
        run = StorescuRun(rf, list(sent))
        killer.start()
        for n in range(20):
            ack = send(rf, order(f"PGK{n}", placer=f"P-K{n}", accession=f"A-K{n}"))
            if msa(ack)[0] == "AA":
                accepted.append(f"P-K{n}")
        run.finish()
        stop.set()
        killer.join(timeout=30)
        assert sum(kills) > 0, "no radflow connection was terminated"

        acknowledged_kept(rf, {sent[p].sop_instance_uid for p in run.acknowledged})
        orders_once(rf, accepted)
        # Everything resumes without a restart: the rest goes in, the refused orders too.
        rest = [p for p in sent if p not in set(run.acknowledged)]
        if rest:
            result = storescu(rf, rest)
            assert store_responses(result.stdout) == ["Success"] * len(rest), \
                result.stdout[-2000:]
        for n in range(20):
            assert msa(send(rf, order(f"PGK{n}", placer=f"P-K{n}",
                                      accession=f"A-K{n}")))[0] == "AA"
        acknowledged_kept(rf, {i.sop_instance_uid for i in instances})
        orders_once(rf, [f"P-K{n}" for n in range(20)])
        assert rf.proc is not None and rf.proc.poll() is None
        rf.stop()
    finally:
        pg.drop_schema(schema)


def test_starting_without_the_database_names_it_and_waits_for_it(
        radflow: RadflowFactory, dicom_dir: Path, private_server: pg.PrivateServer) -> None:
    private_server.stop()
    rf = radflow({"storage": pg.radflow_storage("radflow", private_server.dsn)}, start=False)
    failures: list[BaseException] = []

    def start() -> None:
        try:
            rf.start(timeout=180)
        except BaseException as exc:  # reported by the assertion below
            failures.append(exc)

    starting = threading.Thread(target=start, daemon=True)
    starting.start()
    event = rf.wait_for_event("durable.postgresql.unreachable", timeout=60)
    assert event["server"] == f"127.0.0.1:{private_server.port}/postgres"
    assert "refused" in event["reason"] or "failed" in event["reason"], event
    rf.wait_for_event("durable.postgresql.unreachable", timeout=60, retry_in=1.0)  # again
    assert rf.running  # waiting, not exited

    private_server.start()
    starting.join(timeout=200)
    assert not starting.is_alive() and not failures, failures
    wait_until(lambda: rf.readyz()[0] == 200, "/readyz to be green")
    [path] = [i.path for i in dicomgen.write_series(dicom_dir, 1)]
    assert store_responses(storescu(rf, [path]).stdout) == ["Success"]
