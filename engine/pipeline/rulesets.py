"""The ruleset in use, and hot reload: SIGHUP or a change in the routes folder.

:class:`RulesManager` loads the routes folder when the engine is built (an invalid folder stops
``radflow run`` like an invalid config), then on :meth:`request_reload` (SIGHUP) or when its
poller sees a file change, compiles a new ruleset in a worker thread and swaps the reference
atomically. A failed reload keeps the old ruleset, logs ``rules.reload_failed`` with every
problem, counts it (``radflow_rules_reloads_total{outcome="failed"}``,
``radflow_rules_last_reload_ok``) and shows it in ``/readyz`` without making it fail: radflow
keeps routing with the rules that were valid. Outbox rows already written keep the morph steps
they froze. It must not route anything itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

from engine.dicom.audit import SOFTWARE_CONFIGURATION
from engine.hl7.message import SUPPORTED_CHARSETS, codec_for_charset
from engine.morph.ops import MorphKeys
from engine.observability import audit_sink
from engine.observability.logging import get_logger
from engine.observability.metrics import (
    RULES_LAST_RELOAD_OK,
    RULES_LOADED,
    RULES_RELOADS,
    RULES_ROUTES,
)
from engine.rules.loader import load_ruleset, watched_files
from engine.rules.ruleset import Ruleset
from engine.settings import Hl7Destination, Settings, SettingsError, SettingsProblem

log = get_logger("engine.rules")

#: the example value shipped in config/radflow.yaml; a site must choose its own
EXAMPLE_SECRET = "change-me-radflow-example-secret"


def load_for_settings(settings: Settings) -> Ruleset:
    """The ruleset of ``settings.routing`` (raises :class:`SettingsError`)."""
    routing = settings.routing
    options = destination_options(settings)
    ruleset = load_ruleset(routing.routes_dir,
                           {name: d.type for name, d in settings.destinations.items()},
                           has_secret=routing.secret is not None, uid_prefix=routing.uid_prefix)
    return dataclasses.replace(ruleset, destination_options=options)


def destination_options(settings: Settings) -> dict[str, dict[str, str]]:
    """What routing-time rendering needs of each ``hl7`` destination; a character set radflow
    cannot write is a :class:`SettingsError` (check-config reports it)."""
    options: dict[str, dict[str, str]] = {}
    problems: list[SettingsProblem] = []
    for name, dest in settings.destinations.items():
        if not isinstance(dest, Hl7Destination):
            continue
        if dest.charset:
            try:
                codec_for_charset(dest.charset)
            except ValueError:
                problems.append(SettingsProblem(
                    "configuration", None, f"destinations.{name}.charset",
                    f"unsupported HL7 character set {dest.charset!r}; use one of "
                    f"{', '.join(sorted(SUPPORTED_CHARSETS))}"))
        options[name] = {"charset": dest.charset,
                         "receiving_application": dest.receiving_application,
                         "receiving_facility": dest.receiving_facility}
    if problems:
        raise SettingsError(problems)
    return options


def _signature(folder: Path) -> tuple[tuple[str, int, int], ...]:
    out = []
    for path in watched_files(folder):
        with contextlib.suppress(OSError):
            st = path.stat()
            out.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(out)


class RulesManager:
    """Owns the current :class:`Ruleset` and its reloads."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        routing = settings.routing
        self.routes_dir = routing.routes_dir
        self.poll_seconds = routing.reload_poll_seconds
        secret = routing.secret.get_secret_value() if routing.secret else None
        self.keys = MorphKeys(secret)
        self.current: Ruleset = load_for_settings(settings)
        self.loaded_at = dt.datetime.now(dt.UTC)
        self.last_failure: list[SettingsProblem] | None = None
        self.last_failure_at: dt.datetime | None = None
        self._signature = _signature(self.routes_dir)
        self._task: asyncio.Task[None] | None = None
        self._reloading = asyncio.Lock()
        RULES_ROUTES.set(len(self.current.routes))
        RULES_LAST_RELOAD_OK.set(1)
        RULES_LOADED.labels(settings.engine.node_id, self.current.version).set(1)
        if secret == EXAMPLE_SECRET:
            log.warning("rules.example_secret",
                        detail="routing.secret is the shipped example; set your own")

    async def start(self) -> None:
        log.info("rules.loaded", routes=len(self.current.routes), ruleset=self.current.version,
                 files=len(self.current.files))
        if self.poll_seconds > 0:
            self._task = asyncio.create_task(self._watch(), name="rules-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def request_reload(self) -> None:
        """SIGHUP: reload now (on the loop; the work runs in a thread)."""
        asyncio.get_running_loop().create_task(self.reload("sighup"))

    async def reload(self, trigger: str = "api") -> bool:
        """Compile the folder again and swap; False (old ruleset kept) when it is invalid."""
        async with self._reloading:
            signature = await asyncio.to_thread(_signature, self.routes_dir)
            try:
                ruleset = await asyncio.to_thread(load_for_settings, self._settings)
            except SettingsError as exc:
                self._signature = signature
                self.last_failure = exc.problems
                self.last_failure_at = dt.datetime.now(dt.UTC)
                RULES_RELOADS.labels("failed").inc()
                RULES_LAST_RELOAD_OK.set(0)
                log.error("rules.reload_failed", trigger=trigger, errors=len(exc.problems),
                          problems=[str(p) for p in exc.problems[:20]],
                          kept_ruleset=self.current.version)
                refused = (f"route files refused ({trigger}): {len(exc.problems)} problem(s); "
                           "previous routes kept")
                audit_sink.notify(lambda a: a.security_alert(
                    SOFTWARE_CONFIGURATION, refused, subject=str(self.routes_dir)))
                return False
            self._signature = signature
            previous = self.current.version
            self.current = ruleset  # one reference: evaluations see the old or the new set
            self.loaded_at = dt.datetime.now(dt.UTC)
            self.last_failure = None
            self.last_failure_at = None
            RULES_RELOADS.labels("ok").inc()
            RULES_LAST_RELOAD_OK.set(1)
            RULES_ROUTES.set(len(ruleset.routes))
            node_id = self._settings.engine.node_id
            if previous != ruleset.version:
                # Set to 0, not removed: a multiprocess metrics file keeps every label seen.
                RULES_LOADED.labels(node_id, previous).set(0)
            RULES_LOADED.labels(node_id, ruleset.version).set(1)
            log.info("rules.reloaded", trigger=trigger, routes=len(ruleset.routes),
                     ruleset=ruleset.version, previous=previous)
            if previous != ruleset.version:
                audit_sink.notify(lambda a: a.security_alert(
                    SOFTWARE_CONFIGURATION, f"routes reloaded ({trigger}): "
                    f"{len(ruleset.routes)} route(s), version {ruleset.version}",
                    subject=str(self.routes_dir), failure=False))
            return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                signature = await asyncio.to_thread(_signature, self.routes_dir)
                if signature != self._signature:
                    await self.reload("file_change")
            except Exception:
                log.exception("rules.watch_failed")

    # --- status ------------------------------------------------------------------------------
    async def probe(self) -> tuple[bool, str]:
        """``/readyz`` detail: always ok (a bad reload keeps the old rules), with the state."""
        detail = f"{len(self.current.routes)} routes (ruleset {self.current.version})"
        if self.last_failure:
            first = self.last_failure[0]
            more = f" (+{len(self.last_failure) - 1} more)" if len(self.last_failure) > 1 else ""
            detail += f"; last reload failed, previous rules kept: {first}{more}"
        return True, detail

    def status(self) -> dict[str, Any]:
        rs = self.current
        return {
            "ruleset": rs.version,
            "routes_dir": str(self.routes_dir),
            "loaded_at": self.loaded_at.isoformat(),
            "files": list(rs.files),
            "reload": {"ok": self.last_failure is None,
                       "failed_at": self.last_failure_at.isoformat()
                       if self.last_failure_at else None,
                       "problems": [str(p) for p in self.last_failure or []]},
            "secret": {"set": self.keys.available, "fingerprint": self.keys.fingerprint},
            "profiles": sorted(rs.profiles),
            "routes": [route_json(r) for r in rs.routes],
        }


def route_json(route: Any) -> dict[str, Any]:
    return {
        "name": route.name, "description": route.description, "source": route.source,
        "enabled": route.enabled, "trigger": {
            "on": route.trigger.level, "quiet_seconds": route.trigger.quiet_seconds,
            "max_wait_seconds": route.trigger.max_wait_seconds},
        "destinations": list(route.destinations), "morph": list(route.morph_labels),
        "morph_steps": [s.describe() for s in route.morph], "stop": route.stop,
        "fallback": route.fallback,
    }
