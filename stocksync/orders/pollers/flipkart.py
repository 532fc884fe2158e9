"""Flipkart's orders, read back: the Orders API v3 shipment search by modifiedDate, nextPageUrl paging.

    POST <url>/sellers/v3/shipments/filter     Authorization: Bearer <credentials.access_token>
         {"filter": {"type": <stream>, "modifiedDate": {"from": <start>, "to": <end - 1 s>}},
          "pagination": {"pageSize": 20}}
    GET  <url>/sellers<nextPageUrl>

Three searches, each a stream with its own cursor: preDispatch and postDispatch (open and shipped
shipments) and cancelled (shipments with a cancelled unit: a shipment cancelled whole is in no other).
Each shipment is rebuilt into the notifications its life sends and parsed by FlipkartWebhook's own code:
`shipment_created` with its order items (orderItemId, orderId, sku, quantity as ordered: the line key is
the orderItemId, as the webhook's), then one `shipment_cancelled` per cancellation time of its items.

Restocks: the receiver names a cancellation by a digest of its notification, which the search cannot
rebuild (it shows an item's cancelled units so far, `cancelledQuantity`, and its last cancellationDate,
not each cancellation). So, per item:
- cancelled whole (status CANCELLED): restocked under the suffix `cancel` as a full restock (whatever
  was taken, less what other restocks of the line reserved): whichever of webhooks and poller comes
  first, the line is restocked what was taken, once;
- cancelled in part (still APPROVED, cancelledQuantity > 0): the units cancelled so far less those the
  line's restock records already hold (reserved, applied, or waiting for the take, under any id), as one
  `shipment_cancelled` at the item's cancellationDate parsed by the receiver (named by its digest). Not
  covered: a part whose webhook arrives after the poller restocked it (later than settle_s): that part is
  restocked again, up to what was taken.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
from yarl import URL

from stocksync.orders.webhooks import Delivery, Line, Restock

from .client import PollError
from .reader import OrderReader, Page, PolledOrder, iso, to_ms

SEARCH = "/sellers/v3/shipments/filter"
IST = 330  # minutes east of UTC: Flipkart's times are India Standard Time
MAX_PAGE = 20


class FlipkartReader(OrderReader):
    kind = "flipkart"
    streams = ("preDispatch", "postDispatch", "cancelled")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.page_size = min(self.options.page_size or MAX_PAGE, MAX_PAGE)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.secret('access_token')}", "Content-Type": "application/json"}

    async def pages(self, stream: str, start_ms: int, end_ms: int) -> AsyncIterator[Page]:
        body = {"filter": {"type": stream, "modifiedDate": {"from": iso(start_ms, IST), "to": iso(end_ms - 1000, IST)}},
                "pagination": {"pageSize": self.page_size}}
        reply = await self.api.call("POST", self.config.url + SEARCH, headers=self.headers(), body=orjson.dumps(body))
        while True:
            data = reply.data
            shipments = data.get("shipments") if isinstance(data, dict) else None
            if not isinstance(shipments, list) or not all(isinstance(s, dict) for s in shipments):
                raise PollError(f"{self.name}: the shipment search answered no shipments list: {str(data)[:200]}")
            restocked = await self.restocked(shipments)
            yield Page(stream, [self.shipment(s, restocked) for s in shipments])
            if not data.get("hasMore") or not data.get("nextPageUrl"):
                return
            url = URL(self.config.url + "/sellers" + str(data["nextPageUrl"]), encoded=True)
            reply = await self.api.call("GET", url, headers=self.headers())

    async def restocked(self, shipments: list[dict]) -> dict[str, int]:
        """orderItemId -> units the line's restock records hold (reserved or applied under any id, or waiting
        for the take), for the items cancelled in part."""
        ids = sorted({str(i.get("orderItemId")) for s in shipments for i in _items(s) if _cancelled(i) and not _whole(i)})
        if not ids:
            return {}
        keys = self.store.keys
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for item_id in ids:
                pipe.hvals(keys.webhook_line_restocks(self.name, item_id))
                pipe.hvals(keys.webhook_line_waiting(self.name, item_id))
            replies = await pipe.execute()
        return {item_id: _held(replies[2 * i], replies[2 * i + 1]) for i, item_id in enumerate(ids)}

    def shipment(self, shipment: dict, restocked: dict[str, int]) -> PolledOrder:
        sid = str(shipment.get("shipmentId") or "")
        items = _items(shipment)
        created = {"eventType": "shipment_created", "shipmentId": sid, "attributes": {"orderItems": [
            {k: i.get(k) for k in ("orderItemId", "orderId", "sku", "quantity")} for i in items]}}
        events = [self.parse(sid, created)]
        by_time: dict[str, list[dict]] = {}
        for item in (i for i in items if not _whole(i)):
            units = _cancelled(item) - restocked.get(str(item.get("orderItemId")), 0)
            if units > 0:
                stamp = str(item.get("cancellationDate") or shipment.get("updatedAt") or "")
                by_time.setdefault(stamp, []).append({"orderItemId": item.get("orderItemId"), "quantity": units})
        for stamp, cancelled in by_time.items():
            events.append(self.parse(sid, {"eventType": "shipment_cancelled", "shipmentId": sid, "timestamp": stamp,
                                           "attributes": {"orderItems": cancelled}}))
        whole = [i for i in items if _whole(i)]
        if whole:
            taken = events[0].takes  # (the lines as the receiver read them)
            events.append(Delivery(None, "shipment_cancelled", restocks=[
                Restock(Line(line.key, "", line.line_id, None, line.qty), "cancel", full=True)
                for line in taken if line.key in {str(i.get("orderItemId")) for i in whole}]))
        return PolledOrder(sid, to_ms(shipment.get("updatedAt"), f"{self.name} shipment {sid} updatedAt"),
                           [d for d in events if not d.ignored])


def _items(shipment: dict) -> list[dict]:
    items = shipment.get("orderItems")
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _whole(item: dict) -> bool:
    return item.get("status") == "CANCELLED"


# a restock record of the line's ledger: p<units> or d<units>, with c<units taken back from committed>
# since 0.6 (shipment records, h<units>/s<units>, are not restocks)
_RESTOCK = re.compile(r"^[pd](\d+)(?:c\d+)?$")


def _held(restocks: list[str], waiting: list[str]) -> int:
    """Units of a line's restock records: p<units>/d<units> reserved or applied, and <units> waiting for the
    take ("all": everything, whatever was taken)."""
    held = sum(int(m.group(1)) for v in restocks if (m := _RESTOCK.match(v)))
    if "all" in waiting:
        return 2**31
    return held + sum(int(v) for v in waiting if v.isdigit())


def _cancelled(item: dict) -> int:
    """Units of the item cancelled so far: cancelledQuantity, else all of a CANCELLED item."""
    units = item.get("cancelledQuantity")
    if isinstance(units, int | float) and not isinstance(units, bool):
        return int(units)
    quantity = item.get("quantity")
    if item.get("status") == "CANCELLED" and isinstance(quantity, int | float) and not isinstance(quantity, bool):
        return int(quantity)
    return 0
