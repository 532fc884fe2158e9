"""Shopify's orders, read back: Admin GraphQL `orders` by updated_at, oldest first, cursor pagination.

    POST <url>/admin/api/<api_version>/graphql.json     X-Shopify-Access-Token: <credentials.token>
    orders(first: N, after: $cursor, sortKey: UPDATED_AT, query: "updated_at:>='<start>' updated_at:<'<end>'")

Each order node is rebuilt into the webhooks its events send, in the order Shopify sends them, and parsed
by ShopifyWebhook's own code: `orders/create` (its line items), one `refunds/create` per refund, and
`orders/cancelled` (the order with every refund) when it is cancelled. So a polled line is taken under
`shopify:<order id>:<line item id>` and restocked under the restock policy's own suffixes (`r<refund line
item id>`, `cancel`), whichever of webhook and poller comes first.

Rate limit: Shopify's calculated query cost against a leaky bucket. The page query asks for 20 line items
and 3 refunds of 10 lines an order (62 points an order, so 16 orders a page stay under the 1,000-point
cap); an order that has as many or more is read again alone, with room for 250 lines and 10 refunds of
60 lines (an 11th refund asked for shows there are more); more than that stops the pass, which says so. A
THROTTLED reply, or a bucket the last reply showed short of the next query's cost, waits for the bucket
to refill (extensions.cost.throttleStatus: points missing / restoreRate).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from stocksync.orders.webhooks import Delivery

from .client import MAX_THROTTLED, PollError
from .reader import OrderReader, Page, PolledOrder, iso, to_ms

ORDERS = """query stocksyncOrders($first: Int!, $after: String, $q: String) {
  orders(first: $first, after: $after, sortKey: UPDATED_AT, query: $q) {
    pageInfo { hasNextPage endCursor }
    edges { cursor node { id legacyResourceId updatedAt cancelledAt
      lineItems(first: %(lines)d) { pageInfo { hasNextPage } nodes { id sku quantity isGiftCard } }
      refunds(first: %(refunds)d) { id createdAt refundLineItems(first: %(refund_lines)d) {
        pageInfo { hasNextPage } nodes { id quantity restockType lineItem { id sku } } } }
    } }
  }
}"""
PAGE_SIZES = {"lines": 20, "refunds": 3, "refund_lines": 10}
WHOLE_SIZES = {"lines": 250, "refunds": 11, "refund_lines": 60}  # 948 points for one order: up to 10 refunds
MAX_COST = 1000
RESTOCK_TYPES = {"CANCEL": "cancel", "RETURN": "return", "LEGACY_RESTOCK": "legacy_restock",
                 "NO_RESTOCK": "no_restock"}


def order_cost(sizes: dict[str, int]) -> int:
    """Shopify's requested cost of one order node of the query (connections cost 2 + their nodes)."""
    return 1 + 2 + sizes["lines"] + sizes["refunds"] * (1 + 2 + sizes["refund_lines"])


