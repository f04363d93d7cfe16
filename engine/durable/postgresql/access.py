"""PostgreSQL SQL of access control: ``users``, ``api_tokens``, ``console_sessions``,
``changes``.

Functions over a connection, called on the store's writer or reader thread; no hashing or
policy here (see :mod:`engine.admin.access`).
"""

from __future__ import annotations

from typing import Any

import psycopg

from engine.durable.access import ChangeRecord, SessionRecord, TokenRecord, UserRecord
from engine.durable.postgresql._common import transaction

Conn = psycopg.Connection[Any]

_USER = ("SELECT name, role, password_hash, failed_logins, locked_until, created_at, "
         "updated_at FROM users")
_TOKEN = "SELECT id, user_name, label, created_at, last_used_at, revoked_at FROM api_tokens"


def _user(row: Any) -> UserRecord | None:
    if row is None:
        return None
    name, role, ph, failed, locked, created, updated = row
    return UserRecord(str(name), str(role), str(ph), int(failed),
                      float(locked), str(created), str(updated))


def _token(row: Any) -> TokenRecord:
    tid, user, label, created, used, revoked = row
    return TokenRecord(int(tid), str(user), str(label), str(created),
                       None if used is None else str(used),
                       None if revoked is None else str(revoked))


def count_users(conn: Conn) -> int:
    row = conn.execute("SELECT COUNT(*) FROM users").fetchone()
    return int(row[0]) if row else 0


def get_user(conn: Conn, name: str) -> UserRecord | None:
    return _user(conn.execute(_USER + " WHERE name = %s", (name,)).fetchone())


def list_users(conn: Conn) -> list[UserRecord]:
    return [u for u in (_user(r) for r in conn.execute(_USER + " ORDER BY name")) if u]


def add_user(conn: Conn, name: str, role: str, password_hash: str,
             now: str) -> bool:
    with transaction(conn):
        cur = conn.execute(
            "INSERT INTO users (name, role, password_hash, created_at, updated_at) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING",
            (name, role, password_hash, now, now))
        return cur.rowcount == 1


def update_user(conn: Conn, name: str, role: str | None,
                password_hash: str | None, now: str) -> bool:
    with transaction(conn):
        cur = conn.execute(
            "UPDATE users SET role = COALESCE(%s::text, role), "
            "password_hash = COALESCE(%s::text, password_hash), "
            # A new password (set by an admin) lifts a lock-out.
            "failed_logins = CASE WHEN %s::text IS NULL THEN failed_logins ELSE 0 END, "
            "locked_until = CASE WHEN %s::text IS NULL THEN locked_until ELSE 0 END, "
            "updated_at = %s WHERE name = %s",
            (role, password_hash, password_hash, password_hash, now, name))
        if password_hash is not None:
            # A new password ends every console session of the user, on every node.
            conn.execute("DELETE FROM console_sessions WHERE user_name = %s", (name,))
        return cur.rowcount == 1


def remove_user(conn: Conn, name: str) -> bool:
    with transaction(conn):
        conn.execute("DELETE FROM api_tokens WHERE user_name = %s", (name,))
        conn.execute("DELETE FROM console_sessions WHERE user_name = %s", (name,))
        return conn.execute("DELETE FROM users WHERE name = %s", (name,)).rowcount == 1


def set_login_state(conn: Conn, name: str, failed_logins: int,
                    locked_until: float) -> None:
    with transaction(conn):
        conn.execute("UPDATE users SET failed_logins = %s, locked_until = %s WHERE name = %s",
                     (failed_logins, locked_until, name))
        if locked_until > 0:
            # A locked account is under attack or forgotten: its open sessions end too.
            conn.execute("DELETE FROM console_sessions WHERE user_name = %s", (name,))


def add_token(conn: Conn, user: str, label: str, token_hash: str,
              now: str) -> int:
    with transaction(conn):
        row = conn.execute("INSERT INTO api_tokens (user_name, label, token_hash, created_at) "
                           "VALUES (%s, %s, %s, %s) RETURNING id",
                           (user, label, token_hash, now)).fetchone()
        assert row is not None
        return int(row[0])


