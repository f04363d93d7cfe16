"""Performed procedure steps (MPPS) in the admin API: ``/api/v1/procedure-steps`` (list) and
``/api/v1/procedure-steps/{sop_instance_uid}`` (one step with its attributes), declared with
their request models.

Handlers translate HTTP to :class:`~engine.procedure.service.ProcedureStepService` reads and
back; they hold no MPPS logic and never touch the store themselves (the server's rule).
"""

from __future__ import annotations

import json

from aiohttp import web
from pydantic import Field

from engine.admin import responses as out
from engine.admin.api import Api, Call
from engine.admin.models import InstancePath, Paging
from engine.procedure.service import ProcedureStepService
from engine.records.procedure_step import PpsStatus

_STEP_FIELDS = (
    "id, sop_instance_uid, status (IN PROGRESS, COMPLETED, DISCONTINUED), study_instance_uid, "
    "accession_number, patient_id, performed_procedure_step_id, modality, calling_ae, "
    "worklist_item_id (first linked item or null), worklist_item_ids, unscheduled (no "
    "worklist item matched), expected_instances (listed by a COMPLETED step), "
    "received_instances (of those, in the instance journal), complete_at (study marked "
    "complete from that evidence), created_at, updated_at")


class StepQuery(Paging):
    status: PpsStatus | None = None
    unscheduled: bool | None = Field(default=None,
                                     description="true: only steps no worklist item matched")


def add_procedure_step_routes(api: Api, service: ProcedureStepService) -> None:
    async def list_steps(request: web.Request, call: Call[StepQuery, None]) -> web.Response:
        q = call.params
        total, steps = await service.list(q.status, q.unscheduled, q.limit, q.offset)
        return out.answer(out.ProcedureStepPage,
                          {"total": total, "items": [s.to_json() for s in steps]})

    async def get_step(request: web.Request, call: Call[InstancePath, None]) -> web.Response:
        step = await service.get(call.params.sop_instance_uid)
        if step is None:
            raise web.HTTPNotFound(text=json.dumps({"error": "no such procedure step"}),
                                   content_type="application/json")
        return out.answer(out.ProcedureStep, step.to_json(dataset=True))

    api.route("GET", "/api/v1/procedure-steps", list_steps, params=StepQuery,
              summary="Modality Performed Procedure Steps, newest first: " + _STEP_FIELDS,
              responses={"200": "{total, items}"}, response=out.ProcedureStepPage)
    api.route("GET", "/api/v1/procedure-steps/{sop_instance_uid}", get_step,
              params=InstancePath,
              summary="One step, with its full attributes as DICOM JSON (``dataset``)",
              responses={"200": "the step", "404": "unknown"}, response=out.ProcedureStep)
