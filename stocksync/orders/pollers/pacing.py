"""Client-side pacing of one order-API operation: a token bucket that a 429 empties and blocks.

Marketplaces give each operation of their order APIs a rate and a burst (SP-API: getOrders 0.0167/s burst
20, getOrderItems 0.5/s burst 30) and answer 429 past them. A poller that waits for its turn here spends its
quota evenly instead of bursting into 429s; when one comes anyway (another process shares the quota, the
plan is smaller than configured) the bucket is emptied, blocked for Retry-After and, when the reply names
the operation's rate (x-amzn-RateLimit-Limit), set to it.

Every rate is kept with a tenth of headroom: calls leave here evenly spaced but reach the marketplace
with their network's jitter, and one that arrives a few milliseconds early against a bucket paced to the
exact rate is a 429 (and a Retry-After of a second or more).
"""

from __future__ import annotations

import asyncio
import time

HEADROOM = 0.9


class Pace:
    """Up to `burst` calls at once, then `rate` a second (less the headroom); calls wait their turn."""

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a pace needs rate > 0 and burst >= 1, got {rate}, {burst}")
        self.limit, self.capacity = float(rate), float(burst)  # the marketplace's
        self.rate = self.limit * HEADROOM  # ours
        self.tokens, self.stamp = self.capacity, time.monotonic()
        self.blocked_until = 0.0
        self.waited_s = 0.0  # time callers spent waiting here (reported by the benchmark)
        self._turn = asyncio.Lock()

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    async def acquire(self) -> None:
        async with self._turn:
            start = time.monotonic()
            while True:
                now = time.monotonic()
                if now < self.blocked_until:
                    await asyncio.sleep(self.blocked_until - now)
                    continue
                self._refill(now)
                if self.tokens >= 1:
                    self.tokens -= 1
                    self.waited_s += now - start
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)

    def throttled(self, retry_after_s: float | None, rate: float | None = None) -> float:
        """The marketplace said 429: no call before Retry-After (else one token's time). Answers the wait."""
        if rate is not None and rate > 0:
            self.limit, self.rate = rate, rate * HEADROOM
        now = time.monotonic()
        self._refill(now)
        self.tokens = 0.0
        wait = retry_after_s if retry_after_s is not None else 1 / self.rate
        self.blocked_until = max(self.blocked_until, now + wait)
        return wait

    def told(self, rate: float | None) -> None:
        """A reply named the operation's rate (x-amzn-RateLimit-Limit): pace at it from now on."""
        if rate is not None and rate > 0 and rate != self.limit:
            self._refill(time.monotonic())
            self.limit, self.rate = rate, rate * HEADROOM
