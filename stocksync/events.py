"""Reading the events streams: one entry per applied change or rejection, flat field/value pairs.

The entry ID's first part is the commit time in ms (so there is no separate ts field). `follow` reads
every partition's stream and yields events as they come; operators can do the same with
`redis-cli XREAD BLOCK 0 STREAMS {stocksync:0}:events $`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from .connection import AnyRedis
from .keys import Keys


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    partition: int
    type: str  # stock.changed | stock.rejected
    sku: str
    available: int
    delta: int
    version: int
    source: str
    ref: str
    reason: str = ""
    op: str = ""  # (library 0.6) ship, cancel, count, reserve, commit, release, expire, bundle, define; "" for a
    # sale, an adjustment or a set (their events keep the fields they had)

    @property
    def ts_ms(self) -> int:
        return int(self.id.split("-", 1)[0])

    @classmethod
    def parse(cls, partition: int, entry_id: str, fields: dict[str, str]) -> Event:
        return cls(
            id=entry_id,
            partition=partition,
            type=fields["type"],
            sku=fields["sku"],
            available=int(fields["available"]),
            delta=int(fields["delta"]),
            version=int(fields["version"]),
            source=fields["source"],
            ref=fields["ref"],
            reason=fields.get("reason", ""),
            op=fields.get("op", ""),
        )

    def line(self) -> str:
        """One human-readable line, as `stocksync tail` prints it."""
        sign = "+" if self.delta > 0 else ""
        if self.type == "stock.rejected":
            change = f"{sign}{self.delta} refused ({self.reason}), available {self.available}"
        else:
            change = f"{sign}{self.delta} -> {self.available}"
        op = f" ({self.op})" if self.op else ""
        return f"{self.id:<17} {self.type:<14} {self.sku} {change}{op} v{self.version} by {self.source} ref={self.ref}"


async def read_range(redis: AnyRedis, keys: Keys, partition: int, start: str = "-", count: int | None = None) -> list[Event]:
    entries = await redis.xrange(keys.events(partition), min=start, count=count)
    return [Event.parse(partition, i, f) for i, f in entries]


async def follow(redis: AnyRedis, keys: Keys, since: str = "$", block_ms: int = 1000) -> AsyncIterator[Event]:
    """Yield every new event of every partition (from `since`, an entry ID or $ for new ones).

    One reader per partition, since a cluster cannot XREAD streams of several slots in one call.
    """
    queue: asyncio.Queue[Event | BaseException] = asyncio.Queue(maxsize=10_000)

    async def read(partition: int) -> None:
        stream, last = keys.events(partition), since
        try:
            if last == "$":  # fix the starting point now, so nothing between here and the first XREAD is lost
                info = await redis.xinfo_stream(stream) if await redis.exists(stream) else None
                last = info["last-generated-id"] if info else "0-0"
            while True:
                reply = await redis.xread({stream: last}, block=block_ms, count=500)
                for _, entries in reply or []:
                    for entry_id, fields in entries:
                        last = entry_id
                        await queue.put(Event.parse(partition, entry_id, fields))
        except BaseException as e:  # hand the failure to the consumer instead of dying silently
            await queue.put(e)
            raise

    tasks = [asyncio.create_task(read(p)) for p in range(keys.partitions)]
    try:
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        pending = set(tasks)
        while pending:  # (a cancellation that lands as a reply arrives can be lost in redis-py: ask again)
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)
        for t in tasks:  # (their failures were handed over through the queue)
            if not t.cancelled():
                t.exception()
