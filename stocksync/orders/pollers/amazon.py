"""Amazon's orders, read back: SP-API Orders v0 `getOrders` by LastUpdatedAfter (NextToken paging), then
`getOrderItems` for each order, paced at each operation's usage plan.

    GET <url>/orders/v0/orders?MarketplaceIds=<options.marketplace_id>&LastUpdatedAfter=<start>
        [&LastUpdatedBefore=<end>]&MaxResultsPerPage=100     x-amz-access-token: <credentials.access_token>
    GET <url>/orders/v0/orders/<AmazonOrderId>/orderItems[?NextToken=...]

Each order is rebuilt into the ORDER_CHANGE notifications its life sends and parsed by AmazonWebhook's
own code: one with the order's status and its items (SellerSKU, Quantity = QuantityOrdered), which takes
each line under `amazon:<AmazonOrderId>:<OrderItemId>`, and, for a Canceled order, the Canceled one, which
restocks each line under the suffix `cancel`. Orders fulfilled by Amazon (AFN) are skipped before their
items are read, as the receiver ignores them (unless options.include_afn).

Rate limits (Amazon's usage plans: getOrders 0.0167 requests/s burst 20, getOrderItems 0.5/s burst 30)
are kept client-side, per operation (options.order_api_limits = {getOrders = [rate, burst], ...} to
change them); a 429 empties that operation's bucket for Retry-After and takes its rate from
x-amzn-RateLimit-Limit. LastUpdatedBefore is sent only when the pass ends at least 125 s ago (Amazon
refuses a Before within two minutes of now); otherwise the poller drops orders updated after the pass's
end itself. getOrderItems is the bottleneck (an order a call, 1,800 orders an hour): an order this
process already applied at the same status (Canceled or not) is not read again (a re-read of the
overlap, a status change to Shipped).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from stocksync.orders.webhooks import Delivery
from stocksync.settings import SettingsError

from .client import PollError
from .pacing import Pace
from .reader import OrderReader, Page, PolledOrder, iso, to_ms

ORDERS = "/orders/v0/orders"
LIMITS = {"getOrders": (0.0167, 20.0), "getOrderItems": (0.5, 30.0)}
BEFORE_MARGIN_S = 125  # Amazon: LastUpdatedBefore at least two minutes before now
ITEMS_IN_FLIGHT = 4
MEMO_MAX = 200_000  # orders remembered as applied (then the oldest are forgotten)


class AmazonReader(OrderReader):
    kind = "amazon"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        opts = self.config.options
        self.marketplace_id = str(opts.get("marketplace_id", "ATVPDKIKX0DER"))
        self.include_afn = bool(opts.get("include_afn", False))
        self.page_size = self.options.page_size or 100
        if self.page_size > 100:
            raise SettingsError(f"channels.{self.name}.options.poll_page_size: getOrders pages hold at most 100")
        self.paces = {op: Pace(*limit) for op, limit in _limits(self.name, opts.get("order_api_limits", {})).items()}
        self.memo: collections.OrderedDict[str, str] = collections.OrderedDict()  # order id -> state applied
        self._in_flight = asyncio.Semaphore(ITEMS_IN_FLIGHT)

    def headers(self) -> dict[str, str]:
        return {"x-amz-access-token": self.config.secret("access_token"), "Accept": "application/json"}

    async def pages(self, stream: str, start_ms: int, end_ms: int) -> AsyncIterator[Page]:
        params = {"MarketplaceIds": self.marketplace_id, "LastUpdatedAfter": iso(start_ms),
                  "MaxResultsPerPage": str(self.page_size)}
        if end_ms <= (time.time() - BEFORE_MARGIN_S) * 1000:
            params["LastUpdatedBefore"] = iso(end_ms - 1000)  # inclusive, in whole seconds: before end
        while True:
            reply = await self.api.call("GET", self.config.url + ORDERS, headers=self.headers(), params=params,
                                        pace=self.paces["getOrders"])
            payload = _payload(reply.data, self.name)
            orders = payload.get("Orders")
            if not isinstance(orders, list):
                raise PollError(f"{self.name}: getOrders answered no Orders list")
            yield Page(stream, await self.orders(orders))
            token = payload.get("NextToken")
            if not token:
                return
            params = {"MarketplaceIds": self.marketplace_id, "NextToken": token}

    async def orders(self, orders: list) -> list[PolledOrder]:
        """A page's orders with their items, read a few at a time; the first failure cancels the rest."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self.order(o)) for o in orders]
        except ExceptionGroup as e:
            raise e.exceptions[0] from None
        return [t.result() for t in tasks]

    async def order(self, order: Any) -> PolledOrder:
        if not isinstance(order, dict) or not isinstance(order.get("AmazonOrderId"), str):
            raise PollError(f"{self.name}: getOrders listed an order without an AmazonOrderId: {str(order)[:200]}")
        order_id, status = order["AmazonOrderId"], order.get("OrderStatus")
        polled = PolledOrder(order_id, to_ms(order.get("LastUpdateDate"), f"{self.name} {order_id} LastUpdateDate"))
        polled.state = "c" if status == "Canceled" else "o"
        if order.get("FulfillmentChannel") == "AFN" and not self.include_afn:
            return polled  # the receiver ignores these: Amazon ships them from its own stock
        if self.memo.get(order_id) == polled.state:
            return polled  # applied here before at this status: nothing new to take or restock
        async with self._in_flight:
            items = await self.items(order_id)
        polled.events = self.events(order, items)
        return polled

    async def items(self, order_id: str) -> list[dict]:
        url, out, params = f"{self.config.url}{ORDERS}/{quote(order_id, safe='')}/orderItems", [], None
        while True:
            reply = await self.api.call("GET", url, headers=self.headers(), params=params,
                                        pace=self.paces["getOrderItems"])
            payload = _payload(reply.data, self.name)
            items = payload.get("OrderItems")
            if not isinstance(items, list):
                raise PollError(f"{self.name}: getOrderItems of {order_id} answered no OrderItems list")
            out += items
            if not payload.get("NextToken"):
                return out
            params = {"NextToken": payload["NextToken"]}

    def events(self, order: dict, items: list[dict]) -> list[Delivery]:
        """The ORDER_CHANGE notifications of this order, parsed by AmazonWebhook."""
        order_id, status = order["AmazonOrderId"], str(order.get("OrderStatus") or "")
        lines = [{"OrderItemId": i.get("OrderItemId"), "SellerSKU": i.get("SellerSKU"),
                  "Quantity": i.get("QuantityOrdered")} for i in items if isinstance(i, dict)]

        def change(at_status: str) -> dict:
            summary = {"OrderStatus": at_status, "FulfillmentType": order.get("FulfillmentChannel"), "OrderItems": lines}
            return {"NotificationType": "ORDER_CHANGE",
                    "Payload": {"OrderChangeNotification": {"AmazonOrderId": order_id, "Summary": summary}}}

        # A Canceled order was open before (it took its lines then): its first notification, then the last.
        out = [self.parse(order_id, change("Pending" if status == "Canceled" else status))]
        if status == "Canceled":
            out.append(self.parse(order_id, change("Canceled")))
        return [d for d in out if not d.ignored]

    async def applied(self, page: Page) -> None:
        for order in page.orders:
            self.memo[order.order_id] = order.state
            self.memo.move_to_end(order.order_id)
        while len(self.memo) > MEMO_MAX:
            self.memo.popitem(last=False)


def _payload(data: Any, name: str) -> dict:
    if not isinstance(data, dict) or not isinstance(data.get("payload"), dict):
        raise PollError(f"{name}: the Orders API answered without a payload: {str(data)[:200]}")
    return data["payload"]


def _limits(name: str, given: Any) -> dict[str, tuple[float, float]]:
    """Each operation's (rate, burst): Amazon's usage plans, or options.order_api_limits."""
    if not isinstance(given, dict) or set(given) - set(LIMITS):
        raise SettingsError(f"channels.{name}.options.order_api_limits must be a table of {', '.join(LIMITS)} "
                            "-> [requests per second, burst]")
    out = dict(LIMITS)
    for op, limit in given.items():
        if (not isinstance(limit, list) or len(limit) != 2
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in limit)
                or limit[0] <= 0 or limit[1] < 1):
            raise SettingsError(f"channels.{name}.options.order_api_limits.{op} must be [rate > 0, burst >= 1]")
        out[op] = (float(limit[0]), float(limit[1]))
    return out
