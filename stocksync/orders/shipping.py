"""Shipping order lines (library 0.6): the units of a line taken into committed leave committed, and so
on_hand, when the marketplace says they shipped (a Shopify fulfillment, Amazon's Shipped, a Flipkart
dispatch) or the admin API does (POST /v1/orders/{channel}/{order id}:ship).

Each shipment of a line first claims its units in the line's ledger (stocksync_ship_claim: never more
than the line's unshipped units, once per shipment id), then ships them with stocksync_ship under its own
reference (`<channel>:<line key>:ship:<shipment id>`), then marks the claim shipped (s<units>) with the
delivery's last writes. A line taken before library 0.6 left on_hand when it was taken: its shipments
change nothing. A shipment of a line not taken yet waits for the take (stocksync.orders.intake), as a
restock does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from stocksync import library
from stocksync.keys import Keys
from stocksync.library import RestockStatus
from stocksync.metrics import Metrics

from .records import RestockItem
from .webhooks import Ship

Send = Callable[[list[tuple]], Awaitable[list]]  # commands -> replies (errors raised)
Apply = Callable[[list[library.Call]], Awaitable[list]]  # calls -> typed replies (a refusal in its place)


class Shipping:
    def __init__(self, keys: Keys, metrics: Metrics, send: Send, apply: Apply, line_ttl_s: int,
                 ref_of: Callable[[str, Ship], str], id_of: Callable[[Ship], str]) -> None:
        self.keys, self.metrics, self.send, self.apply, self.ttl = keys, metrics, send, apply, line_ttl_s
        self.ref_of, self.id_of = ref_of, id_of

    async def ship(self, channel: str, items: list[RestockItem], writes: list) -> None:
        """Ship the items (lines taken into committed), each never beyond its line's unshipped units; their
        ledger records ride with `writes`."""
        if not items:
            return
        claims = [library.ship_claim(self.keys, channel, item.restock.line.key, self.id_of(item.restock),
                                     item.wanted, max(0, item.taken), self.ttl) for item in items]
        shipping = []
        for item, claim, reply in zip(items, claims, await self.send([c.command for c in claims]), strict=True):
            got, result = claim.parse(reply), item.result
            result.sku, result.qty = item.sku, got.units
            if got.status == RestockStatus.RESERVED:
                item.units = got.units
                shipping.append(item)
            elif got.status == RestockStatus.DONE:  # shipped before (the library may have forgotten its reference)
                result.status, result.shipped, result.replayed = "ok", got.units, True
            else:  # nothing left to ship: shipped, or cancelled, already
                result.status, result.shipped, result.replayed = "shipped_already", 0, got.replayed
        if not shipping:
            return
        moved = await self.apply([library.ship(self.keys, item.sku, item.units, channel,
                                               self.ref_of(channel, item.restock)) for item in shipping])
        for item, outcome in zip(shipping, moved, strict=True):
            if isinstance(outcome, Exception):
                item.result.status, item.result.reason = "invalid", str(outcome)
                continue
            self.metrics.outcome("ship", outcome.status, outcome.replayed)
            item.result.merge(outcome)
            item.result.shipped = outcome.units
            if outcome.ok:
                key = self.keys.webhook_line_restocks(channel, item.restock.line.key)
                writes += [("HSET", key, self.id_of(item.restock), f"s{item.units}"), ("EXPIRE", key, self.ttl)]
