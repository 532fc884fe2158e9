"""The market benchmark's pure parts: the buyers, the warehouse's truth, the 15-minute polling model, and the
time a channel listed more than the canonical quantity allowed (bench/market.py drives the real processes).

Everything here is arithmetic on lists: no Redis, no HTTP, no clock, so that tests/test_market_model.py can
check it and the polling model runs in simulated time on the very buyers the real run sends.

Demand: buyers arrive at each channel as a Poisson process (its share of `rate` buyers a second); each picks
a SKU by Zipf popularity (rank k with weight 1/k**zipf_s) over `skus` SKUs and 1 unit (2 or 3 now and then).
A flash sale adds `flash_buyers` buyers for the `flash_units` units of one SKU of its own, spread evenly at
random over `flash_window_s` from `flash_at` of the run. The warehouse receives stock (receipts: units added
to a popular SKU) and counts stock (a count finds a few units missing, now and then one more). Stocks start
low for many SKUs (LOW_SHARE of them at 1-3 units) and for the rest near what the run would sell of them, so
that popular SKUs sell out during the run: a sell-out is where an oversell can happen.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

CHANNEL_SHARES = {"shopify": 0.4, "amazon": 0.4, "flipkart": 0.2}  # of the buyers (not of the flash sale's)
FLASH_SKU = "FLASH-1"
LOW_SHARE = 0.3  # SKUs that start at 1-3 units whatever their popularity
QTY_WEIGHTS = ((1, 0.90), (2, 0.08), (3, 0.02))


@dataclass(frozen=True)
class Demand:
    seconds: float = 60.0
    rate: float = 100.0  # buyers a second over every channel (the flash sale comes on top)
    skus: int = 10_000
    zipf_s: float = 1.0
    flash_buyers: int = 2_000  # 0: no flash sale
    flash_units: int = 50
    flash_window_s: float = 5.0
    flash_at: float = 0.4  # share of the run elapsed when the flash sale starts
    receipts_per_s: float = 1.0
    counts_per_s: float = 0.5
    seed: int = 1


@dataclass(frozen=True)
class Buyer:
    t: float  # seconds from the start of the run
    channel: str
    sku: str
    qty: int
    n: int  # the buyer's number (unique in a scenario)


@dataclass(frozen=True)
class StockOp:
    """A warehouse write: a receipt adds `units`; a count changes on_hand by `units` (a count found that
    many more, or fewer when negative), never below what is committed (see Truth.count)."""

    t: float
    kind: str  # "receipt" | "count"
    sku: str
    units: int


@dataclass
class Scenario:
    stock: dict[str, int]
    buyers: list[Buyer]
    ops: list[StockOp]


def sku_name(rank: int) -> str:
    return f"M{rank:05d}"


def scenario(d: Demand, channels: Mapping[str, float] = CHANNEL_SHARES) -> Scenario:
    """The run's initial stocks, buyers (by time) and warehouse writes (by time), from d.seed alone."""
    rng = random.Random(d.seed)
    weights = [1.0 / (k**d.zipf_s) for k in range(1, d.skus + 1)]
    cum = list(itertools.accumulate(weights))
    total_w = cum[-1]

    def pick() -> str:
        return sku_name(bisect.bisect_left(cum, rng.random() * total_w) + 1)

    stock = {}
    for k in range(1, d.skus + 1):
        expected = d.rate * d.seconds * weights[k - 1] / total_w * 1.12  # (1.12: the mean quantity)
        low = rng.random() < LOW_SHARE
        stock[sku_name(k)] = rng.randint(1, 3) if low else max(1, int(expected * rng.uniform(0.3, 1.5)) + rng.randint(0, 10))
    buyers = _buyers(d, channels, rng, pick)
    if d.flash_buyers:
        stock[FLASH_SKU] = d.flash_units
        names = list(channels)
        start = d.seconds * d.flash_at
        buyers += [Buyer(start + rng.uniform(0, d.flash_window_s), rng.choice(names), FLASH_SKU, 1, 0)
                   for _ in range(d.flash_buyers)]
    buyers.sort(key=lambda b: b.t)
    buyers = [Buyer(b.t, b.channel, b.sku, b.qty, n) for n, b in enumerate(buyers)]
    ops = [StockOp(t, "receipt", pick(), rng.randint(5, 50)) for t in _arrivals(rng, d.receipts_per_s, d.seconds)]
    ops += [StockOp(t, "count", pick(), rng.choice((-3, -2, -1, -1, 1))) for t in _arrivals(rng, d.counts_per_s, d.seconds)]
    ops.sort(key=lambda o: o.t)
    return Scenario(stock, buyers, ops)


def _arrivals(rng: random.Random, rate: float, seconds: float) -> list[float]:
    """Poisson arrival times in [0, seconds)."""
    out, t = [], 0.0
    while rate > 0:
        t += rng.expovariate(rate)
        if t >= seconds:
            return out
        out.append(t)
    return out


def _buyers(d: Demand, channels: Mapping[str, float], rng: random.Random, pick) -> list[Buyer]:
    qtys, qty_w = zip(*QTY_WEIGHTS, strict=True)
    out = []
    for channel, share in channels.items():
        for t in _arrivals(rng, d.rate * share, d.seconds):
            out.append(Buyer(t, channel, pick(), rng.choices(qtys, qty_w)[0], 0))
    return out


# ----- the warehouse's truth and the tallies -----------------------------------------------------------


