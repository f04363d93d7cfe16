"""SQL of access control in the SQLite backend: ``users``, ``api_tokens``,
``console_sessions``, ``changes``.

Functions over a connection, called on the store's writer or reader thread; no hashing or
policy here (see :mod:`engine.admin.access`).
"""

from __future__ import annotations

import sqlite3

from engine.durable.access import ChangeRecord, SessionRecord, TokenRecord, UserRecord
from engine.durable.sqlite._common import transaction

_USER = ("SELECT name, role, password_hash, failed_logins, locked_until, created_at, "
         "updated_at FROM users")
_TOKEN = "SELECT id, user_name, label, created_at, last_used_at, revoked_at FROM api_tokens"


def _user(row: tuple[object, ...] | None) -> UserRecord | None:
    if row is None:
        return None
    name, role, ph, failed, locked, created, updated = row
    return UserRecord(str(name), str(role), str(ph), int(failed),  # type: ignore[call-overload]
                      float(locked), str(created), str(updated))  # type: ignore[arg-type]


def _token(row: tuple[object, ...]) -> TokenRecord:
    tid, user, label, created, used, revoked = row
    return TokenRecord(int(tid), str(user), str(label), str(created),  # type: ignore[call-overload]
                       None if used is None else str(used),
                       None if revoked is None else str(revoked))


