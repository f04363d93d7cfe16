"""The router tells the dispatcher which destinations just got outbox rows, so an idle sender
starts at once instead of at its next poll (the engine wires ``on_rows`` to
``Dispatcher.wake``)."""

from __future__ import annotations

from pathlib import Path

from engine.durable.spool import Spool, new_object_id
from engine.durable.sqlite import SqliteStore
from engine.durable.store import DuplicatePolicy, InstanceCommit, InstanceRecord
from engine.pipeline.router import Router
from engine.pipeline.rulesets import RulesManager
from engine.settings import Settings
from tests.helpers import dicomgen

ROUTES = """\
version: 1
routes:
  - name: ct-to-pacs
    match: {attr: Modality, equals: CT}
    destinations: [pacs, ai]
  - name: mr-to-archive
    match: {attr: Modality, equals: MR}
    destinations: [archive]
"""


async def test_routed_rows_wake_exactly_their_destinations(tmp_path: Path) -> None:
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "10-site.yaml").write_text(ROUTES, encoding="utf-8")
    dest = {"type": "dimse", "host": "127.0.0.1", "port": 104}
    settings = Settings.model_validate({
        "destinations": {"pacs": {**dest, "ae_title": "PACS"}, "ai": {**dest, "ae_title": "AI"},
                         "archive": {**dest, "ae_title": "ARCHIVE"}},
        "routing": {"routes_dir": str(routes)},
    })
    store = SqliteStore(tmp_path / "radflow.db")
    await store.open()
    spool = Spool(tmp_path / "spool", 0)
    spool.open()
    try:
        ds = dicomgen.new_dataset("CT", patient_id="P1")
        data = dicomgen.write_part10(ds, tmp_path / "ct.dcm").read_bytes()
        spooled = spool.write(new_object_id(), [data])
        await store.commit_instances([InstanceCommit(InstanceRecord(
            spooled.object_id, spooled.rel_path, str(ds.SOPClassUID), str(ds.SOPInstanceUID),
            "1.2.840.10008.1.2.1", str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), "P1",
            "", "CT", "CT_1", "RADFLOW", "127.0.0.1", "main", spooled.size, spooled.sha256,
            "2026-11-25T12:00:00+00:00"), DuplicatePolicy.VERSION)])
        router = Router(store, spool, RulesManager(settings))
        woken: list[str | None] = []
        router.on_rows = woken.append
        assert await router.route(await store.unrouted_instances(0, 10)) == 1
        assert sorted(n for n in woken if n is not None) == ["ai", "pacs"]
    finally:
        await store.close()