@dataclass
class Tally:
    orders: int = 0  # orders the channel accepted
    units_sold: int = 0
    oversold_units: int = 0  # units of accepted orders the warehouse could not cover
    # units of buyers the channel turned away while the warehouse had them, and that were still unsold at
    # the end (settle_lost): a buyer turned away for units another buyer took later lost the seller nothing
    lost_sales_units: int = 0
    turned_away_in_stock_units: int = 0  # every buyer turned away while the warehouse had the units
    refused: int = 0  # buyers the channel turned away
    in_stock_refusals: Counter = field(default_factory=Counter)  # sku -> units turned away while in stock

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if k != "in_stock_refusals"}


class Truth:
    """What the warehouse really has of each SKU that no covered order claims. An order it cannot cover is
    an oversell: it is cancelled, so it takes nothing (as stocksync's intake refuses it)."""

    def __init__(self, stock: Mapping[str, int]) -> None:
        self.units = dict(stock)

    def has(self, sku: str, qty: int) -> bool:
        return self.units.get(sku, 0) >= qty

    def sell(self, sku: str, qty: int) -> bool:
        """An order a channel accepted: True if covered (the units are taken), False if oversold."""
        if not self.has(sku, qty):
            return False
        self.units[sku] -= qty
        return True

    def apply(self, op: StockOp) -> int:
        """A receipt or a count; answers the change of units (a count never goes below 0)."""
        before = self.units.get(op.sku, 0)
        self.units[op.sku] = max(before + op.units, 0)
        return self.units[op.sku] - before

    def tally(self, tally: Tally, sku: str, qty: int, accepted: bool) -> None:
        """Count one buyer's outcome at a channel into tally."""
        if accepted:
            tally.orders += 1
            tally.units_sold += qty
            if not self.sell(sku, qty):
                tally.oversold_units += qty
        else:
            tally.refused += 1
            if self.has(sku, qty):
                tally.turned_away_in_stock_units += qty
                tally.in_stock_refusals[sku] += qty

    def settle_lost(self, tallies: Mapping[str, Tally]) -> None:
        """Each channel's lost sales: its in-stock refusals of a SKU, up to what of it is still unsold now
        (shared out in the channels' order)."""
        for tally in tallies.values():
            tally.lost_sales_units = 0
        left = dict(self.units)
        for tally in tallies.values():
            for sku, units in tally.in_stock_refusals.items():
                lost = min(units, left.get(sku, 0))
                tally.lost_sales_units += lost
                left[sku] = left.get(sku, 0) - lost


# ----- the polling model -------------------------------------------------------------------------------


def simulate_polling(sc: Scenario, channels: Iterable[str], *, interval_s: float = 900.0,
                     last_sync_s: float = -60.0) -> dict[str, Tally]:
    """The same buyers on channels synced every interval_s (the last sync at last_sync_s, the run starting at
    0): each channel sells from its own count of each SKU; a sync sets every channel's count of every SKU to
    what the warehouse has. Receipts and counts reach the channels at the next sync."""
    truth = Truth(sc.stock)
    local = {ch: dict(sc.stock) for ch in channels}
    tallies = {ch: Tally() for ch in local}
    next_sync = last_sync_s + interval_s
    events = sorted([(b.t, 1, b) for b in sc.buyers] + [(o.t, 0, o) for o in sc.ops], key=lambda e: (e[0], e[1]))
    for t, _, item in events:
        while t >= next_sync:
            for counts in local.values():
                counts.update(truth.units)
            next_sync += interval_s
        if isinstance(item, StockOp):
            truth.apply(item)
            continue
        counts = local[item.channel]
        accepted = counts.get(item.sku, 0) >= item.qty
        if accepted:
            counts[item.sku] -= item.qty
        truth.tally(tallies[item.channel], item.sku, item.qty, accepted)
    truth.settle_lost(tallies)
    return tallies


# ----- overlisting: how long a channel listed more than the canonical quantity --------------------------


@dataclass
class Listing:
    """What a channel lists of one SKU over time: pushes set it, its own sales lower it (ms, kind, units)."""

    changes: list[tuple[int, str, int]] = field(default_factory=list)  # kind: "push" (set) | "sale" (minus)


def overlisted_ms(canonical: Mapping[str, Sequence[tuple[int, int]]], listings: Mapping[str, Listing],
                  start: Mapping[str, int], end_ms: int) -> list[int]:
    """The episodes (ms each) in which one channel listed more of a SKU than its canonical quantity.

    canonical: sku -> [(ms, available)] by time (the stream's changes); listings: sku -> that channel's
    pushes and sales; start: sku -> the quantity both start at. An episode opens when the listing exceeds
    the canonical quantity (a sale elsewhere or a count lowered it, or a push carried an old value) and
    closes when it no longer does (a push landed, or the channel sold down to it); one still open at
    end_ms counts up to end_ms. At the same ms the canonical change comes first, then pushes, then sales."""
    out = []
    order = {"canonical": 0, "push": 1, "sale": 2}
    empty = Listing()
    for sku in sorted(set(canonical) | set(listings)):
        merged = [(ms, "canonical", q) for ms, q in canonical.get(sku, ())] + list(listings.get(sku, empty).changes)
        merged.sort(key=lambda c: (c[0], order[c[1]]))
        allowed = listed = start.get(sku, 0)
        since = None
        for ms, kind, q in merged:
            if kind == "canonical":
                allowed = q
            elif kind == "push":
                listed = q
            else:
                listed -= q
            if listed > allowed and since is None:
                since = ms
            elif listed <= allowed and since is not None:
                out.append(ms - since)
                since = None
        if since is not None:
            out.append(max(end_ms - since, 0))
    return out


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile of values (nearest rank), None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
