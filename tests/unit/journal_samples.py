"""Journal records for store, journal and admin tests."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Sequence

from engine.durable.sqlite import SqliteStore
from engine.durable.store import InstanceCommit, InstanceCommitResult, InstanceRecord

UID = "1.2.826.0.1.3680043.8.498.1"


def record(
    n: int = 1,
    *,
    sop_instance_uid: str | None = None,
    sha: str | None = None,
    size: int = 1000,
    object_id: str | None = None,
) -> InstanceRecord:
    return InstanceRecord(
        object_id=object_id or f"obj{n:06d}",
        spool_path=f"objects/2025/03/07/09/obj{n:06d}.dcm",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=sop_instance_uid or f"{UID}.{n}",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        study_instance_uid="1.2.826.0.1.3680043.8.498.2",
        series_instance_uid="1.2.826.0.1.3680043.8.498.3",
        patient_id="PID-001",
        accession_number="ACC-001",
        modality="CT",
        calling_ae="CT_SCANNER_1",
        called_ae="RADFLOW",
        peer_host="10.0.0.7",
        listener="main",
        size_bytes=size,
        sha256=sha or f"{n:064x}",
        received_at="2025-03-07T09:41:05+00:00",
    )


class CountingStore:
    """Delegates to a real store, counting transactions, optionally slow or failing."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.batches: list[int] = []
        self.synced: list[bool] = []
        self.delay = 0.0
        self.fail_with: Exception | None = None

    async def commit_instances(
        self, batch: Sequence[InstanceCommit], sync: Callable[[], None] | None = None,
        durable_ids: Sequence[int] = (),
    ) -> list[InstanceCommitResult]:
        return await asyncio.wrap_future(self.submit_instance_commits(batch, sync, durable_ids))

    def submit_instance_commits(
        self, batch: Sequence[InstanceCommit], sync: Callable[[], None] | None = None,
        durable_ids: Sequence[int] = (),
    ) -> concurrent.futures.Future[list[InstanceCommitResult]]:
        self.batches.append(len(batch))
        out: concurrent.futures.Future[list[InstanceCommitResult]] = concurrent.futures.Future()
        delay, fail_with = self.delay, self.fail_with

        def run() -> None:  # on a thread of its own, as the store's writer would be
            time.sleep(delay)
            if fail_with is not None:
                out.set_exception(fail_with)
                return
            synced = []

            def wrapped_sync() -> None:
                synced.append(True)
                if sync is not None:
                    sync()

            try:
                results = self.inner.submit_instance_commits(batch, wrapped_sync,
                                                             durable_ids).result()
            except BaseException as exc:
                out.set_exception(exc)
                return
            self.synced.append(bool(synced))
            out.set_result(results)

        threading.Thread(target=run, daemon=True).start()
        return out

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)  # everything else goes to the real store
