"""The admin API's stock side under /v1: read, set and adjust a SKU, set many at once, take a multi-line
order all or nothing. Every write needs an Idempotency-Key (stocksync.api.idempotency); a replayed one
answers `Idempotent-Replayed: true`. Tokens and scopes: stocksync.api.auth.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stocksync.library import Outcome
from stocksync.limits import MAX_BATCH_ITEMS, MAX_ORDER_LINES, MAX_QTY, MAX_VERSION
from stocksync.split_orders import SplitOrders
from stocksync.validate import check_keys, invalid, want_int, want_list, want_object, want_sku

from .context import Context, context
from .httputil import HTTPError, json_response, read_json
from .idempotency import bind_key, idempotency_key, reference


def _sku_param(request: Request) -> str:
    return want_sku(request.path_params["sku"], "sku")


def _outcome_doc(o: Outcome) -> dict:
    return {"sku": o.sku, "status": o.status, "available": o.available, "version": o.version, "replayed": o.replayed}


def _outcome_response(o: Outcome, op: str, ctx: Context) -> Response:
    ctx.metrics.outcome(op, o.status, o.replayed)
    headers = {"Idempotent-Replayed": "true"} if o.replayed else None
    if o.status == "unknown_sku":
        return json_response({"error": "unknown_sku", "message": f"SKU {o.sku!r} does not exist"}, 404, headers)
    if o.status in ("insufficient", "conflict"):
        message = ("fewer units are available than the change needs" if o.status == "insufficient"
                   else "the SKU's version is not the expected one")
        return json_response({"error": o.status, "message": message, **_outcome_doc(o)}, 409, headers)
    return json_response(_outcome_doc(o), 200, headers)


# Stock -------------------------------------------------------------------------------------------------


async def get_sku(request: Request) -> Response:
    """A SKU's quantities: available = on_hand - committed - reserved (a bundle: no on_hand, its components)."""
    ctx = context(request)
    ctx.auth.require(request, "stock:read")
    q = await ctx.store.quantities(_sku_param(request))
    if q is None:
        raise HTTPError(404, "unknown_sku", f"SKU {request.path_params['sku']!r} does not exist")
    return json_response({"sku": q.sku, "available": q.available, "reserved": q.reserved, "version": q.version,
                          "updated_ms": q.updated_ms, "source": q.source, "on_hand": q.on_hand,
                          "committed": q.committed, "components": q.components, "bundles": list(q.bundles)})


async def put_sku(request: Request) -> Response:
    ctx = context(request)
    token = ctx.auth.require(request, "stock:write")
    sku, key = _sku_param(request), idempotency_key(request)
    doc = want_object(await read_json(request, ctx.max_body), "body")
    check_keys(doc, {"available", "expected_version"})
    available = want_int(doc.get("available"), "available", 0)
    expected = doc.get("expected_version")
    if expected is not None:
        expected = want_int(expected, "expected_version", 0, MAX_VERSION)
    await bind_key(request, ctx, key, doc)
    o = await ctx.store.set(sku, available, ref=reference(key, sku), source=token.name, expected_version=expected)
    return _outcome_response(o, "set", ctx)


async def adjust_sku(request: Request) -> Response:
    ctx = context(request)
    token = ctx.auth.require(request, "stock:write")
    sku, key = _sku_param(request), idempotency_key(request)
    doc = want_object(await read_json(request, ctx.max_body), "body")
    check_keys(doc, {"delta"})
    delta = want_int(doc.get("delta"), "delta", -MAX_QTY)
    if delta == 0:
        raise invalid("delta", "must not be 0")
    await bind_key(request, ctx, key, doc)
    o = await ctx.store.adjust(sku, delta, ref=reference(key, sku), source=token.name)
    return _outcome_response(o, "adjust", ctx)


async def batch_set(request: Request) -> Response:
    """Set many SKUs' absolute quantities (the initial import): one pipeline, one outcome per item."""
    ctx = context(request)
    token = ctx.auth.require(request, "stock:write")
    key = idempotency_key(request)
    doc = want_object(await read_json(request, ctx.max_body), "body")
    check_keys(doc, {"items"})
    items, seen = [], set()
    for i, item in enumerate(want_list(doc.get("items"), "items", MAX_BATCH_ITEMS)):
        item = want_object(item, f"items[{i}]")
        check_keys(item, {"sku", "available", "expected_version"}, f"items[{i}].")
        sku = want_sku(item.get("sku"), f"items[{i}].sku")
        if sku in seen:
            raise invalid(f"items[{i}].sku", f"{sku!r} appears twice")
        seen.add(sku)
        expected = item.get("expected_version")
        if expected is not None:
            expected = want_int(expected, f"items[{i}].expected_version", 0, MAX_VERSION)
        items.append((sku, want_int(item.get("available"), f"items[{i}].available", 0), expected))
    await bind_key(request, ctx, key, doc)
    outcomes = await ctx.store.set_many(items, ref_of=lambda sku: reference(key, sku), source=token.name)
    results = []
    for (sku, _, _), o in zip(items, outcomes, strict=True):
        if isinstance(o, Exception):  # refused by the library: that item only
            results.append({"sku": sku, "status": "invalid", "message": str(o)})
            continue
        ctx.metrics.outcome("set", o.status, o.replayed)
        results.append(_outcome_doc(o))
    return json_response({"results": results})


