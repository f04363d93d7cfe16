"""Roles of the admin server and who is calling: the one place that says which role may do what.

``viewer`` reads, ``operator`` also changes the running work (retry, purge, worklist changes,
reload), ``admin`` also manages users and sees the changes table. Routes declare the least role
they need (:meth:`engine.admin.api.Api.route`); ``public`` routes (health, metrics, the OpenAPI
description, logging in) need none. This module holds no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from aiohttp import web


class Role(StrEnum):
    PUBLIC = "public"
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANK = {Role.PUBLIC: 0, Role.VIEWER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}
#: the roles a user can hold
USER_ROLES = (Role.VIEWER, Role.OPERATOR, Role.ADMIN)


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request. ``via``: session (console), token (a user's API token),
    legacy-token (the shared ``http.token``), open (no user exists and no token is set:
    loopback only, as before users existed)."""

    name: str
    role: Role
    via: str
    csrf: str = ""


#: the caller of a request, set by the access middleware before any route runs
PRINCIPAL_KEY: web.RequestKey[Principal] = web.RequestKey("radflow_principal", Principal)
#: what a change did, in words, for the changes table (set by the handler that made it)
CHANGE_DETAIL_KEY: web.RequestKey[str] = web.RequestKey("radflow_change_detail", str)
