"""The admin API against its own OpenAPI description, by a property-based API tester
(schemathesis): generated calls to every declared operation of a running radflow, as an admin,
answer no 500, only the statuses the description documents, and bodies of the documented
content type and schema (JSON objects; refusals with ``error``); every mutating operation refuses an
anonymous caller (401) and a viewer (403). Bounded: a few examples per operation."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.helpers.proc import HOST, RadflowProcess

pytestmark = pytest.mark.timeout(600)
LEGACY = "legacy-admin-token-for-fuzzing"
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


@pytest.fixture(scope="module")
def rf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadflowProcess]:
    base = tmp_path_factory.mktemp("fuzz")
    routes = base / "routes"
    routes.mkdir()
    (routes / "10-all.yaml").write_text(
        "version: 1\nroutes:\n  - name: everything\n    destinations: [pacs]\n")
    process = RadflowProcess(base, {
        "http": {"token": LEGACY},
        "routing": {"routes_dir": str(routes), "reload_poll_seconds": 0},
        "destinations": {"pacs": {"type": "dimse", "ae_title": "PACS", "host": HOST,
                                  "port": 104}}})
    process.start()
    yield process
    process.close()


def users(rf: RadflowProcess, *args: str, stdin: str | None = None) -> str:
    return subprocess.run([sys.executable, "-m", "engine", "users", *args, "--config",
                           str(rf.config_path)], input=stdin, capture_output=True, text=True,
                          timeout=60, check=True).stdout


def status(rf: RadflowProcess, method: str, path: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(f"http://{HOST}:{rf.http_port}{path}", method=method,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_every_mutating_operation_refuses_anonymous_and_viewer(rf: RadflowProcess) -> None:
    import schemathesis

    users(rf, "add", "vera", "--role", "viewer", "--password-stdin",
          stdin="viewer-password-1\n")
    viewer = users(rf, "token", "vera", "--label", "fuzz").strip().splitlines()[-1]
    schema = schemathesis.openapi.from_url(f"http://{HOST}:{rf.http_port}/api/v1/openapi.json")
    checked = []
    for result in schema.get_all_operations():
        op = result.ok()
        raw = op.definition.raw
        if op.method.upper() not in MUTATING or raw["x-required-role"] == "public":
            continue
        path = op.path.replace("{id}", "1").replace("{name}", "pacs") \
            .replace("{destination}", "pacs").replace("{sop_instance_uid}", "1.2.3")
        assert status(rf, op.method.upper(), path, None) == 401, (op.method, path)
        assert status(rf, op.method.upper(), path, viewer) == 403, (op.method, path)
        checked.append((op.method.upper(), op.path))
    assert ("POST", "/api/v1/queues/{destination}/retry") in checked
    assert ("DELETE", "/api/v1/users/{name}") in checked


def test_generated_calls_get_no_500_and_documented_answers(rf: RadflowProcess) -> None:
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(f"http://{HOST}:{rf.http_port}/api/v1/openapi.json")
    auth = {"Authorization": f"Bearer {LEGACY}"}
    failures: list[str] = []
    calls: dict[str, int] = {}
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path == "/api/v1/session" and op.method.upper() == "DELETE":
            continue

        @settings(max_examples=8, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy())
        def run(case: schemathesis.Case) -> None:
            response = case.call(base_url=f"http://{HOST}:{rf.http_port}", headers=auth,
                                 timeout=60)
            calls[f"{case.method} {case.path}"] = calls.get(f"{case.method} {case.path}", 0) + 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: "
                                f"{response.status_code} {response.text[:200]}")
            try:
                case.validate_response(response, checks=[status_code_conformance,
                                                        content_type_conformance,
                                                        response_schema_conformance])
            except Exception as exc:  # collected, so every operation runs
                failures.append(f"{case.method} {case.formatted_path}: {exc}"[:400])

        run()
    assert status(rf, "GET", "/readyz", None) == 200
    assert len(calls) >= 30 and sum(calls.values()) >= 100, calls
    assert not failures, "\n".join(failures[:20])


def test_the_main_reading_routes_describe_their_answers(rf: RadflowProcess) -> None:
    """The success answers of the reading routes have real schemas (not "an object"), so the
    generated calls above check their shapes field by field."""
    status_, body = rf.http_get("/api/v1/openapi.json")
    assert status_ == 200
    doc = json.loads(body)
    shallow = []
    for path, methods in doc["paths"].items():
        get = methods.get("get")
        if get is None or path == "/metrics":
            continue
        schema = get["responses"]["200"]["content"]["application/json"]["schema"]
        if "$ref" not in schema:
            shallow.append(path)
    # The routes status and the OpenAPI document itself are free-form by nature.
    assert sorted(shallow) == ["/api/v1/openapi.json", "/api/v1/routes"], shallow
    worklist = doc["components"]["schemas"]["WorklistItem"]
    assert {"accession_number", "status", "id"} <= set(worklist["required"])
