"""Destinations in the admin API: ``GET /api/v1/destinations`` (what is configured) and
``POST /api/v1/destinations/{name}/check`` (reach it now: latency and the exact error),
declared with their request models.

Handlers translate HTTP to :class:`~engine.egress.check.DestinationChecker` calls and back; they
hold no protocol code of their own.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from aiohttp import web

from engine.admin import responses as out
from engine.admin.api import Api, Call, NoParams
from engine.admin.models import Params, Text
from engine.egress.check import DestinationChecker


class DestinationName(Params):
    name: Text


def add_destination_routes(api: Api, checker: DestinationChecker) -> None:
    async def listing(request: web.Request, call: Call[NoParams, None]) -> web.Response:
        return out.answer(out.Destinations,
                          {"destinations": [asdict(d) for d in checker.list()]})

    async def check(request: web.Request, call: Call[DestinationName, None]) -> web.Response:
        name = call.params.name
        if not checker.known(name):
            raise web.HTTPNotFound(text=json.dumps({"error": f"no destination {name!r}"}),
                                   content_type="application/json")
        return web.json_response((await checker.check(name)).to_json())

    api.route("GET", "/api/v1/destinations", listing,
              summary="The configured destinations: name, type, target and whether TLS is used",
              responses={"200": "{destinations: [...]}"}, response=out.Destinations)
    api.route("POST", "/api/v1/destinations/{name}/check", check, params=DestinationName,
              summary="Reach a destination now as a delivery would: C-ECHO (dimse, mpps), a "
                      "TCP and TLS connection (hl7), an authenticated GET of a QIDO-RS search "
                      "(dicomweb) or of /metadata (fhir). Nothing is sent from the queue.",
              responses={"200": "{destination, type, target, ok, seconds, detail, reason}: "
                                "ok false carries the exact error in detail",
                         "404": "unknown destination"})
