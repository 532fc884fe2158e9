"""GET /v1/skus:listings: a page of the SKU grid. For each SKU of a page of GET /v1/skus (same cursor,
prefix and limit): the fields its hash holds (available, version, and reserved, on_hand, committed where
they are kept), and for each channel the quantity it lists (the channel's rules applied to `available`,
Rules.listed) and the version it last accepted (`<tag>:pushed:<channel>`), so a reader sees at once
whether each channel is current. Scopes: stock:read and channels:read.

A channel with buffer = "auto" holds back what its worker's risk model says (consumers/risk.py), which
only the worker knows: its listed quantity is given without that buffer (an upper bound), flagged
`auto_buffer`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stocksync import inventory
from stocksync.channels import ChannelConfig
from stocksync.library import Stock
from stocksync.store import StockStore
from stocksync.validate import invalid

from ..context import context
from ..httputil import json_response

INTEGER = re.compile(r"^-?\d{1,19}$")


def page_limit(request: Request, default: int = 50) -> int:
    text = request.query_params.get("limit", str(default))
    if not text.isdigit() or not 1 <= int(text) <= inventory.MAX_PAGE:
        raise invalid("limit", f"must be a whole number from 1 to {inventory.MAX_PAGE}")
    return int(text)


def hash_fields(raw: dict[str, str]) -> dict[str, int | str]:
    """A SKU hash as JSON: whole numbers as numbers, the rest (source) as text."""
    return {k: int(v) if INTEGER.match(v) else v for k, v in sorted(raw.items())}


def rules_doc(channel: ChannelConfig) -> dict:
    r = channel.rules
    return {"kind": channel.kind, "buffer": r.buffer, "share": r.share, "max_listed": r.max_listed,
            "end_when": r.end_when}


async def read_rows(store: StockStore, items: Sequence[Stock], channels: Sequence[ChannelConfig]) -> list[dict]:
    """Each SKU's hash and each channel's accepted version, in one round trip."""
    keys = store.keys
    async with store.redis.pipeline(transaction=False) as pipe:
        for s in items:
            p = keys.partition(s.sku)
            pipe.hgetall(keys.sku(s.sku, p))
            for c in channels:
                pipe.hget(keys.pushed(p, c.name), s.sku)
        replies = await pipe.execute()
    rows, width = [], 1 + len(channels)
    for i, s in enumerate(items):
        raw, *accepted = replies[i * width:(i + 1) * width]
        fields = hash_fields(raw) if raw else {"available": s.available, "version": s.version}
        available, version = int(fields.get("available", s.available)), int(fields.get("version", s.version))
        listed = {}
        for c, v in zip(channels, accepted, strict=True):
            got = int(v or 0)
            listed[c.name] = {"listed": c.rules.listed(available), "accepted_version": got,
                              "current": got >= version, "auto_buffer": c.rules.buffer == "auto"}
        rows.append({"sku": s.sku, "available": available, "version": version, "stock": fields,
                     "channels": listed})
    return rows


async def listings(request: Request) -> Response:
    ctx = context(request)
    ctx.auth.require(request, "stock:read")
    ctx.auth.require(request, "channels:read")
    page = await inventory.list_page(ctx.store, request.query_params.get("cursor") or None, page_limit(request),
                                     request.query_params.get("prefix", ""))
    channels = [ctx.channels[name] for name in sorted(ctx.channels)]
    return json_response({"channels": {c.name: rules_doc(c) for c in channels},
                          "skus": await read_rows(ctx.store, page.items, channels),
                          "next_cursor": page.next_cursor})


def routes() -> list[Route]:
    return [Route("/v1/skus:listings", listings, methods=["GET"])]
