"""The most recent errors: which log events become notes and how (the recorder), how repeats
are counted and the list kept short (the store, on both backends), and what the admin API
answers (``GET /api/v1/errors``)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from engine.admin.server import AdminServer
from engine.observability.recent_errors import ErrorNote, Recorder, record


def notes_of(*lines: tuple[str, str, dict[str, Any]]) -> list[ErrorNote]:
    recorder = Recorder()
    for event, level, fields in lines:
        recorder.note(event, level, {"event": event, **fields})
    return recorder.take()


def test_operator_facing_failures_are_noted_and_the_rest_is_not() -> None:
    notes = notes_of(
        ("ingress.dimse.association.rejected", "warning",
         {"calling_ae": "CT1", "peer_host": "10.0.0.7", "reason": "calling AE not allowed"}),
        ("ingress.dimse.c_store.failed", "warning",
         {"calling_ae": "MR2", "peer_host": "10.0.0.8", "status": "0xA700",
          "reason": "store_full", "detail": "spool has no room"}),
        ("ingress.hl7.ack_sent", "info", {"ack_code": "AA", "message_type": "ORM^O01"}),
        ("ingress.hl7.ack_sent", "warning",
         {"ack_code": "AE", "message_type": "ORM^O01", "peer_host": "10.0.0.9",
          "reason": "PID-3 missing"}),
        ("egress.dimse.failed", "info", {"destination": "pacs", "error": "refused: 0xA700"}),
        ("egress.dimse.failed", "info",
         {"destination": "pacs", "error": "integrity_failed: sha256 mismatch"}),
        ("outbox.dead_lettered", "warning", {"destination": "ai", "error": "rejected: 0xC000"}),
        ("rules.reload_failed", "error",
         {"trigger": "sighup", "errors": 2, "problems": ["10-a.yaml:3 unknown key"]}),
        ("audit.write_failed", "error", {"error": "connection refused"}),
        ("egress.sender_failed", "exception", {"destination": "pacs"}),
        ("ingress.dimse.c_store.accepted", "info", {"calling_ae": "CT1"}),
        ("admin.login", "info", {"user": "alice"}))
    seen = {(n.kind, n.subject, n.reason, n.peer_host) for n in notes}
    assert seen == {
        ("association_refused", "CT1", "calling AE not allowed", "10.0.0.7"),
        ("c_store_failed", "MR2", "0xA700 store_full spool has no room", "10.0.0.8"),
        ("hl7_refused", "ORM^O01", "AE: PID-3 missing", "10.0.0.9"),
        ("delivery_failed", "pacs", "refused: 0xA700", ""),
        ("integrity_failed", "pacs", "integrity_failed: sha256 mismatch", ""),
        ("dead_letter", "ai", "rejected: 0xC000", ""),
        ("rules_reload_failed", "sighup",
         "2 problem(s), previous rules kept: 10-a.yaml:3 unknown key", ""),
        ("audit_failed", "", "connection refused", ""),
        ("error", "egress.sender_failed", "", ""),
    }


def test_repeats_are_counted_into_one_note_and_pending_notes_are_bounded() -> None:
    recorder = Recorder(max_pending=3)
    for _ in range(5):
        recorder.note("outbox.dead_lettered", "warning", {"destination": "ai", "error": "x"})
    (note,) = recorder.take()
    assert note.count == 5 and note.first_at <= note.last_at
    assert recorder.take() == []
    for n in range(5):
        recorder.note("outbox.dead_lettered", "warning", {"destination": f"d{n}", "error": "x"})
    assert [n.subject for n in recorder.take()] == ["d2", "d3", "d4"]
    assert recorder.dropped == 2


def test_the_processor_never_fails_a_log_call() -> None:
    class Odd:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    line = {"event": "outbox.dead_lettered", "destination": Odd(), "error": "x"}
    assert record(None, "warning", line) is line


async def test_the_store_counts_repeats_from_any_node_and_keeps_the_newest(store: Any) -> None:
    now = time.time()

    def note(subject: str, at: float, node: str = "a", count: int = 1) -> ErrorNote:
        return ErrorNote("dead_letter", subject, "rejected", "", "outbox.dead_lettered",
                         at, at, count, node)

    await store.record_errors([note("pacs", now - 10), note("ai", now - 9)], now - 300, 5)
    await store.record_errors([note("pacs", now - 1, node="b", count=3)], now - 300, 5)
    first = await store.recent_errors(10)
    assert [(n.subject, n.count, n.node) for n in first] == [("pacs", 4, "b"), ("ai", 1, "a")]
    assert first[0].first_at == now - 10 and first[0].last_at == now - 1
    # Seen again after the merge window: a new entry.
    await store.record_errors([note("ai", now)], now - 0.5, 5)
    assert [(n.subject, n.count) for n in await store.recent_errors(10)] == [
        ("ai", 1), ("pacs", 4), ("ai", 1)]
    await store.record_errors([note(f"d{i}", now + i) for i in range(1, 5)], now + 10, 5)
    kept = await store.recent_errors(10)
    assert [n.subject for n in kept] == ["d4", "d3", "d2", "d1", "ai"]
    assert [n.subject for n in await store.recent_errors(2)] == ["d4", "d3"]
    assert await store.recent_errors(10, ["c_store_failed"]) == []


async def test_the_api_answers_the_recent_errors_newest_first(store: Any) -> None:
    now = time.time()
    await store.record_errors([
        ErrorNote("association_refused", "CT1", "called AE title not recognised",
                  "10.0.0.7", "ingress.dimse.association.rejected", now - 5, now - 5, 1, "n1"),
        ErrorNote("dead_letter", "ai", "rejected: 0xC000", "", "outbox.dead_lettered",
                  now - 60, now - 2, 7, "n2")], now - 300, 500)
    server = AdminServer("127.0.0.1", 0, store, {}, None)
    client = TestClient(TestServer(server.app))
    await client.start_server()
    try:
        body = await (await client.get("/api/v1/errors")).json()
        assert [(e["kind"], e["subject"], e["count"]) for e in body["items"]] == [
            ("dead_letter", "ai", 7), ("association_refused", "CT1", 1)]
        first = body["items"][0]
        assert first["kind_label"] == "dead letter" and first["node"] == "n2"
        assert first["last_at"].endswith("+00:00")
        only = await (await client.get("/api/v1/errors?kind=association_refused")).json()
        assert [e["peer_host"] for e in only["items"]] == ["10.0.0.7"]
        assert (await client.get("/api/v1/errors?kind=nonsense")).status == 400
        doc = await (await client.get("/api/v1/openapi.json")).json()
        answer = doc["paths"]["/api/v1/errors"]["get"]["responses"]["200"]
        assert answer["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/RecentErrors"}
        assert "RecentError" in doc["components"]["schemas"]
    finally:
        await client.close()


def test_the_api_names_every_kind_the_recorder_makes() -> None:
    from typing import get_args

    from engine.admin.recent_errors import ErrorKind
    from engine.observability.recent_errors import KINDS

    assert set(get_args(ErrorKind)) == set(KINDS)
