"""The ``radflow`` command line: ``run``, ``check-config`` and operator sub-commands.

Parses arguments, loads settings, configures logging and hands over to the engine or to a
one-shot command. It prints human-readable results to stdout and errors to stderr, and returns
a process exit code; it must not contain engine logic.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from engine import __version__
from engine.observability.logging import configure_logging
from engine.settings import DEFAULT_CONFIG_PATH, Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from engine.worklist.model import StoredWorklistItem
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
    settings = _load(args.config)
    if settings is None:
        return 1
    configure_logging(settings.logging.level, settings.logging.format)
    from engine.app import Engine

    try:
        engine = Engine(settings)
    except SettingsError as exc:  # the worklist mapping file, read when the engine is built
        _print_problems(exc)
        return 1
    try:
        asyncio.run(engine.run_until_signal())
    except OSError as exc:
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
    from engine.worklist.mapping import load_mapping

    try:
        load_mapping(settings.worklist.mapping_file)
    except SettingsError as exc:
        _print_problems(exc)
        return 1
    listeners = ", ".join(f"{lst.ae_title}@{lst.host}:{lst.port}"
                          for lst in settings.dicom.listeners)
    print(f"{args.config}: OK (DICOM {listeners}; admin http://{settings.http.host}:"
          f"{settings.http.port})")
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"radflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH,
                       help=f"settings file (default {DEFAULT_CONFIG_PATH})")
        return p

    with_config(sub.add_parser("run", help="run the engine until SIGTERM/SIGINT")
                ).set_defaults(func=cmd_run)
    with_config(sub.add_parser("check-config", help="validate settings; print every error")
                ).set_defaults(func=cmd_check_config)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
