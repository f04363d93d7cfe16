"""The delivery queues in the admin API: ``/api/v1/queues`` and dead letters (list, retry,
purge), with their OpenAPI entries.

Handlers translate HTTP to :class:`~engine.egress.queues.QueueAdmin` calls and back; they hold
no queue logic and never touch the store themselves (the server's rule).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from engine.egress.queues import QueueAdmin, dead_letter_json

_DEST = {"name": "destination", "in": "path", "required": True, "schema": {"type": "string"}}
_IDS = {"name": "id", "in": "query", "schema": {"type": "array", "items": {"type": "integer"}},
        "style": "form", "explode": True,
        "description": "one or more row ids (repeat or comma-separate); none: every dead letter "
                       "of the destination"}

QUEUE_OPENAPI: dict[str, Any] = {
    "/api/v1/queues": {"get": {
        "summary": "Every destination's queue: pending, leased, dead, age of the oldest "
                   "undelivered row, circuit breaker state",
        "responses": {"200": {"description": "{queues: [...]}"}}}},
    "/api/v1/queues/{destination}/dead": {
        "get": {"summary": "Dead letters of a destination, oldest first, with the last error",
                "parameters": [_DEST,
                               {"name": "limit", "in": "query",
                                "schema": {"type": "integer", "maximum": 1000}},
                               {"name": "offset", "in": "query", "schema": {"type": "integer"}},
                               {"name": "payload", "in": "query",
                                "schema": {"type": "boolean"},
                                "description": "include each row's frozen payload"}],
                "responses": {"200": {"description": "{total, items}"},
                              "404": {"description": "unknown destination"}}},
        "delete": {"summary": "Purge dead letters (all of the destination's, or ?id=...)",
                   "parameters": [_DEST, _IDS],
                   "responses": {"200": {"description": "{purged: n}"},
                                 "404": {"description": "unknown destination"}}}},
    "/api/v1/queues/{destination}/retry": {"post": {
        "summary": "Send dead letters again (all of the destination's, or ?id=... or a JSON "
                   "body {\"ids\": [...]}); attempts start from zero",
        "parameters": [_DEST, _IDS],
        "requestBody": {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "properties": {"ids": {"type": "array",
                                                     "items": {"type": "integer"}}}}}}},
        "responses": {"200": {"description": "{retried: n}"},
                      "404": {"description": "unknown destination"}}}},
}


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}),
                              content_type="application/json")


async def _ids(request: web.Request) -> list[int] | None:
    raw = [v for value in request.query.getall("id", []) for v in value.split(",") if v.strip()]
    if request.can_read_body and request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise _bad("the body is not JSON") from None
        if isinstance(body, dict) and isinstance(body.get("ids"), list):
            raw += [str(v) for v in body["ids"]]
    if not raw:
        return None
    try:
        return [int(v) for v in raw]
    except ValueError:
        raise _bad("ids are integers") from None


def add_queue_routes(app: web.Application, queues: QueueAdmin) -> None:
    def destination(request: web.Request) -> str:
        name = request.match_info["destination"]
        if not queues.known(name):
            raise web.HTTPNotFound(text=json.dumps({"error": f"no destination {name!r}"}),
                                   content_type="application/json")
        return name

    async def overview(request: web.Request) -> web.Response:
        return web.json_response({"queues": await queues.overview()})

    async def dead(request: web.Request) -> web.Response:
        name = destination(request)
        try:
            limit = min(max(int(request.query.get("limit", "100")), 1), 1000)
            offset = max(int(request.query.get("offset", "0")), 0)
        except ValueError:
            raise _bad("limit and offset are integers") from None
        with_payload = request.query.get("payload", "").lower() in ("1", "true", "yes")
        total, items = await queues.dead_letters(name, limit, offset)
        return web.json_response({"total": total,
                                  "items": [dead_letter_json(d, with_payload) for d in items]})

    async def retry(request: web.Request) -> web.Response:
        name = destination(request)
        return web.json_response({"retried": await queues.retry(name, await _ids(request))})

    async def purge(request: web.Request) -> web.Response:
        name = destination(request)
        return web.json_response({"purged": await queues.purge(name, await _ids(request))})

    app.router.add_get("/api/v1/queues", overview)
    app.router.add_get("/api/v1/queues/{destination}/dead", dead)
    app.router.add_delete("/api/v1/queues/{destination}/dead", purge)
    app.router.add_post("/api/v1/queues/{destination}/retry", retry)
