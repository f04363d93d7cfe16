"""The delivery queues in the admin API: ``/api/v1/queues`` and dead letters (list, retry,
purge), declared with their request models (``engine.admin.models``).

Handlers translate HTTP to :class:`~engine.egress.queues.QueueAdmin` calls and back; they hold
no queue logic and never touch the store themselves (the server's rule). Retry and purge act on
the ids named, or on every dead letter of the destination only when ``all`` is said in so many
words (``?all=true`` or ``{"all": true}``): a missing or malformed selection is a 400 that
changes nothing.
"""

from __future__ import annotations

import json

from aiohttp import web

from engine.admin import responses as out
from engine.admin.api import Api, Call, NoParams
from engine.admin.models import (
    DeadLetterList,
    DeadLetterQuery,
    DeadLetterSelection,
    DestinationPath,
)
from engine.egress.queues import QueueAdmin, dead_letter_json

_SELECT = ("the dead letters to act on: ?id=... (repeat or comma-separate) or ?all=true, or a "
           'JSON body {"ids": [...]} or {"all": true}; nothing else selects all')


def selection(call: Call[DeadLetterQuery, DeadLetterSelection]) -> list[int] | None:
    """The ids named (``None``: all of the destination's, said explicitly); raises 400."""
    q, body = call.params, call.body
    by_query = q.id is not None or q.all
    if body is not None and by_query:
        raise _bad("select in the query or in the body, not both")
    if body is not None:  # the model already refused neither and both
        return None if body.all else list(body.ids or [])
    if not by_query:
        raise _bad(f"name {_SELECT}")
    if q.id is not None and q.all:
        raise _bad("give ids or all, not both")
    return None if q.all else list(q.id or [])


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}),
                              content_type="application/json")


def add_queue_routes(api: Api, queues: QueueAdmin) -> None:
    def destination(params: DestinationPath) -> str:
        if not queues.known(params.destination):
            raise web.HTTPNotFound(
                text=json.dumps({"error": f"no destination {params.destination!r}"}),
                content_type="application/json")
        return params.destination

    async def overview(request: web.Request, call: Call[NoParams, None]) -> web.Response:
        return out.answer(out.Queues, {"queues": await queues.overview()})

    async def dead(request: web.Request, call: Call[DeadLetterList, None]) -> web.Response:
        name = destination(call.params)
        total, items = await queues.dead_letters(name, call.params.limit, call.params.offset)
        return out.answer(out.DeadLetterPage, {"total": total, "items": [
            dead_letter_json(d, call.params.payload) for d in items]})

    async def retry(request: web.Request,
                    call: Call[DeadLetterQuery, DeadLetterSelection]) -> web.Response:
        name = destination(call.params)
        return web.json_response({"retried": await queues.retry(name, selection(call))})

    async def purge(request: web.Request,
                    call: Call[DeadLetterQuery, DeadLetterSelection]) -> web.Response:
        name = destination(call.params)
        return web.json_response({"purged": await queues.purge(name, selection(call))})

    api.route("GET", "/api/v1/queues", overview,
              summary="Every destination's queue: pending, leased, dead, age of the oldest "
                      "undelivered row, circuit breaker state",
              responses={"200": "{queues: [...]}"}, response=out.Queues)
    api.route("GET", "/api/v1/queues/{destination}/dead", dead, params=DeadLetterList,
              summary="Dead letters of a destination, oldest first, with the last error",
              responses={"200": "{total, items}", "404": "unknown destination"},
              response=out.DeadLetterPage)
    api.route("DELETE", "/api/v1/queues/{destination}/dead", purge, params=DeadLetterQuery,
              body=DeadLetterSelection,
              summary=f"Purge dead letters: {_SELECT}",
              responses={"200": "{purged: n}", "404": "unknown destination"})
    api.route("POST", "/api/v1/queues/{destination}/retry", retry, params=DeadLetterQuery,
              body=DeadLetterSelection,
              summary=f"Send dead letters again (attempts start from zero): {_SELECT}",
              responses={"200": "{retried: n}", "404": "unknown destination"})
