"""aiohttp admin server: ``/healthz``, ``/readyz``, ``/metrics`` and ``/api/v1/``.

Readiness is computed from probes the engine passes in (store reachable, spool has room,
listeners up), so this module knows no engine internals beyond the store's read API. When a token
is configured every ``/api/`` route requires ``Authorization: Bearer <token>``; health and metrics
stay open for probes and scrapers. It must never write to the store directly.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from engine import __version__
from engine.durable.store import Store, StoredInstance
from engine.observability.logging import get_logger
from engine.observability.metrics import render

log = get_logger("engine.admin")

Probe = Callable[[], Awaitable[tuple[bool, str]]]

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "radflow admin API", "version": __version__},
    "paths": {
        "/healthz": {"get": {"summary": "Process is alive", "responses": {"200": {
            "description": "alive"}}}},
        "/readyz": {"get": {"summary": "Ready to accept work (stores, spool room, listeners)",
                            "responses": {"200": {"description": "ready"},
                                          "503": {"description": "not ready, with reasons"}}}},
        "/metrics": {"get": {"summary": "Prometheus text exposition",
                             "responses": {"200": {"description": "metrics"}}}},
        "/api/v1/instances": {"get": {
            "summary": "Received instances, newest first",
            "parameters": [
                {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 1000}},
                {"name": "offset", "in": "query", "schema": {"type": "integer"}}],
            "responses": {"200": {"description": "a page of instances"},
                          "401": {"description": "token missing or wrong"}}}},
        "/api/v1/instances/{sop_instance_uid}": {"get": {
            "summary": "The latest version of one instance",
            "parameters": [{"name": "sop_instance_uid", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the instance"},
                          "404": {"description": "unknown"}}}},
    },
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
}


def instance_json(item: StoredInstance) -> dict[str, Any]:
    rec = item.record
    return {
        "id": item.id, "version": item.version, "superseded": item.superseded,
        "routed_at": item.routed_at, "object_id": rec.object_id, "spool_path": rec.spool_path,
        "sop_class_uid": rec.sop_class_uid, "sop_instance_uid": rec.sop_instance_uid,
        "transfer_syntax_uid": rec.transfer_syntax_uid,
        "study_instance_uid": rec.study_instance_uid,
        "series_instance_uid": rec.series_instance_uid, "patient_id": rec.patient_id,
        "accession_number": rec.accession_number, "modality": rec.modality,
        "calling_ae": rec.calling_ae, "called_ae": rec.called_ae, "peer_host": rec.peer_host,
        "listener": rec.listener, "size_bytes": rec.size_bytes, "sha256": rec.sha256,
        "received_at": rec.received_at,
    }


class AdminServer:
    """The admin HTTP endpoint of one engine."""

    def __init__(self, host: str, port: int, store: Store, probes: dict[str, Probe],
                 token: str | None) -> None:
        self._host = host
        self._port = port
        self._store = store
        self._probes = probes
        self._token = token
        self._runner: web.AppRunner | None = None
        self.stopping = False
        self.app = self._build_app()

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/api/v1/openapi.json", self.openapi)
        app.router.add_get("/api/v1/instances", self.list_instances)
        app.router.add_get("/api/v1/instances/{sop_instance_uid}", self.get_instance)
        return app

    @web.middleware
    async def _auth(self, request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        if self._token and request.path.startswith("/api/") and \
                request.path != "/api/v1/openapi.json":
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode()):
                return web.json_response({"error": "unauthorized"}, status=401,
                                         headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        log.info("admin.listening", host=self._host, port=self._port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "version": __version__})

    async def readyz(self, request: web.Request) -> web.Response:
        checks: dict[str, dict[str, Any]] = {}
        ready = not self.stopping
        for name, probe in self._probes.items():
            try:
                ok, detail = await probe()
            except Exception as exc:
                ok, detail = False, f"probe failed: {exc}"
            checks[name] = {"ok": ok, "detail": detail}
            ready = ready and ok
        body = {"status": "ready" if ready else "not ready", "stopping": self.stopping,
                "checks": checks}
        return web.json_response(body, status=200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=render(), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(OPENAPI)

    async def list_instances(self, request: web.Request) -> web.Response:
        try:
            limit = min(int(request.query.get("limit", "100")), 1000)
            offset = max(int(request.query.get("offset", "0")), 0)
        except ValueError:
            return web.json_response({"error": "limit and offset are integers"}, status=400)
        items = await self._store.list_instances(limit, offset)
        total = await self._store.count_instances()
        return web.json_response({"total": total, "items": [instance_json(i) for i in items]})

    async def get_instance(self, request: web.Request) -> web.Response:
        item = await self._store.get_instance(request.match_info["sop_instance_uid"])
        if item is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response(instance_json(item))
