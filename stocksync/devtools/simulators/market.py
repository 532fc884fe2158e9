"""A marketplace simulator that sells: an order book, order webhooks and control endpoints to drive them.

``MarketSim`` is the base of the Shopify, Amazon and Flipkart simulators (the generic webhook receiver
does not sell). A buyer can only buy what the simulator lists: an order is accepted only if the listed
quantity covers every line (lines of one SKU add up), and lowers the listing by what it sold; a
refused order changes nothing. Each marketplace module says how its ids look, what its webhooks carry
and how they are signed (``<marketplace>_orders.py``, mixed into the simulator class).

Control endpoints (JSON bodies; unknown fields, bad types and impossible requests answer 4xx
``{"error", "message"}`` and change nothing):

    POST /_sim/orders                {"lines": [{"sku", "qty"}, ...], "webhook": "deliver"|"drop"|"late"|"twice"}
        -> 200 {"order_id", "accepted": true, "delivery": {...} | null, "created_ms"}
         | 200 {"order_id": null, "accepted": false, "short": {"line", "sku", "wanted", "listed"}}
    POST /_sim/orders/bulk           {"orders": [{"lines": [...]}, ...]} or {"count": n, "lines": [...]}
        -> 200 {"accepted", "refused", "order_ids": [...], "refused_at": [first 100 indexes]}  (no webhooks)
    GET  /_sim/orders/{id}           -> the order (status, times, lines, refunds), 404 if unknown
    POST /_sim/orders/{id}/cancel    {"webhook", "restock": true}      -> {"order_id", "status", "restocked", "delivery"}
    POST /_sim/orders/{id}/refund    {"lines": [{"line_id", "qty"}] (default: every unit left),
                                      "restock_type", "webhook"}   -> {"order_id", "refund_id", "status", "restocked", "delivery"}
    GET|POST /_sim/webhooks          {"url", "secret", ...marketplace options} (POST {"url": null} unsets)
                                     -> {"url", "options", "deliveries": [...]}  (GET ?since=N: deliveries after N)
    GET|POST /_sim/market            {"late_s", "retry_delays_s", "timeout_s", "limits": {op: {"rate", "burst"} | null}}

Cancelling a cancelled order, or refunding more than is left of a line, answers 409. ``webhook``
defaults to ``deliver``; with no receiver set, the delivery is recorded as ``no_receiver``. Delivery
is in the background (see ``outbox``). ``limits`` are the order-list APIs' own rate limits
(SP-API's per-operation usage plans); they default to the marketplace's real figures and are
refilled by ``reset()``. ``reset(faults=True)`` also restores the settings and unsets the receiver.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .base import Faults, Simulator, TokenBucket, is_int, json_response
from .orders import MAX_LINES, MAX_QTY, Ids, Order, OrderBook, Refund, shortfall
from .outbox import MODES, Delivery, Notice, Outbox

MAX_BULK = 1_000_000
DEFAULT_SETTINGS: dict[str, Any] = {"late_s": 2.0, "retry_delays_s": [1.0, 2.0, 4.0], "timeout_s": 5.0}


class OrderError(ValueError):
    """A control request that cannot be done: answered ``status`` with ``message``, nothing changed."""

    def __init__(self, status: int, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass
class Target:
    """Where order webhooks go, and the marketplace's signing options."""

    url: str
    secret: str
    options: dict[str, Any]


