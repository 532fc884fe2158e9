"""Opening a Redis connection (standalone or cluster) from the settings."""

from __future__ import annotations

from redis.asyncio import Redis, RedisCluster

from .settings import Settings

AnyRedis = Redis | RedisCluster


def connect(settings: Settings, **kwargs) -> AnyRedis:
    kwargs.setdefault("decode_responses", True)
    if settings.cluster:
        return RedisCluster.from_url(settings.redis_url, **kwargs)
    return Redis.from_url(settings.redis_url, **kwargs)


def is_cluster(redis: AnyRedis) -> bool:
    return isinstance(redis, RedisCluster)
