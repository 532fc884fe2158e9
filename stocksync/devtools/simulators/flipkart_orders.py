"""The Flipkart simulator's orders: order notifications and the Orders API v3 shipment search.

Notifications, as stocksync's receiver (stocksync/orders/webhooks.py) reads them: ``shipment_created``
(``attributes.orderItems[]`` of orderItemId, orderId, sku, quantity, status APPROVED) for a new order,
``shipment_cancelled`` (``attributes.orderItems[]`` of orderItemId and the quantity cancelled now) for
a cancellation and for a refund, which on Flipkart is a partial cancellation before dispatch (so
``restock_type`` is "cancel" only; both put the units back on the listing). Returns are not
simulated. Headers: ``X_Date`` (an HTTP date, made at each attempt) and ``X_Authorization: FKLOGIN
base64(appId:sha1hex(<timestamp> + url + method + secret))`` from ``flipkart_signature``, the one
place that signs. Its ``timestamp_form`` says what <timestamp> is: ``header``, the X_Date text, what
the receiver verifies today (the default), or ``unix``, the Unix time of X_Date in seconds, what
Flipkart's published sample signs ("Tue, 19 May 2015 09:02:15 GMT" -> "1432026135"). Webhook
options: ``app_id`` (default "stocksync-sim-app"), ``signed_url`` (the URL signed, default the URL
posted to: the receiver's ``notification_url``), ``timestamp_form``. Flipkart sends no delivery id:
a redelivery is the same body again. ``timestamp`` in the body has whole seconds, as in Flipkart's
samples.

Orders API v3 (the inventory API's ``Authorization: Bearer`` token):

* ``POST /sellers/v3/shipments/filter`` with ``{"filter": {"type": "preDispatch" | "postDispatch" |
  "cancelled", "states": [...], "modifiedDate": {"from", "to"}, "orderDate": {...},
  "cancellationDate": {...} (cancelled only), "sku": [...]}, "pagination": {"pageSize": 1-20}}``
  answers ``{"shipments": [...], "hasMore": bool, "nextPageUrl": "/v3/shipments/filter?next_token=..."
  | null}``; the next page is ``GET /sellers`` + nextPageUrl.
* ``GET /sellers/v3/shipments?shipmentIds=...`` (or ``orderIds`` or ``orderItemIds``, comma-separated,
  at most 100): ``{"shipments": [...]}``, the detail call for a cancellation event that names only
  order item ids.

A shipment: shipmentId, dispatchAfterDate (the order's time), dispatchByDate (two days later), updatedAt,
locationId, hold, mps, shipmentType NORMAL, subShipments, orderItems[] of orderItemId, orderId,
cancellationGroupId, orderDate, cancellationDate, paymentType, status (APPROVED, or CANCELLED once
every unit is), cancellationReason, quantity (as ordered), fsn, sku, listingId, title,
priceComponents, serviceProfile NON_FBF, isReplacement.

Assumptions, where Flipkart's public documentation says nothing we could check (each is the
simulator's own): one order is one shipment; nothing is dispatched, so postDispatch is always empty
and items are APPROVED or CANCELLED; a partial cancellation keeps the item APPROVED and adds
``cancelledQuantity`` (units cancelled so far: the field is the simulator's, Flipkart's OrderItem model
has none) and its cancellationDate; ``cancelled`` searches return shipments with any cancelled unit;
states default to every state of the type; results come oldest modification first (``sort`` is
accepted and ignored); ``from``/``to`` are inclusive and compare whole seconds; page size is at most
20; the shipment search has no rate limit unless one is set (``limits.searchShipments``,
``limits.getShipments``): Flipkart publishes none. Errors are ``{"errors": [{"severity", "code",
"description"}]}`` as for the inventory API.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import uuid
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .base import Call, Parsed, json_response
from .market import OrderError, Target
from .orders import Ids, Line, Order, Refund, bounds, iso, parse_time, position
from .outbox import Notice

FILTER_PATH = "/sellers/v3/shipments/filter"
SHIPMENTS_PATH = "/sellers/v3/shipments"
MAX_PAGE, MAX_IDS = 20, 100
IST = 330  # minutes east of UTC: Flipkart shows times in India Standard Time
STATES = {
    "preDispatch": ("APPROVED", "PACKING_IN_PROGRESS", "FORM_FAILED", "PACKED", "READY_TO_DISPATCH"),
    "postDispatch": ("PICKUP_COMPLETE", "SHIPPED", "DELIVERED", "RETURN_REQUESTED", "RETURNED", "COMPLETED"),
    "cancelled": ("CANCELLED",),
}
FILTER_FIELDS = {"type", "states", "modifiedDate", "orderDate", "cancellationDate", "sku", "cancellationType",
                 "locationId"}


def flipkart_signature(app_id: str, secret: str, x_date: str, url: str, method: str = "POST",
                       timestamp_form: str = "header") -> str:
    """X_Authorization for a notification sent at ``x_date`` (see the module docstring for the forms)."""
    if timestamp_form == "header":
        stamp = x_date
    elif timestamp_form == "unix":
        stamp = str(int(email.utils.parsedate_to_datetime(x_date).timestamp()))
    else:
        raise ValueError(f"timestamp_form must be header or unix, not {timestamp_form!r}")
    digest = hashlib.sha1((stamp + url + method + secret).encode()).hexdigest()
    return "FKLOGIN " + base64.b64encode(f"{app_id}:{digest}".encode()).decode()


class FlipkartOrders:
    """Mixed into FlipkartSim (a MarketSim)."""

    ORDER_IDS = Ids(order=lambda run, n: f"OD{run}{n:012d}", line=lambda run, n: f"{run}{n:010d}")
    ORDER_LIMITS = {"searchShipments": None, "getShipments": None}
    REFUND_TYPES = ("cancel",)

    def target_options(self, options: dict[str, Any]) -> dict[str, Any]:
        out = {"app_id": options.pop("app_id", "stocksync-sim-app"), "signed_url": options.pop("signed_url", None),
               "timestamp_form": options.pop("timestamp_form", "header")}
        if options:
            raise OrderError(400, f"unknown webhook option(s) {sorted(options)}: Flipkart has app_id, signed_url, "
                                  "timestamp_form")
        if not isinstance(out["app_id"], str) or not out["app_id"] or out["timestamp_form"] not in ("header", "unix"):
            raise OrderError(400, 'app_id must be a non-empty string, timestamp_form "header" or "unix"')
        if out["signed_url"] is not None and not isinstance(out["signed_url"], str):
            raise OrderError(400, "signed_url must be a URL")
        return out

    def shipment_id(self, order: Order) -> str:
        return str(uuid.UUID(int=(self.book.run << 64) | order.number))

    # ----- notifications -------------------------------------------------------------------------------

    def notice(self, target: Target, order: Order, event: str, refund: Refund | None) -> Notice:
        doc: dict[str, Any] = {"source": "flipkart", "version": "v3", "timestamp": iso(order.updated_ms, IST),
                               "shipmentId": self.shipment_id(order), "locationId": self.location_id}
        if event == "create":
            items = [{"orderItemId": ln.line_id, "orderId": order.order_id, "sku": ln.sku, "fsn": _fsn(ln.sku),
                      "listingId": "LST" + _fsn(ln.sku), "quantity": ln.qty, "status": "APPROVED",
                      "paymentType": "PREPAID", "serviceProfile": "NON_FBF", "isReplacement": False}
                     for ln in order.lines]
            doc.update(eventType="shipment_created", attributes={
                "hold": False, "mps": False, "dispatchAfterDate": iso(order.created_ms, IST),
                "dispatchByDate": iso(order.created_ms + 2 * 86_400_000, IST), "orderItems": items})
        else:
            items = [{"orderItemId": rl.line.line_id, "quantity": rl.qty, "reason": "buyer_cancellation",
                      "subReason": "order_cancelled" if event == "cancel" else "partial_cancellation"}
                     for rl in (refund.lines if refund else [])]
            doc.update(eventType="shipment_cancelled", attributes={"status": "CANCELLED", "orderItems": items})
        options, url = target.options, target.url

        def sign(body: bytes) -> dict[str, str]:
            x_date = email.utils.formatdate(usegmt=True)
            auth = flipkart_signature(options["app_id"], target.secret, x_date, options["signed_url"] or url, "POST",
                                      options["timestamp_form"])
            return {"X_Date": x_date, "X_Authorization": auth, "Content-Type": "application/json"}

        return Notice(str(uuid.uuid4()), doc["eventType"], order.order_id, url, orjson.dumps(doc), sign)

    # ----- Orders API v3 ---------------------------------------------------------------------------------

    def order_routes(self) -> list[Route]:
        search = self.endpoint(self._parse_filter, self._handle_filter, op="searchShipments",
                               limit=self.order_limit("searchShipments"))
        details = self.endpoint(self._parse_shipments, self._handle_shipments, op="getShipments",
                                limit=self.order_limit("getShipments"))
        return [Route(FILTER_PATH, search, methods=["POST", "GET"]), Route(SHIPMENTS_PATH, details, methods=["GET"])]

    def _parse_filter(self, request: Request, body: bytes) -> Parsed:
        if request.method == "GET":
            plan = _decode_token(request.query_params.get("next_token", ""))
            if plan is None:
                raise self.bad_request("next_token is missing or invalid: use nextPageUrl as given")
            return Parsed(plan)
        doc = self.load_json(body)
        if not isinstance(doc, dict) or not isinstance(doc.get("filter"), dict):
            raise self.bad_request('expected {"filter": {"type", "states", ...}, "pagination": {"pageSize"}}')
        unknown = set(doc) - {"filter", "pagination", "sort"}
        if unknown:
            raise self.bad_request(f"unknown field(s) {sorted(unknown)}")
        pagination = doc.get("pagination") or {}
        size = pagination.get("pageSize", MAX_PAGE) if isinstance(pagination, dict) else None
        if not (isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= MAX_PAGE):
            raise self.bad_request(f"pagination.pageSize must be an integer from 1 to {MAX_PAGE}")
        return Parsed({**self._filter(doc["filter"]), "size": size, "pos": None})

    def _filter(self, f: dict[str, Any]) -> dict[str, Any]:
        unknown = set(f) - FILTER_FIELDS
        if unknown:
            raise self.bad_request(f"unknown filter field(s) {sorted(unknown)}")
        kind = f.get("type")
        if kind not in STATES:
            raise self.bad_request("filter.type must be preDispatch, postDispatch or cancelled")
        states = f.get("states", list(STATES[kind]))
        if not isinstance(states, list) or not states or not set(states) <= set(STATES[kind]):
            raise self.bad_request(f"filter.states for {kind} must be a non-empty subset of {list(STATES[kind])}")
        skus = f.get("sku", [])
        if not isinstance(skus, list) or not all(isinstance(s, str) for s in skus):
            raise self.bad_request("filter.sku must be a list of SKUs")
        if "cancellationDate" in f and kind != "cancelled":
            raise self.bad_request("filter.cancellationDate is for type cancelled only")
        ranges = {name: self._range(f[name], name) for name in ("modifiedDate", "orderDate", "cancellationDate")
                  if name in f}
        return {"type": kind, "states": states, "skus": skus, "ranges": ranges}

    def _range(self, value: Any, name: str) -> list[int | None]:
        if not isinstance(value, dict) or not value or set(value) - {"from", "to"}:
            raise self.bad_request(f'filter.{name} must be {{"from", "to"}} (ISO 8601 dates, either may be left out)')
        lo = hi = None
        if "from" in value:
            t = parse_time(value["from"])
            if t is None:
                raise self.bad_request(f"filter.{name}.from must be an ISO 8601 date")
            lo = bounds(">=", t)[0]
        if "to" in value:
            t = parse_time(value["to"])
            if t is None:
                raise self.bad_request(f"filter.{name}.to must be an ISO 8601 date")
            hi = bounds("<=", t)[1]
        return [lo or 0, hi]

    def _handle_filter(self, request: Request, parsed: Parsed, call: Call) -> Response:
        plan = parsed.data
        lo, hi = plan["ranges"].get("modifiedDate", [0, None])
        pos = tuple(plan["pos"]) if plan["pos"] else None
        page: list[Order] = []
        for order in self.book.scan("updated", lo, hi, pos):
            if self._matches(order, plan):
                page.append(order)
                if len(page) > plan["size"]:
                    break
        more, page = len(page) > plan["size"], page[: plan["size"]]
        next_url = None
        if more:
            next_url = "/v3/shipments/filter?next_token=" + _encode_token({**plan, "pos": list(position(page[-1], "updated"))})
        return json_response({"shipments": [self._shipment(o) for o in page], "hasMore": more, "nextPageUrl": next_url})

    def _matches(self, order: Order, plan: dict[str, Any]) -> bool:
        olo, ohi = plan["ranges"].get("orderDate", [0, None])
        if order.created_ms < olo or (ohi is not None and order.created_ms >= ohi):
            return False
        if plan["skus"] and not any(ln.sku in plan["skus"] for ln in order.lines):
            return False
        if plan["type"] == "postDispatch":
            return False  # nothing is dispatched here
        if plan["type"] == "preDispatch":
            return "APPROVED" in plan["states"] and any(ln.current for ln in order.lines)
        clo, chi = plan["ranges"].get("cancellationDate", [0, None])
        stamps = _cancellations(order)
        return any(t >= clo and (chi is None or t < chi) for t in stamps.values())

    def _parse_shipments(self, request: Request, body: bytes) -> Parsed:
        q = request.query_params
        given = [k for k in ("shipmentIds", "orderIds", "orderItemIds") if k in q]
        ids = [i for i in q.get(given[0], "").split(",") if i] if len(given) == 1 else []
        if not 1 <= len(ids) <= MAX_IDS:
            raise self.bad_request(f"give one of shipmentIds, orderIds or orderItemIds: 1 to {MAX_IDS} ids, "
                                   "comma-separated")
        return Parsed((given[0], ids))

    def _handle_shipments(self, request: Request, parsed: Parsed, call: Call) -> Response:
        kind, ids = parsed.data
        found: dict[int, Order] = {}  # by number: an order named twice (two of its items) is listed once
        for i in ids:
            order = {"shipmentIds": self._by_shipment_id, "orderIds": self.book.get,
                     "orderItemIds": self.book.by_line}[kind](i)
            if order is not None:
                found.setdefault(order.number, order)
        return json_response({"shipments": [self._shipment(o) for o in found.values()]})

    def _by_shipment_id(self, shipment_id: str) -> Order | None:
        try:
            n = uuid.UUID(shipment_id).int
        except ValueError:
            return None
        return self.book.by_number(n & (2**64 - 1)) if n >> 64 == self.book.run else None

    def _shipment(self, order: Order) -> dict[str, Any]:
        stamps = _cancellations(order)
        return {
            "shipmentId": self.shipment_id(order), "dispatchAfterDate": iso(order.created_ms, IST),
            "dispatchByDate": iso(order.created_ms + 2 * 86_400_000, IST), "updatedAt": iso(order.updated_ms, IST),
            "locationId": self.location_id, "hold": False, "mps": False, "packagingPolicy": "DEFAULT",
            "shipmentType": "NORMAL", "subShipments": [{"subShipmentId": "SS-1", "packages": []}],
            "orderItems": [_item(order, ln, stamps.get(ln.line_id)) for ln in order.lines],
        }


def _item(order: Order, line: Line, cancelled_ms: int | None) -> dict[str, Any]:
    cancelled = line.refunded  # every refund here is a cancellation
    price = 10.0 * line.qty
    return {
        "orderItemId": line.line_id, "orderId": order.order_id, "cancellationGroupId": f"grp{line.line_id}",
        "orderDate": iso(order.created_ms, IST),
        "cancellationDate": iso(cancelled_ms, IST) if cancelled_ms is not None else None,
        "paymentType": "PREPAID", "status": "CANCELLED" if line.current == 0 else "APPROVED",
        "cancellationReason": "buyer_cancellation" if cancelled else None, "cancellationSubReason": None,
        "courierReturn": False, "quantity": line.qty, "cancelledQuantity": cancelled, "fsn": _fsn(line.sku),
        "sku": line.sku, "listingId": "LST" + _fsn(line.sku), "hsn": "", "title": line.sku, "packageIds": [],
        "priceComponents": {"sellingPrice": price, "totalPrice": price, "shippingCharge": 0.0, "customerPrice": price,
                            "flipkartDiscount": 0.0},
        "serviceProfile": "NON_FBF", "isReplacement": False,
    }


def _cancellations(order: Order) -> dict[str, int]:
    """Line id -> when units of it were last cancelled."""
    out: dict[str, int] = {}
    for refund in order.refunds:
        for rl in refund.lines:
            out[rl.line.line_id] = refund.created_ms
    return out


def _fsn(sku: str) -> str:
    return hashlib.sha1(sku.encode()).hexdigest()[:16].upper()


def _encode_token(plan: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(plan)).decode()


def _decode_token(token: str) -> dict[str, Any] | None:
    try:
        plan = orjson.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, orjson.JSONDecodeError):
        return None
    if not isinstance(plan, dict) or set(plan) != {"type", "states", "skus", "ranges", "size", "pos"}:
        return None
    pos, ranges = plan["pos"], plan["ranges"]
    ok = (plan["type"] in STATES and isinstance(plan["states"], list) and isinstance(plan["skus"], list)
          and isinstance(plan["size"], int) and 1 <= plan["size"] <= MAX_PAGE
          and isinstance(pos, list) and len(pos) == 2 and all(isinstance(v, int) for v in pos)
          and isinstance(ranges, dict) and set(ranges) <= {"modifiedDate", "orderDate", "cancellationDate"}
          and all(isinstance(r, list) and len(r) == 2 and all(v is None or isinstance(v, int) for v in r)
                  for r in ranges.values()))
    return plan if ok else None
