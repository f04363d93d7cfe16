"""The admin API's one validation layer: every route is declared here with the pydantic models
of its parameters and body, and the OpenAPI description is generated from the same models.

A route is added with :meth:`Api.route`; its handler receives a :class:`Call` holding the
validated parameters (path and query, one model with ``extra="forbid"``, so a misspelt
parameter is an error rather than a silently ignored filter) and the validated JSON body (parsed
by pydantic in strict mode: ``{"ids": 20601}`` is not a list of ids, and a 100,000-deep array
hits the parser's recursion limit instead of Python's). Anything that does not validate is 400
and the handler never runs; a body with the wrong content type is 415, an oversized one 413.
Upload routes (DICOM files, HL7 messages) declare the content types they take and get the raw
bytes, size-bounded.

:func:`guard_middleware` applies to every request, routes declared here or not: mutating
methods from another web origin (``Origin`` / ``Sec-Fetch-Site``) are refused with 403, so a
web page in the operator's browser cannot drive the API, and a declared ``Content-Length`` over
the server's limit is 413 before anything is read. This module holds no handler logic and
must not touch the store.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, get_args, get_origin
from urllib.parse import urlsplit

import pydantic_core
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.json_schema import JsonSchemaMode

from engine.admin.roles import PRINCIPAL_KEY, Principal, Role
from engine.observability.logging import get_logger

log = get_logger("engine.admin")

P = TypeVar("P", bound=BaseModel)
B = TypeVar("B")

#: request bodies larger than this are refused (413) unless a route allows more (uploads)
DEFAULT_MAX_BODY = 1024 * 1024
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: statuses whose body is always :data:`_ERROR_SCHEMA` (a 422 may carry an outcome instead)
_REFUSALS = frozenset({"400", "401", "403", "404", "409", "413", "415", "423"})
#: the body of every refusal
_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "string"},
                   "problems": {"type": "array", "items": {"type": "object"}}}}
_JSON = "application/json"
_REF = "#/components/schemas/{model}"


class NoParams(BaseModel):
    """A route without path or query parameters (any given is an error)."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True, slots=True)
class Call(Generic[P, B]):
    """What a handler gets: validated parameters, the validated JSON body (None when the
    route takes none or the caller sent none), or an upload's raw bytes."""

    params: P
    body: B | None = None
    raw: bytes | None = None
    content_type: str = ""