async def post_order(request: Request) -> Response:
    """Take every line or none; 409 with the short lines when stock is insufficient."""
    ctx = context(request)
    token = ctx.auth.require(request, "orders:write")
    key = idempotency_key(request)
    doc = want_object(await read_json(request, ctx.max_body), "body")
    check_keys(doc, {"lines"})
    lines, seen = [], set()
    for i, line in enumerate(want_list(doc.get("lines"), "lines", MAX_ORDER_LINES)):
        line = want_object(line, f"lines[{i}]")
        check_keys(line, {"sku", "qty"}, f"lines[{i}].")
        sku = want_sku(line.get("sku"), f"lines[{i}].sku")
        if sku in seen:
            raise invalid(f"lines[{i}].sku", f"{sku!r} appears twice; merge the lines")
        seen.add(sku)
        lines.append((sku, want_int(line.get("qty"), f"lines[{i}].qty", 1)))
    await bind_key(request, ctx, key, doc)
    if len({ctx.store.keys.partition(sku) for sku, _ in lines}) > 1:  # held per partition, then committed
        return await _split_order(ctx, lines, reference(key), token.name)
    o = await ctx.store.order(lines, ref=reference(key), source=token.name)
    ctx.metrics.outcome("order", o.status, o.replayed)
    headers = {"Idempotent-Replayed": "true"} if o.replayed else None
    states = [{"sku": s.sku, "qty": s.qty, "available": s.available, "version": s.version} for s in o.lines]
    if o.status == "insufficient":
        short = [{"sku": s.sku, "qty": s.qty, "available": s.available} for s in o.short_lines]
        return json_response({"error": "insufficient", "message": "the order was not taken: some lines are short",
                              "short_lines": short, "lines": states, "replayed": o.replayed}, 409, headers)
    if o.status == "unknown_sku":
        unknown = [s.sku for s in o.lines if s.available is None]
        return json_response({"error": "unknown_sku", "message": f"unknown SKU(s): {', '.join(unknown)}",
                              "unknown_skus": unknown}, 404, headers)
    return json_response({"status": o.status, "lines": states, "replayed": o.replayed}, 200, headers)


async def _split_order(ctx, lines: list[tuple[str, int]], ref: str, source: str) -> Response:
    """An order whose SKUs span partitions (stocksync.split_orders): 200, or 409 (insufficient, or expired
    when a retry found a hold expired after the commit decision: nothing taken), or 404."""
    o = await SplitOrders(ctx.store).place(dict(lines), ref=ref, source=source)
    ctx.metrics.outcome("order", o.status, o.replayed)
    headers = {"Idempotent-Replayed": "true"} if o.replayed else None
    states = [{"sku": sku, "qty": qty} for sku, qty in lines]
    if o.status == "unknown_sku":
        return json_response({"error": "unknown_sku", "message": "unknown SKU(s) among: " + ", ".join(o.short),
                              "unknown_skus": list(o.short)}, 404, headers)
    if not o.ok:
        short = [{"sku": sku, "qty": qty} for sku, qty in lines if sku in o.short]
        return json_response({"error": o.status, "message": "the order was not taken: some lines could not be held",
                              "short_lines": short, "lines": states, "replayed": o.replayed}, 409, headers)
    return json_response({"status": "ok", "lines": states, "replayed": o.replayed, "partitions": len(o.holds)}, 200,
                         headers)


def routes() -> list[Route]:
    return [
        Route("/v1/skus:batch", batch_set, methods=["POST"]),
        # {sku:path}: a SKU may hold "/" (sent as is or as %2F, which the server decodes before routing)
        Route("/v1/skus/{sku:path}/adjust", adjust_sku, methods=["POST"]),
        Route("/v1/skus/{sku:path}", get_sku, methods=["GET"]),
        Route("/v1/skus/{sku:path}", put_sku, methods=["PUT"]),
        Route("/v1/orders", post_order, methods=["POST"]),
    ]


