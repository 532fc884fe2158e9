"""The channels' numbers on the API's /metrics: read from Redis at each scrape (consumers/status.py says
what each gauge is), so that whichever API process answers, every channel's lag, pending entries, oldest
pending age, dead letters, circuit state and live workers are there, once, even with no worker running.

    stocksync_redis_up    1 when Redis answered this scrape's reads within SCRAPE_TIMEOUT_S, else 0 (the
                          channel gauges are then left out of that scrape)
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from redis.exceptions import RedisError

from consumers.status import channel_status, metric_families

from .context import Context

log = logging.getLogger(__name__)
SCRAPE_TIMEOUT_S = 3.0


class _Families:
    """A collector of families computed beforehand (the reads are async; collect() is not)."""

    def __init__(self, families: list) -> None:
        self.families = families

    def collect(self):
        return iter(self.families)


async def exposition(ctx: Context) -> bytes:
    try:
        status = await asyncio.wait_for(channel_status(ctx.store.redis, ctx.store.keys, sorted(ctx.channels)),
                                        SCRAPE_TIMEOUT_S)
        families, up = metric_families(status), 1.0
    except (RedisError, TimeoutError) as e:
        log.warning("/metrics: the channels' numbers could not be read from Redis: %s", e or type(e).__name__)
        families, up = [], 0.0
    families.append(GaugeMetricFamily("stocksync_redis_up", "1 when Redis answered this scrape's reads", value=up))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)
