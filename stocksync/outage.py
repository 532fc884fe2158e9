"""A bounded log of an outage (Redis unreachable): one line when it starts, a summary every `every_s`
while it lasts, one line when it ends; never a traceback per failed call.

Why: during a 30 s Redis outage a worker logged a traceback per held SKU per second (13,822 records,
55 MB) and the API two per 503 (42 MB): the logs that should explain the outage buried it. Now one
outage of T seconds writes at most 2 + T / every_s records per process role, whatever the traffic.

    outage = Outage(log, "Redis")
    outage.failed(error)   after a call failed for this reason (cheap: counts, logs only as said above)
    outage.ok()            after a call succeeded (cheap when there is no outage)
"""

from __future__ import annotations

import logging
import time

SUMMARY_EVERY_S = 30.0


class Outage:
    def __init__(self, log: logging.Logger, what: str, every_s: float = SUMMARY_EVERY_S, **fields) -> None:
        self.log, self.what, self.every_s, self.fields = log, what, every_s, fields
        self.since = 0.0  # when the outage started (time.monotonic()); 0: none
        self.errors = 0  # failed calls since it started
        self.told_at = 0.0  # when the last line about it was logged
        self.told_errors = 0

    @property
    def down(self) -> bool:
        return self.since > 0

    def failed(self, error: BaseException, where: str = "") -> None:
        now = time.monotonic()
        self.errors += 1
        reason = f"{type(error).__name__}: {error}"
        if not self.since:
            self.since = self.told_at = now
            self.told_errors = self.errors = 1
            self.log.warning("%s unavailable%s (%s); calls fail until it answers again, summarised every %.0f s",
                             self.what, f" ({where})" if where else "", reason, self.every_s,
                             extra={"outage": "started", **self.fields})
        elif now - self.told_at >= self.every_s:
            self.log.warning("%s still unavailable after %.1f s: %d failed calls in the last %.0f s (%s)", self.what,
                             now - self.since, self.errors - self.told_errors, now - self.told_at, reason,
                             extra={"outage": "ongoing", **self.fields})
            self.told_at, self.told_errors = now, self.errors

    def ok(self) -> None:
        if not self.since:
            return
        self.log.info("%s answers again after %.1f s (%d failed calls)", self.what, time.monotonic() - self.since,
                      self.errors, extra={"outage": "ended", **self.fields})
        self.since = 0.0
        self.errors = self.told_errors = 0
