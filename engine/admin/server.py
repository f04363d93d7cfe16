"""aiohttp admin server: ``/healthz``, ``/readyz``, ``/metrics``, ``/api/v1/`` and the operator
console at ``/`` (static files shipped in ``engine/admin/console``), over HTTP or HTTPS.

Readiness is computed from probes the engine passes in (store reachable, spool has room,
listeners up), so this module knows no engine internals beyond the store's read API. Who may call
what is :mod:`engine.admin.access` (users, sessions, tokens) and the role each route declares;
health and metrics stay open for probes and scrapers. Every route is declared through
:mod:`engine.admin.api` with the models of its parameters and body
(:mod:`engine.admin.models`): that layer validates each request before a handler runs and
generates the OpenAPI description from the same models.
It must never write to the store directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import ssl
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from importlib import resources
from typing import Any

from aiohttp import web

from engine import __version__
from engine.admin import responses as out
from engine.admin.access import Access
from engine.admin.api import MAX_BODY_KEY, Api, Call, NoParams, error_response, guard_middleware
from engine.admin.destinations import add_destination_routes
from engine.admin.models import (
    DryRunQuery,
    Hl7MessagesQuery,
    InstanceDryRunQuery,
    InstancePath,
    Paging,
    StepDryRunQuery,
    StudyInstancesQuery,
    WorklistDelete,
    WorklistItemPath,
    WorklistQuery,
)
from engine.admin.procedure_steps import add_procedure_step_routes
from engine.admin.queues import add_queue_routes
from engine.admin.recent_errors import add_error_routes
from engine.admin.roles import Role
from engine.admin.trace import add_trace_routes
from engine.durable.spool import Spool
from engine.durable.store import Hl7JournalRecord, Store, StoredInstance
from engine.egress.check import DestinationChecker
from engine.egress.queues import QueueAdmin
from engine.errors import ConfigError, InvalidInput
from engine.observability.logging import get_logger
from engine.observability.metrics import render
from engine.pipeline import dryrun
from engine.pipeline.rulesets import RulesManager
from engine.procedure.service import ProcedureStepService
from engine.records.worklist import StoredWorklistItem, WorklistItem, WorklistStatus
from engine.records.worklist_criteria import Column, Constraint, Criterion
from engine.settings import HttpSettings, SiteSettings
from engine.worklist.mapping import check_item
from engine.worklist.query import is_wildcard, parse_date_range
from engine.worklist.service import WorklistService, errors_from_json
from engine.worklist.types import Hl7Outcome

log = get_logger("engine.admin")

Probe = Callable[[], Awaitable[tuple[bool, str]]]

#: the largest upload a route takes (a DICOM file for a dry run)
_MAX_DRY_RUN_BODY = 256 * 1024 * 1024
_MAX_HL7_BODY = 1024 * 1024
_HL7_UPLOADS = {t: {"type": "string"} for t in (
    "x-application/hl7-v2+er7", "application/hl7-v2", "text/plain", "application/octet-stream")}
_DICOM_UPLOADS = {t: {"type": "string", "format": "binary"}
                  for t in ("application/dicom", "application/octet-stream")}


def worklist_json(stored: StoredWorklistItem) -> dict[str, Any]:
    return {"id": stored.id, **stored.item.to_json()}


def outcome_json(outcome: Hl7Outcome) -> dict[str, Any]:
    return {"ack_code": outcome.code, "text": outcome.text, "duplicate": outcome.duplicate,
            "journal_id": outcome.journal_id,
            "worklist_item_ids": list(outcome.worklist_item_ids),
            "errors": [_ack_error_json(e) for e in outcome.errors]}


def _ack_error_json(error: Any) -> dict[str, Any]:
    return {"segment": error.segment, "sequence": error.sequence, "field": error.field,
            "component": error.component, "code": int(error.code), "text": error.text,
            "severity": error.severity}


def hl7_record_json(rec: Hl7JournalRecord) -> dict[str, Any]:
    e = rec.entry
    return {"id": rec.id, "sending_application": e.sending_application,
            "sending_facility": e.sending_facility, "control_id": e.control_id,
            "message_type": e.message_type, "trigger_event": e.trigger_event,
            "peer_host": e.peer_host, "listener": e.listener, "received_at": e.received_at,
            "ack_code": rec.ack_code, "text": rec.text,
            "errors": [_ack_error_json(x) for x in errors_from_json(rec.errors_json)],
            "worklist_item_ids": list(rec.worklist_item_ids)}


def _dry_run_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).astimezone()
    except ValueError:
        raise _bad_request("time is ISO 8601, e.g. 2026-11-25T22:30") from None


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}),
                              content_type="application/json")


def worklist_filters(query: Mapping[str, str]
                     ) -> tuple[list[Constraint], list[WorklistStatus]]:
    """API query parameters → store constraints and statuses (``ValueError`` when bad)."""
    constraints: list[Constraint] = []
    for name, column in (("patient_id", Column.PATIENT_ID),
                         ("accession_number", Column.ACCESSION),
                         ("modality", Column.MODALITY), ("station_ae", Column.STATION_AE),
                         ("study_instance_uid", Column.STUDY_UID)):
        value = query.get(name, "").strip()
        if value:
            constraints.append(Criterion(column, "wildcard" if is_wildcard(value) else "eq",
                                         value=value))
    if query.get("date"):
        try:
            low, high = parse_date_range(query["date"])
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None
        constraints.append(Criterion(Column.SPS_DATE, "range", low=low, high=high))
    statuses = [WorklistStatus(s.strip().upper()) for s in query.get("status", "").split(",")
                if s.strip()]
    return constraints, statuses


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


#: the console's files (package data) by the name the page asks for
_CONSOLE_FILES = {"index.html": "text/html", "app.js": "text/javascript",
                  "style.css": "text/css"}
#: what the console's pages may load: only their own files, nothing inline, no framing
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
        "object-src 'none'")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class AdminServer:
    """The admin HTTP endpoint of one engine."""

    def __init__(self, host: str, port: int, store: Store, probes: dict[str, Probe],
                 token: str | None, worklist: WorklistService | None = None,
                 rules: RulesManager | None = None, queues: QueueAdmin | None = None,
                 procedure_steps: ProcedureStepService | None = None,
                 destinations: DestinationChecker | None = None,
                 http: HttpSettings | None = None, site: SiteSettings | None = None,
                 spool: Spool | None = None) -> None:
        self._http = http or HttpSettings()  # host and port are the arguments
        self._site = site or SiteSettings()
        self._tls_context: ssl.SSLContext | None = None
        self.access = Access(
            store, token, https=self._http.https,
            idle_seconds=self._http.session_idle_minutes * 60,
            max_failed=self._http.max_failed_logins,
            lockout_seconds=self._http.lockout_minutes * 60,
            console_allowed=self._http.https or _loopback(host)
            or self._http.console_over_plain_http,
            open_allowed=_loopback(host))
        self._destinations = destinations
        #: read only, for dry runs of received instances
        self._spool = spool
        self._procedure_steps = procedure_steps
        self._worklist = worklist
        self._rules = rules
        self._queues = queues
        self._host = host
        self._port = port
        self._store = store
        self._probes = probes
        self._token = token
        self._runner: web.AppRunner | None = None
        self.stopping = False
        self.app = self._build_app()

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._headers, guard_middleware,
                                           self.access.middleware],
                              client_max_size=_MAX_DRY_RUN_BODY)
        app[MAX_BODY_KEY] = _MAX_DRY_RUN_BODY
        api = self.api = Api(app)
        api.route("GET", "/healthz", self.healthz, summary="Process is alive",
                  responses={"200": "alive"}, role=Role.PUBLIC, response=out.Health)
        api.route("GET", "/readyz", self.readyz,
                  summary="Ready to accept work (stores, spool room, listeners)",
                  responses={"200": "ready", "503": "not ready, with reasons"},
                  role=Role.PUBLIC, response=out.Readiness)
        api.route("GET", "/metrics", self.metrics, summary="Prometheus text exposition",
                  responses={"200": "metrics"}, role=Role.PUBLIC)
        api.route("GET", "/api/v1/openapi.json", self.openapi,
                  summary="This description", responses={"200": "OpenAPI 3.1"},
                  role=Role.PUBLIC)
        api.route("GET", "/api/v1/console", self.console_settings,
                  summary="What the console shows beside the data: site name, time zone, "
                          "version", responses={"200": "{site, time_zone, version}"},
                  response=out.ConsoleSettings)
        self.access.add_routes(api)
        # The console's static files are pages, not API calls: plain routes, outside the
        # OpenAPI description.
        app.router.add_get("/", self.console_file)
        app.router.add_get("/console/{name}", self.console_file)
        api.route("GET", "/api/v1/instances", self.list_instances, params=Paging,
                  summary="Received instances, newest first",
                  responses={"200": "a page of instances"}, response=out.InstancePage)
        api.route("GET", "/api/v1/instances/{sop_instance_uid}", self.get_instance,
                  params=InstancePath, summary="The latest version of one instance",
                  responses={"200": "the instance", "404": "unknown"}, response=out.Instance)
        api.route("GET", "/api/v1/studies/{study_instance_uid}/instances", self.study_instances,
                  params=StudyInstancesQuery,
                  summary="The instances received for one study (every version), in arrival "
                          "order; page on with ?after=<the last id>",
                  responses={"200": "{items, next_after}"}, response=out.StudyInstances)
        if self._worklist is not None:
            api.route("GET", "/api/v1/worklist", self.list_worklist, params=WorklistQuery,
                      summary="Worklist items, newest first, with filters (wildcards * and ?)",
                      responses={"200": "{total, items}"}, response=out.WorklistPage)
            api.route("POST", "/api/v1/worklist", self.add_worklist, body_required=True,
                      uploads={"application/json": {"type": "object"}, **_HL7_UPLOADS},
                      max_body=_MAX_HL7_BODY,
                      summary="Add an item: a JSON item, or an HL7 v2 order message (ER7 "
                              "body, Content-Type x-application/hl7-v2+er7 or text/plain) "
                              "applied as if received over MLLP",
                      responses={"201": "item added (JSON)",
                                 "200": "HL7 accepted (AA): the outcome",
                                 "422": "HL7 refused (AE/AR) or invalid item"})
            api.route("GET", "/api/v1/worklist/{id}", self.get_worklist_item,
                      params=WorklistItemPath, pattern=r"/api/v1/worklist/{id:\d+}",
                      summary="One worklist item", responses={"200": "the item",
                                                              "404": "unknown"},
                      response=out.WorklistItemAnswer)
            api.route("DELETE", "/api/v1/worklist/{id}", self.delete_worklist_item,
                      params=WorklistDelete, pattern=r"/api/v1/worklist/{id:\d+}",
                      summary="Cancel an item (it vanishes from C-FIND answers); "
                              "?purge=true deletes the row",
                      responses={"200": "cancelled or deleted", "404": "unknown",
                                 "409": "already completed"})
            api.route("GET", "/api/v1/hl7/messages", self.list_hl7_messages,
                      params=Hl7MessagesQuery,
                      summary="Journal of received HL7 messages, newest first",
                      responses={"200": "{total, items}"}, response=out.Hl7MessagePage)
        if self._rules is not None:
            api.route("GET", "/api/v1/routes", self.routes_status,
                      summary="The ruleset in use: routes in evaluation order, profiles, load "
                              "and reload status, routing counts and open series/study groups",
                      responses={"200": "ruleset status"})
            api.route("POST", "/api/v1/routes/test", self.routes_test, params=DryRunQuery,
                      uploads=_DICOM_UPLOADS, body_required=True, max_body=_MAX_DRY_RUN_BODY,
                      summary="Dry run: which routes a DICOM object matches and why, the "
                              "before/after diff of each morph, the destinations. Nothing is "
                              "stored or sent.",
                      responses={"200": "the dry run (routes, decisions, morphs)"},
                      response=out.DryRun)
            if self._spool is not None:
                api.route("GET", "/api/v1/routes/test/instance/{sop_instance_uid}",
                          self.routes_test_instance, params=InstanceDryRunQuery,
                          summary="Dry run of a received instance (its latest version, read "
                                  "from the spool) with the rules in use and the calling AE, "
                                  "called AE and address it came with: which routes match and "
                                  "why, and the diff of each morph. Nothing is stored or sent.",
                          responses={"200": "the dry run (routes, decisions, morphs, instance)",
                                     "404": "unknown instance",
                                     "409": "its spooled file no longer matches its checksum",
                                     "410": "its spooled file is gone (retention)"},
                          response=out.DryRun)
            api.route("POST", "/api/v1/routes/test/procedure-step", self.routes_test_step,
                      params=StepDryRunQuery, body_required=True, max_body=_MAX_HL7_BODY,
                      uploads={"application/dicom+json": {"type": "object"},
                               "application/json": {"type": "object"}},
                      summary="Dry run of an MPPS event: which procedure_step routes match "
                              "and why, and the messages they would queue (HL7 status update, "
                              "FHIR Task, MPPS forward). Nothing is stored or sent.",
                      responses={"200": "the dry run (routes, decisions, messages)"},
                      response=out.DryRun)
            api.route("GET", "/api/v1/routes/unmatched", self.routes_unmatched, params=Paging,
                      summary="Instances no route matched (kept in the spool and journal), "
                              "newest first", responses={"200": "{total, items}"},
                      response=out.InstancePage)
            api.route("POST", "/api/v1/routes/reload", self.routes_reload,
                      summary="Reload the routes folder now (as SIGHUP does); an invalid "
                              "folder keeps the rules in use",
                      responses={"200": "reloaded",
                                 "422": "invalid; previous rules kept, problems listed"})
        if self._queues is not None:
            add_queue_routes(api, self._queues)  # delivery queues and dead letters
        if self._procedure_steps is not None:
            add_procedure_step_routes(api, self._procedure_steps)  # MPPS
        if self._destinations is not None:
            add_destination_routes(api, self._destinations)  # list and check
        add_trace_routes(api, self._store)  # one order end to end
        add_error_routes(api, self._store)  # the Overview's recent errors
        self._openapi_doc: dict[str, Any] | None = None
        return app

    @web.middleware
    async def _headers(self, request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
        """Browser hardening on every answer (the console's pages and the API alike)."""
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        # same-origin, not no-referrer: with no-referrer browsers send "Origin: null" on form
        # posts, and the console's own origin must stay recognisable to the origin check.
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Content-Security-Policy", _CSP)
        response.headers.setdefault("Cache-Control", "no-store")
        if self._http.https:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        if isinstance(response, web.HTTPException):
            raise response
        return response

    def _load_tls(self) -> ssl.SSLContext:
        http = self._http
        assert http.tls_cert is not None and http.tls_key is not None
        context = self._tls_context or ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(http.tls_cert, http.tls_key)
        return context

    def reload_tls(self) -> bool:
        """Re-read the certificate and key (SIGHUP): new connections get them; a bad file
        keeps the ones in use."""
        if not self._http.https or self._tls_context is None:
            return False
        try:
            self._load_tls()
        except (OSError, ssl.SSLError) as exc:
            log.error("admin.tls_reload_failed", cert=str(self._http.tls_cert), error=str(exc))
            return False
        log.info("admin.tls_reloaded", cert=str(self._http.tls_cert))
        return True

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        if not _loopback(self._host) and not self._token and \
                await self._store.count_users() == 0:
            raise ConfigError(f"the admin server would listen on {self._host!r}, beyond "
                              "loopback, with no user and no http.token: add an admin first "
                              "(radflow users add NAME --role admin)")
        if self._http.https:
            try:
                self._tls_context = self._load_tls()
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"http.tls_cert/http.tls_key cannot be loaded: {exc}"
                                  ) from None
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._tls_context)
        await site.start()
        log.info("admin.listening", host=self._host, port=self._port,
                 https=self._tls_context is not None,
                 console=self.access.console_allowed)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def healthz(self, request: web.Request, call: Call[NoParams, None]) -> web.Response:
        return out.answer(out.Health, {"status": "alive", "version": __version__})

    async def readyz(self, request: web.Request, call: Call[NoParams, None]) -> web.Response:
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
        return out.answer(out.Readiness, body, status=200 if ready else 503)

    async def metrics(self, request: web.Request, call: Call[NoParams, None]) -> web.Response:
        return web.Response(body=render(), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def openapi(self, request: web.Request, call: Call[NoParams, None]) -> web.Response:
        if self._openapi_doc is None:
            # Built on first request, off the loop: generating every model's JSON schema takes
            # a noticeable fraction of a second.
            self._openapi_doc = await asyncio.to_thread(self.openapi_document)
        return web.json_response(self._openapi_doc)

    def openapi_document(self) -> dict[str, Any]:
        """The OpenAPI description, generated from the routes' models."""
        return self.api.openapi({"title": "radflow admin API", "version": __version__})

    async def console_settings(self, request: web.Request, call: Call[NoParams, None]
                               ) -> web.Response:
        return out.answer(out.ConsoleSettings, {"site": self._site.name,
                                                "time_zone": self._site.time_zone,
                                                "version": __version__})

    async def console_file(self, request: web.Request) -> web.StreamResponse:
        if not self.access.console_allowed:
            return web.Response(status=403, content_type="text/plain", text=(
                "The radflow console is not served over plain HTTP beyond loopback: set "
                "http.tls_cert and http.tls_key (HTTPS), or http.console_over_plain_http: true "
                "if the site accepts passwords in clear on this network.\n"))
        name = request.match_info.get("name", "index.html")
        ctype = _CONSOLE_FILES.get(name)
        if ctype is None:
            raise web.HTTPNotFound()
        data = resources.files("engine.admin").joinpath("console", name).read_bytes()
        return web.Response(body=data, content_type=ctype, charset="utf-8")

    async def list_instances(self, request: web.Request, call: Call[Paging, None]
                             ) -> web.Response:
        items = await self._store.list_instances(call.params.limit, call.params.offset)
        total = await self._store.count_instances()
        return out.answer(out.InstancePage,
                          {"total": total, "items": [instance_json(i) for i in items]})

    async def get_instance(self, request: web.Request, call: Call[InstancePath, None]
                           ) -> web.Response:
        item = await self._store.get_instance(call.params.sop_instance_uid)
        if item is None:
            return web.json_response({"error": "not found"}, status=404)
        return out.answer(out.Instance, instance_json(item))

    async def study_instances(self, request: web.Request,
                              call: Call[StudyInstancesQuery, None]) -> web.Response:
        q = call.params
        items = await self._store.instances_after(q.after, q.limit, q.study_instance_uid)
        return out.answer(out.StudyInstances, {
            "items": [instance_json(i) for i in items],
            "next_after": items[-1].id if len(items) == q.limit else None})

    # --- worklist ----------------------------------------------------------------------------
    def _wl(self) -> WorklistService:
        assert self._worklist is not None  # routes exist only with a worklist
        return self._worklist

    async def list_worklist(self, request: web.Request, call: Call[WorklistQuery, None]
                            ) -> web.Response:
        q = call.params
        filters = {k: v for k, v in q.model_dump(exclude={"limit", "offset"}).items()
                   if v is not None}
        try:
            constraints, statuses = worklist_filters(filters)
        except ValueError as exc:
            raise _bad_request(str(exc)) from None
        total, items = await self._wl().list_items(constraints, statuses, q.limit, q.offset)
        return out.answer(out.WorklistPage,
                          {"total": total, "items": [worklist_json(i) for i in items]})

    async def get_worklist_item(self, request: web.Request,
                                call: Call[WorklistItemPath, None]) -> web.Response:
        stored = await self._wl().get_item(call.params.id)
        if stored is None:
            return web.json_response({"error": "not found"}, status=404)
        return out.answer(out.WorklistItemAnswer, worklist_json(stored))

    async def add_worklist(self, request: web.Request, call: Call[NoParams, None]
                           ) -> web.Response:
        raw = call.raw or b""
        if call.content_type == "application/json":
            try:
                data = json.loads(raw)  # depth already bounded by the API layer
                if not isinstance(data, dict):
                    raise ValueError("the body must be a JSON object")
                data.pop("id", None)
                data.pop("created_at", None)
                data.pop("updated_at", None)
                item = WorklistItem.from_json(data)
            except (ValueError, TypeError) as exc:
                return web.json_response({"error": f"invalid item: {exc}"}, status=422)
            problems = check_item(item)
            if problems:
                return web.json_response({"error": "invalid item", "problems": problems},
                                         status=422)
            stored = await self._wl().add_item(item)
            return web.json_response(worklist_json(stored), status=201)
        # Newlines from a file or curl stand for HL7's segment separator.
        raw = raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
        received = self._wl().received(raw, peer_host=request.remote or "", listener="http")
        (outcome,) = await self._wl().accept_hl7_batch([received])
        return web.json_response(outcome_json(outcome),
                                 status=200 if outcome.code == "AA" else 422)

    async def delete_worklist_item(self, request: web.Request,
                                   call: Call[WorklistDelete, None]) -> web.Response:
        item_id = call.params.id
        if call.params.purge:
            if not await self._wl().delete_item(item_id):
                return web.json_response({"error": "not found"}, status=404)
            return web.json_response({"id": item_id, "deleted": True})
        try:
            stored = await self._wl().cancel_item(item_id)
        except InvalidInput as exc:
            return web.json_response({"error": str(exc)}, status=409)
        if stored is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response(worklist_json(stored))

    async def list_hl7_messages(self, request: web.Request,
                                call: Call[Hl7MessagesQuery, None]) -> web.Response:
        q = call.params
        codes = [c.strip().upper()
                 for c in (q.ack or "").replace("|", ",").split(",") if c.strip()]
        total, records = await self._wl().hl7_messages(codes or None, q.limit, q.offset)
        return out.answer(out.Hl7MessagePage,
                          {"total": total, "items": [hl7_record_json(r) for r in records]})

    # --- routes ------------------------------------------------------------------------------
    def _rm(self) -> RulesManager:
        assert self._rules is not None  # routes exist only with a rules manager
        return self._rules

    async def routes_status(self, request: web.Request, call: Call[NoParams, None]
                            ) -> web.Response:
        body = self._rm().status()
        body["counts"] = await self._store.routing_counts()
        body["open_groups"] = [
            {"id": g.id, "route": g.route, "level": g.level, "key": g.key,
             "instances": g.members, "fires_at": g.deadline}
            for g in await self._store.open_routing_groups()]
        return web.json_response(body)

    async def routes_test(self, request: web.Request, call: Call[DryRunQuery, None]
                          ) -> web.Response:
        q = call.params
        data = call.raw or b""
        if not data:
            raise _bad_request("send a DICOM file as the request body")
        rules = self._rm()
        context = dryrun.context_for(
            calling_ae=q.calling_ae, called_ae=q.called_ae,
            source_ip=q.source_ip if q.source_ip is not None else request.remote or "",
            when=_dry_run_time(q.time))
        # Parsing and morphing a large object takes longer than the loop may be held.
        run = await asyncio.to_thread(dryrun.dry_run, data, rules.current, rules.keys, context,
                                      q.name)
        return out.answer(out.DryRun, dryrun.to_json(run), status=400 if run.error else 200)

    async def routes_test_instance(self, request: web.Request,
                                   call: Call[InstanceDryRunQuery, None]) -> web.Response:
        q = call.params
        item = await self._store.get_instance(q.sop_instance_uid)
        if item is None:
            return error_response(404, f"no instance {q.sop_instance_uid} was received")
        assert self._spool is not None  # the route exists only with a spool
        rec = item.record
        try:
            data = await asyncio.to_thread(self._spool.read, rec.spool_path)
        except OSError:
            return error_response(410, f"the spooled file of {q.sop_instance_uid} is gone "
                                       "(removed by retention)")
        if len(data) != rec.size_bytes or hashlib.sha256(data).hexdigest() != rec.sha256:
            return error_response(409, f"the spooled file of {q.sop_instance_uid} no longer "
                                       "matches the checksum recorded when it was received")
        rules = self._rm()
        # The context it came with: rules on calling AE, called AE or address match as then.
        context = dryrun.context_for(calling_ae=rec.calling_ae, called_ae=rec.called_ae,
                                     source_ip=rec.peer_host, when=_dry_run_time(q.time))
        run = await asyncio.to_thread(dryrun.dry_run, data, rules.current, rules.keys, context,
                                      f"instance {rec.sop_instance_uid}")
        body = dryrun.to_json(run)
        body["instance"] = instance_json(item)
        return out.answer(out.DryRun, body, status=400 if run.error else 200)

    async def routes_test_step(self, request: web.Request, call: Call[StepDryRunQuery, None]
                               ) -> web.Response:
        q = call.params
        data = call.raw or b""
        if not data:
            raise _bad_request("send the step's MPPS attributes as DICOM JSON")
        context = dryrun.context_for(calling_ae=q.calling_ae, when=_dry_run_time(q.time))
        run = dryrun.dry_run_step(data, self._rm().current, context, status=q.status or None,
                                  label=q.name)
        return out.answer(out.DryRun, dryrun.to_json(run), status=400 if run.error else 200)

    async def routes_unmatched(self, request: web.Request, call: Call[Paging, None]
                               ) -> web.Response:
        total, items = await self._store.unmatched_instances(call.params.limit,
                                                             call.params.offset)
        return out.answer(out.InstancePage,
                          {"total": total, "items": [instance_json(i) for i in items]})

    async def routes_reload(self, request: web.Request, call: Call[NoParams, None]
                            ) -> web.Response:
        rules = self._rm()
        ok = await rules.reload("api")
        body = {"ok": ok, "ruleset": rules.current.version,
                "problems": [str(p) for p in rules.last_failure or []]}
        return web.json_response(body, status=200 if ok else 422)