Handler = Callable[[web.Request, Call[Any, Any]], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str  # the OpenAPI form: /api/v1/worklist/{id}
    summary: str
    params: type[BaseModel]
    body: type[BaseModel] | None
    body_required: bool
    uploads: Mapping[str, dict[str, Any]]  # content type -> schema, for raw bodies
    max_body: int
    responses: Mapping[str, str]
    role: Role = Role.VIEWER
    tags: tuple[str, ...] = ()
    #: the model of the success answer (200/201), described in OpenAPI
    response: type[BaseModel] | None = None


def model_response(answer: BaseModel, status: int = 200) -> web.Response:
    """A JSON answer built from a response model (what the OpenAPI description promises)."""
    return web.Response(body=answer.model_dump_json(), status=status,
                        content_type="application/json")


def error_response(status: int, message: str, problems: Sequence[Mapping[str, Any]] = ()
                   ) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if problems:
        body["problems"] = list(problems)
    return web.json_response(body, status=status)


def _problems(exc: ValidationError) -> list[dict[str, Any]]:
    # Without the input: it may be large, and the caller has it already.
    return [{"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)]


def _is_list(annotation: Any) -> bool:
    if get_origin(annotation) in (list, tuple, set, frozenset):
        return True
    return any(_is_list(a) for a in get_args(annotation))


def parameter_input(model: type[BaseModel], request: web.Request
                    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Path and query values for ``model``: list fields gather repeated and comma-separated
    values; a repeated single-valued parameter is a problem, not "the last one wins"."""
    values: dict[str, Any] = dict(request.match_info)
    problems: list[dict[str, Any]] = []
    for name in dict.fromkeys(request.query.keys()):
        given = request.query.getall(name)
        spec = model.model_fields.get(name)
        if spec is not None and _is_list(spec.annotation):
            values[name] = [v.strip() for g in given for v in g.split(",") if v.strip()]
        elif len(given) > 1:
            problems.append({"loc": name, "msg": "given more than once"})
        else:
            values[name] = given[0]
    return values, problems


class Api:
    """The declared routes of one admin server, and the OpenAPI description made from them."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self.endpoints: list[Endpoint] = []

    def route(self, method: str, path: str, handler: Handler, *, summary: str,
              params: type[BaseModel] = NoParams, body: type[BaseModel] | None = None,
              body_required: bool = False,
              uploads: Mapping[str, dict[str, Any]] | None = None,
              max_body: int = DEFAULT_MAX_BODY, responses: Mapping[str, str] | None = None,
              pattern: str | None = None, role: Role | None = None,
              response: type[BaseModel] | None = None) -> None:
        """Declare and add one route. ``pattern`` is aiohttp's path when it differs from the
        OpenAPI one (a regex on a path parameter). ``role`` is the least role the caller
        needs: by default ``viewer`` to read and ``operator`` to change; checked before the
        request is validated, so an unauthorised caller learns nothing from it. ``response``
        is the model of the success answer (200 or 201): the handler builds its answer with
        it, and the OpenAPI description states its schema."""
        method = method.upper()
        if role is None:
            role = Role.OPERATOR if method in MUTATING else Role.VIEWER
        endpoint = Endpoint(method, path, summary, params, body, body_required,
                            dict(uploads or {}), max_body, dict(responses or {"200": "ok"}),
                            role, response=response)
        self.endpoints.append(endpoint)

        async def validated(request: web.Request) -> web.StreamResponse:
            refused = _check_role(endpoint, request)
            if refused is not None:
                return refused
            call = await _validate(endpoint, request)
            if isinstance(call, web.StreamResponse):
                return call
            return await handler(request, call)

        self._app.router.add_route(endpoint.method, pattern or path, validated)

    def openapi(self, info: Mapping[str, Any]) -> dict[str, Any]:
        schemas: dict[str, Any] = {}
        paths: dict[str, dict[str, Any]] = {}
        ref = _REF
        for ep in self.endpoints:
            op: dict[str, Any] = {"summary": ep.summary}
            schema = _schema(ep.params)
            schemas.update(schema.pop("$defs", {}))
            required = set(schema.get("required", []))
            parameters = []
            for name, prop in schema.get("properties", {}).items():
                where = "path" if "{" + name + "}" in ep.path else "query"
                entry: dict[str, Any] = {"name": name, "in": where,
                                         "required": where == "path" or name in required,
                                         "schema": {k: v for k, v in prop.items()
                                                    if k != "description"}}
                if "description" in prop:
                    entry["description"] = prop["description"]
                if prop.get("type") == "array":
                    entry.update(style="form", explode=True)
                parameters.append(entry)
            if parameters:
                op["parameters"] = parameters
            content: dict[str, Any] = {}
            if ep.body is not None:
                body_schema = _schema(ep.body)
                schemas.update(body_schema.pop("$defs", {}))
                schemas[ep.body.__name__] = body_schema
                content[_JSON] = {"schema": {"$ref": ref.format(model=ep.body.__name__)}}
            for ctype, upload_schema in ep.uploads.items():
                content[ctype] = {"schema": upload_schema}
            if content:
                op["requestBody"] = {"required": ep.body_required, "content": content}
            responses: dict[str, dict[str, Any]] = {
                code: {"description": text} for code, text in ep.responses.items()}
            if parameters or content:
                responses.setdefault("400", {"description": "invalid parameters or body"})
            if content:
                responses.setdefault("413", {"description": "body too large"})
                responses.setdefault("415", {"description": "unsupported content type"})
            if ep.method in MUTATING:
                responses.setdefault("403", {"description": "sent from another web origin"})
            op["x-required-role"] = ep.role.value
            if ep.role is not Role.PUBLIC:
                op["description"] = f"Needs the {ep.role.value} role (or higher)."
                responses.setdefault("401", {"description": "not logged in, token missing or "
                                                            "wrong"})
                responses.setdefault("403", {"description": f"needs the {ep.role.value} role"
                                                            + (", or the CSRF token is missing"
                                                               if ep.method in MUTATING
                                                               else "")})
                op["security"] = [{"bearer": []}, {"session": []}]
            success: dict[str, Any] = {"type": "object"}
            if ep.response is not None:
                answer_schema = _schema(ep.response, "serialization")
                schemas.update(answer_schema.pop("$defs", {}))
                schemas[ep.response.__name__] = answer_schema
                success = {"$ref": ref.format(model=ep.response.__name__)}
            if ep.path != "/metrics":
                # Every answer but the Prometheus text is a JSON object; refusals carry
                # ``error`` (and ``problems`` for invalid input); a success answer has the
                # route's response model when it declares one.
                for code, response in responses.items():
                    if code in _REFUSALS:
                        schema_ref: dict[str, Any] = {"$ref": ref.format(model="Error")}
                    elif code in ("200", "201"):
                        schema_ref = success
                    else:
                        schema_ref = {"type": "object"}
                    response["content"] = {_JSON: {"schema": schema_ref}}
            op["responses"] = responses
            paths.setdefault(ep.path, {})[ep.method.lower()] = op
        components: dict[str, Any] = {
            "schemas": {**schemas, "Error": _ERROR_SCHEMA},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "radflow_session",
                            "description": "console session (HTTPS: __Host-radflow_session); "
                                           "changes also need the X-CSRF-Token header"}}}
        return {"openapi": "3.1.0", "info": dict(info), "paths": paths,
                "components": components}


@functools.cache
def _schema_of(model: type[BaseModel], mode: JsonSchemaMode) -> str:
    return json.dumps(model.model_json_schema(ref_template=_REF, mode=mode))


def _schema(model: type[BaseModel], mode: JsonSchemaMode = "validation") -> dict[str, Any]:
    """A fresh copy of ``model``'s JSON schema (generated once per model and process):
    ``validation`` for what a request may hold, ``serialization`` for what an answer holds."""
    loaded: dict[str, Any] = json.loads(_schema_of(model, mode))
    return loaded


def _check_role(ep: Endpoint, request: web.Request) -> web.Response | None:
    if ep.role is Role.PUBLIC:
        return None
    who = request.get(PRINCIPAL_KEY)
    if not isinstance(who, Principal):
        return web.json_response({"error": "log in or send Authorization: Bearer <token>"},
                                 status=401, headers={"WWW-Authenticate": "Bearer"})
    if not who.role.allows(ep.role):
        log.warning("admin.role_refused", user=who.name, role=who.role.value,
                    needed=ep.role.value, method=request.method, path=request.path,
                    peer=request.remote)
        return error_response(403, f"needs the {ep.role.value} role (you are "
                                   f"{who.role.value})")
    return None


async def _read_bounded(request: web.Request, limit: int) -> bytes | web.Response:
    # StreamReader.read(n) returns what has arrived, up to n: gather until the end or the limit.
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        size += len(chunk)
    return error_response(413, f"body too large (at most {limit} bytes)")


async def _validate(ep: Endpoint, request: web.Request) -> Call[Any, Any] | web.Response:
    values, problems = parameter_input(ep.params, request)
    if problems:
        return error_response(400, "invalid parameters", problems)
    try:
        params = ep.params.model_validate(values)
    except ValidationError as exc:
        return error_response(400, "invalid parameters", _problems(exc))
    if not request.body_exists:
        if ep.body_required:
            return error_response(400, "this call needs a request body")
        return Call(params)
    ctype = request.content_type
    if ep.body is None and not ep.uploads:
        return error_response(400, "this call takes no request body")
    if ep.body is not None and ctype == _JSON:
        raw = await _read_bounded(request, ep.max_body)
        if isinstance(raw, web.Response):
            return raw
        try:
            body = ep.body.model_validate_json(raw, strict=True)
        except ValidationError as exc:
            return error_response(400, "invalid body", _problems(exc))
        return Call(params, body)
    if ctype in ep.uploads:
        raw = await _read_bounded(request, ep.max_body)
        if isinstance(raw, web.Response):
            return raw
        if ctype.endswith("json"):
            # Parsed once here with a bounded nesting depth, so the handler's own parse of
            # JSON that passed can never hit Python's recursion limit.
            try:
                pydantic_core.from_json(raw)
            except ValueError as exc:
                return error_response(400, f"the body is not JSON: {exc}")
        return Call(params, None, raw, ctype)
    accepted = ([_JSON] if ep.body is not None else []) + list(ep.uploads)
    return error_response(415, f"send the body as {' or '.join(accepted)}"
                               f" (got {ctype or 'no content type'})")


def _same_origin(origin: str, request: web.Request) -> bool:
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return bool(parts.netloc) and parts.netloc.lower() == (request.host or "").lower()


@web.middleware
async def guard_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    """Cross-origin mutating calls are 403; an announced body over the limit is 413."""
    if request.method in MUTATING:
        site = request.headers.get("Sec-Fetch-Site")
        origin = request.headers.get("Origin")
        # Browsers send both on a cross-site request; scripts and curl send neither, and
        # are the operator's own (the token guards them when the server is reachable).
        if (site is not None and site not in ("same-origin", "none")) or \
                (origin is not None and not _same_origin(origin, request)):
            log.warning("admin.cross_origin_refused", method=request.method, path=request.path,
                        origin=origin, sec_fetch_site=site, peer=request.remote)
            return error_response(403, "cross-origin calls that change state are refused")
    limit = request.app.get(MAX_BODY_KEY, DEFAULT_MAX_BODY)
    if request.content_length is not None and request.content_length > limit:
        return error_response(413, f"body too large (at most {limit} bytes)")
    return await handler(request)


#: the application's largest accepted body (the biggest upload a route allows)
MAX_BODY_KEY: web.AppKey[int] = web.AppKey("radflow_max_body", int)

