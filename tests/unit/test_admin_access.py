"""Access control of the admin server through aiohttp's in-process test server over a real
SQLite store: users and roles, console sessions with CSRF, lock-out, per-user API tokens,
the legacy shared token, the changes table, the console's files and the HTTPS refusal rules,
and the ``radflow users`` command line."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine.admin.access import hash_password, now_iso
from engine.admin.server import AdminServer
from engine.durable.sqlite import SqliteStore
from engine.settings import HttpSettings, SiteSettings

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
PASSWORD = "correct horse battery"


@pytest.fixture
async def make_client(store: SqliteStore) -> AsyncIterator[ClientFactory]:
    clients: list[TestClient[Any, Any]] = []

    async def make(token: str | None = None, host: str = "127.0.0.1",
                   http: HttpSettings | None = None) -> TestClient[Any, Any]:
        server = AdminServer(host, 0, store, {}, token, http=http,
                             site=SiteSettings(name="Test site", time_zone="Europe/Berlin"))
        client = TestClient(TestServer(server.app))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def add_user(store: SqliteStore, name: str, role: str) -> None:
    hashed = await asyncio.to_thread(hash_password, PASSWORD)  # slow by design: off the loop
    assert await store.add_user(name, role, hashed, now_iso())


async def login(client: TestClient[Any, Any], name: str, password: str = PASSWORD
                ) -> dict[str, Any]:
    resp = await client.post("/api/v1/session", json={"user": name, "password": password})
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def test_without_users_or_token_the_loopback_server_stays_open(
        make_client: ClientFactory) -> None:
    client = await make_client()
    assert (await client.post("/api/v1/routes/reload")).status == 404  # no rules: no route
    who = await (await client.get("/api/v1/session")).json()
    assert who["via"] == "open" and who["role"] == "admin"


async def test_once_a_user_exists_anonymous_callers_are_refused(
        store: SqliteStore, make_client: ClientFactory) -> None:
    await add_user(store, "alice", "admin")
    client = await make_client()
    assert (await client.get("/api/v1/instances")).status == 401
    assert (await client.post("/api/v1/users", json={"name": "eve", "role": "admin",
                                                      "password": "x" * 12})).status == 401
    assert (await client.get("/healthz")).status == 200  # probes stay open
    assert (await client.get("/api/v1/openapi.json")).status == 200


async def test_session_cookie_flags_and_csrf_on_every_change(
        store: SqliteStore, make_client: ClientFactory) -> None:
    await add_user(store, "alice", "admin")
    client = await make_client()
    resp = await client.post("/api/v1/session", json={"user": "alice", "password": PASSWORD})
    assert resp.status == 200
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback
    csrf = (await resp.json())["csrf"]
    assert (await client.get("/api/v1/users")).status == 200
    new = {"name": "bob", "role": "viewer", "password": "another long one"}
    refused = await client.post("/api/v1/users", json=new)
    assert refused.status == 403 and "CSRF" in (await refused.json())["error"]
    wrong = await client.post("/api/v1/users", json=new, headers={"X-CSRF-Token": "guess"})
    assert wrong.status == 403
    ok = await client.post("/api/v1/users", json=new, headers={"X-CSRF-Token": csrf})
    assert ok.status == 201
    assert await store.get_user("bob") is not None
    out = await client.delete("/api/v1/session", headers={"X-CSRF-Token": csrf})
    assert out.status == 200
    assert (await client.get("/api/v1/users")).status == 401


async def test_roles_viewer_reads_operator_changes_admin_manages_users(
        store: SqliteStore, make_client: ClientFactory) -> None:
    for name, role in (("vera", "viewer"), ("otto", "operator"), ("alice", "admin")):
        await add_user(store, name, role)
    client = await make_client()
    csrf = (await login(client, "vera"))["csrf"]
    h = {"X-CSRF-Token": csrf}
    assert (await client.get("/api/v1/instances")).status == 200
    resp = await client.post("/api/v1/tokens", json={"label": "x"}, headers=h)
    assert resp.status == 403 and "operator" in (await resp.json())["error"]
    assert (await client.get("/api/v1/users")).status == 403
    assert (await client.get("/api/v1/changes")).status == 403
    csrf = (await login(client, "otto"))["csrf"]
    h = {"X-CSRF-Token": csrf}
    assert (await client.post("/api/v1/tokens", json={"label": "x"}, headers=h)).status == 201
    assert (await client.delete("/api/v1/users/vera", headers=h)).status == 403
    csrf = (await login(client, "alice"))["csrf"]
    h = {"X-CSRF-Token": csrf}
    resp = await client.patch("/api/v1/users/vera", json={"role": "operator"}, headers=h)
    assert resp.status == 200 and (await resp.json())["role"] == "operator"
    assert (await client.delete("/api/v1/users/alice", headers=h)).status == 409
    assert (await client.delete("/api/v1/users/vera", headers=h)).status == 200


async def test_lock_out_after_repeated_wrong_passwords(
        store: SqliteStore, make_client: ClientFactory) -> None:
    await add_user(store, "alice", "admin")
    client = await make_client(http=HttpSettings(max_failed_logins=3))
    for _ in range(3):
        resp = await client.post("/api/v1/session", json={"user": "alice", "password": "no"})
        assert resp.status == 401
    resp = await client.post("/api/v1/session", json={"user": "alice", "password": PASSWORD})
    assert resp.status == 423 and "locked" in (await resp.json())["error"]
    # an unknown name answers exactly as a wrong password does
    resp = await client.post("/api/v1/session", json={"user": "nobody", "password": "no"})
    assert resp.status == 401
    assert (await resp.json())["error"] == "wrong user name or password"
    hashed = await asyncio.to_thread(hash_password, PASSWORD)
    assert await store.update_user("alice", now_iso(), password_hash=hashed)
    await login(client, "alice")


async def test_user_tokens_are_shown_once_stored_hashed_and_revocable(
        store: SqliteStore, make_client: ClientFactory) -> None:
    await add_user(store, "otto", "operator")
    client = await make_client()
    csrf = (await login(client, "otto"))["csrf"]
    made = await (await client.post("/api/v1/tokens", json={"label": "script"},
                                     headers={"X-CSRF-Token": csrf})).json()
    token = made["token"]
    listing = await (await client.get("/api/v1/tokens")).json()
    assert token not in str(listing) and listing["items"][0]["label"] == "script"
    bearer = TestClient(TestServer(client.server.app))  # type: ignore[union-attr]
    anon = await make_client()
    auth = {"Authorization": f"Bearer {token}"}
    who = await (await anon.get("/api/v1/session", headers=auth)).json()
    assert who == {"user": "otto", "role": "operator", "via": "token", "csrf": ""}
    # a token needs no CSRF header: it is not sent by the browser on its own
    assert (await anon.delete(f"/api/v1/tokens/{made['id']}", headers=auth)).status == 200
    assert (await anon.get("/api/v1/instances", headers=auth)).status == 401
    del bearer


async def test_legacy_shared_token_acts_as_an_admin(
        store: SqliteStore, make_client: ClientFactory) -> None:
    client = await make_client(token="s3cret-token")
    assert (await client.get("/api/v1/users")).status == 401
    auth = {"Authorization": "Bearer s3cret-token"}
    resp = await client.post("/api/v1/users", headers=auth,
                             json={"name": "alice", "role": "admin", "password": PASSWORD})
    assert resp.status == 201
    assert (await client.get("/api/v1/users", headers={"Authorization": "Bearer no"})
            ).status == 401


async def test_every_change_is_in_the_changes_table_for_admins(
        store: SqliteStore, make_client: ClientFactory) -> None:
    await add_user(store, "alice", "admin")
    client = await make_client()
    csrf = (await login(client, "alice"))["csrf"]
    await client.post("/api/v1/users", headers={"X-CSRF-Token": csrf},
                      json={"name": "bob", "role": "viewer", "password": PASSWORD})
    changes = await (await client.get("/api/v1/changes")).json()
    latest = changes["items"][0]
    assert latest["user"] == "alice" and latest["method"] == "POST"
    assert latest["path"] == "/api/v1/users" and latest["status"] == 201
    assert latest["detail"] == "user bob added as viewer"
    assert latest["peer_host"] == "127.0.0.1" and latest["at"]
    assert PASSWORD not in str(changes)


async def test_console_is_served_with_a_strict_content_security_policy(
        make_client: ClientFactory) -> None:
    client = await make_client()
    page = await client.get("/")
    assert page.status == 200 and "text/html" in page.headers["Content-Type"]
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    text = await page.text()
    assert "http://" not in text and "https://" not in text  # nothing from elsewhere
    for name in ("app.js", "style.css"):
        assert (await client.get(f"/console/{name}")).status == 200
    assert (await client.get("/console/../server.py")).status == 404
    settings = await (await client.get("/api/v1/console")).json()
    assert settings["time_zone"] == "Europe/Berlin" and settings["site"] == "Test site"


async def test_console_beyond_loopback_needs_https_or_an_explicit_setting(
        store: SqliteStore, make_client: ClientFactory) -> None:
    await add_user(store, "alice", "admin")
    client = await make_client(host="0.0.0.0", token="t0ken-for-scripts",
                               http=HttpSettings(host="0.0.0.0", token="t0ken-for-scripts"))
    page = await client.get("/")
    assert page.status == 403 and "HTTPS" in await page.text()
    resp = await client.post("/api/v1/session", json={"user": "alice", "password": PASSWORD})
    assert resp.status == 403
    allowed = await make_client(host="0.0.0.0", http=HttpSettings(
        host="0.0.0.0", token="t0ken-for-scripts", console_over_plain_http=True))
    assert (await allowed.get("/")).status == 200


def test_beyond_loopback_needs_a_token_or_https() -> None:
    with pytest.raises(ValueError, match="beyond loopback"):
        HttpSettings(host="0.0.0.0")
    HttpSettings(host="0.0.0.0", tls_cert=Path("c.pem"), tls_key=Path("k.pem"))
    with pytest.raises(ValueError, match="go together"):
        HttpSettings(tls_cert=Path("c.pem"))


async def test_openapi_states_the_role_of_every_route(make_client: ClientFactory) -> None:
    client = await make_client()
    doc = await (await client.get("/api/v1/openapi.json")).json()
    ops = {(p, m): op for p, item in doc["paths"].items() for m, op in item.items()}
    assert ops[("/api/v1/users", "post")]["x-required-role"] == "admin"
    assert ops[("/api/v1/instances", "get")]["x-required-role"] == "viewer"
    assert ops[("/healthz", "get")]["x-required-role"] == "public"
    assert all("x-required-role" in op for op in ops.values())


def test_cli_users_add_list_token_passwd_remove(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    config = tmp_path / "radflow.yaml"
    config.write_text(f"storage:\n  spool_dir: {tmp_path / 'spool'}\n"
                      f"  sqlite_path: {tmp_path / 'radflow.db'}\n")
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["users", "add", "alice", "--role", "admin", "--password-stdin",
                 "--config", str(config)]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["users", "add", "bob", "--password-stdin", "--config", str(config)]) == 2
    assert main(["users", "token", "alice", "--label", "backup", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    token = out.strip().splitlines()[-1]
    assert token.startswith("rf_")
    assert main(["users", "list", "--config", str(config)]) == 0
    listing = capsys.readouterr().out
    assert "alice" in listing and "admin" in listing and "backup" in listing
    assert token not in listing
    monkeypatch.setattr("sys.stdin", io.StringIO("a new long password\n"))
    assert main(["users", "passwd", "alice", "--password-stdin", "--config", str(config)]) == 0
    assert main(["users", "revoke-token", "1", "--config", str(config)]) == 0
    assert main(["users", "remove", "alice", "--config", str(config)]) == 0
    assert main(["users", "remove", "alice", "--config", str(config)]) == 2


async def test_beyond_loopback_removing_the_last_user_closes_the_server(
        make_client: ClientFactory) -> None:
    client = await make_client(host="0.0.0.0", http=HttpSettings(
        host="0.0.0.0", tls_cert=Path("c.pem"), tls_key=Path("k.pem")))
    assert (await client.get("/api/v1/instances")).status == 401


async def session_cookie(client: TestClient[Any, Any], name: str, password: str = PASSWORD
                         ) -> tuple[str, str]:
    """Log in; the session cookie's value and the CSRF token."""
    resp = await client.post("/api/v1/session", json={"user": name, "password": password})
    assert resp.status == 200, await resp.text()
    return resp.cookies["radflow_session"].value, (await resp.json())["csrf"]


