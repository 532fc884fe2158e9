"""The Shopify simulator's orders: webhooks (orders/create, orders/cancelled, refunds/create) and the
Admin GraphQL ``orders`` query.

Webhooks are the REST-shaped JSON Shopify posts, with ``X-Shopify-Topic``, ``X-Shopify-Hmac-Sha256``
(base64 HMAC-SHA256 of the raw body with the app's client secret), ``X-Shopify-Webhook-Id`` (shared by
a redelivery), ``X-Shopify-Shop-Domain``, ``X-Shopify-API-Version``, ``X-Shopify-Event-Id`` and
``X-Shopify-Triggered-At``; webhook option ``prefixed: false`` sends the newer un-prefixed names
(``shopify-hmac-sha256``, ...). A cancellation is the order with ``cancelled_at`` and, when the units
are restocked (``restock``, default true), the cancellation's refund embedded, its refund line items
of ``restock_type`` "cancel" (what Shopify does when the merchant cancels with restock); a refund is
``refunds/create`` with ``refund_line_items`` of restock_type "return", "cancel" or "no_restock".

The query (``POST /admin/api/{version}/graphql.json``, the inventory API's credentials and bucket)::

    query ($first: Int!, $after: String, $q: String) {
      orders(first: $first, after: $after, sortKey: UPDATED_AT, query: $q) {
        pageInfo { hasNextPage endCursor }
        edges { cursor node { id name createdAt updatedAt cancelledAt
          lineItems(first: 50) { nodes { id sku quantity currentQuantity } }
          refunds { id createdAt refundLineItems(first: 50) { nodes { id quantity restockType lineItem { id sku } } } } } }
      }
    }

Arguments: ``first`` (1-250, required), ``after`` (a cursor: base64 of {"last_id", "last_value"}, as
Shopify's), ``sortKey`` (UPDATED_AT, CREATED_AT or ID; ID by default), ``query`` (Shopify search
syntax: ``updated_at:>=2025-01-01T00:00:00Z`` and ``created_at`` with >=, >, <=, <, terms joined by
spaces or AND; times compare in whole seconds, as shown; other fields are ignored with a warning in
``extensions.search``, as Shopify does). ``reverse: true`` is not simulated (an error says so). As
for the inventory reads, the reply has a fixed shape, whatever the selection: the connection's
``edges``, ``nodes`` and ``pageInfo``; per order id (gid://shopify/Order/N), legacyResourceId, name,
createdAt, updatedAt, cancelledAt, cancelReason, displayFinancialStatus, lineItems (id, sku, name,
quantity, currentQuantity, refundableQuantity, unfulfilledQuantity) and refunds (id, createdAt,
refundLineItems: id, quantity, restockType CANCEL/RETURN/NO_RESTOCK, restocked, lineItem {id, sku}).

Cost, after Shopify's calculated query cost: a connection costs 2 plus ``first`` times its node's
cost, an object 1. So the requested cost is 2 + first x (1 + [2 + lineItems first] + [refunds first
(1 if not given) x (1 + [2 + refundLineItems first])]), checked against the leaky bucket (THROTTLED
when short) and capped at 1,000 (MAX_COST_EXCEEDED); the actual cost counts what was returned, and
the difference is given back to the bucket, as Shopify does. A query of 20 orders with lineItems(first:
20) and refunds { refundLineItems(first: 10) } asks 2 + 20 x 37 = 742 points and, for orders of one
line and no refund, uses 2 + 20 x 4 = 82.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from typing import Any

import orjson

from .base import Parsed
from .market import OrderError, Target
from .orders import Ids, Line, Order, Refund, bounds, iso, parse_time, position
from .outbox import Notice

MAX_FIRST = 250
MAX_QUERY_COST = 1000
SORT_KEYS = {"UPDATED_AT": "updated", "CREATED_AT": "created", "ID": "created"}
RESTOCK_ENUM = {"return": "RETURN", "cancel": "CANCEL", "no_restock": "NO_RESTOCK"}
TOPICS = {"create": "orders/create", "cancel": "orders/cancelled", "refund": "refunds/create"}
_ARG = re.compile(r'\s*(\w+)\s*:\s*(\$\w+|"(?:[^"\\]|\\.)*"|-?\d+|\w+)\s*,?')
_CLOSE = re.compile(r"\s*\)")
_OPERATION = re.compile(r"\b(query|mutation|subscription)\s*$")
_TERM = re.compile(r"""(\w+):(>=|<=|>|<)?(?:'([^']*)'|"([^"]*)"|(\S+))""")


