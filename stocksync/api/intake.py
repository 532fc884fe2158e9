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
    <prefix>:wh:line:<channel>:<line key>:restocks    ... and never more than was taken in total: hash
                                               restock id -> p<units> reserved / d<units> applied, kept by
                                               the library's stocksync_restock_claim (before 0.3 a counter,
                                               <line>:restocked, still counted, no longer written)
    <prefix>:rejections:order:<channel>|<order id>   hash line id -> JSON of an uncovered line
    <prefix>:rejections:index                  sorted set "<channel>|<order id>" by first rejection time (ms)
    <prefix>:rejections                        hash "<channel>|<order id>" -> JSON (before 0.3; read, resolved)

A line record in state t or r is settled: a later delivery of that line (another status change of the
order, weeks later) is answered from it and changes nothing, though the library's reference (48 h) has
expired. A cancellation marks lines not taken yet (c) before it looks for their take, and a take writes
its record with SET ... GET: if it replaced a marker, the take restocks under the cancellation's own
reference, so a cancellation racing its order restocks the line once, whichever finishes first.

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

from stocksync import library
from stocksync.connection import is_cluster
from stocksync.errors import InvalidArgument
from stocksync.library import Outcome, RestockStatus
from stocksync.limits import MAX_REF_BYTES, MAX_SKU_BYTES
from stocksync.store import StockStore

from .metrics import Metrics
from .webhooks import Delivery, Line, Restock, Webhook

