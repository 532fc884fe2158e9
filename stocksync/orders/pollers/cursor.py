"""Where a channel's poller has read to: per order stream, the update time before which every order was
applied.

    <prefix>:poll:cursor:<channel>    sorted set: stream -> ms (Shopify, Amazon: "orders"; Flipkart: one
                                      per shipment search)

The poller raises it after each page it applied in full (to the second of the page's last order) and at
the end of a stream (to the pass's upper bound), never otherwise: a pass that fails leaves it where the
last applied page put it. ZADD GT makes it only ever go up, whoever writes it (a worker's poller and a
`reconcile orders` run may both).
"""

from __future__ import annotations


class Cursors:
    def __init__(self, redis, key: str) -> None:
        self.redis, self.key = redis, key

    async def get(self, stream: str) -> int | None:
        score = await self.redis.zscore(self.key, stream)
        return None if score is None else int(score)

    async def all(self) -> dict[str, int]:
        return {stream: int(ms) for stream, ms in await self.redis.zrange(self.key, 0, -1, withscores=True)}

    async def advance(self, stream: str, ms: int) -> None:
        await self.redis.zadd(self.key, {stream: ms}, gt=True)
