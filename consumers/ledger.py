"""Group commit of the workers' stocksync_push_claim and stocksync_push_done calls (stocksync.library lays
them out; see the channel propagation section of lua/stocksync.lua for their contract)."""

from __future__ import annotations

import asyncio

from stocksync import library
from stocksync.connection import AnyRedis
from stocksync.keys import Keys
from stocksync.library import Claim


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
        rows = await library.push_claim(self.keys, partition, self.channel, self.owner, skus, self.lease_ms).run(self.redis)
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
        await library.push_done(self.keys, partition, self.channel, self.owner, accepted, acks, release).run(self.redis)
        for *_, fut in batch:
            if not fut.done():
                fut.set_result(None)
