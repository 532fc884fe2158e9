"""The Amazon simulator's orders: ORDER_CHANGE notifications and the SP-API Orders API v0.

Notifications: one ORDER_CHANGE per event (Amazon sends one per status change: a new MFN order is
announced here as Unshipped only, not Pending then Unshipped), as an EventBridge API destination
posts it: the event envelope (``version``, ``id``, ``detail-type`` "ORDER_CHANGE", ``source``
aws.partner/sellingpartnerapi.amazon/<application id>, ``time``, ``region``, ``detail``) around the
notification (``NotificationType``, ``NotificationMetadata.NotificationId``, shared by a redelivery,
``Payload.OrderChangeNotification`` with ``AmazonOrderId`` and ``Summary.OrderStatus`` and
``Summary.OrderItems[]`` of OrderItemId, SellerSKU, Quantity), with the connection's API-key header
(webhook option ``header``, default ``x-stocksync-token``: the secret is its value). Option
``envelope: "none"`` posts the bare notification (an SQS forwarder's shape). A cancellation is
ORDER_CHANGE with OrderStatus Canceled and every item, and puts the units back on the listing. A
refund sends nothing: ORDER_CHANGE reports status changes and Amazon has no refund notification
(refunds are in the Finances API), and a refunded MFN order's units are not relisted by Amazon (the
seller restocks a return), so refunds here are ``restock_type: "no_restock"`` only; they still bump
LastUpdateDate.

Orders API v0, with the listing API's access token (``x-amz-access-token``):

* ``GET /orders/v0/orders`` (getOrders, 0.0167 requests/s, burst 20): ``MarketplaceIds`` (required),
  then exactly one of ``LastUpdatedAfter`` (with optional ``LastUpdatedBefore``) or ``CreatedAfter``
  (with optional ``CreatedBefore``), or ``NextToken`` alone; ``OrderStatuses`` (comma-separated);
  ``MaxResultsPerPage`` 1-100 (default 100). An explicit Before must be at least
  ``before_margin_s`` (120 s, Amazon's rule) in the past. Orders come oldest first by the filtered
  time; times are whole seconds and compare as such; After/Before are inclusive. Reply
  ``{"payload": {"Orders": [{AmazonOrderId, PurchaseDate, LastUpdateDate, OrderStatus (Unshipped or
  Canceled), FulfillmentChannel "MFN", NumberOfItemsUnshipped, MarketplaceId, ...}], "NextToken"?,
  "LastUpdatedBefore" | "CreatedBefore"}}``; the Before echoed is the cut-off used (now, when none
  was given), which a poller can take as its next After.
* ``GET /orders/v0/orders/{orderId}`` (getOrder, 0.5/s burst 30): ``{"payload": <order>}``.
* ``GET /orders/v0/orders/{orderId}/orderItems`` (getOrderItems, 0.5/s burst 30): ``{"payload":
  {"AmazonOrderId", "OrderItems": [{OrderItemId, SellerSKU, ASIN, Title, QuantityOrdered,
  QuantityShipped, ...}]}}`` (one page: an order has at most 250 lines here). An unknown order is 404
  NotFound.

Each operation has its own token bucket (``MarketSim`` limits getOrders, getOrder, getOrderItems);
past it, 429 QuotaExceeded with ``x-amzn-RateLimit-Limit`` (the operation's rate) and Retry-After.
Every successful reply carries ``x-amzn-RateLimit-Limit`` too, as SP-API's do.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .base import Call, Parsed, json_response
from .market import OrderError, Target
from .orders import Ids, Order, Refund, bounds, iso, parse_time, position
from .outbox import Notice

ORDERS_PATH = "/orders/v0/orders"
MAX_PER_PAGE = 100
STATUSES = frozenset("PendingAvailability Pending Unshipped PartiallyShipped Shipped InvoiceUnconfirmed Canceled "
                     "Unfulfillable".split())
APPLICATION_ID = "amzn1.sellerapps.app.00000000-0000-4000-8000-stocksyncsim"


def order_status(order: Order) -> str:
    return "Canceled" if order.status == "cancelled" else "Unshipped"


class AmazonOrders:
    """Mixed into AmazonSim (a MarketSim)."""

    ORDER_IDS = Ids(order=lambda run, n: f"1{run % 100:02d}-{run:07d}-{n:07d}", line=lambda run, n: f"{run}{n:08d}")
    ORDER_LIMITS = {"getOrders": (0.0167, 20.0), "getOrder": (0.5, 30.0), "getOrderItems": (0.5, 30.0)}
    REFUND_TYPES = ("no_restock",)
    before_margin_s = 120.0

    def target_options(self, options: dict[str, Any]) -> dict[str, Any]:
        header = options.pop("header", "x-stocksync-token")
        envelope = options.pop("envelope", "eventbridge")
        if options:
            raise OrderError(400, f"unknown webhook option(s) {sorted(options)}: Amazon has header, envelope")
        if not isinstance(header, str) or not header.strip() or envelope not in ("eventbridge", "none"):
            raise OrderError(400, 'header must be a header name, envelope "eventbridge" or "none"')
        return {"header": header.strip(), "envelope": envelope}

    def notice(self, target: Target, order: Order, event: str, refund: Refund | None) -> Notice | None:
        if event == "refund":
            return None
        status = order_status(order)
        notification_id = str(uuid.uuid4())
        now = iso(order.updated_ms)
        doc: dict[str, Any] = {
            "NotificationVersion": "1.0", "NotificationType": "ORDER_CHANGE", "PayloadVersion": "1.0",
            "EventTime": now,
            "Payload": {"OrderChangeNotification": {
                "NotificationLevel": "OrderLevel", "SellerId": self.seller_id, "AmazonOrderId": order.order_id,
                "OrderChangeType": "OrderStatusChange",
                "OrderChangeTrigger": {"TimeOfOrderChange": now, "ChangeReason": "OrderStatusChange"},
                "Summary": {
                    "MarketplaceId": self.marketplace_id, "OrderStatus": status, "PurchaseDate": iso(order.created_ms),
                    "DestinationPostalCode": None, "FulfillmentType": "MFN", "OrderType": "StandardOrder",
                    "NumberOfItemsShipped": 0, "NumberOfItemsUnshipped": sum(ln.current for ln in order.lines),
                    "OrderItems": [{"OrderItemId": ln.line_id, "SellerSKU": ln.sku, "SupplySourceId": None,
                                    "Quantity": ln.qty} for ln in order.lines]}}},
            "NotificationMetadata": {"ApplicationId": APPLICATION_ID, "SubscriptionId": "stocksync-sim-subscription",
                                     "PublishTime": now, "NotificationId": notification_id},
        }
        if target.options["envelope"] == "eventbridge":
            doc = {"version": "0", "id": notification_id, "detail-type": "ORDER_CHANGE",
                   "source": f"aws.partner/sellingpartnerapi.amazon/{APPLICATION_ID}", "account": "000000000000",
                   "time": now, "region": "us-east-1", "resources": [], "detail": doc}
        headers = {target.options["header"]: target.secret, "Content-Type": "application/json; charset=utf-8",
                   "User-Agent": "Amazon/EventBridge/ApiDestinations"}
        return Notice(notification_id, f"ORDER_CHANGE {status}", order.order_id, target.url, orjson.dumps(doc),
                      lambda body: headers)

    # ----- Orders API v0 -----------------------------------------------------------------------------

    def order_routes(self) -> list[Route]:
        def op(name: str, parse: Any, handle: Any) -> Any:
            return self.endpoint(parse, handle, op=name, limit=self.order_limit(name))

        return [
            Route(ORDERS_PATH, op("getOrders", self._parse_get_orders, self._handle_get_orders), methods=["GET"]),
            Route(ORDERS_PATH + "/{order_id}", op("getOrder", self._parse_order_id, self._handle_get_order),
                  methods=["GET"]),
            Route(ORDERS_PATH + "/{order_id}/orderItems",
                  op("getOrderItems", self._parse_order_id, self._handle_get_order_items), methods=["GET"]),
        ]

    def _parse_get_orders(self, request: Request, body: bytes) -> Parsed:
        q = request.query_params
        if self.marketplace_id not in q.get("MarketplaceIds", "").split(","):
            raise self.bad_request(f"MarketplaceIds is required and must include {self.marketplace_id}")
        if "NextToken" in q:
            plan = _decode_token(q["NextToken"])
            if plan is None:
                raise self.bad_request("Invalid NextToken")
            return Parsed(plan)
        statuses = [s for s in q.get("OrderStatuses", "").split(",") if s]
        if set(statuses) - STATUSES:
            raise self.bad_request(f"Invalid OrderStatuses value(s): {sorted(set(statuses) - STATUSES)}")
        size = q.get("MaxResultsPerPage", str(MAX_PER_PAGE))
        if not size.isdigit() or not 1 <= int(size) <= MAX_PER_PAGE:
            raise self.bad_request(f"MaxResultsPerPage must be an integer from 1 to {MAX_PER_PAGE}")
        by = self._time_filter(q)
        after_ms = parse_time(q[f"{by}After"])
        lo, _ = bounds(">=", after_ms)
        before = q.get(f"{by}Before")
        before_ms = parse_time(before) if before is not None else self.book.now_ms()
        if before is not None and (before_ms is None or before_ms < after_ms):
            raise self.bad_request(f"{by}Before must be an ISO 8601 date no earlier than {by}After")
        if before is not None and before_ms > (self.book.now_ms() - self.before_margin_s * 1000):
            raise self.bad_request(f"{by}Before must be at least {self.before_margin_s:g} seconds before now")
        _, hi = bounds("<=", before_ms)
        plan = {"by": by, "lo": lo, "hi": hi, "before": iso(before_ms), "statuses": statuses, "size": int(size),
                "pos": None}
        return Parsed(plan)

    def _time_filter(self, q: Any) -> str:
        """LastUpdated or Created: the one time filter given, checked."""
        given = [by for by in ("LastUpdated", "Created") if f"{by}After" in q]
        if len(given) != 1 or any(f"{other}Before" in q for other in ("LastUpdated", "Created") if other not in given):
            raise self.bad_request("Exactly one of CreatedAfter or LastUpdatedAfter is required (or NextToken), "
                                   "and a Before only of the same kind")
        by = given[0]
        if parse_time(q[f"{by}After"]) is None:
            raise self.bad_request(f"{by}After must be an ISO 8601 date, e.g. 2025-01-01T00:00:00Z")
        return by

    def _handle_get_orders(self, request: Request, parsed: Parsed, call: Call) -> Response:
        plan = parsed.data
        by = "updated" if plan["by"] == "LastUpdated" else "created"
        page: list[Order] = []
        statuses = set(plan["statuses"])
        pos = tuple(plan["pos"]) if plan["pos"] else None
        for order in self.book.scan(by, plan["lo"], plan["hi"], pos):
            if not statuses or order_status(order) in statuses:
                page.append(order)
                if len(page) > plan["size"]:
                    break
        more, page = len(page) > plan["size"], page[: plan["size"]]
        payload: dict[str, Any] = {"Orders": [self._order_json(o) for o in page],
                                   f"{plan['by']}Before": plan["before"]}
        if more:
            payload["NextToken"] = _encode_token({**plan, "pos": list(position(page[-1], by))})
        return self._ok(payload, call)

    def _parse_order_id(self, request: Request, body: bytes) -> Parsed:
        return Parsed(request.path_params["order_id"])

    def _handle_get_order(self, request: Request, parsed: Parsed, call: Call) -> Response:
        order = self.book.get(parsed.data)
        return self._not_found(parsed.data) if order is None else self._ok(self._order_json(order), call)

    def _handle_get_order_items(self, request: Request, parsed: Parsed, call: Call) -> Response:
        order = self.book.get(parsed.data)
        if order is None:
            return self._not_found(parsed.data)
        items = [{"ASIN": _asin(ln.sku), "SellerSKU": ln.sku, "OrderItemId": ln.line_id, "Title": ln.sku,
                  "QuantityOrdered": ln.qty, "QuantityShipped": 0, "ProductInfo": {"NumberOfItems": "1"},
                  "IsGift": "false", "ConditionId": "New", "ConditionSubtypeId": "New", "IsTransparency": False,
                  "SerialNumberRequired": False} for ln in order.lines]
        return self._ok({"AmazonOrderId": order.order_id, "OrderItems": items}, call)

    def _order_json(self, order: Order) -> dict[str, Any]:
        cancelled = order.status == "cancelled"
        return {
            "AmazonOrderId": order.order_id, "PurchaseDate": iso(order.created_ms),
            "LastUpdateDate": iso(order.updated_ms), "OrderStatus": order_status(order),
            "FulfillmentChannel": "MFN", "SalesChannel": "Amazon.com", "OrderType": "StandardOrder",
            "NumberOfItemsShipped": 0,
            "NumberOfItemsUnshipped": 0 if cancelled else sum(ln.current for ln in order.lines),
            "MarketplaceId": self.marketplace_id, "ShipmentServiceLevelCategory": "Standard",
            "PaymentMethod": "Other", "IsPrime": False, "IsBusinessOrder": False, "IsPremiumOrder": False,
            "IsReplacementOrder": False, "IsSoldByAB": False, "IsISPU": False,
        }

    def _ok(self, payload: dict[str, Any], call: Call) -> Response:
        bucket = self._buckets.get(call.op)
        headers = {"x-amzn-RequestId": str(uuid.uuid4())}
        if bucket is not None:
            headers["x-amzn-RateLimit-Limit"] = f"{bucket.rate:g}"
        return json_response({"payload": payload}, headers=headers)

    def _not_found(self, order_id: str) -> Response:
        error = {"code": "NotFound", "message": f"Order {order_id} not found.", "details": ""}
        return json_response({"errors": [error]}, 404, headers={"x-amzn-RequestId": str(uuid.uuid4())})


def _asin(sku: str) -> str:
    return "B0" + hashlib.sha1(sku.encode()).hexdigest()[:8].upper()


def _encode_token(plan: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(plan)).decode()


def _decode_token(token: str) -> dict[str, Any] | None:
    try:
        plan = orjson.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, orjson.JSONDecodeError):
        return None
    keys = {"by", "lo", "hi", "before", "statuses", "size", "pos"}
    if not isinstance(plan, dict) or set(plan) != keys or plan["by"] not in ("LastUpdated", "Created"):
        return None
    pos, statuses = plan["pos"], plan["statuses"]
    ok = (isinstance(pos, list) and len(pos) == 2 and all(_int(v) for v in pos) and _int(plan["lo"])
          and _int(plan["hi"]) and _int(plan["size"]) and 1 <= plan["size"] <= MAX_PER_PAGE
          and isinstance(plan["before"], str) and isinstance(statuses, list) and set(statuses) <= STATUSES)
    return plan if ok else None


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
