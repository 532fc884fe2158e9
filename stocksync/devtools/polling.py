"""A model of the polling sync stocksync replaces, for the demo's comparison.

Each channel keeps its own count of a SKU and sells from it; every `interval_s` (15 minutes) a sync adds
up what every channel sold, takes it off the real stock, and sets every channel's count to what is left
(0 when nothing is). Between two syncs nothing stops two channels from selling the same units: that is
the oversell. The model is pure arithmetic on the same buyers the demo sends to stocksync: no Redis, no
clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Buyer:
    t: float  # simulated seconds from the start of the scenario
    channel: str
    qty: int
    order_id: str


@dataclass
class PollingResult:
    stock: int
    sold: int = 0  # units the channels accepted orders for
    orders: int = 0
    sold_out: int = 0  # buyers told "sold out" by their channel's own count
    oversold: int = 0  # units sold beyond the stock
    cancel: list[Buyer] = field(default_factory=list)  # orders past the stock: to cancel
    found_at: float | None = None  # simulated seconds: the sync that discovered the oversell


def simulate(stock: int, buyers: Iterable[Buyer], channels: Iterable[str], *, interval_s: float = 900.0,
             last_sync_s: float = -60.0) -> PollingResult:
    """Replay `buyers` (in time order) on channels synced every interval_s, the last sync at last_sync_s."""
    local = dict.fromkeys(channels, stock)
    result = PollingResult(stock)
    real = stock  # the stock the warehouse really has (negative: oversold)
    unsynced = 0  # units sold since the last sync
    next_sync = last_sync_s + interval_s
    buyers = sorted(buyers, key=lambda b: b.t)

    def sync(at: float) -> None:
        nonlocal real, unsynced
        real -= unsynced
        unsynced = 0
        if real < 0 and result.found_at is None:
            result.found_at = at
        for name in local:
            local[name] = max(real, 0)

    for b in buyers:
        while b.t >= next_sync:
            sync(next_sync)
            next_sync += interval_s
        if local[b.channel] < b.qty:
            result.sold_out += 1
            continue
        local[b.channel] -= b.qty
        unsynced += b.qty
        result.orders += 1
        result.sold += b.qty
        if result.sold > stock:
            result.cancel.append(b)
    sync(next_sync)  # the next sync after the traffic is when the seller finds out
    result.oversold = max(result.sold - stock, 0)
    return result
