"""Backoff with jitter, give-up, and the circuit breaker (engine.egress.policy): pure arithmetic."""

from __future__ import annotations

import random

import pytest

from engine.egress.policy import CircuitBreaker, CircuitState, backoff_delay, gives_up
from engine.settings import RetryPolicy


def test_backoff_doubles_up_to_the_cap_without_jitter() -> None:
    p = RetryPolicy(initial_delay=2, max_delay=60, jitter=0)
    assert [backoff_delay(p, n) for n in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]


def test_backoff_jitter_stays_in_its_band_and_under_the_cap() -> None:
    p = RetryPolicy(initial_delay=10, max_delay=100, jitter=0.3)
    rng = random.Random(7)
    for attempts in range(1, 30):
        base = min(100.0, 10 * 2 ** (attempts - 1))
        for _ in range(50):
            d = backoff_delay(p, attempts, rng)
            assert base * 0.7 - 1e-9 <= d <= base + 1e-9
            assert d <= p.max_delay


def test_backoff_jitter_spreads_rows_that_failed_together() -> None:
    p = RetryPolicy(initial_delay=60, max_delay=600, jitter=0.2)
    rng = random.Random(1)
    delays = {round(backoff_delay(p, 3, rng), 3) for _ in range(100)}
    assert len(delays) > 90  # not a thundering herd


def test_backoff_huge_attempt_counts_do_not_overflow() -> None:
    p = RetryPolicy(initial_delay=5, max_delay=600, jitter=0)
    assert backoff_delay(p, 10_000) == 600
    assert backoff_delay(p, 0) == 5  # defensive: treated as the first attempt


@pytest.mark.parametrize(("attempts", "age_hours", "expected"), [
    (1, 0, False), (9, 0, False), (10, 0, True), (11, 0, True),
    (1, 71.9, False), (1, 72, True), (1, 500, True)])
def test_gives_up_after_attempts_or_age(attempts: int, age_hours: float, expected: bool) -> None:
    p = RetryPolicy(max_attempts=10, max_age_hours=72)
    now = 1_000_000.0
    assert gives_up(p, attempts, now - age_hours * 3600, now) is expected


def test_circuit_opens_after_consecutive_failures_and_probes_after_cooldown() -> None:
    cb = CircuitBreaker(3, cooldown=10, max_cooldown=100, rng=random.Random(0))
    assert cb.permit(0).allowed
    assert not cb.record_failure(0) and not cb.record_failure(1)
    assert cb.state is CircuitState.CLOSED
    assert cb.record_failure(2)
    assert cb.state is CircuitState.OPEN
    permit = cb.permit(3)
    assert not permit.allowed and 0 < permit.wait <= 12 - 1
    later = cb.open_until + 0.01
    probe = cb.permit(later)
    assert probe.allowed and probe.probe and cb.state is CircuitState.HALF_OPEN
    # only one probe at a time
    assert not cb.permit(later).allowed
    cb.record_success()
    assert cb.state is CircuitState.CLOSED and cb.permit(later).allowed and cb.failures == 0


def test_failed_probe_reopens_with_a_longer_rest_up_to_the_maximum() -> None:
    cb = CircuitBreaker(1, cooldown=10, max_cooldown=35, rng=random.Random(0))
    now = 0.0
    rests = []
    for _ in range(5):
        assert cb.record_failure(now)
        rests.append(cb.open_until - now)
        now = cb.open_until + 0.01
        assert cb.permit(now).probe
    # 10, 20, 35, 35, 35 (±20 % jitter)
    for rest, base in zip(rests, [10, 20, 35, 35, 35], strict=True):
        assert base * 0.8 - 1e-6 <= rest <= base * 1.2 + 1e-6


def test_success_resets_the_failure_count() -> None:
    cb = CircuitBreaker(3, cooldown=10, max_cooldown=10)
    cb.record_failure(0)
    cb.record_failure(0)
    cb.record_success()
    cb.record_failure(0)
    cb.record_failure(0)
    assert cb.state is CircuitState.CLOSED


def test_failures_while_open_do_not_extend_the_rest() -> None:
    cb = CircuitBreaker(1, cooldown=10, max_cooldown=10, rng=random.Random(0))
    cb.record_failure(0)
    until = cb.open_until
    assert not cb.record_failure(5)  # a batch that was in flight when it opened
    assert cb.open_until == until


def test_released_probe_lets_the_next_worker_probe() -> None:
    cb = CircuitBreaker(1, cooldown=1, max_cooldown=1, rng=random.Random(0))
    cb.record_failure(0)
    t = cb.open_until + 0.1
    assert cb.permit(t).probe
    cb.release_probe()  # nothing was ready to send
    assert cb.permit(t).probe