class MarketSim(Simulator):
    """Subclasses (through their ``*Orders`` mixin) provide ``ORDER_IDS``, ``ORDER_LIMITS``,
    ``REFUND_TYPES``, ``target_options`` and ``notice``."""

    ORDER_IDS: ClassVar[Ids]
    ORDER_LIMITS: ClassVar[dict[str, tuple[float, float] | None]] = {}  # op -> (rate/s, burst); None: no limit
    REFUND_TYPES: ClassVar[tuple[str, ...]] = ("return", "cancel", "no_restock")  # the first is the default

    def __init__(self, faults: Faults | None = None) -> None:
        self.outbox = Outbox()
        self._target: Target | None = None
        self._settings = copy.deepcopy(DEFAULT_SETTINGS)
        self._limits = dict(self.ORDER_LIMITS)
        super().__init__(faults)

    # ----- what each marketplace provides ------------------------------------------------------------

    def target_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The marketplace's webhook options, checked (raise OrderError), with their defaults."""
        if options:
            raise OrderError(400, f"unknown webhook option(s): {sorted(options)}")
        return {}

    def notice(self, target: Target, order: Order, event: str, refund: Refund | None) -> Notice | None:
        """The webhook of ``event`` (create, cancel or refund) of ``order``; None: the marketplace sends none."""
        raise NotImplementedError

    # ----- state ------------------------------------------------------------------------------------

    def _reset_state(self) -> None:
        self.book = OrderBook(self.ORDER_IDS)
        self.refused = 0
        self.outbox.cancel_all()
        self._buckets = {op: TokenBucket(*lim) if lim else None for op, lim in self._limits.items()}

    def reset(self, faults: bool = True) -> None:
        with self._lock:
            if faults:
                self._target = None
                self._settings = copy.deepcopy(DEFAULT_SETTINGS)
                self._limits = dict(self.ORDER_LIMITS)
            super().reset(faults)

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {**super().state(), "orders": len(self.book), "refused_orders": self.refused,
                    "webhook_url": self._target.url if self._target else None}

    def order_limit(self, op: str) -> Any:
        """The ``limit`` argument of ``endpoint`` for order-list operation ``op``."""
        return lambda: self._buckets.get(op)

    def order(self, order_id: str) -> dict[str, Any] | None:
        with self._lock:
            order = self.book.get(order_id)
            return order.view() if order else None

    @property
    def deliveries(self) -> list[Delivery]:
        return self.outbox.deliveries

    # ----- settings -----------------------------------------------------------------------------------

    def set_webhook(self, url: str | None, secret: str = "", **options: Any) -> dict[str, Any]:
        """Send order webhooks to ``url`` (None: nowhere), signed with ``secret`` as the marketplace signs."""
        if url is None:
            with self._lock:
                self._target = None
            return {"url": None, "options": {}}
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise OrderError(400, "url must be an http:// or https:// URL")
        if not isinstance(secret, str) or not secret:
            raise OrderError(400, "secret must be a non-empty string (the marketplace signs with it)")
        target = Target(url, secret, self.target_options(dict(options)))
        with self._lock:
            self._target = target
        return {"url": url, "options": target.options}

    def set_market(self, **changes: Any) -> dict[str, Any]:
        """Change settings (late_s, retry_delays_s, timeout_s) and order-API limits; all or nothing."""
        unknown = set(changes) - {*DEFAULT_SETTINGS, "limits"}
        if unknown:
            raise OrderError(400, f"unknown setting(s): {sorted(unknown)}")
        new = {**self._settings, **{k: v for k, v in changes.items() if k != "limits"}}
        if not (_number(new["late_s"]) and new["late_s"] >= 0):
            raise OrderError(400, "late_s must be a number >= 0")
        if not (_number(new["timeout_s"]) and new["timeout_s"] > 0):
            raise OrderError(400, "timeout_s must be a number > 0")
        delays = new["retry_delays_s"]
        if not (isinstance(delays, list) and len(delays) <= 10 and all(_number(d) and d >= 0 for d in delays)):
            raise OrderError(400, "retry_delays_s must be a list of at most 10 numbers >= 0")
        limits = self._new_limits(changes.get("limits", {}))
        with self._lock:
            self._settings = {**new, "retry_delays_s": [float(d) for d in delays]}
            for op, lim in limits.items():
                self._limits[op] = lim
                self._buckets[op] = TokenBucket(*lim) if lim else None
            return self.market()

    def _new_limits(self, changes: Any) -> dict[str, tuple[float, float] | None]:
        if not isinstance(changes, dict):
            raise OrderError(400, 'limits must be an object {op: {"rate", "burst"} | null}')
        out: dict[str, tuple[float, float] | None] = {}
        for op, lim in changes.items():
            if op not in self.ORDER_LIMITS:
                raise OrderError(400, f"unknown operation {op!r}: this simulator limits {sorted(self.ORDER_LIMITS)}")
            if lim is None:
                out[op] = None
                continue
            if not (isinstance(lim, dict) and set(lim) == {"rate", "burst"} and _number(lim["rate"])
                    and _number(lim["burst"]) and lim["rate"] > 0 and lim["burst"] >= 1):
                raise OrderError(400, f"limits.{op} must be null or {{\"rate\": > 0, \"burst\": >= 1}}")
            out[op] = (float(lim["rate"]), float(lim["burst"]))
        return out

    def market(self) -> dict[str, Any]:
        with self._lock:
            limits = {op: {"rate": lim[0], "burst": lim[1]} if lim else None for op, lim in self._limits.items()}
            return {**copy.deepcopy(self._settings), "limits": limits}

    # ----- orders ---------------------------------------------------------------------------------------

    def place_order(self, lines: Any, webhook: str = "deliver") -> dict[str, Any]:
        """An order of ``lines`` ([{"sku", "qty"}] or [(sku, qty)]), accepted if the listing covers it."""
        checked = _lines(lines)
        _mode(webhook)
        with self._lock:
            short = shortfall(self._quantities, checked)
            if short is not None:
                self.refused += 1
                return {"order_id": None, "accepted": False, "short": short}
            order = self._take(checked)
            delivery = self._send(order, "create", None, webhook)
            # created_ms: when the listing went down (wall clock, as the API calls' record: the market
            # benchmark replays listings from both)
            return {"order_id": order.order_id, "accepted": True, "delivery": delivery, "created_ms": order.created_ms}

    def bulk_orders(self, orders: list[Any]) -> dict[str, Any]:
        """Many orders at once, each accepted as by place_order, without webhooks (benchmarks)."""
        return self._bulk([_lines(lines, f"orders[{i}].") for i, lines in enumerate(orders)])

    def _bulk(self, checked: list[list[tuple[str, int]]]) -> dict[str, Any]:
        ids, refused_at = [], []
        with self._lock:
            listed, now = self._quantities, self.book.now_ms()
            for i, lines in enumerate(checked):
                if shortfall(listed, lines) is None:
                    ids.append(self._take(lines, now).order_id)
                else:
                    refused_at.append(i)
            self.refused += len(refused_at)
        return {"accepted": len(ids), "refused": len(refused_at), "order_ids": ids, "refused_at": refused_at[:100]}

    def _take(self, lines: list[tuple[str, int]], now_ms: int | None = None) -> Order:
        listed = self._quantities
        for sku, qty in lines:
            listed[sku] -= qty  # sales are not pushes: the history (what the API accepted) is unchanged
        return self.book.add(lines, now_ms)

    def cancel_order(self, order_id: str, webhook: str = "deliver", restock: bool = True) -> dict[str, Any]:
        """Cancel the order: every unit left on it is refunded as a cancellation (back on the listing
        with ``restock``)."""
        _mode(webhook)
        if not isinstance(restock, bool):
            raise OrderError(400, "restock must be true or false")
        with self._lock:
            order = self._order(order_id)
            if order.status == "cancelled":
                raise OrderError(409, f"order {order_id} is already cancelled", "conflict")
            left = [(line, line.current) for line in order.lines if line.current]
            refund = None
            if left:
                refund = self.book.refund(order, left, "cancel" if restock else "no_restock", restock, True)
                self._restock(refund, restock)
            self.book.cancel(order)
            delivery = self._send(order, "cancel", refund, webhook)
            restocked = {} if not (refund and restock) else _units(refund)
            return {"order_id": order_id, "status": order.status, "restocked": restocked, "delivery": delivery}

    def refund_order(self, order_id: str, lines: Any = None, restock_type: str | None = None,
                     webhook: str = "deliver") -> dict[str, Any]:
        """Refund ``lines`` ([{"line_id", "qty"}], default every unit left), restocked by ``restock_type``."""
        _mode(webhook)
        restock_type = self.REFUND_TYPES[0] if restock_type is None else restock_type
        if restock_type not in self.REFUND_TYPES:
            raise OrderError(400, f"restock_type must be one of {', '.join(self.REFUND_TYPES)} on {self.name}")
        with self._lock:
            order = self._order(order_id)
            taken = self._refund_lines(order, lines)
            restock = restock_type != "no_restock"
            refund = self.book.refund(order, taken, restock_type, restock)
            self._restock(refund, restock)
            delivery = self._send(order, "refund", refund, webhook)
            return {"order_id": order_id, "refund_id": refund.refund_id, "status": order.status,
                    "restocked": _units(refund) if restock else {}, "delivery": delivery}

    def _order(self, order_id: Any) -> Order:
        order = self.book.get(order_id) if isinstance(order_id, str) else None
        if order is None:
            raise OrderError(404, f"no order {order_id!r} on this simulator", "not_found")
        return order

    def _refund_lines(self, order: Order, lines: Any) -> list[tuple[Any, int]]:
        if lines is None:
            taken = [(line, line.current) for line in order.lines if line.current]
            if not taken:
                raise OrderError(409, f"nothing is left to refund on order {order.order_id}", "conflict")
            return taken
        if not isinstance(lines, list) or not lines or len(lines) > MAX_LINES:
            raise OrderError(400, f"lines must be a list of 1 to {MAX_LINES} {{\"line_id\", \"qty\"}}")
        by_id = {line.line_id: line for line in order.lines}
        wanted: dict[str, int] = {}
        for i, item in enumerate(lines):
            if not (isinstance(item, dict) and set(item) == {"line_id", "qty"} and is_int(item["qty"])
                    and 1 <= item["qty"] <= MAX_QTY):
                raise OrderError(400, f"lines[{i}] must be {{\"line_id\", \"qty\": >= 1}}")
            if item["line_id"] not in by_id:
                raise OrderError(400, f"lines[{i}]: order {order.order_id} has no line {item['line_id']!r}")
            wanted[item["line_id"]] = wanted.get(item["line_id"], 0) + item["qty"]
        for line_id, qty in wanted.items():
            if qty > by_id[line_id].current:
                raise OrderError(409, f"line {line_id} has {by_id[line_id].current} unit(s) left, not {qty}",
                                 "conflict")
        return [(by_id[line_id], qty) for line_id, qty in wanted.items()]

    def _restock(self, refund: Refund, restock: bool) -> None:
        if restock:
            listed = self._quantities
            for rl in refund.lines:
                listed[rl.line.sku] = listed.get(rl.line.sku, 0) + rl.qty

    def _send(self, order: Order, event: str, refund: Refund | None, mode: str) -> dict[str, Any] | None:
        """Hand the event's webhook to the outbox (under the lock: the notice is of this moment's order)."""
        target = self._target or Target("", "", self.target_options({}))
        notice = self.notice(target, order, event, refund)
        if notice is None:
            return None
        if not target.url:
            delivery = self.outbox.record(notice, mode, "dropped" if mode == "drop" else "no_receiver")
        else:
            s = self._settings
            delivery = self.outbox.send(notice, mode, late_s=s["late_s"], retry_delays_s=tuple(s["retry_delays_s"]),
                                        timeout_s=s["timeout_s"])
        return {"seq": delivery.seq, "delivery_id": delivery.delivery_id, "topic": delivery.topic, "mode": mode,
                "state": delivery.state}

    # ----- control endpoints --------------------------------------------------------------------------

    def control_routes(self) -> list[Route]:
        return [
            Route("/_sim/orders", self._control(self._ctl_order), methods=["POST"]),
            Route("/_sim/orders/bulk", self._control(self._ctl_bulk), methods=["POST"]),
            Route("/_sim/orders/{order_id}", self._control(self._ctl_get), methods=["GET"]),
            Route("/_sim/orders/{order_id}/cancel", self._control(self._ctl_cancel), methods=["POST"]),
            Route("/_sim/orders/{order_id}/refund", self._control(self._ctl_refund), methods=["POST"]),
            Route("/_sim/webhooks", self._control(self._ctl_webhooks), methods=["GET", "POST"]),
            Route("/_sim/market", self._control(self._ctl_market), methods=["GET", "POST"]),
        ]

    def _control(self, handler: Any) -> Any:
        """A control endpoint: the JSON body (an object) to ``handler``; OrderError answers 4xx."""

        async def run(request: Request) -> Response:
            raw = await request.body()
            try:
                body = orjson.loads(raw) if raw.strip() else {}
            except orjson.JSONDecodeError as exc:
                return json_response({"error": "bad_request", "message": f"malformed JSON: {exc}"}, 400)
            if not isinstance(body, dict):
                return json_response({"error": "bad_request", "message": "the body must be a JSON object"}, 400)
            try:
                return json_response(handler(request, body))
            except OrderError as exc:
                return json_response({"error": exc.code, "message": str(exc)}, exc.status)

        return run

    def _ctl_order(self, request: Request, body: dict[str, Any]) -> Any:
        _fields(body, {"lines"}, {"webhook"})
        return self.place_order(body["lines"], body.get("webhook", "deliver"))

    def _ctl_bulk(self, request: Request, body: dict[str, Any]) -> Any:
        if "orders" in body:
            _fields(body, {"orders"})
            orders = body["orders"]
            if not isinstance(orders, list) or not 1 <= len(orders) <= MAX_BULK:
                raise OrderError(400, f"orders must be a list of 1 to {MAX_BULK} {{\"lines\": [...]}}")
            if not all(isinstance(o, dict) and set(o) == {"lines"} for o in orders):
                raise OrderError(400, 'each of orders must be {"lines": [...]}')
            return self.bulk_orders([o["lines"] for o in orders])
        _fields(body, {"count", "lines"})
        if not (is_int(body["count"]) and 1 <= body["count"] <= MAX_BULK):
            raise OrderError(400, f"count must be an integer from 1 to {MAX_BULK}")
        return self._bulk([_lines(body["lines"])] * body["count"])  # checked once

    def _ctl_get(self, request: Request, body: dict[str, Any]) -> Any:
        with self._lock:
            return self._order(request.path_params["order_id"]).view()

    def _ctl_cancel(self, request: Request, body: dict[str, Any]) -> Any:
        _fields(body, set(), {"webhook", "restock"})
        return self.cancel_order(request.path_params["order_id"], body.get("webhook", "deliver"),
                                 body.get("restock", True))

    def _ctl_refund(self, request: Request, body: dict[str, Any]) -> Any:
        _fields(body, set(), {"lines", "restock_type", "webhook"})
        return self.refund_order(request.path_params["order_id"], body.get("lines"), body.get("restock_type"),
                                 body.get("webhook", "deliver"))

    def _ctl_webhooks(self, request: Request, body: dict[str, Any]) -> Any:
        if request.method == "POST":
            _fields(body, {"url"}, None)
            options = {k: v for k, v in body.items() if k not in ("url", "secret")}
            self.set_webhook(body["url"], body.get("secret", ""), **options)
        since = request.query_params.get("since", "0")
        if not since.isdigit():
            raise OrderError(400, "since must be a delivery seq (a whole number)")
        with self._lock:
            target = self._target
        return {"url": target.url if target else None, "options": target.options if target else {},
                "deliveries": self.outbox.views(int(since))}

    def _ctl_market(self, request: Request, body: dict[str, Any]) -> Any:
        return self.set_market(**body) if request.method == "POST" else self.market()