def count_users(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM users").fetchone()[0])


def get_user(conn: sqlite3.Connection, name: str) -> UserRecord | None:
    return _user(conn.execute(_USER + " WHERE name = ?", (name,)).fetchone())


def list_users(conn: sqlite3.Connection) -> list[UserRecord]:
    return [u for u in (_user(r) for r in conn.execute(_USER + " ORDER BY name")) if u]


def add_user(conn: sqlite3.Connection, name: str, role: str, password_hash: str,
             now: str) -> bool:
    with transaction(conn):
        cur = conn.execute(
            "INSERT INTO users (name, role, password_hash, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
            (name, role, password_hash, now, now))
        return cur.rowcount == 1


def update_user(conn: sqlite3.Connection, name: str, role: str | None,
                password_hash: str | None, now: str) -> bool:
    with transaction(conn):
        cur = conn.execute(
            "UPDATE users SET role = COALESCE(?, role), "
            "password_hash = COALESCE(?, password_hash), "
            # A new password (set by an admin) lifts a lock-out.
            "failed_logins = CASE WHEN ? IS NULL THEN failed_logins ELSE 0 END, "
            "locked_until = CASE WHEN ? IS NULL THEN locked_until ELSE 0 END, "
            "updated_at = ? WHERE name = ?",
            (role, password_hash, password_hash, password_hash, now, name))
        if password_hash is not None:
            # A new password ends every console session of the user, on every node.
            conn.execute("DELETE FROM console_sessions WHERE user_name = ?", (name,))
        return cur.rowcount == 1


def remove_user(conn: sqlite3.Connection, name: str) -> bool:
    with transaction(conn):
        conn.execute("DELETE FROM api_tokens WHERE user_name = ?", (name,))
        conn.execute("DELETE FROM console_sessions WHERE user_name = ?", (name,))
        return conn.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 1


def set_login_state(conn: sqlite3.Connection, name: str, failed_logins: int,
                    locked_until: float) -> None:
    with transaction(conn):
        conn.execute("UPDATE users SET failed_logins = ?, locked_until = ? WHERE name = ?",
                     (failed_logins, locked_until, name))
        if locked_until > 0:
            # A locked account is under attack or forgotten: its open sessions end too.
            conn.execute("DELETE FROM console_sessions WHERE user_name = ?", (name,))


def add_token(conn: sqlite3.Connection, user: str, label: str, token_hash: str,
              now: str) -> int:
    with transaction(conn):
        cur = conn.execute("INSERT INTO api_tokens (user_name, label, token_hash, created_at) "
                           "VALUES (?, ?, ?, ?)", (user, label, token_hash, now))
        return int(cur.lastrowid or 0)


def token_user(conn: sqlite3.Connection, token_hash: str, now: str
               ) -> tuple[TokenRecord, UserRecord] | None:
    with transaction(conn, durable=False):  # last use is a hint: losing it loses nothing
        row = conn.execute(_TOKEN + " WHERE token_hash = ? AND revoked_at IS NULL",
                           (token_hash,)).fetchone()
        if row is None:
            return None
        token = _token(row)
        user = get_user(conn, token.user)
        if user is None:
            return None
        conn.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", (now, token.id))
        return token, user


def list_tokens(conn: sqlite3.Connection, user: str | None) -> list[TokenRecord]:
    if user is None:
        rows = conn.execute(_TOKEN + " ORDER BY id")
    else:
        rows = conn.execute(_TOKEN + " WHERE user_name = ? ORDER BY id", (user,))
    return [_token(r) for r in rows]


def revoke_token(conn: sqlite3.Connection, token_id: int, user: str | None, now: str) -> bool:
    with transaction(conn):
        cur = conn.execute(
            "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL "
            "AND (? IS NULL OR user_name = ?)", (now, token_id, user, user))
        return cur.rowcount == 1


_SESSION = ("SELECT id_hash, user_name, csrf, created_at, last_seen, peer_host "
            "FROM console_sessions")


def add_session(conn: sqlite3.Connection, session: SessionRecord, expired_before: float) -> None:
    """Open a session; sessions idle since before ``expired_before`` go in the same
    transaction (so the table stays as small as the number of operators)."""
    with transaction(conn):
        conn.execute("DELETE FROM console_sessions WHERE last_seen < ?", (expired_before,))
        conn.execute("INSERT INTO console_sessions (id_hash, user_name, csrf, created_at, "
                     "last_seen, peer_host) VALUES (?, ?, ?, ?, ?, ?)",
                     (session.id_hash, session.user, session.csrf, session.created_at,
                      session.last_seen, session.peer_host))


def get_session(conn: sqlite3.Connection, id_hash: str) -> SessionRecord | None:
    row = conn.execute(_SESSION + " WHERE id_hash = ?", (id_hash,)).fetchone()
    if row is None:
        return None
    sid, user, csrf, created, last_seen, peer = row
    return SessionRecord(str(sid), str(user), str(csrf),
                         float(created), float(last_seen),
                         str(peer))


def touch_session(conn: sqlite3.Connection, id_hash: str, now: float) -> None:
    with transaction(conn, durable=False):  # losing a touch shortens a session, nothing more
        conn.execute("UPDATE console_sessions SET last_seen = ? WHERE id_hash = ? "
                     "AND last_seen < ?", (now, id_hash, now))


def end_session(conn: sqlite3.Connection, id_hash: str) -> bool:
    with transaction(conn):
        return conn.execute("DELETE FROM console_sessions WHERE id_hash = ?",
                            (id_hash,)).rowcount == 1


def record_change(conn: sqlite3.Connection, change: ChangeRecord) -> None:
    with transaction(conn):
        conn.execute("INSERT INTO changes (at, user_name, peer_host, method, path, status, "
                     "detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (change.at, change.user, change.peer_host, change.method, change.path,
                      change.status, change.detail))


def list_changes(conn: sqlite3.Connection, limit: int, offset: int
                 ) -> tuple[int, list[ChangeRecord]]:
    total = int(conn.execute("SELECT COUNT(*) FROM changes").fetchone()[0])
    rows = conn.execute("SELECT id, at, user_name, peer_host, method, path, status, detail "
                        "FROM changes ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset))
    return total, [ChangeRecord(id=int(r[0]), at=str(r[1]), user=str(r[2]),
                                peer_host=str(r[3]), method=str(r[4]), path=str(r[5]),
                                status=int(r[6]), detail=str(r[7])) for r in rows]