def shopify_hmac(body: bytes, secret: str) -> str:
    """X-Shopify-Hmac-Sha256: base64 of the HMAC-SHA256 of the raw body."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def _num(gid_or_id: str) -> int:
    return int(gid_or_id.rsplit("/", 1)[-1])


class ShopifyOrders:
    """Mixed into ShopifySim (a MarketSim)."""

    ORDER_IDS = Ids(order=lambda run, n: f"{run}{n:09d}", line=lambda run, n: f"{run}{n:010d}")
    REFUND_TYPES = ("return", "cancel", "no_restock")

    def target_options(self, options: dict[str, Any]) -> dict[str, Any]:
        prefixed = options.pop("prefixed", True)
        domain = options.pop("shop_domain", "stocksync-sim.myshopify.com")
        if options:
            raise OrderError(400, f"unknown webhook option(s) {sorted(options)}: Shopify has prefixed, shop_domain")
        if not isinstance(prefixed, bool) or not isinstance(domain, str) or not domain:
            raise OrderError(400, "prefixed must be true or false, shop_domain a non-empty string")
        return {"prefixed": prefixed, "shop_domain": domain}

    # ----- webhooks -----------------------------------------------------------------------------------

    def notice(self, target: Target, order: Order, event: str, refund: Refund | None) -> Notice:
        topic = TOPICS[event]
        doc = self._rest_refund(order, refund) if event == "refund" else self._rest_order(order)
        body = orjson.dumps(doc)
        webhook_id, event_id = str(uuid.uuid4()), str(uuid.uuid4().int >> 70)
        p = "X-Shopify-" if target.options["prefixed"] else "shopify-"
        fixed = {f"{p}Topic": topic, f"{p}Shop-Domain": target.options["shop_domain"],
                 f"{p}API-Version": self.api_version, f"{p}Webhook-Id": webhook_id, f"{p}Event-Id": event_id,
                 f"{p}Triggered-At": iso(order.updated_ms), "Content-Type": "application/json",
                 "User-Agent": "Shopify-Captain-Hook"}

        def sign(raw: bytes) -> dict[str, str]:
            return {**fixed, f"{p}Hmac-Sha256": shopify_hmac(raw, target.secret)}

        return Notice(webhook_id, topic, order.order_id, target.url, body, sign)

    def _rest_line(self, line: Line) -> dict[str, Any]:
        return {"id": int(line.line_id), "admin_graphql_api_id": f"gid://shopify/LineItem/{line.line_id}",
                "sku": line.sku, "name": line.sku, "title": line.sku, "quantity": line.qty,
                "current_quantity": line.current, "fulfillable_quantity": line.current, "fulfillment_status": None,
                "gift_card": False, "requires_shipping": True, "taxable": True, "product_exists": True,
                "price": "10.00"}

    def _rest_refund(self, order: Order, refund: Refund | None) -> dict[str, Any]:
        assert refund is not None
        location = _num(self.location_id)
        return {
            "id": int(refund.refund_id), "admin_graphql_api_id": f"gid://shopify/Refund/{refund.refund_id}",
            "order_id": int(order.order_id), "created_at": iso(refund.created_ms, z=False),
            "processed_at": iso(refund.created_ms, z=False), "restock": refund.restock_type != "no_restock",
            "note": None, "transactions": [], "order_adjustments": [],
            "refund_line_items": [
                {"id": int(rl.refund_line_id), "line_item_id": int(rl.line.line_id), "quantity": rl.qty,
                 "restock_type": refund.restock_type,
                 "location_id": location if refund.restock_type != "no_restock" else None,
                 "subtotal": 10.0 * rl.qty, "total_tax": 0.0, "line_item": self._rest_line(rl.line)}
                for rl in refund.lines
            ],
        }

    def _rest_order(self, order: Order) -> dict[str, Any]:
        cancelled = order.cancelled_ms is not None
        return {
            "id": int(order.order_id), "admin_graphql_api_id": f"gid://shopify/Order/{order.order_id}",
            "name": f"#{1000 + order.number}", "order_number": 1000 + order.number,
            "created_at": iso(order.created_ms, z=False), "updated_at": iso(order.updated_ms, z=False),
            "cancelled_at": iso(order.cancelled_ms, z=False) if cancelled else None,
            "cancel_reason": "customer" if cancelled else None,
            "financial_status": "voided" if cancelled and not order.refunds else _financial(order).lower(),
            "fulfillment_status": None, "currency": "USD", "test": False,
            "line_items": [self._rest_line(line) for line in order.lines],
            "refunds": [self._rest_refund(order, r) for r in order.refunds],
        }

    # ----- the orders query ---------------------------------------------------------------------------

    def _parse_orders(self, query: str, variables: dict[str, Any]) -> Parsed:
        args = self._field_args(query, "orders", variables) or {}
        first = self._page_size(args, "orders")
        unknown = sorted(set(args) - {"first", "after", "sortKey", "query", "reverse"})
        if unknown:
            raise self._graphql_error(f"Field 'orders' doesn't accept argument '{unknown[0]}'", "argumentNotAccepted")
        if args.get("reverse") not in (None, False):
            raise self._graphql_error("stocksync simulator: reverse: true is not simulated", "UNSUPPORTED_BY_SIMULATOR")
        sort = args.get("sortKey") or "ID"
        if sort not in SORT_KEYS:
            raise self._graphql_error(
                f"Argument 'sortKey' on Field 'orders' has an invalid value ({sort}). Expected type 'OrderSortKeys'.",
                "argumentLiteralsIncompatible")
        after = _decode_cursor(args["after"]) if args.get("after") is not None else None
        if args.get("after") is not None and after is None:
            raise self._graphql_error(f"Invalid cursor for current pagination: {args['after']!r}", "BAD_REQUEST")
        search = args.get("query") or ""
        if not isinstance(search, str):
            raise self._graphql_error("Argument 'query' on Field 'orders' must be a String", "argumentLiteralsIncompatible")
        ranges, warnings = self._search(search)
        nested = {f: self._field_args(query, f, variables) for f in ("lineItems", "refunds", "refundLineItems")}
        # refunds is a list with an optional first (counted as 1 when absent); the others are connections
        sizes = {f: self._page_size({"first": 1, **a} if f == "refunds" else a, f)
                 for f, a in nested.items() if a is not None}
        per_order = 1 + (2 + sizes["lineItems"] if "lineItems" in sizes else 0)
        if "refunds" in sizes:
            per_order += sizes["refunds"] * (1 + (2 + sizes["refundLineItems"] if "refundLineItems" in sizes else 0))
        cost = 2 + first * per_order
        if cost > MAX_QUERY_COST:
            raise self._graphql_error(
                f"Query cost is {cost}, which exceeds the single query max cost limit ({MAX_QUERY_COST}).",
                "MAX_COST_EXCEEDED", cost=cost, maxCost=MAX_QUERY_COST)
        plan = {"first": first, "by": SORT_KEYS[sort], "after": after, "ranges": ranges, "warnings": warnings,
                "search": search, "sizes": sizes}
        return Parsed(("orders", plan), [], cost=float(cost))

    def _page_size(self, args: dict[str, Any] | None, field: str) -> int:
        first = (args or {}).get("first")
        if first is None:
            raise self._graphql_error(
                f"you must provide a `first` or `last` value to properly paginate the `{field}` connection.",
                "BAD_REQUEST")
        if not isinstance(first, int) or isinstance(first, bool) or not 0 < first <= MAX_FIRST:
            raise self._graphql_error(f"`first` of `{field}` must be an integer from 1 to {MAX_FIRST}", "BAD_REQUEST")
        return first

    def _field_args(self, doc: str, field: str, variables: dict[str, Any]) -> dict[str, Any] | None:
        """The arguments of the first ``field`` in the document ({} without any), None if it is absent."""
        for m in re.finditer(rf"\b{field}\b(\s*\()?", doc):
            if not _OPERATION.search(doc, 0, m.start()):  # `query orders(...)` names the operation
                break
        else:
            return None
        args: dict[str, Any] = {}
        pos = m.end()
        while m.group(1):
            if _CLOSE.match(doc, pos) is not None:
                return args
            arg = _ARG.match(doc, pos)
            if arg is None:
                raise self._graphql_error(f"stocksync simulator: cannot read the arguments of {field}",
                                          "UNSUPPORTED_BY_SIMULATOR")
            name, raw = arg.groups()
            args[name] = _literal(raw, variables)
            pos = arg.end()
        return args

    def _search(self, search: str) -> tuple[dict[str, list[int | None]], list[dict[str, str]]]:
        """{"updated"|"created": [lo_ms, hi_ms)} from the search query, and warnings for the rest."""
        ranges: dict[str, list[int | None]] = {}
        warnings = []
        for word in _TERM.sub(" ", search).split():
            if word in ("OR", "NOT") or word.startswith(("(", "-")):
                raise self._graphql_error(f"stocksync simulator: {word} in a search query is not simulated (only AND)",
                                          "UNSUPPORTED_BY_SIMULATOR")
            if word != "AND":
                warnings.append({"field": word, "message": "Free-text search is not simulated: ignored."})
        for name, op, q1, q2, bare in _TERM.findall(search):
            value = q1 or q2 or bare
            t_ms = parse_time(value)
            if name not in ("updated_at", "created_at"):
                warnings.append({"field": name, "message": "Invalid search field for this query."})
                continue
            if t_ms is None or not op:
                raise self._graphql_error(f"Invalid value for {name}: {op}{value} (expected >=, >, <= or < a date)",
                                          "BAD_REQUEST")
            lo, hi = bounds(op, t_ms)
            r = ranges.setdefault(name.split("_")[0], [0, None])
            r[0] = max(r[0], lo) if lo is not None else r[0]
            r[1] = hi if r[1] is None else (min(r[1], hi) if hi is not None else r[1])
        return ranges, warnings

    def _orders_result(self, parsed: Parsed) -> tuple[dict[str, Any], list[dict[str, Any]] | None, float]:
        """The ``orders`` connection, the search extension and the actual cost."""
        plan = parsed.data[1]
        by, first, sizes = plan["by"], plan["first"], plan["sizes"]
        lo, hi = plan["ranges"].get(by, [0, None])
        other = "created" if by == "updated" else "updated"
        olo, ohi = plan["ranges"].get(other, [0, None])
        page: list[Order] = []
        for order in self.book.scan(by, lo, hi, plan["after"]):
            t = order.created_ms if other == "created" else order.updated_ms
            if t >= olo and (ohi is None or t < ohi):
                page.append(order)
                if len(page) > first:
                    break
        more, page = len(page) > first, page[:first]
        nodes = [self._order_node(o, sizes) for o in page]
        cursors = [_encode_cursor(position(o, by)) for o in page]
        actual = 2 + sum(_node_cost(n, sizes) for n in nodes)
        connection = {
            "edges": [{"cursor": c, "node": n} for c, n in zip(cursors, nodes, strict=True)],
            "nodes": nodes,
            "pageInfo": {"hasNextPage": more, "hasPreviousPage": plan["after"] is not None,
                         "startCursor": cursors[0] if cursors else None, "endCursor": cursors[-1] if cursors else None},
        }
        search = None
        if plan["warnings"]:
            search = [{"path": ["orders"], "query": plan["search"], "warnings": plan["warnings"]}]
        return connection, search, float(actual)

    def _order_node(self, order: Order, sizes: dict[str, int]) -> dict[str, Any]:
        lines = order.lines[: sizes.get("lineItems", MAX_FIRST)]
        refunds = order.refunds[: sizes.get("refunds", MAX_FIRST)]
        line_nodes = [_line_node(line) for line in lines]
        return {
            "id": f"gid://shopify/Order/{order.order_id}", "legacyResourceId": order.order_id,
            "name": f"#{1000 + order.number}", "createdAt": iso(order.created_ms), "updatedAt": iso(order.updated_ms),
            "cancelledAt": iso(order.cancelled_ms) if order.cancelled_ms is not None else None,
            "cancelReason": "CUSTOMER" if order.cancelled_ms is not None else None,
            "displayFinancialStatus": _financial(order),
            "lineItems": _connection(line_nodes, len(order.lines) > len(lines)),
            "refunds": [self._refund_node(r, sizes.get("refundLineItems", MAX_FIRST)) for r in refunds],
        }

    def _refund_node(self, refund: Refund, size: int) -> dict[str, Any]:
        nodes = [
            {"id": f"gid://shopify/RefundLineItem/{rl.refund_line_id}", "quantity": rl.qty,
             "restockType": RESTOCK_ENUM[refund.restock_type], "restocked": refund.restock_type != "no_restock",
             "lineItem": {"id": f"gid://shopify/LineItem/{rl.line.line_id}", "sku": rl.line.sku}}
            for rl in refund.lines[:size]
        ]
        return {"id": f"gid://shopify/Refund/{refund.refund_id}", "createdAt": iso(refund.created_ms),
                "refundLineItems": _connection(nodes, len(refund.lines) > size)}


def _line_node(line: Line) -> dict[str, Any]:
    return {"id": f"gid://shopify/LineItem/{line.line_id}", "sku": line.sku, "name": line.sku,
            "quantity": line.qty, "currentQuantity": line.current, "refundableQuantity": line.current,
            "unfulfilledQuantity": line.current}


def _connection(nodes: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    return {"nodes": nodes, "edges": [{"node": n} for n in nodes],
            "pageInfo": {"hasNextPage": more, "hasPreviousPage": False}}


def _node_cost(node: dict[str, Any], sizes: dict[str, int]) -> int:
    cost = 1 + (2 + len(node["lineItems"]["nodes"]) if "lineItems" in sizes else 0)
    if "refunds" in sizes:
        per_line = "refundLineItems" in sizes
        cost += sum(1 + (2 + len(r["refundLineItems"]["nodes"]) if per_line else 0) for r in node["refunds"])
    return cost


def _financial(order: Order) -> str:
    return {"open": "PAID", "partially_refunded": "PARTIALLY_REFUNDED"}.get(order.status, "REFUNDED")


def _literal(raw: str, variables: dict[str, Any]) -> Any:
    if raw.startswith("$"):
        return variables.get(raw[1:])
    if raw.startswith('"') or raw.lstrip("-").isdigit():
        return orjson.loads(raw)
    return {"true": True, "false": False, "null": None}.get(raw, raw)  # an enum value stays a string


def _encode_cursor(pos: tuple[int, int]) -> str:
    return base64.b64encode(orjson.dumps({"last_id": pos[1], "last_value": pos[0]})).decode()


def _decode_cursor(cursor: Any) -> tuple[int, int] | None:
    try:
        doc = orjson.loads(base64.b64decode(cursor, validate=True))
        pos = (doc["last_value"], doc["last_id"])
    except (ValueError, TypeError, KeyError, orjson.JSONDecodeError):
        return None
    return pos if all(isinstance(v, int) and not isinstance(v, bool) for v in pos) else None
