"""Performed procedure steps (MPPS) in the admin API: ``/api/v1/procedure-steps`` (list) and
``/api/v1/procedure-steps/{sop_instance_uid}`` (one step with its attributes), with their
OpenAPI entries.

Handlers translate HTTP to :class:`~engine.procedure.service.ProcedureStepService` reads and
back; they hold no MPPS logic and never touch the store themselves (the server's rule).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from engine.procedure.model import PpsStatus
from engine.procedure.service import ProcedureStepService

_STEP_FIELDS = (
    "id, sop_instance_uid, status (IN PROGRESS, COMPLETED, DISCONTINUED), study_instance_uid, "
    "accession_number, patient_id, performed_procedure_step_id, modality, calling_ae, "
    "worklist_item_id (first linked item or null), worklist_item_ids, unscheduled (no "
    "worklist item matched), expected_instances (listed by a COMPLETED step), "
    "received_instances (of those, in the instance journal), complete_at (study marked "
    "complete from that evidence), created_at, updated_at")

PROCEDURE_STEP_OPENAPI: dict[str, Any] = {
    "/api/v1/procedure-steps": {"get": {
        "summary": "Modality Performed Procedure Steps, newest first: " + _STEP_FIELDS,
        "parameters": [
            {"name": "status", "in": "query", "schema": {
                "type": "string", "enum": [s.value for s in PpsStatus]}},
            {"name": "unscheduled", "in": "query", "schema": {"type": "boolean"},
             "description": "true: only steps no worklist item matched"},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 1000}},
            {"name": "offset", "in": "query", "schema": {"type": "integer"}}],
        "responses": {"200": {"description": "{total, items}"},
                      "400": {"description": "bad filter"}}}},
    "/api/v1/procedure-steps/{sop_instance_uid}": {"get": {
        "summary": "One step, with its full attributes as DICOM JSON (``dataset``)",
        "parameters": [{"name": "sop_instance_uid", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "responses": {"200": {"description": "the step"},
                      "404": {"description": "unknown"}}}},
}


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}),
                              content_type="application/json")


def add_procedure_step_routes(app: web.Application, service: ProcedureStepService) -> None:
    async def list_steps(request: web.Request) -> web.Response:
        q = request.query
        try:
            status = PpsStatus(q["status"]) if q.get("status") else None
            limit = min(int(q.get("limit", "100")), 1000)
            offset = max(int(q.get("offset", "0")), 0)
        except ValueError as exc:
            raise _bad(f"bad parameter: {exc}") from None
        unscheduled = None
        if "unscheduled" in q:
            unscheduled = q["unscheduled"].lower() in ("1", "true", "yes")
        total, steps = await service.list(status, unscheduled, limit, offset)
        return web.json_response({"total": total, "items": [s.to_json() for s in steps]})

    async def get_step(request: web.Request) -> web.Response:
        step = await service.get(request.match_info["sop_instance_uid"])
        if step is None:
            raise web.HTTPNotFound(text=json.dumps({"error": "no such procedure step"}),
                                   content_type="application/json")
        return web.json_response(step.to_json(dataset=True))

    app.router.add_get("/api/v1/procedure-steps", list_steps)
    app.router.add_get("/api/v1/procedure-steps/{sop_instance_uid}", get_step)
