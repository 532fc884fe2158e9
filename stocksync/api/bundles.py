"""The admin API's bundles (stocksync.bundles):

    GET    /v1/bundles                    every bundle: its quantity and components
    GET    /v1/bundles/{sku}              one bundle (404: no such bundle)
    PUT    /v1/bundles/{sku}   {"components": {"MUG": 2, "PLATE": 1}}   define or redefine it (a
                               multipack: one component); 200 {"status": "ok" | "unchanged", ...}
    DELETE /v1/bundles/{sku}              it stops being a bundle: a plain SKU at 0 (channels list 0)

A bundle and its components must share a partition (always so on one partition); a refused definition
(422, with the reason: components in another partition, a component that is a bundle, a SKU with stock
of its own, a bundle with units committed to open orders) changes nothing. Writes take an
Idempotency-Key, bound to the request (the same key with another body: 422); setting the same definition
again changes nothing anyway, and a retried DELETE of a bundle it deleted answers 200, replayed.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stocksync.bundles import Bundles, want_components
from stocksync.errors import InvalidArgument
from stocksync.library import Quantities
from stocksync.validate import check_keys, want_object, want_sku

from .context import context
from .httputil import HTTPError, json_response, read_json
from .idempotency import bind_key, idempotency_key, reference, unbind_key


def bundle_doc(q: Quantities) -> dict:
    return {"sku": q.sku, "available": q.available, "committed": q.committed, "version": q.version,
            "components": q.components}


async def list_bundles(request: Request) -> Response:
    ctx = context(request)
    ctx.auth.require(request, "stock:read")
    found = await Bundles(ctx.store).list()
    return json_response({"bundles": [bundle_doc(q) for q in found.values()]})


async def get_bundle(request: Request) -> Response:
    ctx = context(request)
    ctx.auth.require(request, "stock:read")
    sku = want_sku(request.path_params["sku"], "sku")
    q = await Bundles(ctx.store).get(sku)
    if q is None:
        raise HTTPError(404, "not_a_bundle", f"{sku!r} is not a bundle")
    return json_response(bundle_doc(q))


async def put_bundle(request: Request) -> Response:
    ctx = context(request)
    token = ctx.auth.require(request, "stock:write")
    key = idempotency_key(request)
    sku = want_sku(request.path_params["sku"], "sku")
    doc = want_object(await read_json(request, ctx.max_body), "body")
    check_keys(doc, {"components"})
    components = want_components(doc.get("components"))
    again = await bind_key(request, ctx, key, doc)
    try:
        o = await Bundles(ctx.store).set(sku, components, source=token.name, ref=reference(key, sku))
    except InvalidArgument:  # (refused: the key was not used)
        if not again:
            await unbind_key(ctx, key)
        raise
    return json_response({"sku": sku, "status": o.status, "available": o.available, "version": o.version,
                          "components": components})


async def delete_bundle(request: Request) -> Response:
    ctx = context(request)
    token = ctx.auth.require(request, "stock:write")
    key = idempotency_key(request)
    sku = want_sku(request.path_params["sku"], "sku")
    again = await bind_key(request, ctx, key, {})
    o = await Bundles(ctx.store).delete(sku, source=token.name, ref=reference(key, sku))
    if o.status != "ok" and again:  # (a retry of a delete that was done: done)
        return json_response({"sku": sku, "status": "ok", "replayed": True}, 200, {"Idempotent-Replayed": "true"})
    if o.status != "ok":
        raise HTTPError(404, "not_a_bundle", f"{sku!r} is not a bundle")
    return json_response({"sku": sku, "status": o.status, "available": o.available, "version": o.version})


def routes() -> list[Route]:
    return [
        Route("/v1/bundles", list_bundles, methods=["GET"]),
        Route("/v1/bundles/{sku:path}", get_bundle, methods=["GET"]),
        Route("/v1/bundles/{sku:path}", put_bundle, methods=["PUT"]),
        Route("/v1/bundles/{sku:path}", delete_bundle, methods=["DELETE"]),
    ]