class ShopifyReader(OrderReader):
    kind = "shopify"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        version = str(self.config.options.get("api_version", "2026-04"))
        self.url = f"{self.config.url}/admin/api/{version}/graphql.json"
        most = (MAX_COST - 2) // order_cost(PAGE_SIZES)
        self.first = min(self.options.page_size or most, most)
        self.page_query, self.whole_query = ORDERS % PAGE_SIZES, ORDERS % WHOLE_SIZES
        self.ready_at = 0.0  # monotonic time before which the bucket is short of a query's cost

    async def pages(self, stream: str, start_ms: int, end_ms: int) -> AsyncIterator[Page]:
        search = f"updated_at:>='{iso(start_ms)}' updated_at:<'{iso(end_ms)}'"
        after = None
        while True:
            conn = (await self.query(self.page_query, {"first": self.first, "after": after, "q": search}))["orders"]
            orders, before = [], after
            for edge in conn["edges"]:
                node = edge["node"]
                if _truncated(node, PAGE_SIZES):
                    node = await self.whole(node, before, search)
                before = edge["cursor"]
                if node is not None:
                    orders.append(PolledOrder(_id(node), to_ms(node.get("updatedAt"), f"{self.name} updatedAt"),
                                              self.events(node)))
            yield Page(stream, orders)
            if not conn["pageInfo"]["hasNextPage"]:
                return
            after = conn["pageInfo"]["endCursor"]

    async def whole(self, node: dict, before: str | None, search: str) -> dict | None:
        """The order alone, with room for all its lines and refunds (the page query had too little).
        None: it changed since the page was read, so it moved behind the page and is read again later."""
        conn = (await self.query(self.whole_query, {"first": 1, "after": before, "q": search}))["orders"]
        again = conn["edges"][0]["node"] if conn["edges"] else None
        if again is None or again.get("id") != node.get("id"):
            return None
        if _truncated(again, WHOLE_SIZES):
            raise PollError(f"{self.name}: order {_id(node)} has more than {WHOLE_SIZES['lines']} lines, "
                            f"{WHOLE_SIZES['refunds'] - 1} refunds or {WHOLE_SIZES['refund_lines']} lines in a "
                            "refund: it cannot be read whole (apply it by hand)")
        return again

    def events(self, node: dict) -> list[Delivery]:
        """The deliveries of the webhooks Shopify sends for this order, parsed by ShopifyWebhook."""
        order_id = _id(node)
        lines = [{"id": _num(n.get("id")), "sku": n.get("sku"), "quantity": n.get("quantity"),
                  "gift_card": n.get("isGiftCard") is True} for n in _nodes(node.get("lineItems"))]
        refunds = [_refund(order_id, r) for r in node.get("refunds") or []]
        out = [self.parse(order_id, {"id": order_id, "line_items": lines}, "orders/create")]
        out += [self.parse(order_id, refund, "refunds/create") for refund in refunds]
        if node.get("cancelledAt"):
            cancelled = {"id": order_id, "cancelled_at": node["cancelledAt"], "line_items": lines, "refunds": refunds}
            out.append(self.parse(order_id, cancelled, "orders/cancelled"))
        return [d for d in out if not d.ignored]

    async def query(self, query: str, variables: dict) -> dict:
        """`data` of one query, waiting for the cost bucket first; THROTTLED waits and asks again."""
        body = orjson.dumps({"query": query, "variables": variables})
        headers = {"X-Shopify-Access-Token": self.config.secret("token"), "Content-Type": "application/json"}
        for _ in range(MAX_THROTTLED):
            if (wait := self.ready_at - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            doc = (await self.api.call("POST", self.url, headers=headers, body=body)).data
            if not isinstance(doc, dict):
                raise PollError(f"{self.name}: the orders query answered {str(doc)[:200]}")
            throttled = self._note_cost(doc)
            if not doc.get("errors"):
                return doc.get("data") or {}
            if not throttled:
                raise PollError(f"{self.name}: orders query: {_error(doc['errors'])}")
        raise PollError(f"{self.name}: orders query still THROTTLED after {MAX_THROTTLED} waits")

    def _note_cost(self, doc: dict) -> bool:
        """Remember when the bucket holds the query's cost again; True if the query was THROTTLED."""
        errors = doc.get("errors")
        throttled = isinstance(errors, list) and any(
            isinstance(e, dict) and (e.get("extensions") or {}).get("code") == "THROTTLED" for e in errors)
        cost = (doc.get("extensions") or {}).get("cost") or {}
        status = cost.get("throttleStatus") or {}
        try:
            missing = float(cost["requestedQueryCost"]) - float(status["currentlyAvailable"])
            wait = max(missing, 0.0) / float(status["restoreRate"])
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            wait = 1.0 if throttled else 0.0
        self.ready_at = time.monotonic() + wait
        return throttled


def _refund(order_id: str, refund: dict) -> dict:
    """A refund node as refunds/create carries it (REST shape: numeric ids, lower-case restock_type)."""
    items = [{"id": _num(i.get("id")), "line_item_id": _num((i.get("lineItem") or {}).get("id")),
              "quantity": i.get("quantity"),
              "restock_type": RESTOCK_TYPES.get(i.get("restockType"), str(i.get("restockType")).lower()),
              "line_item": {"sku": (i.get("lineItem") or {}).get("sku")}}
             for i in _nodes(refund.get("refundLineItems"))]
    return {"id": _num(refund.get("id")), "order_id": order_id, "refund_line_items": items}


def _truncated(node: dict, sizes: dict[str, int]) -> bool:
    refunds = node.get("refunds") or []
    return bool(((node.get("lineItems") or {}).get("pageInfo") or {}).get("hasNextPage")
                or len(refunds) >= sizes["refunds"]
                or any(((r.get("refundLineItems") or {}).get("pageInfo") or {}).get("hasNextPage") for r in refunds))


def _nodes(connection: Any) -> list[dict]:
    if not isinstance(connection, dict):
        return []
    if isinstance(connection.get("nodes"), list):
        return connection["nodes"]
    return [e["node"] for e in connection.get("edges") or [] if isinstance(e, dict) and isinstance(e.get("node"), dict)]


def _num(gid: Any) -> Any:
    """gid://shopify/LineItem/123 -> "123", the id the REST webhooks carry (anything else as it is, for the
    parser to refuse)."""
    return gid.rsplit("/", 1)[-1] if isinstance(gid, str) and gid.startswith("gid://") else gid


def _id(node: dict) -> str:
    return str(node.get("legacyResourceId") or _num(node.get("id")))


def _error(errors: Any) -> str:
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        code = (errors[0].get("extensions") or {}).get("code", "error")
        return f"{code}: {errors[0].get('message')}"
    return str(errors)[:300]
