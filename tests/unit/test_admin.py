"""The admin HTTP server through aiohttp's in-process test server: health, readiness with
reasons, metrics, the instances API over a real SQLite store, token auth and OpenAPI."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from journal_samples import UID, record

from engine import __version__
from engine.admin.server import AdminServer, Probe
from engine.durable.sqlite import SqliteStore
from engine.durable.store import DuplicatePolicy, InstanceCommit

TOKEN = "s3cret-token"
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def probe(ok: bool, detail: str) -> Probe:
    async def run() -> tuple[bool, str]:
        return ok, detail

    return run


async def broken_probe() -> tuple[bool, str]:
    raise ConnectionError("database is gone")


@pytest.fixture
async def make_client(store: SqliteStore) -> AsyncIterator[ClientFactory]:
    clients: list[TestClient[Any, Any]] = []

    async def make(
        probes: dict[str, Probe] | None = None,
        token: str | None = None,
        server: AdminServer | None = None,
    ) -> TestClient[Any, Any]:
        server = server or AdminServer("127.0.0.1", 0, store, probes or {}, token)
        client = TestClient(TestServer(server.app))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def add_instances(store: SqliteStore, count: int) -> None:
    await store.commit_instances(
        [InstanceCommit(record(n), DuplicatePolicy.VERSION) for n in range(1, count + 1)]
    )


# --- health --------------------------------------------------------------------------------------
async def test_healthz_is_alive(make_client: ClientFactory) -> None:
    client = await make_client()
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "alive", "version": __version__}


async def test_readyz_is_200_when_every_probe_passes(make_client: ClientFactory) -> None:
    client = await make_client(
        {"store": probe(True, "reachable"), "spool": probe(True, "2048 MiB free")}
    )
    resp = await client.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ready"
    assert body["checks"] == {
        "store": {"ok": True, "detail": "reachable"},
        "spool": {"ok": True, "detail": "2048 MiB free"},
    }


async def test_readyz_is_503_with_the_failing_reasons(make_client: ClientFactory) -> None:
    client = await make_client(
        {
            "store": probe(True, "reachable"),
            "spool": probe(False, "12 MiB free (below threshold)"),
            "listeners": broken_probe,
        }
    )
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["status"] == "not ready"
    assert body["checks"]["store"] == {"ok": True, "detail": "reachable"}
    assert body["checks"]["spool"] == {"ok": False, "detail": "12 MiB free (below threshold)"}
    assert body["checks"]["listeners"]["ok"] is False
    assert "database is gone" in body["checks"]["listeners"]["detail"]


async def test_readyz_is_503_while_stopping(make_client: ClientFactory, store: SqliteStore) -> None:
    admin = AdminServer("127.0.0.1", 0, store, {"store": probe(True, "reachable")}, None)
    client = await make_client(server=admin)
    assert (await client.get("/readyz")).status == 200
    admin.stopping = True
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["stopping"] is True


async def test_metrics_is_prometheus_text(make_client: ClientFactory) -> None:
    client = await make_client()
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    text = await resp.text()
    assert "# TYPE radflow_journal_commit_batch_size histogram" in text
    assert "radflow_spool_low_space" in text
    for line in text.splitlines():  # every sample line is "name{labels} value"
        if line and not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])


# --- instances API -------------------------------------------------------------------------------
async def test_instances_lists_newest_first_with_the_total(
    make_client: ClientFactory, store: SqliteStore
) -> None:
    await add_instances(store, 5)
    client = await make_client()

    resp = await client.get("/api/v1/instances", params={"limit": "2", "offset": "1"})

    assert resp.status == 200
    body = await resp.json()
    assert body["total"] == 5
    assert [i["sop_instance_uid"] for i in body["items"]] == [f"{UID}.4", f"{UID}.3"]
    first = body["items"][0]
    assert first["version"] == 1 and first["superseded"] is False
    assert first["calling_ae"] == "CT_SCANNER_1" and first["size_bytes"] == 1000


async def test_instances_empty_store(make_client: ClientFactory) -> None:
    client = await make_client()
    resp = await client.get("/api/v1/instances")
    assert resp.status == 200
    assert await resp.json() == {"total": 0, "items": []}


@pytest.mark.parametrize("query", [{"limit": "ten"}, {"offset": "1.5"}])
async def test_instances_refuses_non_integer_paging(
    make_client: ClientFactory, query: dict[str, str]
) -> None:
    client = await make_client()
    resp = await client.get("/api/v1/instances", params=query)
    assert resp.status == 400


async def test_instances_pages_hold_at_most_1000_and_more_is_refused(
    make_client: ClientFactory, store: SqliteStore
) -> None:
    await add_instances(store, 1001)
    client = await make_client()
    resp = await client.get("/api/v1/instances", params={"limit": "1000"})
    body = await resp.json()
    assert body["total"] == 1001 and len(body["items"]) == 1000
    resp = await client.get("/api/v1/instances", params={"limit": "5000"})
    assert resp.status == 400  # out of range: said, not silently capped
    assert (await resp.json())["problems"][0]["loc"] == "limit"


async def test_a_negative_limit_does_not_lift_the_cap(
    make_client: ClientFactory, store: SqliteStore
) -> None:
    await add_instances(store, 1001)
    client = await make_client()
    resp = await client.get("/api/v1/instances", params={"limit": "-1"})
    assert resp.status == 400 or len((await resp.json())["items"]) <= 1000


async def test_one_instance_by_uid(make_client: ClientFactory, store: SqliteStore) -> None:
    await add_instances(store, 2)
    client = await make_client()
    resp = await client.get(f"/api/v1/instances/{UID}.2")
    assert resp.status == 200
    assert (await resp.json())["object_id"] == "obj000002"
    missing = await client.get("/api/v1/instances/1.2.3.999")
    assert missing.status == 404


# --- auth ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/api/v1/instances", f"/api/v1/instances/{UID}.1"])
async def test_api_needs_the_bearer_token(
    make_client: ClientFactory, store: SqliteStore, path: str
) -> None:
    await add_instances(store, 1)
    client = await make_client(token=TOKEN)

    missing = await client.get(path)
    assert missing.status == 401
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    for wrong in ("Bearer nope", f"Bearer {TOKEN}x", TOKEN, f"Basic {TOKEN}", "Bearer"):
        resp = await client.get(path, headers={"Authorization": wrong})
        assert resp.status == 401, wrong
    good = await client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert good.status == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"])
async def test_probes_metrics_and_openapi_stay_open_with_a_token(
    make_client: ClientFactory, path: str
) -> None:
    client = await make_client({"store": probe(True, "reachable")}, token=TOKEN)
    resp = await client.get(path)
    assert resp.status == 200


async def test_without_a_token_the_api_is_open(make_client: ClientFactory) -> None:
    client = await make_client(token=None)
    assert (await client.get("/api/v1/instances")).status == 200


# --- OpenAPI -------------------------------------------------------------------------------------
async def test_openapi_describes_every_route(make_client: ClientFactory) -> None:
    client = await make_client()
    resp = await client.get("/api/v1/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["paths"]["/api/v1/instances"]["get"]["parameters"]
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["version"] == __version__
    routes = {
        (r.resource.canonical, r.method.lower())
        for r in client.server.app.router.routes()  # type: ignore[union-attr]
        if r.resource is not None and r.method not in ("HEAD", "OPTIONS")
    }
    undocumented = {
        (path, method) for path, method in routes if method not in doc["paths"].get(path, {})
    }
    # The console's static pages are not API calls.
    assert undocumented <= {("/api/v1/openapi.json", "get"), ("/", "get"),
                            ("/console/{name}", "get")}, undocumented
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
