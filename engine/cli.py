"""The ``radflow`` command line: ``run``, ``check-config`` and operator sub-commands.

Parses arguments, loads settings, configures logging and hands over to the engine or to a
one-shot command. It prints human-readable results to stdout and errors to stderr, and returns
a process exit code; it must not contain engine logic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import __version__
from engine.observability.logging import configure_logging
from engine.settings import DEFAULT_CONFIG_PATH, Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from engine.records.worklist import StoredWorklistItem
    from engine.worklist.service import WorklistService


def _load(path: Path) -> Settings | None:
    try:
        return load_settings(path)
    except SettingsError as exc:
        print(f"radflow: {len(exc.problems)} configuration error(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    from engine.workers import WorkerContext

    if args.workers is not None:
        # Through the environment: validated with the rest, and inherited by the workers.
        os.environ["RADFLOW_ENGINE__WORKERS"] = args.workers
    settings = _load(args.config)
    if settings is None:
        return 1
    worker = WorkerContext.from_env()
    identity: dict[str, Any] = {"node": settings.engine.node_id}
    if worker.shared or settings.engine.worker_count > 1:
        identity["worker"] = "supervisor" if os.environ.get("RADFLOW_WORKER_INDEX") is None \
            else worker.index
    configure_logging(settings.logging.level, settings.logging.format, identity)
    if os.environ.get("RADFLOW_WORKER_INDEX") is None and settings.engine.worker_count > 1:
        from engine.supervisor import Supervisor

        return Supervisor(args.config.resolve(), settings.engine.worker_count,
                          settings.engine.shutdown_grace).run()
    from engine.app import Engine

    try:
        engine = Engine(settings, worker)
    except SettingsError as exc:  # the worklist mapping file, read when the engine is built
        _print_problems(exc)
        return 1
    from engine.errors import StorageFailure

    try:
        asyncio.run(engine.run_until_signal())
    except (OSError, StorageFailure) as exc:
        print(f"radflow: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_problems(exc: SettingsError) -> None:
    print(f"radflow: {len(exc.problems)} configuration error(s):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 1
    from engine.pipeline.rulesets import load_for_settings
    from engine.worklist.mapping import load_mapping

    problems = []
    try:
        load_mapping(settings.worklist.mapping_file)
    except SettingsError as exc:
        problems.extend(exc.problems)
    try:
        ruleset = load_for_settings(settings)  # every route and morph, every problem at once
    except SettingsError as exc:
        problems.extend(exc.problems)
    if problems:
        _print_problems(SettingsError(problems))
        return 1
    for lst in settings.dicom.listeners:
        if not lst.allowed_calling and not lst.accept_any_calling:
            # Valid (closed is the safe default) but almost never what was meant.
            print(f"{args.config}: warning: DICOM listener {lst.name!r} accepts no calling AE: "
                  "list them in allowed_calling (or set accept_any_calling: true)",
                  file=sys.stderr)
    listeners = ", ".join(f"{lst.ae_title}@{lst.host}:{lst.port}"
                          for lst in settings.dicom.listeners)
    if settings.storage.backend == "postgresql":
        from engine.durable.postgresql._common import where

        pg = settings.storage.postgresql
        storage = f"PostgreSQL {where(pg)} schema {pg.db_schema}"
    else:
        storage = f"SQLite {settings.storage.sqlite_path}"
    print(f"{args.config}: OK (DICOM {listeners}; storage {storage}; admin "
          f"http://{settings.http.host}:"
          f"{settings.http.port}; {len(ruleset.routes)} routes in {settings.routing.routes_dir}"
          f", ruleset {ruleset.version})")
    return 0


def cmd_rules_test(args: argparse.Namespace) -> int:
    """Dry run: which routes each file matches and why, the morph diffs, the destinations."""
    settings = _load(args.config)
    if settings is None:
        return 1
    configure_logging("warning", settings.logging.format)
    import datetime as dt
    import json

    from engine.morph import MorphKeys
    from engine.pipeline import dryrun
    from engine.pipeline.rulesets import load_for_settings

    try:
        ruleset = load_for_settings(settings)
    except SettingsError as exc:
        _print_problems(exc)
        return 1
    secret = settings.routing.secret
    keys = MorphKeys(secret.get_secret_value() if secret else None)
    when = None
    if args.time:
        try:
            when = dt.datetime.fromisoformat(args.time).astimezone()
        except ValueError:
            print("radflow: --time is ISO 8601, e.g. 2026-11-25T22:30", file=sys.stderr)
            return 2
    context = dryrun.context_for(calling_ae=args.calling_ae or "",
                                 called_ae=getattr(args, "called_ae", None) or "",
                                 source_ip=getattr(args, "source_ip", None) or "", when=when)
    failed = False
    results = []
    for path in args.files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            print(f"radflow: {path}: {exc.strerror or exc}", file=sys.stderr)
            failed = True
            continue
        if getattr(args, "step", False):
            run = dryrun.dry_run_step(data, ruleset, context, status=args.status,
                                      label=str(path))
        else:
            run = dryrun.dry_run(data, ruleset, keys, context, str(path))
        failed = failed or run.error is not None or any(p.error for p in run.previews)
        if args.json:
            results.append(dryrun.to_json(run))
        else:
            print(dryrun.render_text(run))
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    print(f"(dry run with ruleset {ruleset.version}: nothing was stored or sent)",
          file=sys.stderr)
    return 1 if failed else 0


# --- radflow worklist ... (against the configured store directly, not the HTTP API) -------
async def _with_worklist(settings: Settings,
                         work: Callable[[WorklistService], Awaitable[int]]) -> int:
    from engine.durable.store import open_store
    from engine.worklist.mapping import load_mapping
    from engine.worklist.service import WorklistService

    mapping = load_mapping(settings.worklist.mapping_file)
    store = open_store(settings.storage)
    await store.open()
    try:
        service = WorklistService(store, mapping, default_charset=settings.hl7.default_charset,
                                  pn_case_insensitive=settings.worklist.pn_case_insensitive)
        return await work(service)
    finally:
        await store.close()


def _item_line(stored: StoredWorklistItem) -> str:
    i = stored.item
    when = f"{i.scheduled_procedure_step_start_date} {i.scheduled_procedure_step_start_time[:4]}"
    return (f"{stored.id:>7}  {i.status.value:<12} {when:<13}  {i.modality:<4} "
            f"{i.scheduled_station_ae_title:<16} {i.accession_number:<16} {i.patient_id:<16} "
            f"{i.patient_name}")


def cmd_worklist(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 1
    # The command prints its own result; the engine's info lines would only repeat it.
    configure_logging("warning", settings.logging.format)

    async def run_list(service: WorklistService) -> int:
        from engine.admin.server import worklist_filters

        query = {k: v for k, v in (("status", args.status), ("patient_id", args.patient_id),
                                   ("accession_number", args.accession),
                                   ("modality", args.modality), ("date", args.date)) if v}
        try:
            constraints, statuses = worklist_filters(query)
        except ValueError as exc:
            print(f"radflow: {exc}", file=sys.stderr)
            return 2
        total, items = await service.list_items(constraints, statuses, args.limit, 0)
        print(f"{'id':>7}  {'status':<12} {'scheduled':<13}  {'mod':<4} {'station':<16} "
              f"{'accession':<16} {'patient id':<16} name")
        for stored in items:
            print(_item_line(stored))
        print(f"({len(items)} of {total})")
        return 0

    async def run_add(service: WorklistService) -> int:
        raw = args.file.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
        received = service.received(raw, listener="cli")
        (outcome,) = await service.accept_hl7_batch([received])
        note = " (duplicate: the original answer)" if outcome.duplicate else ""
        print(f"{outcome.code}{note}: journal {outcome.journal_id}, worklist items "
              f"{', '.join(map(str, outcome.worklist_item_ids)) or '-'}")
        for error in outcome.errors:
            where = f"{error.segment}-{error.field}" if error.segment and error.field \
                else error.segment or "message"
            print(f"  {where}: {error.text} ({int(error.code)})", file=sys.stderr)
        return 0 if outcome.code == "AA" else 1

    async def run_remove(service: WorklistService) -> int:
        from engine.errors import InvalidInput

        if args.purge:
            found = await service.delete_item(args.id)
            print(f"worklist item {args.id} deleted" if found else f"no worklist item {args.id}")
            return 0 if found else 1
        try:
            stored = await service.cancel_item(args.id)
        except InvalidInput as exc:
            print(f"radflow: {exc}", file=sys.stderr)
            return 1
        if stored is None:
            print(f"no worklist item {args.id}", file=sys.stderr)
            return 1
        print(f"worklist item {args.id} cancelled")
        return 0

    work = {"list": run_list, "add": run_add, "remove": run_remove}[args.action]
    try:
        return asyncio.run(_with_worklist(settings, work))
    except SettingsError as exc:
        _print_problems(exc)
        return 1

# --- radflow queue ... (delivery queues, against the configured store directly) -----------
def cmd_queue(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 1
    configure_logging("warning", settings.logging.format)
    from engine.durable.store import open_store
    from engine.egress.queues import QueueAdmin, dead_letter_json

    async def run() -> int:
        store = open_store(settings.storage)
        await store.open()
        try:
            queues = QueueAdmin(store, {**settings.destinations,
                                       **settings.audit.destinations()})
            dest = getattr(args, "destination", None)
            if dest is not None and not queues.known(dest):
                print(f"radflow: no destination {dest!r} in {args.config} (known: "
                      f"{', '.join(settings.destinations) or 'none'})", file=sys.stderr)
                return 2
            if args.action == "list":
                if args.dead:
                    total, items = await queues.dead_letters(dest, args.limit, 0)
                    print(f"{'id':>8}  {'destination':<16} {'kind':<6} {'attempts':>8}  "
                          f"{'dead since':<20}  last error")
                    for d in items:
                        j = dead_letter_json(d)
                        print(f"{d.id:>8}  {d.destination:<16} {d.kind:<6} {d.attempts:>8}  "
                              f"{j['dead_since']:<20}  {d.last_error or ''}")
                    print(f"({len(items)} of {total} dead letters)")
                    return 0
                print(f"{'destination':<16} {'type':<9} {'pending':>8} {'leased':>7} "
                      f"{'dead':>6}  oldest")
                for q in await queues.overview():
                    if dest is not None and q["destination"] != dest:
                        continue
                    age = q["oldest_age_seconds"]
                    print(f"{q['destination']:<16} {q['type']:<9} {q['pending']:>8} "
                          f"{q['leased']:>7} {q['dead']:>6}  "
                          f"{'-' if age is None else f'{age:.0f} s'}")
                return 0
            ids = args.id or None
            assert dest is not None  # retry and purge require it
            if ids is None and not args.all:
                print("radflow: name rows with --id, or pass --all for every dead letter of "
                      "the destination", file=sys.stderr)
                return 2
            if args.action == "retry":
                n = await queues.retry(dest, ids)
                print(f"{n} dead letter(s) of {dest} queued again (a running radflow sends "
                      f"them within its poll interval)")
            else:
                n = await queues.purge(dest, ids)
                print(f"{n} dead letter(s) of {dest} purged")
            return 0
        finally:
            await store.close()

    return asyncio.run(run())


# --- radflow spool verify (against the configured store and spool, engine running or not) -----
def cmd_spool_verify(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 1
    from engine.durable.spool import Spool
    from engine.durable.store import open_store
    from engine.durable.verify import VerifyCount, verify_spool

    async def run() -> int:
        store = open_store(settings.storage)
        await store.open()
        spool = Spool(settings.storage.spool_dir, 0)
        count = VerifyCount()
        by_study: dict[str, list[str]] = {}
        try:
            async for bad in verify_spool(store, spool, args.study, count):
                rec = bad.instance.record
                print(f"{rec.sop_instance_uid}  study {rec.study_instance_uid}  "
                      f"{rec.spool_path}  {bad.problem}")
                by_study.setdefault(rec.study_instance_uid or "?", []).append(
                    f"{rec.sop_instance_uid} {bad.problem.split(':')[0]}")
            await _note_damaged(store, by_study, settings.engine.node_id)
        finally:
            await store.close()
        scope = f"study {args.study}" if args.study else "the spool"
        print(f"{count.checked} object(s) checked in {scope}, {count.damaged} damaged or "
              "missing")
        return 1 if count.damaged else 0

    return asyncio.run(run())


#: studies with damaged objects put on the console's list of recent errors by one verify run
_NOTED_STUDIES = 50


async def _note_damaged(store: Any, by_study: dict[str, list[str]], node: str) -> None:
    """One note per study with damaged or missing objects (the first studies only: a lost
    disk must not push every other error off the console's list), beside what the engine
    finds on the way out. A store that refuses them costs the notes, not the report."""
    from engine.observability.recent_errors import KEEP, MERGE_SECONDS, ErrorNote

    now = time.time()
    notes = [ErrorNote("integrity_failed", f"spool verify: study {study}",
                       f"{len(found)} object(s) damaged or missing: " + "; ".join(found[:5])
                       + ("; ..." if len(found) > 5 else ""),
                       "", "spool.verify", now, now, len(found), node)
             for study, found in list(by_study.items())[:_NOTED_STUDIES]]
    if len(by_study) > _NOTED_STUDIES:
        rest = sum(len(f) for f in list(by_study.values())[_NOTED_STUDIES:])
        notes.append(ErrorNote("integrity_failed", "spool verify",
                               f"{rest} more object(s) damaged or missing in "
                               f"{len(by_study) - _NOTED_STUDIES} more studies", "",
                               "spool.verify", now, now, rest, node))
    if not notes:
        return
    try:
        await store.record_errors(notes, now - MERGE_SECONDS, KEEP)
    except Exception as exc:
        print(f"radflow: the findings were not added to the console's recent errors: {exc}",
              file=sys.stderr)


# --- radflow trace KEY (one order end to end, from the store) --------------------------------
def cmd_trace(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 1
    configure_logging("warning", settings.logging.format)
    from engine.dicom.vr import is_valid_uid
    from engine.durable.store import open_store
    from engine.durable.trace import TraceBy, trace_json

    async def run() -> dict[str, Any]:
        store = open_store(settings.storage)
        await store.open()
        try:
            # Without --accession/--study/--patient: a UID is a study; anything else an
            # accession number, and a patient ID when no order has that accession.
            tries: list[TraceBy] = [args.by] if args.by else (
                ["study"] if is_valid_uid(args.key) and "." in args.key
                else ["accession", "patient"])
            for by in tries:
                records = await store.trace(by, args.key)
                if not records.empty:
                    break
            return trace_json(by, args.key, records)
        finally:
            await store.close()

    answer = asyncio.run(run())
    if args.json:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
        return 0 if answer["found"] else 1
    if not answer["found"]:
        print(f"radflow: nothing known for {args.key!r}", file=sys.stderr)
        return 1
    keys = answer["keys"]
    print(f"{answer['by']} {answer['value']}")
    for name in ("accession_numbers", "study_instance_uids", "patient_ids",
                 "placer_order_numbers", "filler_order_numbers"):
        if keys[name]:
            print(f"  {name.replace('_', ' ')}: {', '.join(keys[name])}")
    for entry in answer["timeline"]:
        print(f"{entry['at']:<25} {entry['kind']:<15} {entry['summary']}")
    if answer["truncated"]:
        print("(cut: more records than one trace shows; use a narrower key)")
    return 0


# --- radflow destinations list|check (reach a destination now, without the engine) ---------
def cmd_destinations(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 1
    # The result printed below says what failed and why; pynetdicom's own error lines about
    # the same connection would only repeat it.
    configure_logging("error", settings.logging.format)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    from dataclasses import asdict

    from engine.egress.check import DestinationChecker
    from engine.egress.dispatcher import default_sender_factory

    checker = DestinationChecker(settings.destinations,
                                 default_sender_factory(settings.storage.spool_dir))
    if args.action == "list":
        items = checker.list()
        if args.json:
            print(json.dumps([asdict(d) for d in items], indent=2))
            return 0
        print(f"{'destination':<16} {'type':<9} {'tls':<4} target")
        for d in items:
            print(f"{d.name:<16} {d.type:<9} {'yes' if d.tls else 'no':<4} {d.target}")
        print(f"({len(items)} destinations in {args.config})")
        return 0
    names = list(settings.destinations) if args.all else args.names
    if not names:
        print("radflow: name a destination, or pass --all", file=sys.stderr)
        return 2
    unknown = [n for n in names if not checker.known(n)]
    if unknown:
        print(f"radflow: no destination {unknown[0]!r} in {args.config} (known: "
              f"{', '.join(settings.destinations) or 'none'})", file=sys.stderr)
        return 2

    async def run() -> list[dict[str, Any]]:
        return [(await checker.check(name)).to_json() for name in names]

    results = asyncio.run(run())
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            verdict = "ok" if r["ok"] else f"FAILED ({r['reason']})"
            print(f"{r['destination']}: {verdict} in {r['seconds'] * 1000:.0f} ms - "
                  f"{r['type']} {r['target']}\n  {r['detail']}")
    return 0 if all(r["ok"] for r in results) else 1
def cmd_db(args: argparse.Namespace) -> int:
    """The store's schema (status, migrate) and the move from SQLite to PostgreSQL (copy)."""
    settings = _load(args.config)
    if settings is None:
        return 1
    configure_logging("warning", settings.logging.format)
    from engine.errors import StorageFailure

    storage = settings.storage
    try:
        if args.action == "copy":
            return _db_copy(args, settings)
        if storage.backend == "postgresql":
            return asyncio.run(_db_postgresql(args.action, settings))
        return _db_sqlite(args.action, settings)
    except StorageFailure as exc:
        print(f"radflow: {exc}", file=sys.stderr)
        return 1


def _db_status_line(where: str, current: int, latest: int) -> str:
    if current > latest:
        state = f"NEWER than this radflow ({latest}): upgrade radflow before running it"
    elif current < latest:
        state = f"{latest - current} migration(s) pending (radflow db migrate, or start radflow)"
    else:
        state = "up to date"
    return f"{where}: schema version {current}, this radflow knows {latest}: {state}"


def _db_sqlite(action: str, settings: Settings) -> int:
    import sqlite3

    from engine.durable.sqlite import MIGRATIONS
    from engine.durable.sqlite._common import connect
    from engine.durable.sqlite.schema import migrate, schema_version

    path = settings.storage.sqlite_path
    if action == "status":
        if not path.exists():
            print(_db_status_line(f"SQLite {path} (not created yet)", 0, len(MIGRATIONS)))
            return 0
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            current = schema_version(conn)
        except sqlite3.OperationalError:  # no schema_migrations table yet
            current = 0
        finally:
            conn.close()
        print(_db_status_line(f"SQLite {path}", current, len(MIGRATIONS)))
        return 2 if current > len(MIGRATIONS) else 0
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    try:
        applied = migrate(conn)
    finally:
        conn.close()
    print(f"SQLite {path}: " + (f"applied migration(s) {', '.join(map(str, applied))}"
                                if applied else "nothing to do") + f"; schema version "
          f"{len(MIGRATIONS)}")
    return 0


async def _db_postgresql(action: str, settings: Settings) -> int:
    from engine.durable.postgresql import MIGRATIONS, PostgresStore

    migrate = action == "migrate"
    store = PostgresStore(settings.storage.postgresql, connect_attempts=1, migrate=False)
    where = f"PostgreSQL {store.where} schema {settings.storage.postgresql.db_schema}"
    await store.open()
    try:
        status = await store.schema_status()
    finally:
        await store.close()
    if not migrate:
        print(_db_status_line(where, status.current, status.latest))
        return 2 if status.too_new else 0
    store = PostgresStore(settings.storage.postgresql, connect_attempts=1, migrate=True)
    await store.open()
    await store.close()
    pending = status.pending
    print(f"{where}: " + (f"applied migration(s) {', '.join(map(str, pending))}" if pending
                          else "nothing to do") + f"; schema version {len(MIGRATIONS)}")
    return 0


def _db_copy(args: argparse.Namespace, settings: Settings) -> int:
    if settings.storage.backend != "postgresql":
        print("radflow: db copy fills the PostgreSQL database of the configuration: set "
              "storage.backend: postgresql (and storage.postgresql) first", file=sys.stderr)
        return 2
    from engine.durable.postgresql._common import where
    from engine.durable.postgresql.copy_from_sqlite import copy

    cfg = settings.storage.postgresql
    print(f"copying {args.source} -> PostgreSQL {where(cfg)} schema {cfg.db_schema} "
          "(radflow must be stopped on both)")
    report = copy(args.source, cfg, lambda table, n: print(f"  {table:<26} {n:>10} rows"))
    print(f"copied {report.total} rows in one transaction; spool files stay where they are "
          f"({settings.storage.spool_dir})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from engine.demo import run_demo

    code: int = run_demo(keep=args.keep, verbose=args.verbose)
    return code

# --- radflow users ... (console and API users, against the configured store directly) ------
def _read_password(args: argparse.Namespace) -> str | None:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        import getpass

        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("radflow: the two passwords differ", file=sys.stderr)
            return None
    if len(password) < 10:
        print("radflow: a password has at least 10 characters", file=sys.stderr)
        return None
    return password


def cmd_users(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 1
    configure_logging("warning", settings.logging.format)
    from engine.admin.access import hash_password, new_token, now_iso
    from engine.durable.access import ChangeRecord
    from engine.durable.store import open_store

    who = f"cli:{os.environ.get('USER') or os.environ.get('LOGNAME') or os.getuid()}"

    async def run() -> int:
        store = open_store(settings.storage)
        await store.open()

        async def record(what: str) -> None:
            await store.record_change(ChangeRecord(
                at=now_iso(), user=who, peer_host="local", method="CLI",
                path=f"radflow users {args.action}", status=0, detail=what))

        try:
            if args.action == "list":
                print(f"{'name':<24} {'role':<9} {'locked':<6}  created")
                for u in await store.list_users():
                    import time

                    locked = "yes" if u.locked_until > time.time() else "no"
                    print(f"{u.name:<24} {u.role:<9} {locked:<6}  {u.created_at}")
                for t in await store.list_tokens():
                    state = f"revoked {t.revoked_at}" if t.revoked_at else \
                        f"last used {t.last_used_at or 'never'}"
                    print(f"  token {t.id}: {t.user} {t.label!r} ({state})")
                return 0
            if args.action == "revoke-token":
                if not await store.revoke_token(args.id, now_iso()):
                    print(f"radflow: no live token {args.id}", file=sys.stderr)
                    return 2
                await record(f"token {args.id} revoked")
                print(f"token {args.id} revoked")
                return 0
            name = args.name
            if args.action == "add":
                password = _read_password(args)
                if password is None:
                    return 2
                hashed = await asyncio.to_thread(hash_password, password)
                if not await store.add_user(name, args.role, hashed, now_iso()):
                    print(f"radflow: user {name!r} exists (use passwd or --role on passwd)",
                          file=sys.stderr)
                    return 2
                await record(f"user {name} added as {args.role}")
                print(f"user {name} added ({args.role})")
            elif args.action == "passwd":
                password = _read_password(args)
                if password is None:
                    return 2
                hashed = await asyncio.to_thread(hash_password, password)
                if not await store.update_user(name, now_iso(), args.role, hashed):
                    print(f"radflow: no user {name!r}", file=sys.stderr)
                    return 2
                await record(f"user {name} new password" + (f", role {args.role}"
                                                             if args.role else ""))
                print(f"password of {name} set (any lock-out lifted)")
            elif args.action == "remove":
                if not await store.remove_user(name):
                    print(f"radflow: no user {name!r}", file=sys.stderr)
                    return 2
                await record(f"user {name} removed")
                print(f"user {name} and their tokens removed")
            elif args.action == "token":
                if await store.get_user(name) is None:
                    print(f"radflow: no user {name!r}", file=sys.stderr)
                    return 2
                token, hashed = new_token()
                tid = await store.add_token(name, args.label, hashed, now_iso())
                await record(f"token {tid} ({args.label}) for {name}")
                print(f"token {tid} for {name} (shown once, store it now):")
                print(token)
            return 0
        finally:
            await store.close()

    return asyncio.run(run())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"radflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH,
                       help=f"settings file (default {DEFAULT_CONFIG_PATH})")
        return p

    run = with_config(sub.add_parser("run", help="run the engine until SIGTERM/SIGINT"))
    run.add_argument("--workers", metavar="N|auto",
                     help="worker processes sharing the listening ports (engine.workers; "
                          "auto: one per core)")
    run.set_defaults(func=cmd_run)
    with_config(sub.add_parser("check-config", help="validate settings; print every error")
                ).set_defaults(func=cmd_check_config)
    rules = sub.add_parser("rules", help="routing rules: dry runs")
    rules_sub = rules.add_subparsers(dest="action", required=True)
    rules_test = with_config(rules_sub.add_parser(
        "test", help="which routes DICOM files match, the morph diffs and the destinations "
                     "(sends nothing)"))
    rules_test.add_argument("files", nargs="+", type=Path, metavar="FILE")
    rules_test.add_argument("--calling-ae", help="calling AE title to assume")
    rules_test.add_argument("--called-ae", help="called AE title to assume")
    rules_test.add_argument("--source-ip", help="source address to assume")
    rules_test.add_argument("--time", help="evaluation time, ISO 8601 (default: now)")
    rules_test.add_argument("--json", action="store_true", help="JSON, as the HTTP API")
    rules_test.set_defaults(func=cmd_rules_test)
    step_test = with_config(rules_sub.add_parser(
        "test-step", help="which procedure_step routes an MPPS event matches, and the messages "
                          "they would queue (nothing is stored or sent)"))
    step_test.add_argument("files", nargs="+", type=Path, metavar="FILE.json",
                           help="the step's MPPS attributes as DICOM JSON (PS3.18 F.2), e.g. "
                                "the 'dataset' of GET /api/v1/procedure-steps/{sop_instance_uid}")
    step_test.add_argument("--status", choices=["IN PROGRESS", "COMPLETED", "DISCONTINUED"],
                           help="the event's status (default: the attributes' own)")
    step_test.add_argument("--calling-ae", help="the modality's AE title to assume")
    step_test.add_argument("--time", help="evaluation time, ISO 8601 (default: now)")
    step_test.add_argument("--json", action="store_true", help="JSON, as the HTTP API")
    step_test.set_defaults(func=cmd_rules_test, step=True)
    worklist = sub.add_parser("worklist", help="the Modality Worklist: list, add, remove")
    wl_sub = worklist.add_subparsers(dest="action", required=True)
    wl_list = with_config(wl_sub.add_parser("list", help="worklist items, newest first"))
    wl_list.add_argument("--status", help="comma-separated statuses (default: all)")
    wl_list.add_argument("--patient-id")
    wl_list.add_argument("--accession")
    wl_list.add_argument("--modality")
    wl_list.add_argument("--date", help="D, D-, -D or D1-D2 (YYYYMMDD)")
    wl_list.add_argument("--limit", type=int, default=100)
    wl_add = with_config(wl_sub.add_parser(
        "add", help="apply an HL7 order message from a file, as if received over MLLP"))
    wl_add.add_argument("file", type=Path)
    wl_remove = with_config(wl_sub.add_parser("remove", help="cancel an item (or --purge it)"))
    wl_remove.add_argument("id", type=int)
    wl_remove.add_argument("--purge", action="store_true", help="delete the row instead")
    worklist.set_defaults(func=cmd_worklist)
    queue = sub.add_parser("queue", help="delivery queues: list, retry or purge dead letters")
    q_sub = queue.add_subparsers(dest="action", required=True)
    q_list = with_config(q_sub.add_parser("list", help="queue depth per destination, or "
                                                       "--dead for the dead letters"))
    q_list.add_argument("destination", nargs="?", help="only this destination")
    q_list.add_argument("--dead", action="store_true", help="list dead letters with errors")
    q_list.add_argument("--limit", type=int, default=100)
    for name, text in (("retry", "send dead letters again (attempts start from zero)"),
                       ("purge", "delete dead letters")):
        q_cmd = with_config(q_sub.add_parser(name, help=text))
        q_cmd.add_argument("destination")
        q_cmd.add_argument("--id", type=int, action="append", help="a row id (repeatable)")
        q_cmd.add_argument("--all", action="store_true", help="every dead letter of it")
    queue.set_defaults(func=cmd_queue)
    spool = sub.add_parser("spool", help="the spool of received objects: verify")
    spool_sub = spool.add_subparsers(dest="spool_command", required=True)
    verify = with_config(spool_sub.add_parser(
        "verify", help="check every object (or one study's) against the size and SHA-256 "
                       "recorded at intake; exit 1 when any is damaged or missing"))
    verify.add_argument("--study", metavar="UID", help="only this Study Instance UID")
    verify.set_defaults(func=cmd_spool_verify)
    trace = with_config(sub.add_parser(
        "trace", help="one order end to end: HL7, worklist, MPPS, instances, routes, "
                      "deliveries as one timeline"))
    trace.add_argument("key", help="an accession number, Study Instance UID or patient ID")
    by = trace.add_mutually_exclusive_group()
    for name, what in (("accession", "an accession number"), ("study", "a Study Instance UID"),
                       ("patient", "a patient ID")):
        by.add_argument(f"--{name}", dest="by", action="store_const", const=name,
                        help=f"KEY is {what}")
    trace.add_argument("--json", action="store_true", help="JSON, as the HTTP API")
    trace.set_defaults(func=cmd_trace, by=None)
    dests = sub.add_parser("destinations", help="configured destinations: list, or check "
                                                "that one answers (C-ECHO, MLLP connect, GET)")
    d_sub = dests.add_subparsers(dest="action", required=True)
    d_list = with_config(d_sub.add_parser("list", help="name, type, target, TLS"))
    d_list.add_argument("--json", action="store_true", help="JSON, as the HTTP API")
    d_check = with_config(d_sub.add_parser(
        "check", help="reach destinations now as a delivery would; latency and the exact "
                      "error (exit 1 if any fails)"))
    d_check.add_argument("names", nargs="*", metavar="NAME")
    d_check.add_argument("--all", action="store_true", help="every configured destination")
    d_check.add_argument("--json", action="store_true", help="JSON, as the HTTP API")
    dests.set_defaults(func=cmd_destinations)
    db = sub.add_parser("db", help="the database: schema status, migrations, copy from SQLite")
    db_sub = db.add_subparsers(dest="action", required=True)
    with_config(db_sub.add_parser("status", help="the schema version against this radflow's"))
    with_config(db_sub.add_parser("migrate", help="apply pending migrations (once, even with "
                                                  "several nodes starting)"))
    db_copy = with_config(db_sub.add_parser(
        "copy", help="fill the (empty) PostgreSQL database of the configuration from a stopped "
                     "SQLite installation"))
    db_copy.add_argument("--from", dest="source", type=Path, required=True,
                         metavar="SQLITE_PATH", help="the installation's radflow.db")
    db.set_defaults(func=cmd_db)
    users = sub.add_parser("users", help="console and API users: add, passwd, remove, list, "
                                         "API tokens")
    u_sub = users.add_subparsers(dest="action", required=True)
    with_config(u_sub.add_parser("list", help="users, roles, lock-outs and API tokens"))
    for action, text in (("add", "add a user (password asked twice, or --password-stdin)"),
                         ("passwd", "set a user's password (lifts a lock-out); --role too")):
        u_cmd = with_config(u_sub.add_parser(action, help=text))
        u_cmd.add_argument("name")
        u_cmd.add_argument("--role", choices=("viewer", "operator", "admin"),
                           default="viewer" if action == "add" else None)
        u_cmd.add_argument("--password-stdin", action="store_true",
                           help="read the password from the first line of standard input")
    with_config(u_sub.add_parser("remove", help="remove a user and their tokens")
                ).add_argument("name")
    u_token = with_config(u_sub.add_parser("token", help="create an API token for a user "
                                                         "(printed once)"))
    u_token.add_argument("name")
    u_token.add_argument("--label", default="cli", help="what the token is for")
    with_config(u_sub.add_parser("revoke-token", help="revoke an API token by id")
                ).add_argument("id", type=int)
    users.set_defaults(func=cmd_users)
    demo = sub.add_parser("demo", help="a whole flow on loopback: order, worklist, MPPS, "
                                       "images, routing, delivery; a summary at the end")
    demo.add_argument("--keep", action="store_true", help="keep the demo's folder")
    demo.add_argument("--verbose", action="store_true", help="show radflow's own log lines")
    demo.set_defaults(func=cmd_demo)
    return parser


#: what a shell reports for a command that died of SIGPIPE (128 + 13)
_EXIT_BROKEN_PIPE = 141


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # inside the try: a reader gone at exit must not end in a traceback
    except BrokenPipeError:
        # The reader (``| head``) stopped reading: not an error of ours. Python's own advice:
        # point stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return _EXIT_BROKEN_PIPE
    return code
