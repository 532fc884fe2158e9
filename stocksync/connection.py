"""Opening a Redis connection (standalone or cluster) from the settings."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster

from . import sentinel
from .routing import LocalKeysParser
from .sentinel import is_sentinel_url
from .settings import Settings

AnyRedis = Redis | RedisCluster

# Callers fan out hundreds of concurrent calls (a flash sale, a webhook burst). A blocking pool makes
# them queue for a connection instead of failing with "Too many connections".
MAX_CONNECTIONS = 64


def connect(settings: Settings, max_connections: int = MAX_CONNECTIONS, **kwargs) -> AnyRedis:
    kwargs.setdefault("decode_responses", True)
    if settings.cluster:
        # RedisCluster waits on its own per-node pools only up to max_connections; keep them roomy.
        client = RedisCluster.from_url(settings.redis_url, max_connections=max(max_connections, 256), **kwargs)
        client.commands_parser = LocalKeysParser()  # (stocksync.routing: why)
        return client
    if is_sentinel_url(settings.redis_url):  # (stocksync.sentinel: a primary found through Sentinel)
        return sentinel.connect(settings.redis_url, max_connections, **kwargs)
    pool = BlockingConnectionPool.from_url(settings.redis_url, max_connections=max_connections, timeout=30, **kwargs)
    return Redis(connection_pool=pool)


def is_cluster(redis: AnyRedis) -> bool:
    return isinstance(redis, RedisCluster)
