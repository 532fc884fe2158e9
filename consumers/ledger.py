"""The consumer side's calls into the function library (see the channel propagation section of
lua/stocksync.lua for each function's contract). Every call touches one partition's keys."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from stocksync.connection import AnyRedis
from stocksync.keys import Keys


def lease_key(keys: Keys, partition: int, channel: str, sku: str) -> str:
    return keys.lease(partition, channel, sku)


@dataclass(frozen=True, slots=True)
class Claim:
    sku: str
    leased: bool
    available: int | None  # None: the SKU does not exist
    version: int | None
    pushed: int  # the version the channel last accepted (0: none)


async def claim(redis: AnyRedis, keys: Keys, partition: int, channel: str, owner: str, skus: list[str],
                lease_ms: int) -> list[Claim]:
    args = [keys.pushed(partition, channel)]
    args += [keys.sku(s) for s in skus] + [lease_key(keys, partition, channel, s) for s in skus]
    _, rows = await redis.execute_command("FCALL", "stocksync_push_claim", len(args), *args, channel, owner, lease_ms)
    return [Claim(sku, bool(leased), None if v is None else int(a), None if v is None else int(v), int(p))
            for sku, leased, a, v, p in rows]


async def done(redis: AnyRedis, keys: Keys, partition: int, channel: str, owner: str,
               accepted: dict[str, int], ack_ids: list[str], release: list[str]) -> tuple[int, int, int]:
    """Record accepted versions (never lowering), XACK ack_ids, release the owner's leases of `release`."""
    k = [keys.pushed(partition, channel), keys.events(partition)]
    k += [lease_key(keys, partition, channel, s) for s in release]
    argv: list = [channel, owner, len(accepted)]
    for sku, version in accepted.items():
        argv += [sku, version]
    argv += ack_ids
    _, raised, acked, released = await redis.execute_command("FCALL", "stocksync_push_done", len(k), *k, *argv)
    return int(raised), int(acked), int(released)


async def dead_letter(redis: AnyRedis, keys: Keys, partition: int, channel: str, sku: str, version: int,
                      reason: str, attempts: int, error: str, ids: list[str]) -> str | None:
    """Move the entries to the channel's dead-letter stream with their XACK; None if none was pending."""
    status, dlq_id, _ = await redis.execute_command(
        "FCALL", "stocksync_dead_letter", 2, keys.events(partition), keys.dlq(partition, channel),
        channel, sku, version, reason, attempts, error or "-", *ids)
    return dlq_id if status == "ok" else None


async def dlq_resolve(redis: AnyRedis, keys: Keys, partition: int, channel: str, sku: str, version: int,
                      dlq_ids: list[str]) -> int:
    _, _, deleted = await redis.execute_command(
        "FCALL", "stocksync_dlq_resolve", 2, keys.pushed(partition, channel), keys.dlq(partition, channel),
        channel, sku, version, *dlq_ids)
    return int(deleted)


async def trim(redis: AnyRedis, keys: Keys, partition: int, retention_ms: int) -> tuple[int, str]:
    _, trimmed, minid = await redis.execute_command("FCALL", "stocksync_trim", 1, keys.events(partition), retention_ms)
    return int(trimmed), minid


async def reap_consumers(redis: AnyRedis, keys: Keys, partition: int, group: str, idle_ms: int,
                         keep: str) -> list[str]:
    _, removed = await redis.execute_command(
        "FCALL", "stocksync_reap_consumers", 1, keys.events(partition), group, idle_ms, keep)
    return list(removed)


async def recheck(redis: AnyRedis, keys: Keys, partition: int, channel: str, op: str, ms: int, skus: list[str]) -> int:
    """op 'due': a push of each SKU's current quantity is owed from `ms` on; 'done': the recheck owed at
    `ms` was paid (a push started after it was accepted); a later debt stays."""
    _, changed = await redis.execute_command("FCALL", "stocksync_recheck", 1, keys.recheck(partition, channel),
                                             channel, op, ms, *skus)
    return int(changed)