log = logging.getLogger(__name__)


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
                    # Every command the intake batches can be sent twice (reads, FCALLs with their
                    # reference, a restock reservation by its id, SETs of the same value): sent again
                    # through redis-py, with its retries. One answer can differ: a line record's SET ... GET
                    # that was applied the first time answers its own value, so a cancellation marker it
                    # replaced then is not seen (the take is not put back; see Intake._cancel).
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
        """Three round trips for an order: read (seen? SKU map, line records), take, record.

        A cancellation adds one (its markers go first, see _cancel), a restock two or three (reserve,
        adjust; the record rides with the last).
        """
        channel = hook.name
        if delivery.ignored:
            self.metrics.child(self.metrics.deliveries, channel, "ignored").inc()
            return {"status": "ignored", "event": delivery.kind, "reason": delivery.ignored}
        seen = self.seen_key(channel, delivery.delivery_id) if delivery.delivery_id else None
        # Every line's record is read in the round trip that checks the delivery id: a line taken or
        # refused before is settled whatever the library still remembers (see _take).
        lines: dict[str, Line] = {}
        for line in [*delivery.takes, *(r.line for r in delivery.restocks), *delivery.cancels]:
            lines.setdefault(line.key, line)
        restocked = list(dict.fromkeys(r.line.key for r in delivery.restocks))
        skus = sorted({line.channel_sku for line in lines.values() if line.channel_sku})
        reads: list[tuple] = [("EXISTS", seen)] if seen else []
        if skus:
            reads.append(("HMGET", self.keys.sku_map(channel), *skus))
        reads += [("GET", self.line_key(channel, line)) for line in lines.values()]
        # Units restocked by versions before 0.3 (a counter no longer written), counted by the restock cap.
        reads += [("GET", self.keys.webhook_line(channel) + ":" + key + ":restocked") for key in restocked]
        replies = await self.batcher.call(reads)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        if seen and replies.pop(0):
            self.metrics.child(self.metrics.deliveries, channel, "duplicate").inc()
            return {"status": "duplicate", "event": delivery.kind}
        mapped = dict(zip(skus, replies.pop(0), strict=True)) if skus else {}
        records = {key: _record(value) for key, value in zip(lines, replies[: len(lines)], strict=True)}
        before = {key: int(value or 0) for key, value in zip(restocked, replies[len(lines):], strict=True)}

        def canonical(line: Line) -> str | None:
            if not line.channel_sku:
                return None
            return mapped.get(line.channel_sku) or hook.channel.sku_map.get(line.channel_sku) or line.channel_sku

        writes: list[tuple] = []  # commands for the last round trip
        checks: list[tuple] = []  # (index in writes, ...) of take records written over what may be a marker
        if delivery.cancels:
            await self._cancel(channel, delivery.cancels, records, canonical)
        results = await self._take(channel, delivery.takes, records, canonical, writes, checks)
        results += await self._restock(channel, delivery.restocks, records, before, canonical, writes)
        self._reject(channel, results, writes)
        if seen:
            writes.append(("SET", seen, "1", "EX", self.settings.seen_ttl_s))
        replies = await self.batcher.call(writes)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        late = [check[1:] for check in checks if _state(replies[check[0]]) == "c"]
        if late:
            await self._put_back(channel, late)
        self.metrics.child(self.metrics.deliveries, channel, "applied").inc()
        return {"status": "applied", "event": delivery.kind, "lines": results}

    async def _cancel(self, channel: str, cancels: list[Line], records: dict, canonical) -> None:
        """Mark the lines of a cancelled order not taken yet (state c), so that a late take takes nothing.

        The markers are written before the cancellation looks for a take (the library's record of the
        take's reference, in _taken): a take that decremented meanwhile but had not written its line
        record yet finds the marker when it does (SET ... GET) and restocks under the cancellation's own
        reference (_put_back), so whichever of the two runs second is a no-op and the line is restocked
        once. What the marker replaced becomes the line's record for the restocks of this delivery.
        """
        commands, marked = [], []
        for line in cancels:
            sku = canonical(line)
            record = records.get(line.key)
            if sku is None or len(sku.encode()) > MAX_SKU_BYTES or (record and record["state"] in ("t", "r", "c")):
                continue
            value = f"c|{line.qty}|{sku}"
            if record:  # u: nothing was taken (the SKU was unknown); a later take must not take it either
                commands.append(("SET", self.line_key(channel, line), value, "GET", "EX", self.settings.line_ttl_s))
            else:
                commands.append(("SET", self.line_key(channel, line), value, "NX", "GET", "EX",
                                 self.settings.line_ttl_s))
            marked.append(line)
        for line, reply in zip(marked, await self.batcher.call(commands), strict=True):
            if isinstance(reply, Exception):
                raise reply
            records[line.key] = _record(reply)  # None: marked now; t: taken in between

    async def _take(self, channel: str, takes: list[Line], records: dict, canonical, writes: list,
                    checks: list) -> list[dict]:
        results, calls = [], []
        for line in takes:
            sku = canonical(line)
            result = {"line": line.key, "order_id": line.order_id, "line_id": line.line_id,
                      "channel_sku": line.channel_sku, "sku": sku, "qty": line.qty, "op": "take"}
            results.append(result)
            record = records.get(line.key)
            state = record["state"] if record else None
            if state == "c":
                result["status"] = "cancelled"  # the order was cancelled before we saw it taken
            elif state in ("t", "r"):
                # Settled: taken (or refused) before. The record outlives the library's reference (48 h),
                # so a later notification of the same line (Amazon's Shipped, days later) takes nothing.
                status = "ok" if state == "t" else "insufficient"
                result.update(sku=record["sku"], qty=record["qty"], status=status, available=None, version=None,
                              replayed=True)
                self.metrics.outcome("decrement", status, True)
            elif sku is None:
                result["status"] = "no_sku"
            elif len(sku.encode()) > MAX_SKU_BYTES:
                result["status"] = "invalid_sku"
            else:
                calls.append((result, line, sku))
        if not calls:
            return results
        # The call StockStore.decrement makes, sent through the batcher (one atomic FCALL per line).
        outcomes = await self._outcomes([library.decrement(self.keys, sku, line.qty, channel,
                                                           self.take_ref(channel, line)) for _, line, sku in calls])
        ttl = self.settings.line_ttl_s
        for (result, line, sku), outcome in zip(calls, outcomes, strict=True):
            if isinstance(outcome, Exception):
                result.update(status="invalid", reason=str(outcome))
                continue
            self.metrics.outcome("decrement", outcome.status, outcome.replayed)
            _merge(result, outcome)
            state = {"ok": "t", "insufficient": "r"}.get(outcome.status, "u")
            key, value = self.line_key(channel, line), f"{state}|{line.qty}|{sku}"
            if outcome.replayed or state == "u":
                # Never over the record of the first outcome (its quantity is what was taken) nor over a
                # cancellation marker (an unknown SKU took nothing).
                writes.append(("SET", key, value, "NX", "GET", "EX", ttl))
            else:
                writes.append(("SET", key, value, "GET", "EX", ttl))  # the first outcome: over u, and c (below)
            if state == "t":
                checks.append((len(writes) - 1, result, line, sku))
        return results

    async def _outcomes(self, calls: list[library.Call[Outcome]]) -> list[Outcome | InvalidArgument]:
        """The replies of stocksync_decrement/adjust calls as Outcomes (a stocksync: error as InvalidArgument)."""
        replies = await self.batcher.call([call.command for call in calls])
        outcomes = [call.result(reply) for call, reply in zip(calls, replies, strict=True)]
        for outcome in outcomes:
            if isinstance(outcome, Exception) and not isinstance(outcome, InvalidArgument):
                raise outcome
        return outcomes

    async def _put_back(self, channel: str, late: list[tuple]) -> None:
        """Takes that found a cancellation marker: restock them under the cancellation's own reference."""
        items = [({}, Restock(line, "cancel"), sku, line.qty, 0) for _, line, sku in late]
        writes: list[tuple] = []
        await self._reserve_and_adjust(channel, items, writes)
        for reply in await self.batcher.call(writes):
            if isinstance(reply, Exception):
                raise reply
        for (result, _, _), (restock, *_) in zip(late, items, strict=True):
            log.info("line %s of %s was cancelled while it was taken: restock %s", result["line"], channel,
                     restock.get("status"))
            result.update(status="cancelled", restocked=restock["qty"] if restock.get("status") == "ok" else 0)
            if restock.get("available") is not None:
                result.update(available=restock["available"], version=restock["version"])

    async def _restock(self, channel: str, restocks: list[Restock], records: dict, before: dict, canonical,
                       writes: list) -> list[dict]:
        results, items, lookups = [], [], []
        for restock in restocks:
            line = restock.line
            result = {"line": line.key, "order_id": line.order_id, "line_id": line.line_id,
                      "channel_sku": line.channel_sku, "op": "restock"}
            results.append(result)
            record = records.get(line.key)
            if record and record["state"] == "t":
                items.append((result, restock, record["sku"], record["qty"], before.get(line.key, 0)))
                continue
            sku = canonical(line)
            result.update(sku=sku, qty=line.qty, status="not_taken")
            if record and record["state"] == "r" or sku is None or len(sku.encode()) > MAX_SKU_BYTES:
                continue
            # No record of a take (expired, a marker, or a take that has not written its record yet): ask
            # the library's record of the take's reference.
            lookups.append((result, restock, sku))
        if lookups:
            keys = self.keys
            firsts = await self.batcher.call(
                [("GET", keys.idem(keys.partition(sku), self.take_ref(channel, restock.line)))
                 for _, restock, sku in lookups])
            for (result, restock, sku), first in zip(lookups, firsts, strict=True):
                if isinstance(first, Exception):
                    raise first
                if first and first.startswith("o|"):
                    items.append((result, restock, sku, restock.line.qty, before.get(restock.line.key, 0)))
        await self._reserve_and_adjust(channel, items, writes)
        return results

    async def _reserve_and_adjust(self, channel: str, items: list[tuple], writes: list) -> None:
        """Restock (result, restock, sku, taken, restocked before) items, never beyond what was taken.

        Each restock first reserves its units against what was taken (stocksync_restock_claim, atomic per
        line, once per restock id), then applies them with its own reference, derived from the
        marketplace's ids (a retry of the same restock is applied once); its reservation is marked
        applied with this delivery's last writes.
        """
        if not items:
            return
        ttl = self.settings.line_ttl_s
        claims = []
        for result, restock, sku, taken, before in items:
            result.update(sku=sku, qty=restock.line.qty)
            claims.append(library.restock_claim(self.keys, channel, restock.line.key,
                                                _bounded(restock.suffix, 200, "h"), restock.line.qty, max(0, taken),
                                                ttl, before))
        adjusts = []
        replies = await self.batcher.call([claim.command for claim in claims])
        for item, claim, reply in zip(items, claims, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            result, got = item[0], claim.parse(reply)
            result["qty"] = got.units
            if got.status == RestockStatus.RESERVED:
                adjusts.append((item, got.units))
            elif got.status == RestockStatus.DONE:  # applied before (the library may have forgotten its reference by now)
                result.update(status="ok", available=None, version=None, replayed=True)
                self.metrics.outcome("restock", "ok", True)
            else:  # everything taken was restocked already, by other restocks of this line
                result.update(status="restocked_already", replayed=got.replayed)
        if not adjusts:
            return
        outcomes = await self._outcomes([library.adjust(self.keys, sku, units, channel, self.restock_ref(channel, restock))
                                         for (_, restock, sku, _, _), units in adjusts])
        for ((result, restock, _, _, _), units), outcome in zip(adjusts, outcomes, strict=True):
            if isinstance(outcome, Exception):
                result.update(status="invalid", reason=str(outcome))
                continue
            self.metrics.outcome("restock", outcome.status, outcome.replayed)
            _merge(result, outcome)
            if outcome.ok:
                key = self.keys.webhook_line_restocks(channel, restock.line.key)
                writes += [("HSET", key, _bounded(restock.suffix, 200, "h"), f"d{units}"), ("EXPIRE", key, ttl)]

    # Rejections -------------------------------------------------------------------------------------------

    def _reject(self, channel: str, results: list[dict], writes: list) -> None:
        """List the order of each line that cannot be covered: one field per line, so that the deliveries
        of one order (Flipkart's shipments, Amazon's notifications) add lines and never replace them."""
        refused = [r for r in results if r["op"] == "take" and r["status"] not in ("ok", "cancelled")]
        if not refused:
            return
        now = int(time.time() * 1000)
        orders: dict[str, list] = {}
        for r in refused:
            line = {"line_id": r["line_id"], "channel_sku": r["channel_sku"], "sku": r["sku"], "qty": r["qty"],
                    "reason": r["status"], "available": r.get("available"), "ts_ms": now}
            orders.setdefault(r["order_id"], []).append((r, orjson.dumps(line)))
        for order_id, lines in orders.items():
            member = f"{channel}|{order_id}"
            log.warning("order %s of %s has %d line(s) that cannot be covered", order_id, channel, len(lines))
            writes.append(("ZADD", self.rejections_index, "NX", now, member))
            key, fields = self.keys.rejection_lines(member), []
            for r, doc in lines:
                if r.get("replayed"):  # the first outcome's line stays as it was listed
                    writes.append(("HSETNX", key, r["line_id"], doc))
                else:
                    self.metrics.rejections.labels(channel, r["status"]).inc()
                    fields += [r["line_id"], doc]
            if fields:
                writes.append(("HSET", key, *fields))

    async def rejections(self, limit: int = 100, channel: str | None = None) -> list[dict]:
        """Orders with uncovered lines, newest first."""
        members = await self.redis.zrevrange(self.rejections_index, 0, -1 if channel else limit - 1,
                                             withscores=True)
        if channel:
            members = [m for m in members if m[0].startswith(channel + "|")][:limit]
        if not members:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self.rejections_key, [m for m, _ in members])  # documents written before 0.3
            for member, _ in members:
                pipe.hgetall(self.keys.rejection_lines(member))
            old, *per_order = await pipe.execute()
        out = []
        for (member, score), doc, fields in zip(members, old, per_order, strict=True):
            lines = {line["line_id"]: line for line in orjson.loads(doc)["lines"]} if doc else {}
            lines.update({line_id: orjson.loads(value) for line_id, value in fields.items()})
            if not lines:
                continue
            channel_name, order_id = member.split("|", 1)
            ordered = sorted(lines.values(), key=lambda x: (x.get("ts_ms", 0), len(x["line_id"]), x["line_id"]))
            out.append({"channel": channel_name, "order_id": order_id, "lines": ordered, "ts_ms": int(score)})
        return out

    async def resolve(self, channel: str, order_id: str) -> bool:
        member = f"{channel}|{order_id}"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(self.keys.rejection_lines(member))
            pipe.hdel(self.rejections_key, member)
            pipe.zrem(self.rejections_index, member)
            lines, old, _ = await pipe.execute()
        return bool(lines or old)


def _record(value: str | None) -> dict | None:
    """A line record "state|qty|sku" (None: no record)."""
    if not value:
        return None
    state, qty, sku = value.split("|", 2)
    return {"state": state, "qty": int(qty), "sku": sku}


def _state(value) -> str | None:
    """The state of a line record as SET ... GET answered it (None: there was none, or OK)."""
    return value[0] if isinstance(value, str) and value[1:2] == "|" else None


def _merge(result: dict, outcome: Outcome) -> None:
    result.update(status=outcome.status, available=outcome.available, version=outcome.version,
                  replayed=outcome.replayed)
