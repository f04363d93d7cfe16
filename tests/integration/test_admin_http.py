"""The admin API of a running radflow, called over HTTP as an operator's script or a hostile web
page would: malformed, oversized and cross-origin calls are refused with 4xx (never 500) and
the process keeps serving."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest

from tests.helpers.proc import HOST, RadflowProcess

DEST = {"pacs": {"type": "dimse", "ae_title": "PACS", "host": HOST, "port": 104}}


def call(rf: RadflowProcess, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection(HOST, rf.http_port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data else {}
    finally:
        conn.close()


@pytest.fixture(scope="module")
def rf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadflowProcess]:
    process = RadflowProcess(tmp_path_factory.mktemp("admin"), {"destinations": DEST})
    process.start()
    yield process
    process.close()


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(("method", "path", "body", "headers", "status"), [
    ("DELETE", "/api/v1/queues/pacs/dead", b'{"ids": 20601}', JSON, 400),
    ("DELETE", "/api/v1/queues/pacs/dead", b'{"all": true}', {}, 415),
    ("DELETE", "/api/v1/queues/pacs/dead", None, {}, 400),
    ("POST", "/api/v1/queues/pacs/retry", b'{"ids": "all"}', JSON, 400),
    ("POST", "/api/v1/queues/pacs/retry", b"[" * 100_000 + b"]" * 100_000, JSON, 400),
    ("POST", "/api/v1/queues/pacs/retry", b'{"ids": [99999999999999999999]}', JSON, 400),
    ("GET", "/api/v1/queues/pacs/dead?offset=99999999999999999999", None, {}, 400),
    ("GET", "/api/v1/instances?limit=100000", None, {}, 400),
    ("DELETE", "/api/v1/worklist/99999999999999999999", None, {}, 400),
    ("POST", "/api/v1/queues/pacs/retry", b'{"ids": [' + b"1," * 600_000 + b"1]}", JSON, 413),
    ("DELETE", "/api/v1/queues/pacs/dead?all=true", None,
     {"Origin": "http://intranet.example"}, 403),
    ("POST", "/api/v1/routes/reload", None, {"Sec-Fetch-Site": "cross-site"}, 403),
])
def test_bad_admin_calls_are_refused_and_never_500(rf: RadflowProcess, method: str, path: str,
                                                   body: bytes | None,
                                                   headers: dict[str, str],
                                                   status: int) -> None:
    got, answer = call(rf, method, path, body, headers)
    assert got == status, answer
    assert "error" in answer
    assert call(rf, "GET", "/readyz")[0] == 200


def test_an_explicit_all_is_accepted(rf: RadflowProcess) -> None:
    assert call(rf, "DELETE", "/api/v1/queues/pacs/dead", b'{"all": true}', JSON) == \
        (200, {"purged": 0})
