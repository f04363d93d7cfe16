"""Destination checks: is a configured destination reachable, and does it answer as it should?

Shared by ``radflow destinations list|check`` (which runs without the engine) and the admin API
(``GET /api/v1/destinations``, ``POST /api/v1/destinations/{name}/check``). A check builds the
destination's own sender (the dispatcher's factory) and calls its ``check``, so it goes through
the same addresses, AE titles, TLS contexts and credentials a delivery would: C-ECHO for
``dimse`` and ``mpps``, the TCP + TLS connection for ``hl7``, an authenticated GET for
``dicomweb`` (a QIDO-RS search) and ``fhir`` (``/metadata``). It reports the latency and the
exact error. It must not send any patient data, touch the outbox, or change a circuit breaker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from engine.egress.delivery import CheckableSender
from engine.egress.errors import DeliveryError, PermanentDeliveryError
from engine.observability.logging import get_logger
from engine.settings import (
    AuditFile,
    AuditRepository,
    CommitmentReports,
    DicomwebDestination,
    DimseDestination,
    Hl7Destination,
    MppsDestination,
)

if TYPE_CHECKING:
    from engine.egress.dispatcher import DestinationConfig, SenderFactory

log = get_logger("engine.egress.check")

#: a check never waits longer than this, whatever the destination's own timeouts say
CHECK_DEADLINE = 60.0


@dataclass(frozen=True, slots=True)
class DestinationInfo:
    """What a destination is, for listing: never its credentials."""

    name: str
    type: str
    target: str
    tls: bool


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check: ``ok`` with the peer's answer in ``detail``, or not ``ok``
    with the exact error in ``detail`` and its short label in ``reason``."""

    destination: str
    type: str
    target: str
    ok: bool
    seconds: float
    detail: str
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 4)
        return out


def describe(name: str, config: DestinationConfig) -> DestinationInfo:
    if isinstance(config, DimseDestination | MppsDestination):
        return DestinationInfo(name, config.type, f"{config.ae_title}@{config.host}:"
                               f"{config.port}", config.tls is not None)
    if isinstance(config, Hl7Destination):
        return DestinationInfo(name, config.type, f"{config.host}:{config.port}",
                               config.tls is not None)
    if isinstance(config, AuditRepository):
        return DestinationInfo(name, config.type, f"{config.host}:{config.port}",
                               config.transport == "tls")
    if isinstance(config, AuditFile):
        return DestinationInfo(name, config.type, str(config.path), False)
    if isinstance(config, CommitmentReports):
        return DestinationInfo(name, config.type, "modalities that ask for commitment", False)
    url = config.url if isinstance(config, DicomwebDestination) else config.base_url
    return DestinationInfo(name, config.type, url, url.startswith("https:"))


class DestinationChecker:
    """Lists the configured destinations and checks one at a time."""

    def __init__(self, destinations: Mapping[str, DestinationConfig],
                 factory: SenderFactory) -> None:
        self._destinations = destinations
        self._factory = factory

    def known(self, name: str) -> bool:
        return name in self._destinations

    def list(self) -> list[DestinationInfo]:
        return [describe(name, cfg) for name, cfg in self._destinations.items()]

    async def check(self, name: str) -> CheckResult:
        """Check ``name`` (a :class:`KeyError` if it is not configured)."""
        config = self._destinations[name]
        info = describe(name, config)
        sender = self._factory(name, config)
        started = time.perf_counter()
        ok, reason = False, None
        try:
            if not isinstance(sender, CheckableSender):
                raise PermanentDeliveryError(f"no check for {info.type} destinations",
                                             reason="unsupported")
            async with asyncio.timeout(CHECK_DEADLINE):
                detail = await sender.check()
            ok = True
        except DeliveryError as exc:
            detail, reason = str(exc), exc.reason
        except TimeoutError:
            detail, reason = f"no answer within {CHECK_DEADLINE:g} s", "timeout"
        finally:
            await sender.close()
        seconds = time.perf_counter() - started
        result = CheckResult(name, info.type, info.target, ok, seconds, detail, reason)
        (log.info if ok else log.warning)(
            "egress.destination.checked", destination=name, type=info.type,
            target=info.target, ok=ok, seconds=round(seconds, 4), reason=reason, detail=detail)
        return result
