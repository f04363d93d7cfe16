"""The audit trail's gathering and queueing, on a real SQLite store: a peer's instances of a
study make one record, records reported from many threads all reach the outbox (once per
target), a database that refuses a batch keeps it for the next flush, and a full buffer drops
the oldest records loudly instead of growing."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.audit.trail import AUDIT_KIND, AuditTrail
from engine.dicom import audit as m
from engine.durable.sqlite import SqliteStore
from engine.errors import StorageFailure
from engine.events import InstanceStored
from engine.observability.metrics import REGISTRY
from engine.settings import Settings
from tests.helpers.audit_schema import check

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


def settings(tmp_path: Path, **audit: Any) -> Settings:
    return Settings.model_validate({
        "site": {"name": "site-a"},
        "audit": {"file": str(tmp_path / "audit.log"),
                  "repository": {"host": "127.0.0.1", "port": 6514}, **audit}})


def stored(sop_class: str, study: str, n: int, calling: str = "CT01") -> InstanceStored:
    return InstanceStored(
        occurred_at=datetime(2026, 12, 4, tzinfo=UTC), journal_id=n, object_id=f"o{n}",
        sop_class_uid=sop_class, sop_instance_uid=f"1.2.3.{n}", study_instance_uid=study,
        series_instance_uid="1.2.9", transfer_syntax_uid="1.2.840.10008.1.2.1",
        calling_ae=calling, called_ae="RADFLOW", peer_host="10.0.0.5", listener="main",
        size_bytes=100, version=1)


async def audit_rows(store: SqliteStore, destination: str = "audit") -> list[dict[str, Any]]:
    rows = await store.outbox_rows(destination)
    assert all(r["kind"] == AUDIT_KIND for r in rows)
    return [json.loads(str(r["payload"])) for r in rows]


async def test_one_record_per_peer_and_study(store: SqliteStore, tmp_path: Path) -> None:
    trail = AuditTrail(store, settings(tmp_path), "node1")
    for n, sop in enumerate([CT, CT, MR], start=1):
        trail.on_instance_stored(stored(sop, "1.2.100", n))
    trail.on_instance_stored(stored(CT, "1.2.200", 4))
    trail.on_instance_stored(stored(CT, "1.2.100", 5, calling="MR01"))
    await trail.flush(final=True)
    records = await audit_rows(store)
    assert len(records) == 3 and {r["event"] for r in records} == {
        "DICOM Instances Transferred"}
    by_key = {}
    for r in records:
        root = check(r["xml"])
        study = root.find("ParticipantObjectIdentification")
        assert study is not None
        source = root.find("ActiveParticipant")
        assert source is not None
        by_key[(source.get("UserID"), study.get("ParticipantObjectID"))] = {
            s.get("UID"): s.get("NumberOfInstances") for s in study.findall("SOPClass")}
    assert by_key == {("CT01", "1.2.100"): {CT: "2", MR: "1"}, ("CT01", "1.2.200"): {CT: "1"},
                      ("MR01", "1.2.100"): {CT: "1"}}
    # the same records for the file
    assert [r["xml"] for r in await audit_rows(store, "audit-file")] == \
        [r["xml"] for r in records]


async def test_records_from_many_threads_all_arrive(store: SqliteStore, tmp_path: Path) -> None:
    trail = AuditTrail(store, settings(tmp_path), "node1")

    def report(i: int) -> None:
        for j in range(50):
            trail.association(calling_ae=f"AE{i}", called_ae="RADFLOW", peer_host="10.0.0.1",
                              accepted=True, reason=str(j))

    threads = [threading.Thread(target=report, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert await trail.flush() == 200
    records = await audit_rows(store)
    assert len(records) == 200
    source = check(records[0]["xml"]).find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID") == "site-a"


class FlakyStore:
    """The real store, refusing the first ``failures`` outbox writes."""

    def __init__(self, store: SqliteStore, failures: int) -> None:
        self._store = store
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def enqueue_outbox(self, rows: Any, now: float) -> list[int]:
        if self.failures:
            self.failures -= 1
            raise StorageFailure("database is locked")
        return await self._store.enqueue_outbox(rows, now)


async def test_a_refused_batch_waits_for_the_next_flush(store: SqliteStore,
                                                        tmp_path: Path) -> None:
    trail = AuditTrail(FlakyStore(store, 1), settings(tmp_path), "node1")  # type: ignore[arg-type]
    trail.security_alert(m.SOFTWARE_CONFIGURATION, "routes reloaded", failure=False)
    assert await trail.flush() == 0
    assert await audit_rows(store) == []
    assert await trail.flush() == 1
    assert [r["event"] for r in await audit_rows(store)] == ["Security Alert"]


async def test_a_full_buffer_drops_the_oldest_and_counts(store: SqliteStore,
                                                         tmp_path: Path) -> None:
    trail = AuditTrail(store, settings(tmp_path, max_buffered=100), "node1")
    before = REGISTRY.get_sample_value("radflow_audit_failures_total",
                                       {"event": "Query"}) or 0.0
    for i in range(105):
        trail.query(calling_ae="CT01", called_ae="RADFLOW", peer_host="h",
                    sop_class_uid="1.2.840.10008.5.1.4.31", identifier=str(i).encode(),
                    transfer_syntax_uid="1.2.840.10008.1.2", ok=True)
    assert await trail.flush() == 100
    assert REGISTRY.get_sample_value("radflow_audit_failures_total",
                                     {"event": "Query"}) == before + 5


async def test_no_repository_and_no_file_means_no_trail(store: SqliteStore) -> None:
    trail = AuditTrail(store, Settings(), "node1")
    assert not trail.enabled
    trail.association(calling_ae="CT01", called_ae="RADFLOW", peer_host="h", accepted=False)
    trail.on_instance_stored(stored(CT, "1.2.3", 1))
    await trail.start()
    await trail.stop()
    assert await store.outbox_rows() == []
