"""Worker identity: lease owners and recovery scope per worker, status files, spool names."""

from __future__ import annotations

import time
from pathlib import Path

from engine.durable.spool import Spool, new_object_id, object_node
from engine.settings import Settings
from engine.workers import STALE_SECONDS, WorkerContext, read_status, write_status


def test_one_process_gives_back_the_whole_nodes_leases() -> None:
    ctx = WorkerContext.from_env({})
    assert ctx.lease_prefix("ct1") == "ct1/" and ctx.release_prefix("ct1") == "ct1/"


def test_a_restarted_worker_gives_back_only_its_own_leases() -> None:
    env = {"RADFLOW_WORKER_INDEX": "1", "RADFLOW_WORKER_COUNT": "2",
           "RADFLOW_WORKER_RECOVER": "0"}
    ctx = WorkerContext.from_env(env)
    assert ctx.lease_prefix("ct1") == "ct1/w1/"
    assert ctx.release_prefix("ct1") == "ct1/w1/"
    assert not ctx.serves_admin
    first = WorkerContext.from_env({**env, "RADFLOW_WORKER_INDEX": "0",
                                    "RADFLOW_WORKER_RECOVER": "1"})
    assert first.release_prefix("ct1") == "ct1/" and first.serves_admin


def test_status_files_report_ready_stale_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "worker-1.json"
    assert read_status(path)[0] is False
    write_status(path, index=1, node_id="ct1", ready=True, detail="fine", ruleset="abc")
    ok, detail = read_status(path)
    assert ok and "ruleset abc" in detail
    ok, detail = read_status(path, now=time.time() + STALE_SECONDS + 1)
    assert not ok and "no report" in detail


def test_spool_names_carry_the_node_and_recovery_judges_only_its_own(tmp_path: Path) -> None:
    mine = Spool(tmp_path, 0, "ct-1")
    mine.open()
    other = Spool(tmp_path, 0, "ct-2")
    own = mine.write(mine.new_id(), [b"a"])
    theirs = other.write(other.new_id(), [b"b"])
    legacy = mine.write(new_object_id(), [b"c"])
    assert object_node(own.object_id) == "ct-1" and object_node(legacy.object_id) is None
    found = {oid for oid, _ in mine.recent_objects(3600)}
    assert found == {own.object_id, legacy.object_id}
    assert theirs.object_id not in found


def test_node_id_and_roles_are_validated() -> None:
    s = Settings.model_validate({"engine": {"node_id": "ct-node.1", "roles": ["intake"]}})
    assert s.engine.has("intake") and not s.engine.has("delivery")
    assert Settings().engine.has("admin")
    for bad in ({"node_id": "a/b"}, {"roles": ["everything"]}, {"roles": []},
                {"workers": 0}):
        try:
            Settings.model_validate({"engine": bad})
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad}")
