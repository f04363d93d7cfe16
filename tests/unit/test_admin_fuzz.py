"""Every route of the admin API, fed generated parameters and bodies (hypothesis, bounded): no
answer is a server error. The routes come from the OpenAPI description itself, so a route added
later is covered without touching this file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.admin.server import AdminServer
from engine.bus import EventBus
from engine.durable.sqlite import SqliteStore
from engine.egress.queues import QueueAdmin
from engine.procedure.service import ProcedureStepService
from engine.settings import DimseDestination
from engine.worklist.mapping import load_mapping
from engine.worklist.service import WorklistService

REPO_ROOT = Path(__file__).resolve().parents[2]

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=False), st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
param_values = st.one_of(st.text(max_size=30), st.integers(min_value=-(2**70),
                                                           max_value=2**70).map(str),
                         st.sampled_from(["true", "false", "all", "", "1,2", "-1", "1e9"]))
bodies = st.one_of(st.none(), json_values.map(lambda v: json.dumps(v).encode()),
                   st.binary(max_size=64),
                   st.integers(min_value=1, max_value=5000).map(lambda n: b"[" * n + b"]" * n))
content_types = st.sampled_from([None, "application/json", "text/plain",
                                 "application/dicom", "application/dicom+json",
                                 "application/x-www-form-urlencoded"])


Request = tuple[str, str, dict[str, str], bytes | None, str | None]


def generated_requests(doc: dict[str, Any]) -> list[Request]:
    """Requests for every operation of ``doc``: known and unknown parameters with odd values,
    JSON of any shape, raw bytes, deep nesting, and assorted content types."""
    operations = [(path, method, op) for path, ops in doc["paths"].items()
                  for method, op in ops.items()]
    assert len(operations) >= 10
    requests: list[Request] = []

    @settings(max_examples=300, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one(data: st.DataObject) -> None:
        path, method, op = data.draw(st.sampled_from(operations))
        names = [p["name"] for p in op.get("parameters", [])] + ["bogus"]
        query = data.draw(st.dictionaries(st.sampled_from(names), param_values, max_size=4))
        filled = path
        for p in op.get("parameters", []):
            if p["in"] == "path":
                filled = filled.replace("{" + p["name"] + "}", data.draw(st.sampled_from(
                    ["pacs", "1", "x", "99999999999999999999"])))
                query.pop(p["name"], None)
        requests.append((method.upper(), filled, query, data.draw(bodies),
                         data.draw(content_types)))

    one()
    return requests


async def _serve(tmp_path: Path, work: Callable[[AdminServer, TestClient[Any, Any]],
                                                 Awaitable[Any]]) -> Any:
    store = SqliteStore(tmp_path / "radflow.db")
    await store.open()
    destinations = {"pacs": DimseDestination(type="dimse", ae_title="PACS", host="127.0.0.1",
                                             port=104)}
    mapping = load_mapping(REPO_ROOT / "routes" / "worklist" / "hl7-mwl.yaml")
    server = AdminServer(
        "127.0.0.1", 0, store, {}, None,
        worklist=WorklistService(store, mapping, default_charset="8859/1"),
        queues=QueueAdmin(store, destinations),
        procedure_steps=ProcedureStepService(store, EventBus()))
    client: TestClient[Any, Any] = TestClient(TestServer(server.app))
    await client.start_server()
    try:
        return await work(server, client)
    finally:
        await client.close()
        await store.close()


def test_no_generated_request_is_a_server_error(tmp_path: Path) -> None:
    # A plain test running its own loops: hypothesis collects garbage between examples, which
    # would stall a shared loop; requests are drawn first, then sent.
    async def describe(server: AdminServer, client: TestClient[Any, Any]) -> Any:
        return await (await client.get("/api/v1/openapi.json")).json()

    requests = generated_requests(asyncio.run(_serve(tmp_path / "a", describe)))

    async def send_all(server: AdminServer, client: TestClient[Any, Any]) -> list[str]:
        failures = []
        for method, url, query, body, ctype in requests:
            headers = {"Content-Type": ctype} if ctype and body is not None else {}
            resp = await client.request(method, url, params=query, data=body, headers=headers)
            if resp.status >= 500:
                failures.append(f"{method} {url} {query} {ctype} {body!r:.80} -> {resp.status}")
        return failures

    failures = asyncio.run(_serve(tmp_path / "b", send_all))
    assert not failures, "\n".join(failures[:10])