async def owed(redis: AnyRedis, keys: Keys, partition: int, channel: str, until_ms: int,
               count: int = 1000) -> list[tuple[str, int]]:
    """(SKU, when owed), for up to `count` SKUs owed a push (stocksync_recheck 'due') at or before until_ms
    and not settled since, the oldest first."""
    rows = await redis.zrangebyscore(keys.recheck(partition, channel), "-inf", until_ms, start=0, num=count,
                                     withscores=True)
    return [(sku, int(ms)) for sku, ms in rows]


class LedgerBatcher:
    """Group commit for one channel worker's push_claim and push_done calls.

    Every push used to make its own two calls (claim before, done after): at 1,000 one-SKU pushes a
    second (Amazon) that is 2,000 FCALLs, each a pool checkout, a write, a read and a reply to parse.
    Here the calls of one partition are queued; one call per partition and kind is in flight at a
    time, and whatever queued up meanwhile (or in the same event-loop turn) goes out as the next
    single call. Merging is sound because each function is atomic and works per SKU: a merged
    push_claim leases and reads every SKU as the separate calls would, and a merged push_done raises
    each SKU's recorded version (never lowering it), acknowledges the union of the entries and
    releases the union of the leases. Under light load a call goes out at once (no added wait).
    """

    MAX_SKUS = 500  # SKUs (claim) or pairs + IDs (done) per merged call, so one call stays short

    def __init__(self, redis: AnyRedis, keys: Keys, channel: str, owner: str, lease_ms: int) -> None:
        self.redis, self.keys, self.channel, self.owner, self.lease_ms = redis, keys, channel, owner, lease_ms
        self._claims: dict[int, list] = {}  # partition -> [(skus, future)]
        self._dones: dict[int, list] = {}  # partition -> [(accepted, ack_ids, release, future)]
        self._busy: set[tuple[str, int]] = set()  # (kind, partition) with a call in flight
        self.calls = 0

    async def claim(self, partition: int, skus: list[str]) -> list[Claim]:
        fut = asyncio.get_running_loop().create_future()
        self._claims.setdefault(partition, []).append((skus, fut))
        self._kick("claim", partition)
        return await fut

    async def done(self, partition: int, accepted: dict[str, int], ack_ids: list[str], release: list[str]) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._dones.setdefault(partition, []).append((accepted, ack_ids, release, fut))
        self._kick("done", partition)
        await fut

    def _kick(self, kind: str, partition: int) -> None:
        if (kind, partition) not in self._busy:
            self._busy.add((kind, partition))
            asyncio.get_running_loop().create_task(self._drain(kind, partition))

    async def _drain(self, kind: str, partition: int) -> None:
        queues = self._claims if kind == "claim" else self._dones
        try:
            while queues.get(partition):
                queue = queues[partition]
                take, size = 0, 0
                while take < len(queue) and (take == 0 or size < self.MAX_SKUS):
                    item = queue[take]
                    size += len(item[0]) if kind == "claim" else len(item[0]) + len(item[1])
                    take += 1
                batch, queues[partition] = queue[:take], queue[take:]
                self.calls += 1
                try:
                    if kind == "claim":
                        await self._claim(partition, batch)
                    else:
                        await self._done(partition, batch)
                except Exception as e:  # noqa: BLE001 - every caller of the merged call hears it
                    for item in batch:
                        if not item[-1].done():
                            item[-1].set_exception(e)
        finally:
            self._busy.discard((kind, partition))
            if queues.get(partition):  # cancelled mid-way with callers still waiting
                self._kick(kind, partition)

    async def _claim(self, partition: int, batch: list) -> None:
        skus = [s for item, _ in batch for s in item]
        rows = await claim(self.redis, self.keys, partition, self.channel, self.owner, skus, self.lease_ms)
        i = 0
        for item, fut in batch:
            if not fut.done():
                fut.set_result(rows[i : i + len(item)])
            i += len(item)

    async def _done(self, partition: int, batch: list) -> None:
        accepted: dict[str, int] = {}
        acks: list[str] = []
        release: list[str] = []
        for acc, ids, rel, _ in batch:
            for sku, version in acc.items():
                if version > accepted.get(sku, 0):
                    accepted[sku] = version
            acks += ids
            release += rel
        await done(self.redis, self.keys, partition, self.channel, self.owner, accepted, acks, release)
        for *_, fut in batch:
            if not fut.done():
                fut.set_result(None)