async def as_session(client: TestClient[Any, Any], method: str, path: str, cookie: str,
                     csrf: str = "", **kw: Any) -> int:
    """One call with a session cookie given by hand (as a browser sends it to another node)."""
    client.session.cookie_jar.clear()  # only the cookie given here
    headers = {"Cookie": f"radflow_session={cookie}", "X-CSRF-Token": csrf}
    resp = await client.request(method, path, headers=headers, **kw)
    return resp.status


async def test_a_session_opened_on_one_server_is_known_to_another_on_the_same_store(
        store: SqliteStore, make_client: ClientFactory) -> None:
    await add_user(store, "alice", "admin")
    one, two = await make_client(), await make_client()
    cookie, csrf = await session_cookie(one, "alice")
    assert await as_session(two, "GET", "/api/v1/users", cookie) == 200
    new = {"name": "bob", "role": "viewer", "password": "another long one"}
    assert await as_session(two, "POST", "/api/v1/users", cookie, csrf, json=new) == 201
    assert await as_session(two, "POST", "/api/v1/users", cookie, "guess",
                            json={**new, "name": "eve"}) == 403
    # The store keeps the id's SHA-256, never the id itself.
    assert await store.get_session(cookie) is None
    kept = await store.get_session(hashlib.sha256(cookie.encode()).hexdigest())
    assert kept is not None and kept.user == "alice" and kept.csrf == csrf
    # Logging out on the second ends the session on the first.
    assert await as_session(two, "DELETE", "/api/v1/session", cookie, csrf) == 200
    assert await as_session(one, "GET", "/api/v1/users", cookie) == 401


