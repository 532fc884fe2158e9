"""Push order: which change a channel hears first. The ranks, the rule that gives them, and who reads them.

Under a rate limit a channel cannot take every change at once, so the order of pushes matters more than
their speed: first the SKUs where an oversell can happen. Three ranks, lower goes first:

* ZERO: a drop to 0 listed. The channel still lists units that no longer exist, so each of its sales is
  an oversell;
* URGENT: a listed quantity at or below the low-stock mark (worker.low_stock), or a sharp drop (at least
  half of what was there): an oversell may happen;
* NORMAL: the rest.

Before the ranks comes the risk (consumers/risk.py): the expected units a channel sells that are not
there before a push lands, from each SKU's sales velocity and the channel's measured time to land a
push. The coalescer hands out the SKUs of highest risk first; the ranks order those of equal risk (every
SKU without sales history has none).

Who reads them: the worker ranks each entry as it takes it in (PushOrder); the coalescer hands out SKUs
by rank, then age (consumers/coalescer.py); a push carries the rank of its most urgent SKU to the adapter
(`Adapter.push(..., rank=...)`), whose rate limiter serves waiting calls by rank, then arrival
(`RateLimiter.acquire(rank=...)`), so a drop to 0 handed to the adapter after ordinary pushes does not
queue behind them there either. Pushes outside the stream (resync, the initial sync, dead-letter replay,
listing 0 under a retired channel SKU) go at NORMAL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

ZERO, URGENT, NORMAL = 0, 1, 2


class Change(Protocol):
    """A change as the rule needs it: the SKU, the quantity after it and the change itself."""

    sku: str
    available: int
    delta: int


class PushOrder:
    """The rank of a change on one channel: what it lists (`listed(sku, available)`: its rules, with the
    auto buffer where they ask for it) decides, low_stock what is low."""

    def __init__(self, listed: Callable[[str, int], int], low_stock: int) -> None:
        self.listed, self.low_stock = listed, low_stock

    def __call__(self, change: Change) -> int:
        listed = self.listed(change.sku, change.available)
        delta = change.delta
        if listed == 0 and delta < 0:
            return ZERO
        before = change.available - delta
        return URGENT if listed <= self.low_stock or (delta < 0 and -delta * 2 >= before) else NORMAL
