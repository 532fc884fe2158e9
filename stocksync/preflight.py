"""Start-up checks of the long-running processes (`stocksync serve`, `stocksync worker`), made before they
change anything, each failing in one line that says what to fix:

* Redis answers (else Unreachable, exit 1: the URL with its password masked, and redis-py's reason);
* Redis cannot evict stocksync's keys (else EvictionRefused, exit 2). stocksync keeps keys with a TTL
  that must live until they expire: the references that make each order line apply exactly once (G2)
  and the per-SKU push leases that keep two pushes of one SKU from overlapping (G4). Under memory
  pressure a `volatile-*` maxmemory-policy evicts exactly those keys first, and an `allkeys-*` one any
  key (stock, events, references). So only `noeviction` is accepted (writes then fail loudly when memory
  is full), unless `allow_eviction` is set (STOCKSYNC_ALLOW_EVICTION=1): the operator's own risk. On a
  cluster every primary is asked. A server that does not let us read its configuration (CONFIG renamed
  or not permitted, as on some managed services) is logged as a warning and accepted.
"""

from __future__ import annotations

import logging

from redis.asyncio import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import connection
from .settings import Settings, SettingsError, redact

log = logging.getLogger(__name__)

EVICTING = ("volatile-", "allkeys-")
SAFE_POLICY = "noeviction"


class Unreachable(Exception):
    """Redis did not answer; the message names the URL (password masked) and the reason."""


class EvictionRefused(SettingsError):
    """Redis may evict stocksync's keys; the message says which policy, what it breaks and how to fix it."""


def unreachable(settings: Settings, error: BaseException) -> Unreachable:
    return Unreachable(f"Redis at {redact(settings.redis_url)} is unreachable: {error}")


def eviction_message(policies: dict[str, str]) -> str:
    named = ", ".join(f"{node}: {policy}" for node, policy in sorted(policies.items()))
    return (f"Redis's maxmemory-policy can evict stocksync's keys ({named}). Under memory pressure a volatile-* "
            "policy evicts keys with a TTL first: the references that make each order line apply exactly once "
            "(an order redelivered after its reference was evicted is taken again) and the push leases (two "
            "pushes of one SKU may overlap, and an older quantity may land last); an allkeys-* policy evicts "
            "any key, stock and events included. Set it to noeviction (CONFIG SET maxmemory-policy noeviction, "
            "and in redis.conf), or set STOCKSYNC_ALLOW_EVICTION=1 (allow_eviction = true) to start anyway")


async def policies(redis: connection.AnyRedis) -> dict[str, str]:
    """maxmemory-policy of the server, or of every primary of a cluster: {node: policy}."""
    if isinstance(redis, RedisCluster):
        await redis.initialize()
        out = {}
        for node in redis.get_primaries():
            reply = await redis.config_get("maxmemory-policy", target_nodes=node)
            out[node.name] = reply.get("maxmemory-policy", "")
        return out
    reply = await redis.config_get("maxmemory-policy")
    return {"redis": reply.get("maxmemory-policy", "")}


async def check_eviction(redis: connection.AnyRedis, allow: bool) -> dict[str, str]:
    """Refuse (EvictionRefused) a maxmemory-policy that can evict keys, unless `allow`; answers the
    policies read ({} when the server would not tell)."""
    try:
        found = await policies(redis)
    except ResponseError as e:  # CONFIG renamed or not permitted
        log.warning("could not read Redis's maxmemory-policy (%s); make sure it is noeviction", e)
        return {}
    evicting = {node: p for node, p in found.items() if p.startswith(EVICTING)}
    if evicting and allow:
        log.warning("Redis's maxmemory-policy can evict stocksync's keys (%s); starting anyway (allow_eviction)",
                    ", ".join(sorted(set(evicting.values()))))
    elif evicting:
        raise EvictionRefused(eviction_message(evicting))
    return found


async def check(settings: Settings) -> dict[str, str]:
    """Every start-up check against the settings' Redis, on a connection of its own (closed after)."""
    redis = connection.connect(settings, max_connections=2, socket_connect_timeout=5)
    try:
        try:
            await redis.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            raise unreachable(settings, e) from None
        return await check_eviction(redis, settings.allow_eviction)
    finally:
        await redis.aclose()
