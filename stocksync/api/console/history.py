"""GET /v1/skus:history?sku=...: one SKU's events, newest first, from its partition's events stream
(type, delta, available, version, source, ref, reason, time), with what its hash holds now.

The stream is not indexed by SKU, so a call reads it backwards SCAN_CHUNK entries at a time and stops once
it has `limit` events of the SKU or has read MAX_SCAN entries; `next_before` (pass it as `before`) goes
on from there, and is null once the oldest entry kept was read. The stream holds what the trimmer left
(every entry some channel has not acknowledged, and the newest ones), so an old SKU's first events may be
gone. Scope: events:read.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stocksync.events import Event
from stocksync.store import StockStore
from stocksync.validate import invalid, want_sku

from ..context import context
from ..httputil import json_response
from .listings import hash_fields

SCAN_CHUNK = 1000  # entries a XREVRANGE
MAX_SCAN = 20_000  # entries a call reads at most
MAX_LIMIT = 500
ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def entry_id(text: str | None) -> str | None:
    """An entry ID from a request (None: from the newest), checked as Redis would (each part < 2**64)."""
    if text is None:
        return None
    if not ENTRY_ID.match(text) or any(int(part) >= 2**64 for part in text.split("-")):
        raise invalid("before", "must be an entry ID (<ms>-<seq>) as given in next_before")
    return text


def event_doc(e: Event) -> dict:
    return {"id": e.id, "type": e.type, "delta": e.delta, "available": e.available, "version": e.version,
            "source": e.source, "ref": e.ref, "reason": e.reason, "ts_ms": e.ts_ms}


async def sku_events(store: StockStore, sku: str, limit: int, before: str | None) -> tuple[list[Event], str | None, int]:
    """(the SKU's events older than `before`, newest first, at most `limit`; where to go on, or None at
    the stream's start; entries read)."""
    if before == "0-0":  # nothing is older than the first possible ID
        return [], None, 0
    partition = store.keys.partition(sku)
    stream, top = store.keys.events(partition), f"({before}" if before else "+"
    found: list[Event] = []
    scanned = 0
    while scanned < MAX_SCAN:
        entries = await store.redis.xrevrange(stream, max=top, min="-", count=SCAN_CHUNK)
        for entry_id, fields in entries:
            scanned += 1
            if fields.get("sku") == sku:
                found.append(Event.parse(partition, entry_id, fields))
                if len(found) == limit:
                    return found, entry_id, scanned
        if len(entries) < SCAN_CHUNK:
            return found, None, scanned
        top = f"({entries[-1][0]}"
    return found, top[1:], scanned


async def history(request: Request) -> Response:
    ctx = context(request)
    ctx.auth.require(request, "events:read")
    sku = want_sku(request.query_params.get("sku"), "sku")
    text = request.query_params.get("limit", "100")
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise invalid("limit", f"must be a whole number from 1 to {MAX_LIMIT}")
    before = entry_id(request.query_params.get("before") or None)
    events, next_before, scanned = await sku_events(ctx.store, sku, int(text), before)
    raw = await ctx.store.redis.hgetall(ctx.store.keys.sku(sku))
    return json_response({"sku": sku, "stock": hash_fields(raw) if raw else None,
                          "events": [event_doc(e) for e in events], "next_before": next_before,
                          "scanned": scanned})


def routes() -> list[Route]:
    return [Route("/v1/skus:history", history, methods=["GET"])]
