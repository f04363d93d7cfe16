"""Every route of the admin API, fed generated parameters and bodies (hypothesis, bounded): no
answer is a server error. The routes come from the OpenAPI description itself, so a route added
later is covered without touching this file."""

from __future__ import annotations

import asyncio
import json
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


async def test_no_generated_request_is_a_server_error(store: SqliteStore) -> None:
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
        operations = [(path, method, op) for path, ops in server.openapi_doc["paths"].items()
                      for method, op in ops.items()]
        assert len(operations) >= 10
        failures: list[str] = []

        @settings(max_examples=300, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(st.data())
        def one(data: st.DataObject) -> None:
            path, method, op = data.draw(st.sampled_from(operations))
            names = [p["name"] for p in op.get("parameters", [])] + ["bogus"]
            query = data.draw(st.dictionaries(st.sampled_from(names), param_values, max_size=4))
            filled = path
            for p in op.get("parameters", []):
                if p["in"] == "path":
                    filled = filled.replace("{" + p["name"] + "}",
                                            data.draw(st.sampled_from(["pacs", "1", "x",
                                                                       "99999999999999999999"])))
                    query.pop(p["name"], None)
            body = data.draw(bodies)
            ctype = data.draw(content_types)
            requests.append((method.upper(), filled, query, body, ctype))

        requests: list[tuple[str, str, dict[str, str], bytes | None, str | None]] = []
        await asyncio.to_thread(one)  # generating is CPU work: off the loop
        for method, url, query, body, ctype in requests:
            headers = {"Content-Type": ctype} if ctype and body is not None else {}
            resp = await client.request(method, url, params=query, data=body, headers=headers)
            if resp.status >= 500:
                failures.append(f"{method} {url} {query} {ctype} {body!r:.80} -> {resp.status}")
        assert not failures, "\n".join(failures[:10])
    finally:
        await client.close()
