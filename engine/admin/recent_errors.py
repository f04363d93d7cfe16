"""The most recent errors in the admin API: ``GET /api/v1/errors``, the list the console's
Overview shows (refused associations, C-STORE failures, HL7 refusals, delivery failures and
dead letters, integrity failures, rule reload failures, audit repository errors, internal
errors), newest first, shared by every worker and node on the database.

The notes come from :mod:`engine.observability.recent_errors` (fed by the stages' log lines)
through the store; this module only reads them and answers with its response models. It must
not write anything.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from engine.admin.api import Api, Call, model_response
from engine.admin.models import Params
from engine.durable.store import Store
from engine.observability.recent_errors import KINDS, ErrorNote

ErrorKind = Literal["association_refused", "c_store_failed", "hl7_refused",
                    "hl7_connection_refused", "delivery_failed", "dead_letter",
                    "integrity_failed", "rules_reload_failed", "audit_failed", "error"]


class ErrorsQuery(Params):
    limit: Annotated[int, Field(ge=1, le=500, description="at most 500 (default 50)")] = 50
    kind: list[ErrorKind] | None = Field(
        default=None, min_length=1, max_length=len(KINDS),
        description="only these kinds (repeat or comma-separate; default: every kind)")


class RecentError(BaseModel):
    id: int
    kind: ErrorKind
    kind_label: str = Field(description="the kind as the console shows it")
    subject: str = Field(description="what it concerns: calling AE, destination, listener, "
                                     "message type, or the log event of an internal error")
    reason: str
    peer_host: str = Field(description="the remote address, when there is one")
    count: int = Field(description="how many times it happened between first_at and last_at")
    first_at: str = Field(description="UTC, ISO 8601")
    last_at: str = Field(description="UTC, ISO 8601")
    node: str = Field(description="the node that saw it last")
    event: str = Field(description="the log event to look for in the node's log")


class RecentErrors(BaseModel):
    items: list[RecentError]


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def error_model(note: ErrorNote) -> RecentError:
    kind = note.kind if note.kind in KINDS else "error"
    return RecentError(id=note.id, kind=kind, kind_label=KINDS[kind],  # type: ignore[arg-type]
                       subject=note.subject, reason=note.reason, peer_host=note.peer_host,
                       count=note.count, first_at=_iso(note.first_at),
                       last_at=_iso(note.last_at), node=note.node, event=note.event)


def add_error_routes(api: Api, store: Store) -> None:
    async def errors(request: web.Request, call: Call[ErrorsQuery, None]) -> web.Response:
        q = call.params
        notes = await store.recent_errors(q.limit, list(q.kind) if q.kind else None)
        return model_response(RecentErrors(items=[error_model(n) for n in notes]))

    api.route("GET", "/api/v1/errors", errors, params=ErrorsQuery, response=RecentErrors,
              summary="The most recent errors, newest first: refused associations, C-STORE "
                      "failures, refused HL7 messages and connections, delivery failures, new "
                      "dead letters, integrity failures, rule reload failures, audit "
                      "repository errors, internal errors. Repeats within five minutes are "
                      "counted into one entry.",
              responses={"200": "{items}"})
