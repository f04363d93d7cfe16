"""``verify_spool`` against each store backend and a real spool folder: intact files pass,
damaged and missing ones are reported with both digests, one study can be checked alone, and
the journal is walked in pages (more rows than one page)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from journal_samples import record

from engine.durable.spool import Spool
from engine.durable.store import DuplicatePolicy, InstanceCommit
from engine.durable.verify import VerifyCount, verify_spool

OTHER_STUDY = "1.2.826.0.1.3680043.8.498.99"


async def test_damaged_and_missing_objects_are_reported(store: Any, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 0)

    def write_files() -> list[InstanceCommit]:
        commits = []
        for n in range(1, 603):  # more than one page of 500
            data = f"object {n}".encode()
            rec = record(n, sha=hashlib.sha256(data).hexdigest(), size=len(data))
            if n == 602:
                rec = dataclasses.replace(rec, study_instance_uid=OTHER_STUDY)
            path = spool.root / rec.spool_path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            commits.append(InstanceCommit(rec, DuplicatePolicy.VERSION))
        return commits

    await store.commit_instances(await asyncio.to_thread(write_files))

    count = VerifyCount()
    assert [d async for d in verify_spool(store, spool, count=count)] == []
    assert (count.checked, count.damaged) == (602, 0)

    (spool.root / record(7).spool_path).write_bytes(b"object 8")  # same size, other bytes
    (spool.root / record(601).spool_path).unlink()
    count = VerifyCount()
    found = {d.instance.record.sop_instance_uid: d.problem
             async for d in verify_spool(store, spool, count=count)}
    assert (count.checked, count.damaged) == (602, 2)
    damaged = found[record(7).sop_instance_uid]
    assert damaged.startswith("damaged")
    assert hashlib.sha256(b"object 7").hexdigest() in damaged
    assert hashlib.sha256(b"object 8").hexdigest() in damaged
    assert found[record(601).sop_instance_uid].startswith("missing")

    count = VerifyCount()
    assert [d async for d in verify_spool(store, spool, OTHER_STUDY, count)] == []
    assert count.checked == 1
