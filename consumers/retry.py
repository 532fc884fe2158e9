"""Retrying a channel: exponential backoff with full jitter, and a circuit breaker.

The breaker counts consecutive failed calls of the whole channel (a SKU the channel refuses for good is
not the channel failing). After `threshold` of them it opens: the worker stops pulling and pushing. When
the open period ends it lets one probe call through (half open); success closes it, failure opens it
again for twice as long, up to `max_open_s`. `on_change(old, new)` hears of every change of state (the
worker logs them and counts them).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


def backoff_s(attempt: int, base_s: float, cap_s: float, retry_after: float | None = None,
              rng: random.Random | None = None) -> float:
    """Full jitter (uniform in [0, min(cap, base * 2^(attempt-1))]), never before Retry-After."""
    ceiling = min(cap_s, base_s * 2 ** max(attempt - 1, 0))
    delay = (rng or random).uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


class CircuitBreaker:
    def __init__(self, threshold: int = 5, open_s: float = 1.0, max_open_s: float = 30.0,
                 clock=time.monotonic, on_change: Callable[[str, str], None] | None = None) -> None:
        self.threshold, self.open_s, self.max_open_s = max(threshold, 1), open_s, max_open_s
        self.clock = clock
        self.on_change = on_change
        self._state = CLOSED
        self.failures = 0
        self.opens = 0  # consecutive openings (the open period doubles with each)
        self.until = 0.0
        self.probing = False
        self.opened_total = 0

    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, new: str) -> None:
        old, self._state = self._state, new
        if new != old and self.on_change is not None:
            self.on_change(old, new)

    def allow(self) -> bool:
        """May a call start now? In half-open state, only one (the probe) until it reports."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and self.clock() >= self.until:
            self.state, self.probing = HALF_OPEN, False
        if self.state == HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    @property
    def probe(self) -> bool:
        return self.state == HALF_OPEN

    def wait_s(self) -> float:
        return max(self.until - self.clock(), 0.0) if self.state == OPEN else 0.0

    def success(self) -> None:
        self.state, self.failures, self.opens, self.probing = CLOSED, 0, 0, False

    def failure(self) -> None:
        self.failures += 1
        if self.state == HALF_OPEN or self.failures >= self.threshold:
            self._open()

    def _open(self) -> None:
        period = min(self.open_s * 2 ** self.opens, self.max_open_s)
        self.opens += 1
        self.opened_total += 1
        self.until, self.probing = self.clock() + period, False
        self.state = OPEN  # (last: on_change sees the new open period)
