"""The admin API's reservations (stocksync.reservations), for a checkout holding units during payment:

    POST   /v1/reservations   {"lines": {"MUG": 1}, "ttl_s": 600}   hold every line or none (409 with the
                              short lines); 201 {"id", "status", "expires_ms", "ttl_ms", "lines"}. The
                              Idempotency-Key names the reservation: sent again (same body) it answers the
                              same id, with Idempotent-Replayed: true
    GET    /v1/reservations/{id}              its state: held | committed | released | expired
    POST   /v1/reservations/{id}:commit       the held units become a sale (committed); 409 expired or
                                              released; once (again: 200, Idempotent-Replayed)
    DELETE /v1/reservations/{id}              release: the units go back to available (409 if committed)

A reservation's units come back by themselves once its time passes, also when nothing runs then (reads
never count an expired hold). Lines must share a partition (a bundle holds its components).
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stocksync.library import ReservationOutcome
from stocksync.limits import MAX_HOLD_MS, MAX_ORDER_LINES
from stocksync.reservations import Reservations, token_of
from stocksync.validate import check_keys, invalid, want_int, want_object, want_sku

from .context import context
from .httputil import HTTPError, json_response, read_json
from .idempotency import bind_key, idempotency_key

CONFLICTS = {"expired": "its time had passed: its units are available again",
             "released": "it was released: it holds nothing", "committed": "it is a sale already: cancel the order instead",
             "insufficient": "it never held anything (its lines were short)"}


def _lines(value) -> dict[str, int]:
    doc = want_object(value, "lines")
    if not 1 <= len(doc) <= MAX_ORDER_LINES:
        raise invalid("lines", f"must have 1 to {MAX_ORDER_LINES} lines, has {len(doc)}")
    return {want_sku(sku, "lines key"): want_int(qty, f"lines.{sku}", 1) for sku, qty in doc.items()}


async def create(request: Request) -> Response:
    ctx = context(request)
    token = ctx.auth.require(request, "orders:write")
    key = idempotency_key(request)
    doc = want_object(await read_json(request, ctx.max_body), "body")
    check_keys(doc, {"lines", "ttl_s"})
    lines = _lines(doc.get("lines"))
    ttl_s = want_int(doc.get("ttl_s"), "ttl_s", 1, MAX_HOLD_MS // 1000)
    if len({ctx.store.keys.partition(sku) for sku in lines}) > 1:
        raise invalid("lines", "a reservation holds all its lines or none: they must share one partition")
    await bind_key(request, ctx, key, doc)
    held = await Reservations(ctx.store).reserve(lines, ttl_ms=ttl_s * 1000, source=token.name, token=token_of(key))
    headers = {"Idempotent-Replayed": "true"} if held.replayed else None
    states = [{"sku": s.sku, "qty": s.qty, "available": s.available, "version": s.version} for s in held.lines]
    if held.status == "unknown_sku":
        unknown = [s.sku for s in held.lines if s.available is None]
        return json_response({"error": "unknown_sku", "message": f"unknown SKU(s): {', '.join(unknown)}",
                              "unknown_skus": unknown}, 404, headers)
    if held.status == "insufficient":
        short = [{"sku": s.sku, "qty": s.qty, "available": s.available} for s in held.short_lines]
        return json_response({"error": "insufficient", "message": "nothing was held: some lines are short",
                              "id": held.reservation_id, "short_lines": short, "lines": states}, 409, headers)
    return json_response({"id": held.reservation_id, "status": "held", "ttl_ms": held.ms_left,
                          "expires_ms": int(time.time() * 1000) + held.ms_left, "lines": states,
                          "replayed": held.replayed}, 200 if held.replayed else 201, headers)


async def show(request: Request) -> Response:
    ctx = context(request)
    ctx.auth.require(request, "stock:read")
    rid = request.path_params["id"]
    r = await Reservations(ctx.store).get(rid)
    if r is None:
        raise HTTPError(404, "unknown_reservation", f"no reservation {rid!r}")
    return json_response({"id": rid, "state": r.state, "expires_ms": r.expires_ms, "ttl_ms": r.ms_left,
                          "lines": r.lines, "source": r.source})


def _settled(o: ReservationOutcome, done: str) -> Response:
    if o.status == "unknown":
        raise HTTPError(404, "unknown_reservation", f"no reservation {o.reservation_id!r}")
    lines = [{"sku": sku, "available": a, "version": v} for sku, a, v in o.lines]
    headers = {"Idempotent-Replayed": "true"} if o.replayed else None
    if o.status != "ok":
        return json_response({"error": o.status, "message": f"reservation {o.reservation_id!r}: {CONFLICTS[o.status]}",
                              "id": o.reservation_id, "lines": lines}, 409, headers)
    return json_response({"id": o.reservation_id, "status": done, "lines": lines, "replayed": o.replayed}, 200, headers)


async def commit(request: Request) -> Response:
    ctx = context(request)
    token = ctx.auth.require(request, "orders:write")
    idempotency_key(request)  # (the reservation is its own record: committing again answers the first commit)
    o = await Reservations(ctx.store).commit(request.path_params["id"], source=token.name)
    return _settled(o, "committed")


async def release(request: Request) -> Response:
    ctx = context(request)
    token = ctx.auth.require(request, "orders:write")
    idempotency_key(request)
    o = await Reservations(ctx.store).release(request.path_params["id"], source=token.name)
    return _settled(o, "released")


def routes() -> list[Route]:
    return [
        Route("/v1/reservations", create, methods=["POST"]),
        Route("/v1/reservations/{id}:commit", commit, methods=["POST"]),
        Route("/v1/reservations/{id}", show, methods=["GET"]),
        Route("/v1/reservations/{id}", release, methods=["DELETE"]),
    ]