def token_user(conn: Conn, token_hash: str, now: str
               ) -> tuple[TokenRecord, UserRecord] | None:
    with transaction(conn, durable=False):  # last use is a hint: losing it loses nothing
        row = conn.execute(_TOKEN + " WHERE token_hash = %s AND revoked_at IS NULL",
                           (token_hash,)).fetchone()
        if row is None:
            return None
        token = _token(row)
        user = get_user(conn, token.user)
        if user is None:
            return None
        conn.execute("UPDATE api_tokens SET last_used_at = %s WHERE id = %s", (now, token.id))
        return token, user


def list_tokens(conn: Conn, user: str | None) -> list[TokenRecord]:
    if user is None:
        rows = conn.execute(_TOKEN + " ORDER BY id")
    else:
        rows = conn.execute(_TOKEN + " WHERE user_name = %s ORDER BY id", (user,))
    return [_token(r) for r in rows]


def revoke_token(conn: Conn, token_id: int, user: str | None, now: str) -> bool:
    with transaction(conn):
        cur = conn.execute(
            "UPDATE api_tokens SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL "
            "AND (%s::text IS NULL OR user_name = %s)", (now, token_id, user, user))
        return cur.rowcount == 1


_SESSION = ("SELECT id_hash, user_name, csrf, created_at, last_seen, peer_host "
            "FROM console_sessions")


def add_session(conn: Conn, session: SessionRecord, expired_before: float) -> None:
    """Open a session; sessions idle since before ``expired_before`` go in the same
    transaction (so the table stays as small as the number of operators)."""
    with transaction(conn):
        conn.execute("DELETE FROM console_sessions WHERE last_seen < %s", (expired_before,))
        conn.execute("INSERT INTO console_sessions (id_hash, user_name, csrf, created_at, "
                     "last_seen, peer_host) VALUES (%s, %s, %s, %s, %s, %s)",
                     (session.id_hash, session.user, session.csrf, session.created_at,
                      session.last_seen, session.peer_host))


def get_session(conn: Conn, id_hash: str) -> SessionRecord | None:
    row = conn.execute(_SESSION + " WHERE id_hash = %s", (id_hash,)).fetchone()
    if row is None:
        return None
    sid, user, csrf, created, last_seen, peer = row
    return SessionRecord(str(sid), str(user), str(csrf),
                         float(created), float(last_seen),
                         str(peer))


def touch_session(conn: Conn, id_hash: str, now: float) -> None:
    with transaction(conn, durable=False):  # losing a touch shortens a session, nothing more
        conn.execute("UPDATE console_sessions SET last_seen = %s WHERE id_hash = %s "
                     "AND last_seen < %s", (now, id_hash, now))


def end_session(conn: Conn, id_hash: str) -> bool:
    with transaction(conn):
        return conn.execute("DELETE FROM console_sessions WHERE id_hash = %s",
                            (id_hash,)).rowcount == 1


def record_change(conn: Conn, change: ChangeRecord) -> None:
    with transaction(conn):
        conn.execute("INSERT INTO changes (at, user_name, peer_host, method, path, status, "
                     "detail) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                     (change.at, change.user, change.peer_host, change.method, change.path,
                      change.status, change.detail))


def list_changes(conn: Conn, limit: int, offset: int
                 ) -> tuple[int, list[ChangeRecord]]:
    count = conn.execute("SELECT COUNT(*) FROM changes").fetchone()
    total = int(count[0]) if count else 0
    rows = conn.execute("SELECT id, at, user_name, peer_host, method, path, status, detail "
                        "FROM changes ORDER BY id DESC LIMIT %s OFFSET %s", (limit, offset))
    return total, [ChangeRecord(id=int(r[0]), at=str(r[1]), user=str(r[2]),
                                peer_host=str(r[3]), method=str(r[4]), path=str(r[5]),
                                status=int(r[6]), detail=str(r[7])) for r in rows]
