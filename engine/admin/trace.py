"""Following one order in the admin API: ``GET /api/v1/trace?accession=…|study=…|patient=…``
answers one timeline (order messages, worklist states, MPPS steps, instances received, routes
fired, deliveries with attempts and outcome), declared with its parameter model.

The handler hands the one key it is given to the store's trace query
(:mod:`engine.durable.trace`); it holds no SQL.
"""

from __future__ import annotations

import json

from aiohttp import web
from pydantic import Field

from engine.admin import responses as out
from engine.admin.api import Api, Call
from engine.admin.models import Params, Text
from engine.durable.store import Store
from engine.durable.trace import TraceBy, trace_json


class TraceQuery(Params):
    accession: Text | None = Field(default=None, description="Accession Number")
    study: Text | None = Field(default=None, description="Study Instance UID")
    patient: Text | None = Field(default=None, description="Patient ID")


def add_trace_routes(api: Api, store: Store) -> None:
    async def trace(request: web.Request, call: Call[TraceQuery, None]) -> web.Response:
        q = call.params
        keys: tuple[tuple[TraceBy, str | None], ...] = (
            ("accession", q.accession), ("study", q.study), ("patient", q.patient))
        given = [(by, v) for by, v in keys if v]
        if len(given) != 1:
            # "All" is never the meaning of a missing key: exactly one is required.
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "give exactly one of accession, study, patient"}),
                content_type="application/json")
        by, value = given[0]
        return out.answer(out.Trace, trace_json(by, value, await store.trace(by, value)))

    api.route("GET", "/api/v1/trace", trace, params=TraceQuery,
              summary="One order, study or patient end to end: HL7 messages, worklist items, "
                      "MPPS steps, instances received (count, AEs), routes fired, deliveries "
                      "(rows, attempts, outcome), as one timeline, oldest first",
              responses={"200": "{by, value, found, truncated, keys, timeline}",
                         "400": "not exactly one of accession, study, patient"},
              response=out.Trace)
