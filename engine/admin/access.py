"""Access control of the admin server: who is calling (console session, a user's API token,
the legacy shared token, or nobody), logging in and out, CSRF, lock-out, and the routes that
manage users, tokens and read the changes table.

Passwords are Argon2id hashes (argon2-cffi, the maintained binding of the reference code).
API tokens are 256 random bits shown once and stored as SHA-256: a slow hash protects guessable
secrets, and a random token is not guessable, while a slow hash on every API call would cost
the server its CPU. Console sessions live in the store's ``console_sessions`` table, so every
worker and node on the database knows a login made on any of them; the table holds the
session id's SHA-256 (the same argument as for tokens), the CSRF token and the last use, never
the id itself. Each request re-reads the session and the user, so a logout, a removed user, a
new password or a lock-out ends the session everywhere at once. Every change through the admin
server lands in the store's changes table and the audit trail. This module decides nothing
about routes beyond what :class:`~engine.admin.roles.Role` each one declared; it must not write
anything but users, tokens, sessions, login state and changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Literal

from aiohttp import web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel, ConfigDict, Field

from engine.admin import responses as out
from engine.admin.api import Api, Call, NoParams, error_response
from engine.admin.models import Paging, Params, RowId
from engine.admin.roles import CHANGE_DETAIL_KEY, PRINCIPAL_KEY, USER_ROLES, Principal, Role
from engine.durable.access import ChangeRecord, SessionRecord, UserRecord
from engine.durable.store import Store
from engine.observability import audit_sink
from engine.observability.logging import get_logger

log = get_logger("engine.admin.access")

SESSION_COOKIE = "radflow_session"
#: under HTTPS the cookie is ``__Host-`` prefixed: the browser then insists on Secure, Path=/
#: and no Domain, so a sibling host cannot plant or read it
SECURE_SESSION_COOKIE = "__Host-radflow_session"
CSRF_HEADER = "X-CSRF-Token"
#: a session's last use is written at most this often (and at most every quarter of the idle
#: timeout): reading it is one indexed row, writing it on every call would be a write per call
TOUCH_SECONDS = 15.0

_hasher = PasswordHasher()
#: verified against for unknown user names, so a wrong name costs as long as a wrong password
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))

UserName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")]
Password = Annotated[str, Field(min_length=10, max_length=1024)]
UserRole = Literal["viewer", "operator", "admin"]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def new_token() -> tuple[str, str]:
    """A new API token and the hash the store keeps."""
    token = "rf_" + secrets.token_urlsafe(32)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: UserName
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: UserName
    role: UserRole
    password: Password


class UserChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: UserRole | None = None
    password: Password | None = None


class UserPath(Params):
    name: UserName


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: Annotated[str, Field(min_length=1, max_length=100)]
    user: UserName | None = Field(default=None, description="another user's token (admin)")


class TokenPath(Params):
    id: RowId


def user_json(u: UserRecord) -> dict[str, object]:
    return {"name": u.name, "role": u.role, "created_at": u.created_at,
            "updated_at": u.updated_at, "locked": u.locked_until > time.time(),
            "failed_logins": u.failed_logins}


class Access:
    """Authentication and sessions of one admin server."""

    def __init__(self, store: Store, legacy_token: str | None, *, https: bool,
                 idle_seconds: float = 900.0, max_failed: int = 5,
                 lockout_seconds: float = 900.0, console_allowed: bool = True,
                 open_allowed: bool = True) -> None:
        self._store = store
        self._legacy = legacy_token or None
        self.https = https
        self._idle = idle_seconds
        self._max_failed = max_failed
        self._lockout = lockout_seconds
        #: False when the console may not be served here (beyond loopback over plain HTTP)
        self.console_allowed = console_allowed
        #: whether "no user, no token" may mean "open" (loopback only)
        self._open_allowed = open_allowed
        self._touch = min(TOUCH_SECONDS, idle_seconds / 4)

    @property
    def cookie_name(self) -> str:
        return SECURE_SESSION_COOKIE if self.https else SESSION_COOKIE

    # --- who is calling ------------------------------------------------------------------
    async def resolve(self, request: web.Request) -> Principal | web.Response | None:
        """The caller, a 401/403 answer, or None (anonymous)."""
        given = request.headers.get("Authorization", "")
        if given:
            scheme, _, value = given.partition(" ")
            value = value.strip()
            if scheme.lower() == "bearer" and value:
                if self._legacy and hmac.compare_digest(value.encode(), self._legacy.encode()):
                    return Principal("api-token", Role.ADMIN, "legacy-token")
                found = await self._store.token_user(token_hash(value), now_iso())
                if found is not None:
                    return Principal(found[1].name, Role(found[1].role), "token")
            audit_sink.notify(lambda a: a.login(
                user="api-token", peer_host=request.remote or "", ok=False,
                reason=f"{request.method} {request.path}: wrong token"))
            log.warning("admin.token_refused", method=request.method, path=request.path,
                        peer=request.remote)
            return _unauthorized("token missing or wrong")
        sid = request.cookies.get(self.cookie_name)
        if sid:
            principal = await self._session_principal(sid)
            if principal is not None:
                return principal
        if self._open_allowed and self._legacy is None and \
                await self._store.count_users() == 0:
            # Nobody configured on a loopback-only server: it behaves as it did before users
            # existed. Beyond loopback, removing the last user closes it instead of opening it.
            return Principal("anonymous", Role.ADMIN, "open")
        return None

    async def _session_principal(self, sid: str) -> Principal | None:
        key = token_hash(sid)
        session = await self._store.get_session(key)
        if session is None:
            return None
        # Wall-clock time: another node wrote last_seen (the nodes' clocks are kept by NTP).
        now = time.time()
        if now - session.last_seen > self._idle:
            await self._store.end_session(key)
            log.info("admin.session_expired", user=session.user)
            return None
        user = await self._store.get_user(session.user)
        if user is None:
            await self._store.end_session(key)
            return None
        if now - session.last_seen > self._touch:
            await self._store.touch_session(key, now)
        return Principal(user.name, Role(user.role), "session", session.csrf)

    def _session_id(self, request: web.Request) -> str | None:
        return request.cookies.get(self.cookie_name)

    # --- login ---------------------------------------------------------------------------
    async def login(self, request: web.Request, user_name: str, password: str
                    ) -> web.Response:
        peer = request.remote or ""
        user = await self._store.get_user(user_name)
        if user is None:
            await asyncio.to_thread(verify_password, _DUMMY_HASH, password)
            return self._failed(user_name, peer, "unknown user")
        if user.locked_until > time.time():
            return self._failed(user_name, peer, "locked", status=423,
                                message="too many wrong passwords: the account is locked for "
                                        "a while (an admin can set a new password)")
        if not await asyncio.to_thread(verify_password, user.password_hash, password):
            failed = user.failed_logins + 1
            locked = time.time() + self._lockout if failed >= self._max_failed else 0.0
            await self._store.set_login_state(user.name, failed, locked)
            if locked:
                log.warning("admin.user_locked", user=user.name, peer=peer, failed=failed)
            return self._failed(user_name, peer, "wrong password")
        if user.failed_logins or user.locked_until:
            await self._store.set_login_state(user.name, 0, 0.0)
        sid = secrets.token_urlsafe(32)
        now = time.time()
        session = SessionRecord(token_hash(sid), user.name, secrets.token_urlsafe(32), now, now,
                                peer)
        await self._store.add_session(session, expired_before=now - self._idle)
        audit_sink.notify(lambda a: a.login(user=user.name, peer_host=peer, ok=True))
        log.info("admin.login", user=user.name, peer=peer)
        request[CHANGE_DETAIL_KEY] = f"login {user.name}"
        response = web.json_response({"user": user.name, "role": user.role,
                                      "csrf": session.csrf})
        response.set_cookie(self.cookie_name, sid, httponly=True, secure=self.https,
                            samesite="Strict", path="/")
        return response

    def _failed(self, user: str, peer: str, reason: str, *, status: int = 401,
                message: str = "wrong user name or password") -> web.Response:
        audit_sink.notify(lambda a: a.login(user=user, peer_host=peer, ok=False, reason=reason))
        log.warning("admin.login_refused", user=user, peer=peer, reason=reason)
        return error_response(status, message)

    async def logout(self, request: web.Request) -> web.Response:
        sid = self._session_id(request)
        if sid:
            await self._store.end_session(token_hash(sid))
        response = web.json_response({"logged_out": True})
        response.del_cookie(self.cookie_name, path="/")
        return response

    # --- the middleware ------------------------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        if not request.path.startswith("/api/") or request.path == "/api/v1/openapi.json":
            return await handler(request)
        found = await self.resolve(request)
        if isinstance(found, web.Response):
            return found
        if found is not None:
            request[PRINCIPAL_KEY] = found
            # Logging in again needs no CSRF token: it changes nothing the caller did not
            # prove by the password (and a JSON body cannot come from another site's form).
            if found.via == "session" and request.method in ("POST", "PUT", "PATCH", "DELETE") \
                    and not (request.method == "POST" and request.path == "/api/v1/session"):
                sent = request.headers.get(CSRF_HEADER, "")
                if not hmac.compare_digest(sent.encode(), found.csrf.encode()):
                    log.warning("admin.csrf_refused", user=found.name, method=request.method,
                                path=request.path, peer=request.remote)
                    return error_response(403, f"missing or wrong {CSRF_HEADER}: reload the "
                                               "console and try again")
        response = await handler(request)
        if request.method in ("POST", "PUT", "PATCH", "DELETE"):
            await self._record(request, found, response.status)
        return response

    async def _record(self, request: web.Request, who: Principal | None, status: int) -> None:
        user = who.name if who is not None else "anonymous"
        peer = request.remote or ""
        detail = request.get(CHANGE_DETAIL_KEY, "")
        path = request.path_qs
        change = ChangeRecord(at=now_iso(), user=user, peer_host=peer, method=request.method,
                              path=path, status=status, detail=detail)
        try:
            await self._store.record_change(change)
        except Exception as exc:  # the change itself is done; say loudly the record is not
            log.error("admin.change_not_recorded", user=user, path=path, error=str(exc))
        audit_sink.notify(lambda a: a.api_change(user=user, peer_host=peer,
                                                 method=request.method, path=path,
                                                 status=status))

    # --- routes --------------------------------------------------------------------------
    def add_routes(self, api: Api) -> None:
        store = self._store

        def principal(request: web.Request) -> Principal:
            found = request.get(PRINCIPAL_KEY)
            assert isinstance(found, Principal)  # the route's role check ran
            return found

        async def who(request: web.Request, call: Call[NoParams, None]) -> web.Response:
            found = request.get(PRINCIPAL_KEY)
            if not isinstance(found, Principal):
                return error_response(401, "not logged in")
            return out.answer(out.Caller, {"user": found.name, "role": found.role.value,
                                           "via": found.via, "csrf": found.csrf})

        async def login(request: web.Request, call: Call[NoParams, LoginBody]) -> web.Response:
            if not self.console_allowed:
                return error_response(403, "logging in over plain HTTP beyond loopback is "
                                           "refused: serve HTTPS (http.tls_cert, http.tls_key)")
            assert call.body is not None
            return await self.login(request, call.body.user, call.body.password)

        async def logout(request: web.Request, call: Call[NoParams, None]) -> web.Response:
            return await self.logout(request)

        async def list_users(request: web.Request, call: Call[NoParams, None]
                             ) -> web.Response:
            return out.answer(out.Users,
                              {"items": [user_json(u) for u in await store.list_users()]})

        async def add_user(request: web.Request, call: Call[NoParams, NewUser]) -> web.Response:
            assert call.body is not None
            b = call.body
            hashed = await asyncio.to_thread(hash_password, b.password)
            if not await store.add_user(b.name, b.role, hashed, now_iso()):
                return error_response(409, f"user {b.name!r} exists")
            request[CHANGE_DETAIL_KEY] = f"user {b.name} added as {b.role}"
            user = await store.get_user(b.name)
            assert user is not None
            return web.json_response(user_json(user), status=201)

        async def change_user(request: web.Request, call: Call[UserPath, UserChange]
                              ) -> web.Response:
            assert call.body is not None
            b = call.body
            hashed = await asyncio.to_thread(hash_password, b.password) if b.password else None
            if not await store.update_user(call.params.name, now_iso(), b.role, hashed):
                return error_response(404, f"no user {call.params.name!r}")
            request[CHANGE_DETAIL_KEY] = (f"user {call.params.name}"
                                        + (f" role {b.role}" if b.role else "")
                                        + (" new password" if hashed else ""))
            user = await store.get_user(call.params.name)
            assert user is not None
            return web.json_response(user_json(user))

        async def remove_user(request: web.Request, call: Call[UserPath, None]
                              ) -> web.Response:
            if call.params.name == principal(request).name:
                return error_response(409, "you cannot remove yourself")
            if not await store.remove_user(call.params.name):
                return error_response(404, f"no user {call.params.name!r}")
            request[CHANGE_DETAIL_KEY] = f"user {call.params.name} removed"
            return web.json_response({"name": call.params.name, "removed": True})

        async def list_tokens(request: web.Request, call: Call[NoParams, None]
                              ) -> web.Response:
            me = principal(request)
            items = await store.list_tokens(None if me.role is Role.ADMIN else me.name)
            return out.answer(out.Tokens, {"items": [
                {"id": t.id, "user": t.user, "label": t.label, "created_at": t.created_at,
                 "last_used_at": t.last_used_at, "revoked_at": t.revoked_at} for t in items]})

        async def add_token(request: web.Request, call: Call[NoParams, NewToken]
                            ) -> web.Response:
            assert call.body is not None
            me = principal(request)
            owner = call.body.user or me.name
            if owner != me.name and me.role is not Role.ADMIN:
                return error_response(403, "only an admin creates tokens for other users")
            if await store.get_user(owner) is None:
                return error_response(404 if call.body.user else 409,
                                      f"no user {owner!r} (the legacy token and the open "
                                      "server have no user to own a token)")
            token, hashed = new_token()
            tid = await store.add_token(owner, call.body.label, hashed, now_iso())
            request[CHANGE_DETAIL_KEY] = f"token {tid} ({call.body.label}) for {owner}"
            return web.json_response({"id": tid, "user": owner, "label": call.body.label,
                                      "token": token,
                                      "note": "shown once: store it now"}, status=201)

        async def revoke_token(request: web.Request, call: Call[TokenPath, None]
                               ) -> web.Response:
            me = principal(request)
            mine = None if me.role is Role.ADMIN else me.name
            if not await store.revoke_token(call.params.id, now_iso(), mine):
                return error_response(404, "no such live token")
            request[CHANGE_DETAIL_KEY] = f"token {call.params.id} revoked"
            return web.json_response({"id": call.params.id, "revoked": True})

        async def changes(request: web.Request, call: Call[Paging, None]) -> web.Response:
            total, items = await store.list_changes(call.params.limit, call.params.offset)
            return out.answer(out.ChangePage, {"total": total, "items": [
                {"id": c.id, "at": c.at, "user": c.user, "peer_host": c.peer_host,
                 "method": c.method, "path": c.path, "status": c.status, "detail": c.detail}
                for c in items]})

        api.route("GET", "/api/v1/session", who, role=Role.PUBLIC,
                  summary="Who is calling: user, role, how authenticated, the CSRF token",
                  responses={"200": "the caller", "401": "not logged in"},
                  response=out.Caller)
        api.route("POST", "/api/v1/session", login, role=Role.PUBLIC, body=LoginBody,
                  body_required=True, max_body=8192,
                  summary="Log in (console): sets the session cookie, returns the CSRF token "
                          "to send as X-CSRF-Token on every change",
                  responses={"200": "logged in", "401": "wrong user name or password",
                             "423": "locked after repeated failures"})
        api.route("DELETE", "/api/v1/session", logout, role=Role.PUBLIC,
                  summary="Log out (ends the console session)",
                  responses={"200": "logged out"})
        api.route("GET", "/api/v1/users", list_users, role=Role.ADMIN,
                  summary="Users and their roles", responses={"200": "{items}"},
                  response=out.Users)
        api.route("POST", "/api/v1/users", add_user, role=Role.ADMIN, body=NewUser,
                  body_required=True, max_body=8192, summary="Add a user",
                  responses={"201": "added", "409": "name taken"})
        api.route("PATCH", "/api/v1/users/{name}", change_user, role=Role.ADMIN,
                  params=UserPath, body=UserChange, body_required=True, max_body=8192,
                  summary="Change a user's role or password (a new password lifts a lock-out)",
                  responses={"200": "changed", "404": "unknown user"})
        api.route("DELETE", "/api/v1/users/{name}", remove_user, role=Role.ADMIN,
                  params=UserPath, summary="Remove a user and their tokens",
                  responses={"200": "removed", "404": "unknown user",
                             "409": "cannot remove yourself"})
        api.route("GET", "/api/v1/tokens", list_tokens, role=Role.VIEWER,
                  summary="API tokens (your own; an admin sees all). Never the secrets.",
                  responses={"200": "{items}"}, response=out.Tokens)
        api.route("POST", "/api/v1/tokens", add_token, role=Role.OPERATOR, body=NewToken,
                  body_required=True, max_body=8192,
                  summary="Create an API token: the secret is in this answer only",
                  responses={"201": "{id, token}", "404": "unknown user",
                             "409": "the caller is not a user"})
        api.route("DELETE", "/api/v1/tokens/{id}", revoke_token, role=Role.OPERATOR,
                  params=TokenPath, pattern=r"/api/v1/tokens/{id:\d+}",
                  summary="Revoke an API token (yours; an admin any)",
                  responses={"200": "revoked", "404": "no such live token"})
        api.route("GET", "/api/v1/changes", changes, role=Role.ADMIN, params=Paging,
                  summary="Changes made through the admin server and the CLI: who, what, "
                          "when, from where; newest first",
                  responses={"200": "{total, items}"}, response=out.ChangePage)


def _unauthorized(message: str) -> web.Response:
    return web.json_response({"error": message}, status=401,
                             headers={"WWW-Authenticate": "Bearer"})


__all__ = ["USER_ROLES", "Access", "hash_password", "new_token", "verify_password"]
