"""Oversell risk: how many units a channel is expected to sell that are not there, per SKU, and the buffer
that keeps that under a target (docs/oversell-risk.md states the model and how it was checked).

Under a rate limit a channel cannot hear every change at once. While it lists L units of a SKU and should
list L* (its rules applied to the canonical quantity), each of its sales past L* is a unit sold that it
should not have. Until the push lands, the channel sells D units, D ~ Poisson(lambda T), where lambda is
the SKU's sales velocity on that channel and T the channel's time to land a push. The expected units sold
past L* are

    risk = E[min(D, L)] - E[min(D, L*)] = sum over k in (L*, L] of P(D >= k)

What it needs, learned from the stream the worker reads anyway:
* lambda: an exponentially weighted rate of each SKU's takes (stock.changed with a negative delta) per
  source channel, time constant `tau_s`; a small prior for SKUs never seen selling;
* T: an exponentially weighted mean of the channel's commit-to-acceptance time (the measured lag) of the
  pushes that had some risk, weighted by it: the riskiest SKUs go ahead of the queue, so that is
  its time to land (weighted by each push's risk; the plain mean over every push, `land_s`, is reported
  beside it);
* L: the quantity the channel last accepted for the SKU (remembered per SKU, a bounded number of them),
  else what it listed before the change (its rules applied to the quantity before it).

The worker pushes the SKUs of highest risk first (consumers/coalescer.py; the three ranks of
consumers/ranks.py break ties), reports the held SKUs' total risk (`stocksync status`, metric
stocksync_oversell_risk_units), and with `buffer = "auto"` lists each SKU below the canonical quantity by
the smallest buffer b that other channels' demand during this channel's time to land exceeds with
probability at most oversell_target / 10,000 (a unit sold elsewhere while this channel still lists it
would be oversold here).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Mapping

from stocksync.channels import Rules

LISTED_MEMORY = 100_000  # SKUs whose last accepted quantity is remembered (the least recently pushed go)
RISKY_PRIOR_UNITS = 0.1  # the weight (expected units) of the plain mean lag in land_risky_s
TAIL_SIGMAS = 12.0  # a Poisson tail is summed this many standard deviations past its mean, then ends


class Rate:
    """An exponentially weighted rate of events (units per second) with time constant tau_s."""

    __slots__ = ("value", "stamp")

    def __init__(self) -> None:
        self.value, self.stamp = 0.0, time.monotonic()

    def at(self, now: float, tau_s: float) -> float:
        return self.value * math.exp(-(now - self.stamp) / tau_s)

    def add(self, units: float, now: float, tau_s: float) -> None:
        self.value = self.at(now, tau_s) + units / tau_s
        self.stamp = now


def expected_min(mean: float, n: int) -> float:
    """E[min(D, n)] for D ~ Poisson(mean): the sum over k = 1..n of P(D >= k)."""
    if n <= 0 or mean <= 0:
        return 0.0
    if mean > 50:  # normal approximation: the exact sum would take ~mean steps
        sd = math.sqrt(mean)
        z = (n - mean) / sd
        pdf, sf = math.exp(-z * z / 2) / math.sqrt(2 * math.pi), 0.5 * math.erfc(z / math.sqrt(2))
        return max(0.0, min(float(n), mean - ((mean - n) * sf + sd * pdf)))  # E[D] - E[(D - n)+]
    last = min(n, int(mean + TAIL_SIGMAS * math.sqrt(mean) + 20))
    pmf, cdf, total = math.exp(-mean), 0.0, 0.0
    for k in range(1, last + 1):
        cdf += pmf  # P(D <= k - 1)
        total += 1.0 - cdf  # P(D >= k)
        pmf *= mean / k
    return total


def quantile(mean: float, tail: float) -> int:
    """The smallest b with P(D > b) <= tail, D ~ Poisson(mean)."""
    if mean <= 0:
        return 0
    if mean > 50:
        return max(0, math.ceil(mean + _normal_z(tail) * math.sqrt(mean)))
    pmf = math.exp(-mean)
    cdf, b = pmf, 0
    while 1.0 - cdf > tail and b < mean + TAIL_SIGMAS * math.sqrt(mean) + 20:
        b += 1
        pmf *= mean / b
        cdf += pmf
    return b


def _normal_z(tail: float) -> float:
    """z with P(Z > z) = tail (bisection on erfc: good to a thousandth, enough for a buffer)."""
    lo, hi = -10.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(mid / math.sqrt(2)) > tail:
            lo = mid
        else:
            hi = mid
    return hi


class RiskModel:
    """One channel's view: velocities of the SKUs it and the others sell, its time to land a push."""

    def __init__(self, channel: str, rules: Rules, *, tau_s: float = 60.0, land_s: float = 1.0,
                 prior_per_s: float = 1 / 3600) -> None:
        self.channel, self.rules, self.tau_s, self.prior = channel, rules, tau_s, prior_per_s
        self.own: dict[str, Rate] = {}  # sku -> this channel's sales
        self.others: dict[str, Rate] = {}  # sku -> every other source's takes
        self.land_s = land_s  # the channel's time to land a push (EWMA of the measured lag)
        # the same weighted by each push's risk: the time to land of the pushes an oversell depends on (the
        # riskiest go first), which counts for a risk and a buffer. Under a rate limit the two differ by
        # orders of magnitude (market benchmark: Amazon's mean lag grew to 100 s behind a backlog of merely
        # stale SKUs), and a buffer sized on the backlog's lag held back units a channel could sell.
        self._risky_lag, self._risky_w = 0.0, 0.0  # decayed sums of risk x lag and of risk (land_risky_s)
        self.listed_now: OrderedDict[str, int] = OrderedDict()  # sku -> quantity the channel last accepted
        # sku -> the channel's rules with that SKU's overrides (stocksync.inventory_rules; the worker's
        # housekeeping replaces it when they change); every other SKU: self.rules
        self.overrides: Mapping[str, Rules] = {}

    def rules_for(self, sku: str) -> Rules:
        return self.overrides.get(sku, self.rules)

    def saw(self, sku: str, delta: int, source: str) -> None:
        """A change read from the stream: a take counts toward its source's velocity."""
        if delta >= 0:
            return
        rates = self.own if source == self.channel else self.others
        rate = rates.get(sku)
        if rate is None:
            rate = rates[sku] = Rate()
        rate.add(-delta, time.monotonic(), self.tau_s)

    def landed(self, sku: str, quantity: int, commit_ms: int, accepted_ms: int, risk: float = 0.0) -> None:
        """The channel accepted `quantity` for sku; the oldest change it covered was committed at commit_ms;
        `risk`: the push's risk when it was handed out (expected units)."""
        lag = max(0.0, (accepted_ms - commit_ms) / 1000)
        self.land_s += (lag - self.land_s) * 0.05  # (about the last 20 pushes)
        if risk > 0:  # weighted by the risk: about the last 20 expected units' pushes
            decay = 0.95 ** min(risk, 20.0)
            self._risky_lag, self._risky_w = self._risky_lag * decay + risk * lag, self._risky_w * decay + risk
        self.listed_now[sku] = quantity
        self.listed_now.move_to_end(sku)
        if len(self.listed_now) > LISTED_MEMORY:
            self.listed_now.popitem(last=False)

    @property
    def land_risky_s(self) -> float:
        """The risk-weighted time to land, with the plain mean as a prior worth RISKY_PRIOR_UNITS of risk (a
        channel whose pushes carry little risk keeps close to its plain mean, not to the 1 s start value)."""
        return (self._risky_lag + RISKY_PRIOR_UNITS * self.land_s) / (self._risky_w + RISKY_PRIOR_UNITS)

    def velocity(self, sku: str, now: float | None = None) -> float:
        rate = self.own.get(sku)
        return max(self.prior, rate.at(now or time.monotonic(), self.tau_s) if rate else 0.0)

    def buffer(self, sku: str) -> int:
        """The auto buffer: the units other channels sell during this channel's time to land, at the
        target's quantile (0 unless the rules say buffer = "auto")."""
        rules = self.rules_for(sku)
        if rules.buffer != "auto":
            return 0
        rate = self.others.get(sku)
        # (a SKU a buffer matters for sells here: once others sell it, it is listed above what it may and
        # its push goes ahead of the queue, so its time to land is that of the pushes that go ahead)
        mean = (rate.at(time.monotonic(), self.tau_s) if rate else 0.0) * self.land_risky_s
        return quantile(mean, rules.oversell_target / 10_000)

    def listed(self, sku: str, available: int) -> int:
        """What the channel should list: its rules (with the SKU's overrides), with the auto buffer where
        they ask for it."""
        return self.rules_for(sku).listed(available, self.buffer(sku))

    def risk(self, sku: str, available: int, delta: int) -> float:
        """Expected units the channel sells past what it should list, before this change lands there."""
        should = self.listed(sku, available)
        now_listed = self.listed_now.get(sku)
        if now_listed is None:
            now_listed = self.rules_for(sku).listed(available - delta)  # (as listed before the change)
        if now_listed <= should:
            return 0.0
        mean = self.velocity(sku) * self.land_risky_s  # (the riskiest go ahead of the queue)
        return expected_min(mean, now_listed) - expected_min(mean, should)
