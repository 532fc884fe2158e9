"""What a channel worker says about its channel's health as it changes, one log record per change:

* every circuit transition (consumers/retry.py): open (WARNING: the consecutive failures, the last error
  and how long calls stop), half open (INFO: one probe call), closed again (INFO: how long it was open),
  open again after a failed probe (WARNING);
* each throttled period: its start (WARNING, the first 429 and its Retry-After) and its end (INFO: how
  long it lasted and how many calls got a 429), the end found by a timer at the pause's end, renewed
  while further 429s push the pause on.

Nothing else changes: the breaker and the pause do the work, this only tells (an outage of 30 s leaves
an "open" and a "closed" line, with the error between).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable

from .retry import CLOSED, HALF_OPEN, OPEN

log = logging.getLogger(__name__)


class ChannelHealth:
    def __init__(self, channel: str, stats: collections.Counter, last_error: Callable[[], str]) -> None:
        self.channel, self.stats, self.last_error = channel, stats, last_error
        self.opened_at = 0.0
        self.throttled_since = 0.0  # 0: not throttled
        self.throttled_calls = 0  # stats["throttled"] when the period started
        self._timer: asyncio.TimerHandle | None = None

    def circuit_changed(self, breaker, old: str, new: str) -> None:
        """The breaker's on_change (breaker: consumers.retry.CircuitBreaker)."""
        if new == OPEN:
            if old == CLOSED:
                self.opened_at = time.monotonic()
            log.warning("%s: circuit open%s: no calls for %.1f s (last error: %s)", self.channel,
                        f" after {breaker.failures} consecutive failed calls" if old == CLOSED else
                        ": the probe call failed", breaker.wait_s(), self.last_error() or "-",
                        extra={"circuit": new})
        elif new == HALF_OPEN:
            log.info("%s: circuit half open: one probe call", self.channel, extra={"circuit": new})
        elif new == CLOSED:
            log.info("%s: circuit closed: the channel answers again (open for %.1f s)", self.channel,
                     time.monotonic() - self.opened_at if self.opened_at else 0.0, extra={"circuit": new})
            self.opened_at = 0.0

    def paused(self, until: float) -> None:
        """The channel-wide pause of a 429 now lasts until `until` (time.monotonic())."""
        now = time.monotonic()
        if not self.throttled_since:
            self.throttled_since = now
            self.throttled_calls = self.stats["throttled"] - 1
            log.warning("%s: throttled (HTTP 429): no calls for %.1f s", self.channel, until - now,
                        extra={"circuit": "throttled"})
        self._watch(until)

    def _watch(self, until: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # (no loop: a unit test of the state) the end goes untold
            return
        self._timer = loop.call_later(max(until - time.monotonic(), 0.0), self._ended)

    def _ended(self) -> None:
        self._timer = None
        self.ended(time.monotonic())

    def ended(self, now: float) -> None:
        """The pause is over (a longer pause re-arms the timer: this runs at the end of the last one)."""
        if self.throttled_since:
            log.info("%s: throttling ended after %.1f s (%d calls answered 429)", self.channel,
                     now - self.throttled_since, self.stats["throttled"] - self.throttled_calls)
            self.throttled_since = 0.0

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
