"""The circuit breaker and the backoff, on their own (no Redis), with an injected clock."""

from __future__ import annotations

import random

import pytest

from consumers.retry import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, backoff_s


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_the_circuit_opens_after_threshold_consecutive_failures(clock):
    breaker = CircuitBreaker(threshold=3, open_s=1.0, max_open_s=30.0, clock=clock)
    breaker.failure()
    breaker.failure()
    breaker.success()  # a success in between: the count starts again
    breaker.failure()
    breaker.failure()
    assert breaker.state == CLOSED and breaker.allow()
    breaker.failure()
    assert breaker.state == OPEN and breaker.opened_total == 1
    assert not breaker.allow() and breaker.wait_s() == 1.0
    clock.now += 0.4
    assert not breaker.allow() and breaker.wait_s() == pytest.approx(0.6)


def test_half_open_lets_one_probe_through_until_it_reports(clock):
    breaker = CircuitBreaker(threshold=1, open_s=1.0, clock=clock)
    breaker.failure()
    clock.now += 1.0
    assert breaker.allow() and breaker.state == HALF_OPEN and breaker.probe
    assert not breaker.allow() and not breaker.allow()  # one probe at a time
    breaker.probing = False  # the probe made no call (nothing to push): another may go
    assert breaker.allow() and not breaker.allow()
    breaker.success()
    assert breaker.state == CLOSED and breaker.allow() and breaker.allow()


def test_the_open_period_doubles_with_each_failed_probe_up_to_the_cap(clock):
    breaker = CircuitBreaker(threshold=1, open_s=1.0, max_open_s=5.0, clock=clock)
    breaker.failure()
    periods = []
    for _ in range(5):
        periods.append(breaker.wait_s())
        clock.now += breaker.wait_s()
        assert breaker.allow()  # the probe
        breaker.failure()  # fails: open again, for longer
        assert breaker.state == OPEN
    assert periods == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert breaker.opened_total == 6
    clock.now += breaker.wait_s()
    assert breaker.allow()
    breaker.success()  # closed: the next opening starts from open_s again
    breaker.failure()
    assert breaker.wait_s() == 1.0


def test_backoff_is_full_jitter_under_a_doubling_cap_and_never_before_retry_after():
    rng = random.Random(7)
    for attempt, ceiling in ((1, 0.1), (2, 0.2), (4, 0.8), (10, 30.0), (40, 30.0)):
        delays = [backoff_s(attempt, 0.1, 30.0, rng=rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # spread over the whole range, not a fixed delay
    assert all(backoff_s(1, 0.1, 30.0, retry_after=2.5, rng=rng) == 2.5 for _ in range(20))
    assert backoff_s(0, 0.1, 30.0, rng=rng) <= 0.1  # (attempt 0 counts as the first)
