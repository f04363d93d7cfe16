"""The admin API's validation layer through aiohttp's in-process server and a real SQLite
outbox: a malformed selection changes nothing, "all" is only ever said explicitly, bodies are
typed, bounded and JSON, integers stay in range, cross-origin calls that change state are
refused, and the OpenAPI description comes from the models that validate."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine.admin.server import AdminServer
from engine.durable.sqlite import SqliteStore
from engine.durable.store import NewOutboxRow, OutboxResult, OutboxVerdict
from engine.egress.queues import QueueAdmin
from engine.settings import DimseDestination

DEAD = "/api/v1/queues/pacs/dead"
RETRY = "/api/v1/queues/pacs/retry"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def client(store: SqliteStore) -> AsyncIterator[TestClient[Any, Any]]:
    destinations = {"pacs": DimseDestination(type="dimse", ae_title="PACS", host="127.0.0.1",
                                             port=104)}
    server = AdminServer("127.0.0.1", 0, store, {}, None,
                         queues=QueueAdmin(store, destinations))
    test_client = TestClient(TestServer(server.app))
    await test_client.start_server()
    yield test_client
    await test_client.close()


async def dead_letters(store: SqliteStore, n: int) -> list[int]:
    now = time.time()
    await store.enqueue_outbox([NewOutboxRow("pacs", "dicom", json.dumps({"n": i}))
                                for i in range(n)], now)
    leased = await store.lease_outbox("pacs", "w", now, 60, n)
    await store.record_outbox("w", [OutboxResult(r.id, OutboxVerdict.DEAD, error="no")
                                    for r in leased], now)
    return [r.id for r in leased]


async def dead_count(store: SqliteStore) -> int:
    return await store.count_dead_letters("pacs")


@pytest.mark.parametrize(("body", "headers"), [
    (b'{"ids": 20601}', JSON),  # a number, not a list
    (b'{"ids": []}', JSON),  # an empty selection
    (b'{"ids": ["1"]}', JSON),  # strings are not ids
    (b'{"all": "yes"}', JSON),  # only true is "all"
    (b'{"all": false}', JSON),  # selects nothing
    (b'{"ids": [1], "all": true}', JSON),  # both
    (b'{"id": [1]}', JSON),  # a misspelt key
    (b'{}', JSON),
    (b"[1, 2]", JSON),
    (b"not json", JSON),
    (b'{"ids": [9223372036854775808]}', JSON),  # beyond a 64-bit row id
    (b'{"ids": [0]}', JSON),
    (b"[" * 100_000 + b"]" * 100_000, JSON),  # 100,000 deep
])
@pytest.mark.parametrize("path,method", [(DEAD, "DELETE"), (RETRY, "POST")])
async def test_a_malformed_selection_is_400_and_changes_nothing(
        client: TestClient[Any, Any], store: SqliteStore, body: bytes,
        headers: dict[str, str], path: str, method: str) -> None:
    await dead_letters(store, 3)
    resp = await client.request(method, path, data=body, headers=headers)
    assert resp.status == 400, await resp.text()
    assert "error" in await resp.json()
    assert await dead_count(store) == 3


async def test_a_valid_body_without_the_json_content_type_is_415(
        client: TestClient[Any, Any], store: SqliteStore) -> None:
    await dead_letters(store, 3)
    for ctype in (None, "text/plain", "application/x-www-form-urlencoded"):
        headers = {"Content-Type": ctype} if ctype else {}
        resp = await client.delete(DEAD, data=b'{"all": true}', headers=headers)
        assert resp.status == 415, (ctype, await resp.text())
    assert await dead_count(store) == 3


async def test_no_selection_at_all_is_400_not_everything(
        client: TestClient[Any, Any], store: SqliteStore) -> None:
    await dead_letters(store, 3)
    for resp in (await client.delete(DEAD), await client.post(RETRY),
                 await client.delete(DEAD + "?id="), await client.delete(DEAD + "?ids=1")):
        assert resp.status == 400, await resp.text()
    assert await dead_count(store) == 3


async def test_ids_or_an_explicit_all_select(client: TestClient[Any, Any],
                                             store: SqliteStore) -> None:
    ids = await dead_letters(store, 6)
    resp = await client.delete(DEAD, json={"ids": ids[:2]})
    assert (resp.status, await resp.json()) == (200, {"purged": 2})
    resp = await client.delete(f"{DEAD}?id={ids[2]},{ids[3]}")
    assert (resp.status, await resp.json()) == (200, {"purged": 2})
    resp = await client.post(RETRY, json={"ids": [ids[4]]})
    assert (resp.status, await resp.json()) == (200, {"retried": 1})
    resp = await client.delete(DEAD, json={"all": True})
    assert (resp.status, await resp.json()) == (200, {"purged": 1})
    await dead_letters(store, 2)
    resp = await client.delete(DEAD + "?all=true")
    assert (resp.status, await resp.json()) == (200, {"purged": 2})


@pytest.mark.parametrize("query", [
    "?limit=0", "?limit=1001", "?limit=ten", "?offset=-1", "?offset=99999999999999999999",
    "?limit=5&limit=6", "?payload=maybe", "?unknown=1"])
async def test_parameters_out_of_range_or_unknown_are_400(client: TestClient[Any, Any],
                                                          query: str) -> None:
    resp = await client.get(DEAD + query)
    assert resp.status == 400, await resp.text()


async def test_out_of_range_path_ids_are_400_not_500(store: SqliteStore) -> None:
    from engine.worklist.service import WorklistService  # noqa: F401 (only needs the route)

    server = AdminServer("127.0.0.1", 0, store, {}, None)
    c = TestClient(TestServer(server.app))
    await c.start_server()
    try:
        resp = await c.get("/api/v1/instances?offset=18446744073709551616")
        assert resp.status == 400
    finally:
        await c.close()


async def test_a_body_over_the_limit_is_413(client: TestClient[Any, Any],
                                            store: SqliteStore) -> None:
    await dead_letters(store, 1)
    big = b'{"ids": [' + b"1," * 600_000 + b"1]}"
    resp = await client.delete(DEAD, data=big, headers=JSON)
    assert resp.status == 413
    assert await dead_count(store) == 1


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Origin": "null"},
])
async def test_cross_origin_calls_that_change_state_are_403(
        client: TestClient[Any, Any], store: SqliteStore, headers: dict[str, str]) -> None:
    await dead_letters(store, 2)
    resp = await client.delete(DEAD, json={"all": True}, headers=headers)
    assert resp.status == 403
    assert await dead_count(store) == 2
    assert (await client.get(DEAD, headers=headers)).status == 200  # reading stays open


async def test_same_origin_and_scripts_may_change_state(client: TestClient[Any, Any],
                                                        store: SqliteStore) -> None:
    await dead_letters(store, 2)
    origin = f"http://{client.host}:{client.port}"
    resp = await client.delete(DEAD, json={"all": True},
                               headers={"Origin": origin, "Sec-Fetch-Site": "same-origin"})
    assert resp.status == 200


async def test_openapi_is_made_from_the_validating_models(client: TestClient[Any, Any]
                                                          ) -> None:
    doc = await (await client.get("/api/v1/openapi.json")).json()
    purge = doc["paths"]["/api/v1/queues/{destination}/dead"]["delete"]
    ref = purge["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    selection = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert selection["properties"]["ids"]["anyOf"][0]["items"]["maximum"] == 2**63 - 1
    params = {p["name"]: p for p in purge["parameters"]}
    assert params["destination"]["in"] == "path" and params["all"]["in"] == "query"
    listing = doc["paths"]["/api/v1/queues/{destination}/dead"]["get"]
    limit = {p["name"]: p for p in listing["parameters"]}["limit"]["schema"]
    assert (limit["minimum"], limit["maximum"]) == (1, 1000)
    assert {"400", "403", "413", "415"} <= set(purge["responses"])