# ----- checks ----------------------------------------------------------------------------------------------


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN


def _mode(webhook: Any) -> None:
    if webhook not in MODES:
        raise OrderError(400, f"webhook must be one of {', '.join(MODES)}")


def _fields(body: dict[str, Any], required: set[str], optional: set[str] | None = set()) -> None:  # noqa: B006
    """Required fields present; with ``optional`` not None, nothing else (a typo must not pass unseen)."""
    missing = required - set(body)
    if missing:
        raise OrderError(400, f"missing field(s): {sorted(missing)}")
    if optional is not None:
        unknown = set(body) - required - optional
        if unknown:
            raise OrderError(400, f"unknown field(s): {sorted(unknown)}; expected {sorted(required | optional)}")


def _lines(lines: Any, where: str = "") -> list[tuple[str, int]]:
    """[(sku, qty)] from [{"sku", "qty"}] or [(sku, qty)], checked."""
    if not isinstance(lines, (list, tuple)) or not 1 <= len(lines) <= MAX_LINES:
        raise OrderError(400, f"{where}lines must be a list of 1 to {MAX_LINES} {{\"sku\", \"qty\"}}")
    out = []
    for i, line in enumerate(lines):
        if isinstance(line, dict) and set(line) == {"sku", "qty"}:
            sku, qty = line["sku"], line["qty"]
        elif isinstance(line, tuple) and len(line) == 2:  # from Python only: JSON has no tuples
            sku, qty = line
        else:
            raise OrderError(400, f'{where}lines[{i}] must be {{"sku", "qty"}}')
        if not isinstance(sku, str) or not sku or len(sku) > 200:
            raise OrderError(400, f"{where}lines[{i}].sku must be a non-empty string of at most 200 characters")
        if not is_int(qty) or not 1 <= qty <= MAX_QTY:
            raise OrderError(400, f"{where}lines[{i}].qty must be a whole number >= 1")
        out.append((sku, qty))
    return out


def _units(refund: Refund) -> dict[str, int]:
    out: dict[str, int] = {}
    for rl in refund.lines:
        out[rl.line.sku] = out.get(rl.line.sku, 0) + rl.qty
    return out

