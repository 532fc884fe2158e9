"""Start-up checks of the long-running processes (`stocksync serve`, `stocksync worker`), made before they
change anything, each failing in one line that says what to fix:

* Redis answers. One that is unreachable or still LOADING its data is waited for, up to `wait_s`
  (STOCKSYNC_WAIT_S, 300 s by default): a Redis restarted at the same moment as the processes (a host
  reboot, a deploy) is not a reason to exit, and a container restart loop would only add noise. Each
  attempt logs one line (the reason, the next attempt's delay), never a traceback; past wait_s it is
  Unreachable, exit 1: the URL with its password masked, and redis-py's reason. A configuration error
  (a malformed URL, a wrong password, an evicting policy) fails at once: waiting would not fix it;
* the durability chosen can be honoured (stocksync.durability): fsync needs appendonly yes and WAITAOF
  (Redis / Valkey 7.2+) or appendfsync always (else DurabilityRefused, exit 2); replicated with fewer
  replicas connected than required starts, with a warning (changes answer 503 until they connect);
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

import asyncio
import logging
import time

from redis.asyncio import RedisCluster
from redis.exceptions import AuthenticationError, BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import connection, durability
from .settings import Settings, SettingsError, redact

log = logging.getLogger(__name__)

EVICTING = ("volatile-", "allkeys-")
FIRST_DELAY_S, MAX_DELAY_S = 0.5, 10.0  # between start-up attempts: doubling, capped
SAFE_POLICY = "noeviction"


class Unreachable(Exception):
    """Redis did not answer; the message names the URL (password masked) and the reason."""


class EvictionRefused(SettingsError):
    """Redis may evict stocksync's keys; the message says which policy, what it breaks and how to fix it."""


class DurabilityRefused(SettingsError):
    """The server cannot honour the durability chosen (fsync without the append-only file)."""


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
    """Every start-up check against the settings' Redis, on a connection of its own (closed after);
    waits for a Redis that is unreachable or loading (see the module's doc)."""
    redis = connection.connect(settings, max_connections=2, retry=False, socket_connect_timeout=5,
                               socket_timeout=5)
    try:
        await wait_until_up(redis, settings)
        found = await check_eviction(redis, settings.allow_eviction)
        await check_durability(redis, settings)
        return found
    finally:
        await redis.aclose()


async def wait_until_up(redis: connection.AnyRedis, settings: Settings) -> None:
    """PING until Redis answers (not LOADING), at most settings.wait_s; one log line per failed attempt."""
    deadline, delay, attempt = time.monotonic() + settings.wait_s, FIRST_DELAY_S, 0
    while True:
        attempt += 1
        try:
            await _answers(redis)
            if attempt > 1:
                log.info("Redis at %s answers (attempt %d)", redact(settings.redis_url), attempt)
            return
        except AuthenticationError as e:  # a wrong password is a configuration error: no waiting
            raise unreachable(settings, e) from None
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:  # (BusyLoadingError included)
            left = deadline - time.monotonic()
            if left <= 0:
                raise unreachable(settings, e) from None
            pause = min(delay, left)
            log.warning("Redis at %s is not ready (%s: %s); attempt %d, trying again in %.1f s (giving up in "
                        "%.0f s, STOCKSYNC_WAIT_S)", redact(settings.redis_url), type(e).__name__, e, attempt, pause,
                        left)
            await asyncio.sleep(pause)
            delay = min(delay * 2, MAX_DELAY_S)


async def _answers(redis: connection.AnyRedis) -> None:
    """Redis answers and has loaded its data (BusyLoadingError otherwise: PING is answered while loading)."""
    await redis.ping()
    if not connection.is_cluster(redis) and int((await redis.info("persistence")).get("loading", 0)):
        raise BusyLoadingError("Redis is loading the dataset in memory")


async def check_durability(redis: connection.AnyRedis, settings: Settings) -> None:
    """The durability mode can be honoured by this server, or by every primary of a cluster (each waits for
    its own changes: stocksync.cluster_wire): fsync needs appendonly yes, and WAITAOF or appendfsync always
    (else DurabilityRefused); replicated with fewer replicas connected than required is only warned about
    (each change answers 503 until they are)."""
    if settings.durability == "local":
        return
    if isinstance(redis, RedisCluster):
        await redis.initialize()
        for node in redis.get_primaries():
            await _check_node(redis, settings, {"target_nodes": node}, f" on {node.name}")
        return
    await _check_node(redis, settings, {}, "")


async def _check_node(redis: connection.AnyRedis, settings: Settings, target: dict, where: str) -> None:
    try:
        if settings.durability == "fsync":
            config = await redis.config_get("append*", **target)
            version = str((await redis.info("server", **target)).get("redis_version", "0"))
            refusal = fsync_refusal(config.get("appendonly", ""), config.get("appendfsync", ""),
                                    durability.waitaof_in(version))
            if refusal:
                raise DurabilityRefused(refusal + where)
            return
        info = await redis.info("replication", **target)
    except ResponseError as e:  # CONFIG or INFO renamed or not permitted
        log.warning("could not check that Redis%s can honour durability %s (%s)", where, settings.durability, e)
        return
    if int(info.get("connected_slaves", 0)) < settings.min_replicas:
        log.warning("durability replicated needs %d replica(s)%s; %d connected now: changes answer a retryable "
                    "error (HTTP 503) until enough replicas are", settings.min_replicas, where,
                    int(info.get("connected_slaves", 0)))


def fsync_refusal(appendonly: str, appendfsync: str, waitaof: bool) -> str:
    """Why the server cannot honour durability fsync ('' when it can)."""
    if appendonly != "yes":
        return ("durability fsync needs Redis's append-only file: appendonly is no. Set CONFIG SET appendonly yes "
                "(and in redis.conf), or choose STOCKSYNC_DURABILITY=local or replicated")
    if not waitaof and appendfsync != "always":
        return (f"durability fsync needs WAITAOF (Redis or Valkey 7.2+), which this server does not have, or "
                f"appendfsync always (it is {appendfsync}): upgrade, or CONFIG SET appendfsync always")
    return ""
