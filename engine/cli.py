"""The ``radflow`` command line: ``run``, ``check-config`` and operator sub-commands.

Parses arguments, loads settings, configures logging and hands over to the engine or to a
one-shot command. It prints human-readable results to stdout and errors to stderr, and returns
a process exit code; it must not contain engine logic.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from engine import __version__
from engine.observability.logging import configure_logging
from engine.settings import DEFAULT_CONFIG_PATH, Settings, SettingsError, load_settings


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

    engine = Engine(settings)
    try:
        asyncio.run(engine.run_until_signal())
    except OSError as exc:
        print(f"radflow: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 1
    listeners = ", ".join(f"{lst.ae_title}@{lst.host}:{lst.port}"
                          for lst in settings.dicom.listeners)
    print(f"{args.config}: OK (DICOM {listeners}; admin http://{settings.http.host}:"
          f"{settings.http.port})")
    return 0


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
