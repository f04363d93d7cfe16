"""Backend-neutral records of access control: users, their API tokens, console sessions and the
changes table.

Only what the store keeps: password, token and session-id *hashes* (never the secrets), the
lock-out state of a user, the console sessions every node of a site shares (so a login made on
one node or worker is known to the next request's), and one row per change made through the
admin server or the ``radflow users`` CLI.
Policy (roles, hashing, lock-out thresholds, sessions) lives in :mod:`engine.admin.access`;
this module must not hash, compare or decide.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class UserRecord:
    name: str
    role: str
    password_hash: str
    failed_logins: int
    locked_until: float  # epoch seconds; 0 = not locked
    created_at: str
    updated_at: str


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: int
    user: str
    label: str
    created_at: str
    last_used_at: str | None
    revoked_at: str | None


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """Who changed what, when and from where (``status`` is the HTTP status answered)."""

    at: str
    user: str
    peer_host: str
    method: str
    path: str
    status: int
    detail: str = ""
    id: int = 0


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One console session: the SHA-256 of its id (the cookie), its user, its CSRF token and
    when it was opened and last used (epoch seconds, wall clock: every node reads them)."""

    id_hash: str
    user: str
    csrf: str
    created_at: float
    last_seen: float
    peer_host: str = ""
