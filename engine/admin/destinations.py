"""Destinations in the admin API: ``GET /api/v1/destinations`` (what is configured) and
``POST /api/v1/destinations/{name}/check`` (reach it now: latency and the exact error), with
their OpenAPI entries.

Handlers translate HTTP to :class:`~engine.egress.check.DestinationChecker` calls and back; they
hold no protocol code of their own.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from aiohttp import web

from engine.egress.check import DestinationChecker

DESTINATION_OPENAPI: dict[str, Any] = {
    "/api/v1/destinations": {"get": {
        "summary": "The configured destinations: name, type, target and whether TLS is used",
        "responses": {"200": {"description": "{destinations: [...]}"}}}},
    "/api/v1/destinations/{name}/check": {"post": {
        "summary": "Reach a destination now as a delivery would: C-ECHO (dimse, mpps), a TCP "
                   "and TLS connection (hl7), an authenticated GET of a QIDO-RS search "
                   "(dicomweb) or of /metadata (fhir). Nothing is sent from the queue.",
        "parameters": [{"name": "name", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "responses": {"200": {"description": "{destination, type, target, ok, seconds, "
                                             "detail, reason}: ok false carries the exact "
                                             "error in detail"},
                      "404": {"description": "unknown destination"}}}},
}


def add_destination_routes(app: web.Application, checker: DestinationChecker) -> None:
    async def listing(request: web.Request) -> web.Response:
        return web.json_response({"destinations": [asdict(d) for d in checker.list()]})

    async def check(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if not checker.known(name):
            raise web.HTTPNotFound(text=json.dumps({"error": f"no destination {name!r}"}),
                                   content_type="application/json")
        return web.json_response((await checker.check(name)).to_json())

    app.router.add_get("/api/v1/destinations", listing)
    app.router.add_post("/api/v1/destinations/{name}/check", check)
