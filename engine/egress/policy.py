"""Retry policy arithmetic, pure: backoff with jitter, give-up, and the circuit breaker.

The dispatcher owns these decisions (senders only classify); they live here, free of I/O and of
the clock (every function takes ``now``), so they are unit-tested exactly. It must not touch the
store, sockets or metrics.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import IntEnum

from engine.settings import RetryPolicy


def backoff_delay(policy: RetryPolicy, attempts: int, rng: random.Random | None = None
                  ) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1-based).

    ``initial_delay * 2**(attempts-1)``, capped at ``max_delay``, then scaled by a random factor
    in ``[1 - jitter, 1]``: never above ``max_delay``, and rows that failed together (a batch,
    a destination outage) spread out instead of returning as one thundering herd.
    """
    exponent = min(max(attempts, 1) - 1, 62)  # 2**62 s is past any cap; avoids float overflow
    base = min(policy.max_delay, policy.initial_delay * (2.0 ** exponent))
    r = (rng or random).random()
    return base * (1.0 - policy.jitter * r)


def gives_up(policy: RetryPolicy, attempts: int, created_at: float, now: float) -> bool:
    """True when a row that just failed (transiently) has used up its attempts or its age."""
    return attempts >= policy.max_attempts or now - created_at >= policy.max_age_hours * 3600


class CircuitState(IntEnum):
    CLOSED = 0  # normal: every worker sends
    OPEN = 1  # resting after consecutive failures: nobody sends until the cooldown ends
    HALF_OPEN = 2  # one worker sends one row as a probe; its result closes or reopens


@dataclass(frozen=True, slots=True)
class Permit:
    """``allowed`` False: wait ``wait`` seconds. ``probe``: send at most one row."""

    allowed: bool
    wait: float = 0.0
    probe: bool = False


class CircuitBreaker:
    """Per-destination breaker shared by that destination's workers (one event loop, so no
    locks). A batch in which nothing succeeded and something failed transiently is one failure;
    any success resets the count; permanent failures prove the peer answers and count as
    successes of the transport."""

    def __init__(self, failures_to_open: int, cooldown: float, max_cooldown: float,
                 rng: random.Random | None = None) -> None:
        self.failures_to_open = failures_to_open
        self.cooldown = cooldown
        self.max_cooldown = max(max_cooldown, cooldown)
        self._rng = rng or random.Random()
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.opened = 0  # consecutive openings: each doubles the rest, up to max_cooldown
        self.open_until = 0.0
        self._probing = False

    def permit(self, now: float) -> Permit:
        if self.state is CircuitState.CLOSED:
            return Permit(True)
        if self.state is CircuitState.OPEN:
            if now < self.open_until:
                return Permit(False, self.open_until - now)
            self.state = CircuitState.HALF_OPEN
        if self._probing:
            return Permit(False, min(1.0, self.cooldown))
        self._probing = True
        return Permit(True, probe=True)

    def record_success(self) -> None:
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.opened = 0
        self._probing = False

    def record_failure(self, now: float) -> bool:
        """Count a failure; True when this one opened (or reopened) the circuit."""
        self.failures += 1
        if self.state is CircuitState.OPEN:
            return False  # a batch that was already in flight when the circuit opened
        if self.state is CircuitState.HALF_OPEN or self.failures >= self.failures_to_open:
            rest = min(self.max_cooldown, self.cooldown * (2 ** min(self.opened, 20)))
            self.open_until = now + rest * (0.8 + 0.4 * self._rng.random())
            self.opened += 1
            self.state = CircuitState.OPEN
            self._probing = False
            return True
        return False

    def release_probe(self) -> None:
        """A probe permit was taken but nothing was sent (no row was ready)."""
        self._probing = False
