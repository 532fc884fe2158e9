"""A channel's poller counters in Redis, and their Prometheus exposition for the API's GET /metrics.

    <prefix>:poll:stats:<channel>    hash: found_by_polling, orders, applied, already, refused, skipped,
                                     pages, passes (counters, HINCRBY); last_pass_ms, last_error

found_by_polling counts the orders of which the poller applied a line first (a take neither a webhook nor
an earlier pass had applied): orders whose webhooks never came, or came later than settle_s. It is the
merchant's signal that webhooks are being lost. Kept in Redis so that every process (a worker's poller, a
`reconcile orders` run) adds to one count, and the API serves it however many processes polled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily

from stocksync.channels import KINDS, ChannelConfig
from stocksync.keys import Keys

COUNTERS = ("found_by_polling", "orders", "applied", "already", "refused", "skipped", "pages", "passes")
FOUND_HELP = ("Orders of which the order poller applied a line first: their webhooks never came, or came "
              "later than settle_s (a rising count means webhooks are being lost)")


class PollStats:
    def __init__(self, redis, key: str) -> None:
        self.redis, self.key = redis, key

    async def add(self, counts: Mapping[str, int], **fields: str | int) -> None:
        """Add to the counters (those that are not 0) and set `fields`, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, n in counts.items():
                if n:
                    pipe.hincrby(self.key, name, n)
            if fields:
                pipe.hset(self.key, mapping=fields)
            await pipe.execute()

    async def read(self) -> dict[str, str]:
        return await self.redis.hgetall(self.key)


class _Found:
    """A one-shot collector of the counter's values read for one scrape."""

    def __init__(self, values: Mapping[str, int]) -> None:
        self.values = values

    def collect(self):
        family = CounterMetricFamily("stocksync_orders_found_by_polling", FOUND_HELP, labels=["channel"])
        for channel, value in self.values.items():
            family.add_metric([channel], value)
        yield family


async def found_by_polling(redis, keys: Keys, channels: Iterable[str]) -> dict[str, int]:
    """found_by_polling of each channel (0 where nothing was found), one round trip."""
    names = list(channels)
    if not names:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hget(keys.poll_stats(name), "found_by_polling")
        values = await pipe.execute()
    return {name: int(v or 0) for name, v in zip(names, values, strict=True)}


async def exposition(redis, keys: Keys, channels: Iterable[ChannelConfig]) -> bytes:
    """stocksync_orders_found_by_polling_total{channel="..."} of each channel of a kind with an order API
    (0 where nothing was found, or the channel does not poll), in the text format."""
    names = sorted(c.name for c in channels if c.kind in KINDS and KINDS[c.kind].orders_in)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Found(await found_by_polling(redis, keys, names)))
    return generate_latest(registry)
