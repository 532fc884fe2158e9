"""Applying a verified webhook delivery: map SKUs, take or restock each line exactly once, report the rest.

The stock changes only through the library's functions; the reference of each line is
`<channel>:<marketplace order id>:<line id>` (restocks add a suffix), so the library's exactly-once
record makes every redelivery, under any webhook id, change nothing. What this module keeps besides:

    <prefix>:wh:seen:<channel>:<delivery id>   a delivery already processed (a shortcut, not the guarantee)
    <prefix>:wh:line:<channel>:<line key>      "state|qty|sku" of a line: state t taken, r refused
                                               (insufficient), u unknown SKU, c cancelled before it was
                                               taken. Kept longer than references (line_ttl_days), so that
                                               a cancellation or a return weeks later restocks only what
                                               was taken, into the SKU it was taken from ...
    <prefix>:wh:line:<channel>:<line key>:restocked   ... and never more than was taken in total
    <prefix>:rejections                        hash "<channel>|<order id>" -> JSON of the uncovered lines
    <prefix>:rejections:index                  sorted set of the same members by first rejection time (ms)

A line that cannot be covered is still answered 200 (the marketplace took the order): the library writes
its stock.rejected event, and the order is listed by GET /v1/rejections until someone resolves it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .connection import is_cluster
from .errors import InvalidArgument
from .httputil import MAX_SKU_BYTES
from .metrics import Metrics
from .store import Outcome, StockStore
from .webhooks import Delivery, Line, Restock, Webhook

log = logging.getLogger(__name__)
MAX_REF_BYTES = 256


@dataclass(frozen=True)
class IntakeSettings:
    seen_ttl_s: int = 7 * 86400
    line_ttl_s: int = 120 * 86400

    @classmethod
    def from_section(cls, api: Mapping) -> IntakeSettings:
        return cls(int(api.get("webhook_seen_ttl_s", cls.seen_ttl_s)),
                   int(api.get("line_ttl_days", cls.line_ttl_s // 86400)) * 86400)


class Batcher:
    """Sends the commands of concurrent requests together: one pipeline, one round trip for many.

    While a pipeline is in flight, callers queue; when it returns, everything queued goes in the next one.
    Alone, a caller waits one round trip as before; under load the cost of a round trip (most of a
    webhook's CPU time in redis-py) is shared by every request in the batch. Each command is still its
    own atomic call: batching changes when commands are sent, never what they do.
    """

    def __init__(self, redis, max_batch: int = 1000) -> None:
        self.redis, self.max_batch = redis, max_batch
        self._queue: list[tuple[list[tuple], asyncio.Future]] = []
        self._busy = False
        # A single Redis: the batch is packed here and written on one pooled connection (redis-py's
        # Pipeline packs and parses each command through several layers of Python, most of the batch's
        # cost). A cluster routes each command to its node: RedisCluster's pipeline does that.
        self._pool = None if is_cluster(redis) else redis.connection_pool

    async def call(self, commands: list[tuple]) -> list:
        """The replies of `commands` (errors as ResponseError values, not raised)."""
        if not commands:
            return []
        future = asyncio.get_running_loop().create_future()
        self._queue.append((commands, future))
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().call_soon(self._start)
        return await future

    def _start(self) -> None:
        batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
        task = asyncio.ensure_future(self._send(batch))
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task) -> None:
        if self._queue:
            self._start()
        else:
            self._busy = False

    async def _send(self, batch: list[tuple[list[tuple], asyncio.Future]]) -> None:
        commands = [command for each, _ in batch for command in each]
        try:
            if self._pool is None:
                replies = await self._pipeline(commands)
            else:
                try:
                    replies = await self._direct(commands)
                except (RedisConnectionError, RedisTimeoutError):
                    # Every command the intake batches is idempotent (reads, FCALLs with their reference,
                    # SETs of the same value): sent again through redis-py, with its retries.
                    replies = await self._pipeline(commands)
        except BaseException as e:  # noqa: BLE001 - every waiter gets the failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        i = 0
        for each, future in batch:
            if not future.done():
                future.set_result(replies[i: i + len(each)])
            i += len(each)

    async def _pipeline(self, commands: list[tuple]) -> list:
        async with self.redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute(raise_on_error=False)

    async def _direct(self, commands: list[tuple]) -> list:
        packed = b"".join([_pack(command) for command in commands])
        conn = await self._pool.get_connection()
        try:
            await conn.send_packed_command(packed)
            replies: list = []
            # One deadline for the whole batch (the connection's socket_timeout), not a timer per reply.
            try:
                async with asyncio.timeout(conn.socket_timeout):
                    for _ in commands:
                        try:
                            replies.append(await conn.read_response(timeout=math.inf))
                        except ResponseError as e:  # that command's error; the connection is still in step
                            replies.append(e)
            except TimeoutError:
                raise RedisTimeoutError(f"Timeout reading {len(commands)} replies from Redis") from None
            return replies
        except BaseException:
            await conn.disconnect(nowait=True)  # replies may be left unread: never reuse it as it is
            raise
        finally:
            await self._pool.release(conn)


def _pack(command: tuple) -> bytes:
    """One command in RESP, the wire format (arguments are str, int or bytes)."""
    out = [b"*%d\r\n" % len(command)]
    for arg in command:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        elif not isinstance(arg, bytes):
            arg = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def _bounded(text: str, limit: int, head: str) -> str:
    if len(text.encode()) <= limit:
        return text
    return f"{head}:#{hashlib.blake2b(text.encode(), digest_size=16).hexdigest()}"


class Intake:
    def __init__(self, store: StockStore, metrics: Metrics, settings: IntakeSettings | None = None) -> None:
        self.store, self.redis, self.keys = store, store.redis, store.keys
        self.metrics = metrics
        self.settings = settings or IntakeSettings()
        self.batcher = Batcher(store.redis)
        self.rejections_key = store.keys.rejections
        self.rejections_index = store.keys.rejections_index

    # Keys and references ----------------------------------------------------------------------------------

    def seen_key(self, channel: str, delivery_id: str) -> str:
        return self.keys.webhook_seen(channel) + ":" + _bounded(delivery_id, 200, "h")

    def line_key(self, channel: str, line: Line) -> str:
        return self.keys.webhook_line(channel) + ":" + line.key

    @staticmethod
    def take_ref(channel: str, line: Line) -> str:
        return _bounded(f"{channel}:{line.key}", MAX_REF_BYTES, channel)

    @staticmethod
    def restock_ref(channel: str, restock: Restock) -> str:
        return _bounded(f"{channel}:{restock.line.key}:{restock.suffix}", MAX_REF_BYTES, channel)

    # Applying a delivery ----------------------------------------------------------------------------------

    async def apply(self, hook: Webhook, delivery: Delivery) -> dict:
        """Three round trips for an order: read (seen? SKU map, line records), take, record."""
        channel = hook.name
        if delivery.ignored:
            self.metrics.child(self.metrics.deliveries, channel, "ignored").inc()
            return {"status": "ignored", "event": delivery.kind, "reason": delivery.ignored}
        seen = self.seen_key(channel, delivery.delivery_id) if delivery.delivery_id else None
        # Take lines are looked up only where a cancellation can come first (Amazon's c state).
        looked_up = [*(delivery.takes if delivery.cancels or hook.kind == "amazon" else ()),
                     *(r.line for r in delivery.restocks), *delivery.cancels]
        skus = sorted({line.channel_sku for line in [*delivery.takes, *looked_up] if line.channel_sku})
        reads: list[tuple] = [("EXISTS", seen)] if seen else []
        if skus:
            reads.append(("HMGET", self.keys.sku_map(channel), *skus))
        for line in looked_up:
            key = self.line_key(channel, line)
            reads += [("GET", key), ("GET", key + ":restocked")]
        replies = await self.batcher.call(reads)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        if seen and replies.pop(0):
            self.metrics.child(self.metrics.deliveries, channel, "duplicate").inc()
            return {"status": "duplicate", "event": delivery.kind}
        mapped = dict(zip(skus, replies.pop(0), strict=True)) if skus else {}
        records = {line.key: _record(replies[2 * i], replies[2 * i + 1]) for i, line in enumerate(looked_up)}

        def canonical(line: Line) -> str | None:
            if not line.channel_sku:
                return None
            return mapped.get(line.channel_sku) or hook.channel.sku_map.get(line.channel_sku) or line.channel_sku

        writes: list[tuple] = []  # commands for the last round trip
        results = await self._take(channel, delivery.takes, records, canonical, writes)
        results += await self._restock(channel, delivery.restocks, records, canonical)
        await self._cancel(channel, delivery.cancels, records, canonical)
        self._reject(channel, results, writes)
        if seen:
            writes.append(("SET", seen, "1", "EX", self.settings.seen_ttl_s))
        for reply in await self.batcher.call(writes):
            if isinstance(reply, Exception):
                raise reply
        self.metrics.child(self.metrics.deliveries, channel, "applied").inc()
        return {"status": "applied", "event": delivery.kind, "lines": results}

    async def _take(self, channel: str, takes: list[Line], records: dict, canonical, writes: list) -> list[dict]:
        results, calls = [], []
        for line in takes:
            sku = canonical(line)
            result = {"line": line.key, "order_id": line.order_id, "line_id": line.line_id,
                      "channel_sku": line.channel_sku, "sku": sku, "qty": line.qty, "op": "take"}
            results.append(result)
            record = records.get(line.key)
            if record and record["state"] == "c":
                result["status"] = "cancelled"  # the order was cancelled before we saw it taken
            elif sku is None:
                result["status"] = "no_sku"
            elif len(sku.encode()) > MAX_SKU_BYTES:
                result["status"] = "invalid_sku"
            else:
                calls.append((result, (sku, line.qty, self.take_ref(channel, line))))
        if not calls:
            return results
        # The call StockStore.decrement makes, sent through the batcher (one atomic FCALL per line).
        keys, commands = self.keys, []
        for _, (sku, qty, ref) in calls:
            p = keys.partition(sku)
            commands.append(("FCALL", "stocksync_decrement", 3, keys.sku(sku), keys.events(p), keys.idem(p, ref),
                             qty, channel, ref))
        outcomes: list = []
        for (_, (sku, _, _)), reply in zip(calls, await self.batcher.call(commands), strict=True):
            if isinstance(reply, Exception):
                text = str(reply)
                if not text.startswith("stocksync:"):
                    raise reply
                outcomes.append(InvalidArgument(text))
            else:
                outcomes.append(Outcome(sku, reply[0], int(reply[1]), int(reply[2]), bool(reply[3])))
        for (result, (sku, qty, _)), outcome in zip(calls, outcomes, strict=True):
            if isinstance(outcome, Exception):
                result.update(status="invalid", reason=str(outcome))
                continue
            self.metrics.outcome("decrement", outcome.status, outcome.replayed)
            _merge(result, outcome)
            state = {"ok": "t", "insufficient": "r"}.get(outcome.status, "u")
            writes.append(("SET", self.keys.webhook_line(channel) + ":" + result["line"], f"{state}|{qty}|{sku}",
                           "EX", self.settings.line_ttl_s))
        return results

    async def _taken(self, channel: str, restock: Restock, record, canonical) -> tuple[str, int] | None:
        """(sku, qty taken and not restocked yet) of a line taken before, or None."""
        if record:
            return (record["sku"], record["qty"] - record["restocked"]) if record["state"] == "t" else None
        sku = canonical(restock.line)
        if sku is None or len(sku.encode()) > MAX_SKU_BYTES:
            return None
        # No line record (expired, or lost between the take and its record): ask the library's own.
        ref = self.take_ref(channel, restock.line)
        first = await self.redis.get(self.keys.idem(self.keys.partition(sku), ref))
        return (sku, restock.line.qty) if first and first.startswith("o|") else None

    async def _restock(self, channel: str, restocks: list[Restock], records: dict, canonical) -> list[dict]:
        results = []
        for restock in restocks:
            line = restock.line
            result = {"line": line.key, "order_id": line.order_id, "line_id": line.line_id,
                      "channel_sku": line.channel_sku, "op": "restock"}
            results.append(result)
            taken = await self._taken(channel, restock, records.get(line.key), canonical)
            if taken is None:
                result.update(sku=canonical(line), qty=line.qty, status="not_taken")
                continue
            sku, qty = taken[0], min(line.qty, taken[1])
            result.update(sku=sku, qty=qty)
            ref = self.restock_ref(channel, restock)
            if qty <= 0:  # everything taken was restocked already (or this very restock was)
                first = await self.redis.get(self.keys.idem(self.keys.partition(sku), ref))
                result.update(status="ok" if first else "restocked_already", replayed=bool(first))
                continue
            try:
                outcome = await self.store.adjust(sku, qty, ref=ref, source=channel)
            except InvalidArgument as e:
                result.update(status="invalid", reason=str(e))
                continue
            self.metrics.outcome("restock", outcome.status, outcome.replayed)
            _merge(result, outcome)
            if outcome.ok and not outcome.replayed:
                key = self.line_key(channel, line) + ":restocked"
                await self.redis.incrby(key, qty)
                await self.redis.expire(key, self.settings.line_ttl_s)
        return results

    async def _cancel(self, channel: str, cancels: list[Line], records: dict, canonical) -> None:
        """Mark lines cancelled before they were taken, so that a late notification does not take them."""
        for line in cancels:
            sku = canonical(line)
            if records.get(line.key) or sku is None:
                continue
            await self.redis.set(self.line_key(channel, line), f"c|{line.qty}|{sku}", nx=True,
                                 ex=self.settings.line_ttl_s)

    # Rejections -------------------------------------------------------------------------------------------

    def _reject(self, channel: str, results: list[dict], writes: list) -> None:
        refused = [r for r in results if r["op"] == "take" and r["status"] not in ("ok", "cancelled")]
        if not refused:
            return
        now = int(time.time() * 1000)
        orders: dict[str, list[dict]] = {}
        for r in refused:
            if not r.get("replayed"):
                self.metrics.rejections.labels(channel, r["status"]).inc()
            orders.setdefault(r["order_id"], []).append(
                {"line_id": r["line_id"], "channel_sku": r["channel_sku"], "sku": r["sku"], "qty": r["qty"],
                 "reason": r["status"], "available": r.get("available")})
        for order_id, lines in orders.items():
            member = f"{channel}|{order_id}"
            log.warning("order %s of %s has %d line(s) that cannot be covered", order_id, channel, len(lines))
            doc = {"channel": channel, "order_id": order_id, "lines": lines, "ts_ms": now}
            writes.append(("ZADD", self.rejections_index, "NX", now, member))
            writes.append(("HSET", self.rejections_key, member, orjson.dumps(doc)))

    async def rejections(self, limit: int = 100, channel: str | None = None) -> list[dict]:
        """Orders with uncovered lines, newest first."""
        members = await self.redis.zrevrange(self.rejections_index, 0, -1 if channel else limit - 1)
        if channel:
            members = [m for m in members if m.startswith(channel + "|")][:limit]
        if not members:
            return []
        docs = await self.redis.hmget(self.rejections_key, members)
        return [orjson.loads(d) for d in docs if d]

    async def resolve(self, channel: str, order_id: str) -> bool:
        member = f"{channel}|{order_id}"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hdel(self.rejections_key, member)
            pipe.zrem(self.rejections_index, member)
            removed, _ = await pipe.execute()
        return bool(removed)


def _record(value: str | None, restocked: str | None) -> dict | None:
    if not value:
        return None
    state, qty, sku = value.split("|", 2)
    return {"state": state, "qty": int(qty), "sku": sku, "restocked": int(restocked or 0)}


def _merge(result: dict, outcome: Outcome) -> None:
    result.update(status=outcome.status, available=outcome.available, version=outcome.version,
                  replayed=outcome.replayed)
