"""The admin API's side of the on_hand / committed model (library 0.6):

    POST /v1/skus/{sku}/count    {"on_hand": 40[, "expected_version": 7]}   a warehouse count: on_hand is
                                 set, committed stays (409 insufficient below committed + reserved)
    POST /v1/skus/{sku}/ship     {"qty": 2}   units of sold lines left: out of committed and on_hand
    POST /v1/skus/{sku}/cancel   {"qty": 2}   units of sold lines will not ship: back to available
    POST /v1/orders/{channel}/{order_id}:ship   {"lines": [{"line_id": "L1", "qty": 1}, ...]}
                                 a marketplace order's lines shipped (qty left out: the whole line), as
                                 its fulfillment webhook would say; each line never beyond what it has
                                 unshipped (stocksync.orders.shipping)

Every write takes an Idempotency-Key: on the SKU writes it is the library's reference (the same key and
body again changes nothing and answers the first outcome), on an order's shipment it names the shipment.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stocksync.library import Moved, Outcome
from stocksync.limits import MAX_ORDER_LINES, MAX_VERSION
from stocksync.orders.intake import order_line_key
from stocksync.orders.webhooks import Delivery, Line, Ship
from stocksync.validate import check_keys, invalid, want_int, want_list, want_object, want_sku, want_str

from .context import Context, context
from .httputil import json_response, read_json
from .idempotency import bind_key, idempotency_key, reference


def _doc(o: Outcome | Moved, **extra) -> dict:
    return {"sku": o.sku, "status": o.status, "available": o.available, "version": o.version,
            "replayed": o.replayed, **extra}


def _answer(o: Outcome | Moved, op: str, ctx: Context, **extra) -> Response:
    ctx.metrics.outcome(op, o.status, o.replayed)
    headers = {"Idempotent-Replayed": "true"} if o.replayed else None
    if o.status == "unknown_sku":
        return json_response({"error": "unknown_sku", "message": f"SKU {o.sku!r} does not exist"}, 404, headers)
    if o.status in ("insufficient", "conflict"):
        message = ("the count is below the units committed to open orders and held by reservations: cancel or "
                   "ship what cannot be covered, then count again" if o.status == "insufficient"
                   else "the SKU's version is not the expected one")
        return json_response({"error": o.status, "message": message, **_doc(o, **extra)}, 409, headers)
    return json_response(_doc(o, **extra), 200, headers)


async def _write(request: Request, fields: set[str]) -> tuple[Context, str, str, str, dict]:
    ctx = context(request)
    token = ctx.auth.require(request, "stock:write")
    sku, key = want_sku(request.path_params["sku"], "sku"), idempotency_key(request)
    doc = want_object(await read_json(request, ctx.max_body), "body")
    check_keys(doc, fields)
    return ctx, token.name, sku, key, doc


async def count_sku(request: Request) -> Response:
    ctx, source, sku, key, doc = await _write(request, {"on_hand", "expected_version"})
    on_hand = want_int(doc.get("on_hand"), "on_hand", 0)
    expected = doc.get("expected_version")
    if expected is not None:
        expected = want_int(expected, "expected_version", 0, MAX_VERSION)
    await bind_key(request, ctx, key, doc)
    o = await ctx.store.count(sku, on_hand, ref=reference(key, sku), source=source, expected_version=expected)
    return _answer(o, "count", ctx, on_hand=on_hand)


async def _move(request: Request, op: str) -> Response:
    ctx, source, sku, key, doc = await _write(request, {"qty"})
    qty = want_int(doc.get("qty"), "qty", 1)
    await bind_key(request, ctx, key, doc)
    move = ctx.store.ship if op == "ship" else ctx.store.cancel
    o = await move(sku, qty, ref=reference(key, sku), source=source)
    return _answer(o, op, ctx, **{"shipped" if op == "ship" else "from_committed": o.units})


async def ship_sku(request: Request) -> Response:
    return await _move(request, "ship")


async def cancel_sku(request: Request) -> Response:
    return await _move(request, "cancel")


async def ship_order(request: Request) -> Response:
    """Ship lines of a marketplace order the intake took (as its fulfillment webhook would)."""
    ctx = context(request)
    ctx.auth.require(request, "orders:write")
    key = idempotency_key(request)
    name = request.path_params["channel"]
    config = ctx.channel(name)
    order_id = want_str(request.path_params["order_id"], "order_id", 100)
    doc = want_object(await read_json(request, ctx.max_body), "body")
    check_keys(doc, {"lines"})
    ships, seen = [], set()
    for i, line in enumerate(want_list(doc.get("lines"), "lines", MAX_ORDER_LINES)):
        line = want_object(line, f"lines[{i}]")
        check_keys(line, {"line_id", "qty"}, f"lines[{i}].")
        line_id = want_str(line.get("line_id"), f"lines[{i}].line_id", 100)
        if line_id in seen:
            raise invalid(f"lines[{i}].line_id", f"{line_id!r} appears twice")
        seen.add(line_id)
        qty = want_int(line["qty"], f"lines[{i}].qty", 1) if "qty" in line else 1
        ships.append(Ship(Line(order_line_key(config, order_id, line_id), order_id, line_id, None, qty),
                          f"ship:{key}", full="qty" not in line))
    await bind_key(request, ctx, key, doc)
    reply = await ctx.intake.apply(config, Delivery(None, "api ship", ships=ships))
    return json_response({"channel": name, "order_id": order_id, "lines": reply["lines"]})


def routes() -> list[Route]:
    return [
        Route("/v1/skus/{sku:path}/count", count_sku, methods=["POST"]),
        Route("/v1/skus/{sku:path}/ship", ship_sku, methods=["POST"]),
        Route("/v1/skus/{sku:path}/cancel", cancel_sku, methods=["POST"]),
        Route("/v1/orders/{channel}/{order_id}:ship", ship_order, methods=["POST"]),
    ]
