"""What Amazon's feed lane keeps in Redis, so that a worker that dies leaves nothing unaccounted for.

* `<prefix>:feeds:<channel>` (hash): one field per feed the lane uploaded and has not settled, its
  feedDocumentId -> JSON `{"feed": feedId or null, "ms": upload time, "skus": {sku: [partition, version,
  quantity]}}` in message order (messageId = place from 1). Written before createFeed is called (a feed
  Amazon may have must never be unknown) and again with its feedId; deleted once its report is settled.
  A lane that starts resumes every one: polls it, settles it, and re-pushes the SKUs a newer patch may have
  been overwritten in (consumers/feeds.py). One without a feedId is created again from its document
  (Amazon processes a seller's feeds in order, so a duplicate of an older feed lands before it).
* `<prefix>:feeds:<channel>:lane` (string, TTL): the worker running the lane. One lane per channel: the
  createFeed quota is the seller's, and a second lane would halve it; the other workers patch everything.
* `<prefix>:feeds:<channel>:created` (sorted set): createFeed times (ms) of the last hour, from which a
  restarted lane rebuilds its token bucket instead of starting with a full one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import orjson

from stocksync.connection import AnyRedis
from stocksync.keys import Keys

from .adapters.base import RateLimiter
from .coalescer import Entry

CREATES_KEPT_MS = 3_600_000


@dataclass(slots=True)
class Held:
    """Entries of one SKU that the feed lane pushes and acknowledges (gathered, or in a feed)."""

    sku: str
    partition: int
    since: float  # when the oldest was gathered (time.monotonic())
    entries: dict[str, Entry] = field(default_factory=dict)
    forced: bool = False  # push even if the channel has the version (a feed of a dead lane failed it)
    attempts: int = 0  # feeds whose report refused it
    not_before: float = 0.0

    @property
    def version(self) -> int:
        return max((e.version for e in self.entries.values()), default=0)


@dataclass(slots=True)
class Flight:
    """A feed the lane uploaded: its SKUs (partition, version, quantity) in message order."""

    document_id: str
    created_ms: int
    items: dict[str, tuple[int, int, int]]
    feed_id: str | None = None
    held: dict[str, Held] = field(default_factory=dict)  # the entries it covers (none after a restart)
    next_poll: float = 0.0  # time.monotonic()
    retry_at: float = 0.0  # createFeed again from then on (no feedId yet)

    def to_json(self) -> bytes:
        return orjson.dumps({"feed": self.feed_id, "ms": self.created_ms,
                             "skus": {sku: list(item) for sku, item in self.items.items()}})

    @classmethod
    def from_json(cls, document_id: str, raw: str | bytes) -> Flight:
        data = orjson.loads(raw)
        items = {sku: (int(p), int(v), int(q)) for sku, (p, v, q) in data["skus"].items()}
        return cls(document_id, int(data["ms"]), items, data.get("feed"))


class FeedRecords:
    def __init__(self, redis: AnyRedis, keys: Keys, channel: str) -> None:
        self.redis, self.channel = redis, channel
        self.key, self.lane_key, self.creates_key = keys.feeds(channel), keys.feed_lane(channel), keys.feed_creates(channel)

    async def save(self, flight: Flight) -> None:
        await self.redis.hset(self.key, flight.document_id, flight.to_json())

    async def drop(self, flight: Flight) -> None:
        await self.redis.hdel(self.key, flight.document_id)

    async def load(self) -> list[Flight]:
        rows = await self.redis.hgetall(self.key)
        flights = [Flight.from_json(doc, raw) for doc, raw in rows.items()]
        return sorted(flights, key=lambda f: f.created_ms)

    async def created(self, ms: int) -> None:
        """A createFeed call went through at ms (kept an hour: the quota's window is five minutes)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.creates_key, {str(ms): ms})
            pipe.zremrangebyscore(self.creates_key, "-inf", ms - CREATES_KEPT_MS)
            await pipe.execute()

    async def restore(self, limiter: RateLimiter) -> float | None:
        """Set the createFeed bucket to what the recorded calls left of it (a full bucket replayed); answers
        how long ago the last one was (s), None if none is recorded."""
        rows = await self.redis.zrange(self.creates_key, 0, -1, withscores=True)
        tokens, last = limiter.capacity, None
        for _, ms in rows:
            if last is not None:
                tokens = min(limiter.capacity, tokens + (ms - last) / 1000 * limiter.rate)
            tokens, last = tokens - 1, ms
        if last is not None:
            tokens = min(limiter.capacity, tokens + (time.time() * 1000 - last) / 1000 * limiter.rate)
            limiter.tokens, limiter.stamp = max(tokens, 0.0), time.monotonic()
            return max(time.time() - last / 1000, 0.0)
        return None

    async def hold_lane(self, owner: str, ttl_ms: int) -> bool:
        """Take or renew the channel's lane for owner; False when another worker holds it."""
        if await self.redis.set(self.lane_key, owner, nx=True, px=ttl_ms):
            return True
        if await self.redis.get(self.lane_key) == owner:
            await self.redis.pexpire(self.lane_key, ttl_ms)
            return True
        return False

    async def release_lane(self, owner: str) -> None:
        if await self.redis.get(self.lane_key) == owner:
            await self.redis.delete(self.lane_key)
