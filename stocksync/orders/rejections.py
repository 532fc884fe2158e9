"""Orders the marketplaces took that stocksync could not cover: kept until someone resolves them.

A line that cannot be covered is still answered 200 (the marketplace took the order): the library writes
its stock.rejected event, and the order is listed by GET /v1/rejections until it is resolved.

    <prefix>:rejections:order:<channel>|<order id>   hash line id -> JSON of an uncovered line
    <prefix>:rejections:index                  sorted set "<channel>|<order id>" by first rejection time (ms)
    <prefix>:rejections                        hash "<channel>|<order id>" -> JSON (before 0.3; read, resolved)

One field per line, so that the deliveries of one order (Flipkart's shipments, Amazon's notifications)
add lines and never replace them. Each listed line says what to do (ACTIONS): cancel it at the
marketplace (the units were gone), fix the SKU map and apply it again (Intake.apply_rejected), or nothing
(the marketplace sent no SKU). A line taken since (applied again, or a later delivery of it) leaves the list.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import orjson

from stocksync.keys import Keys
from stocksync.library import Status
from stocksync.metrics import Metrics

from .records import LineResult

log = logging.getLogger(__name__)

# reason -> (action, what to do)
ACTIONS = {
    "insufficient": ("cancel", "the units were gone when the order came: cancel the line at the marketplace, "
                               "then resolve it here"),
    "unknown_sku": ("fix_map", "no SKU by that name: map the channel SKU to a SKU (PUT /v1/channels/<channel>/"
                               "sku-map/<channel SKU>) or create the SKU, then apply the order again"),
    "invalid_sku": ("fix_map", "the name is longer than a SKU may be: map the channel SKU to a SKU, then apply "
                               "the order again"),
    "no_sku": ("none", "the marketplace sent no SKU for the line (a custom item): nothing to take; resolve it"),
    "invalid": ("none", "the stock function refused the line (see the reason's message): nothing was taken"),
}


def with_action(line: dict) -> dict:
    action, hint = ACTIONS.get(line.get("reason", ""), ("none", "nothing stocksync can do"))
    return {**line, "action": action, "hint": hint}


class Rejections:
    def __init__(self, redis, keys: Keys, metrics: Metrics) -> None:
        self.redis, self.keys, self.metrics = redis, keys, metrics

    def writes(self, channel: str, results: Iterable[LineResult]) -> list[tuple]:
        """The commands that list each take line that could not be covered under its order (sent with the
        delivery's writes)."""
        now = int(time.time() * 1000)
        orders: dict[str, list[tuple[LineResult, bytes]]] = {}
        for r in results:
            if r.op != "take" or r.status in (Status.OK, "cancelled"):
                continue
            line = {"line": r.line, "line_id": r.line_id, "channel_sku": r.channel_sku, "sku": r.sku, "qty": r.qty,
                    "reason": r.status, "available": r.known("available"), "ts_ms": now}
            orders.setdefault(r.order_id, []).append((r, orjson.dumps(line)))
        writes: list[tuple] = []
        for order_id, lines in orders.items():
            member = f"{channel}|{order_id}"
            log.warning("order %s of %s has %d line(s) that cannot be covered", order_id, channel, len(lines))
            writes.append(("ZADD", self.keys.rejections_index, "NX", now, member))
            key, fields = self.keys.rejection_lines(member), []
            for r, doc in lines:
                if r.replayed is True:  # the first outcome's line stays as it was listed
                    writes.append(("HSETNX", key, r.line_id, doc))
                else:
                    self.metrics.rejections.labels(channel, r.status).inc()
                    fields += [r.line_id, doc]
            if fields:
                writes.append(("HSET", key, *fields))
        return writes

    def forget(self, channel: str, order_id: str, line_id: str) -> tuple:
        """The command that takes a line off the list (it was applied since); an order left with no line
        is dropped from the index when listed."""
        return ("HDEL", self.keys.rejection_lines(f"{channel}|{order_id}"), line_id)

    async def list(self, limit: int = 100, channel: str | None = None) -> list[dict]:
        """Orders with uncovered lines, newest first."""
        index = self.keys.rejections_index
        members = await self.redis.zrevrange(index, 0, -1 if channel else limit - 1, withscores=True)
        if channel:
            members = [m for m in members if m[0].startswith(channel + "|")][:limit]
        if not members:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self.keys.rejections, [m for m, _ in members])  # documents written before 0.3
            for member, _ in members:
                pipe.hgetall(self.keys.rejection_lines(member))
            old, *per_order = await pipe.execute()
        out = []
        for (member, score), doc, fields in zip(members, old, per_order, strict=True):
            lines = {line["line_id"]: line for line in orjson.loads(doc)["lines"]} if doc else {}
            lines.update({line_id: orjson.loads(value) for line_id, value in fields.items()})
            if not lines:  # every line was taken since: drop the order from the index
                await self.redis.zrem(index, member)
                continue
            channel_name, order_id = member.split("|", 1)
            ordered = [with_action(x) for x in
                       sorted(lines.values(), key=lambda x: (x.get("ts_ms", 0), len(x["line_id"]), x["line_id"]))]
            out.append({"channel": channel_name, "order_id": order_id, "lines": ordered, "ts_ms": int(score)})
        return out

    async def lines(self, channel: str, order_id: str) -> list[dict]:
        """The listed lines of one order (none: not listed)."""
        found = await self.list(1000, channel)
        return next((o["lines"] for o in found if o["order_id"] == order_id), [])

    async def resolve(self, channel: str, order_id: str) -> bool:
        member = f"{channel}|{order_id}"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(self.keys.rejection_lines(member))
            pipe.hdel(self.keys.rejections, member)
            pipe.zrem(self.keys.rejections_index, member)
            lines, old, _ = await pipe.execute()
        return bool(lines or old)