async def test_a_new_password_a_lock_out_or_removal_ends_sessions_everywhere(
        store: SqliteStore, make_client: ClientFactory) -> None:
    for name in ("alice", "bob", "carol"):
        await add_user(store, name, "admin")
    one = await make_client(http=HttpSettings(max_failed_logins=2))
    two = await make_client(http=HttpSettings(max_failed_logins=2))
    alice, _ = await session_cookie(one, "alice")
    bob, _ = await session_cookie(one, "bob")
    carol, carol_csrf = await session_cookie(one, "carol")
    # A new password (here from the command line's path: the store) ends alice's session.
    hashed = await asyncio.to_thread(hash_password, "a brand new password")
    assert await store.update_user("alice", now_iso(), password_hash=hashed)
    assert await as_session(two, "GET", "/api/v1/users", alice) == 401
    # A role change alone keeps it, and takes effect at once.
    assert await as_session(two, "GET", "/api/v1/users", bob) == 200
    # Wrong passwords for bob on the other server lock him out: his session ends.
    for _ in range(2):
        resp = await two.post("/api/v1/session", json={"user": "bob", "password": "no"})
        assert resp.status == 401
    assert await as_session(one, "GET", "/api/v1/users", bob) == 401
    # carol removes alice: nothing of alice's is left to log in with.
    assert await as_session(two, "DELETE", "/api/v1/users/alice", carol, carol_csrf) == 200
    assert await as_session(one, "GET", "/api/v1/users", carol) == 200


async def test_an_idle_session_expires_and_expired_ones_are_pruned(
        store: SqliteStore, make_client: ClientFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    await add_user(store, "alice", "admin")
    client = await make_client(http=HttpSettings(session_idle_minutes=1))
    cookie, _ = await session_cookie(client, "alice")
    key = hashlib.sha256(cookie.encode()).hexdigest()
    start = time.time()
    # 50 s later: still in, and the use is noted (the idle clock starts again).
    monkeypatch.setattr("engine.admin.access.time.time", lambda: start + 50)
    assert await as_session(client, "GET", "/api/v1/users", cookie) == 200
    touched = await store.get_session(key)
    assert touched is not None and touched.last_seen == start + 50
    # 61 s after that use: expired, refused and gone.
    monkeypatch.setattr("engine.admin.access.time.time", lambda: start + 111.5)
    assert await as_session(client, "GET", "/api/v1/users", cookie) == 401
    assert await store.get_session(key) is None
    # A session left idle is removed by the next login anywhere.
    stale, _ = await session_cookie(client, "alice")
    monkeypatch.setattr("engine.admin.access.time.time", lambda: start + 300)
    await session_cookie(client, "alice")
    assert await store.get_session(hashlib.sha256(stale.encode()).hexdigest()) is None
