"""Opening a Redis connection (standalone or cluster) from the settings, so that Redis faults heal by themselves.

Every connection retries a command that failed on a dead socket, a timeout or a server still LOADING
its data (redis-py's ConnectionError, TimeoutError and BusyLoadingError, a ConnectionError), with a
bounded exponential backoff: RETRIES attempts, 100 ms doubling up to 1 s, each pause between half and all
of that (equal jitter: callers that failed together do not retry together), 2.75 to 5.5 s in all.
After a restart the pool's connections are dead sockets: each one fails once, is reconnected and the
command goes again, so no caller sees an error once the server answers (before, they answered 503 for
minutes). A server still down after the last attempt raises to the caller (the API answers 503).

Retrying is safe because of what stocksync sends (checked call by call, docs/runbook.md "Redis
restarted"): every change is an FCALL that carries a reference (G2: applied again, it is a replay), and
the other writes are idempotent (HSET of a heartbeat, SET of a lease to its owner, XACK, ZADD/ZREM of a
recheck, SET of a line record to the same value). One is not: XREADGROUP `>` whose reply was lost leaves
its entries pending under this consumer without the worker holding them. `retries(redis)` counts the
retries of a client, so that the reader goes over its own pending entries again after one.
"""

from __future__ import annotations

import contextlib
import copy
import os

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import sentinel
from .routing import LocalKeysParser
from .sentinel import is_sentinel_url
from .settings import Settings

AnyRedis = Redis | RedisCluster

# Callers fan out hundreds of concurrent calls (a flash sale, a webhook burst). A blocking pool makes
# them queue for a connection instead of failing with "Too many connections".
MAX_CONNECTIONS = 64
RETRIES = 8  # 100, 200, 400, 800 ms, then 1 s (each half to all of it): 2.75-5.5 s before a caller sees the error
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.05, 1.0
# An idle pooled connection is checked with a PING before it is used again: a socket the server closed
# long ago is found before a command is sent on it.
HEALTH_CHECK_S = 30


class CountingRetry(Retry):
    """redis-py's Retry that counts the retries it made. redis-py deep-copies a Retry into each
    connection: the copies share one counter, so a client's count covers every connection of its pool."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tally = [0]  # (a list: shared by the copies)

    def __deepcopy__(self, memo: dict) -> CountingRetry:
        twin = copy.copy(self)
        twin._backoff = copy.deepcopy(self._backoff, memo)  # (its state is per call)
        return twin

    async def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):
        async def failed(error, *count):
            self.tally[0] += 1
            return await fail(error, *count)

        return await super().call_with_retry(do, failed, is_retryable, with_failure_count)


def retry_policy() -> CountingRetry:
    return CountingRetry(EqualJitterBackoff(base=BACKOFF_BASE_S, cap=BACKOFF_CAP_S), RETRIES,
                         supported_errors=(RedisConnectionError, RedisTimeoutError, BusyLoadingError))


def connect(settings: Settings, max_connections: int = MAX_CONNECTIONS, *, retry: bool = True, **kwargs) -> AnyRedis:
    """A client of the settings' Redis. retry=False: errors raise at once (the start-up checks, which
    say why and wait themselves)."""
    kwargs.setdefault("decode_responses", True)
    kwargs.setdefault("socket_keepalive", True)
    if settings.cluster:
        # RedisCluster waits on its own per-node pools only up to max_connections; keep them roomy. (It
        # retries with redis-py's own policy, which also follows a failover's MOVED.)
        client = RedisCluster.from_url(settings.redis_url, max_connections=max(max_connections, 256), **kwargs)
        client.commands_parser = LocalKeysParser()  # (stocksync.routing: why)
        return client
    if retry:
        kwargs.setdefault("retry", retry_policy())
        kwargs.setdefault("health_check_interval", HEALTH_CHECK_S)
    if is_sentinel_url(settings.redis_url):  # (stocksync.sentinel: a primary found through Sentinel)
        return sentinel.connect(settings.redis_url, max_connections, **kwargs)
    pool = BlockingConnectionPool.from_url(settings.redis_url, max_connections=max_connections, timeout=30, **kwargs)
    return Redis(connection_pool=pool)


def retries(redis: AnyRedis) -> int:
    """How many times the client's connections retried a command so far (0 without a counting retry)."""
    kwargs = getattr(getattr(redis, "connection_pool", None), "connection_kwargs", None) or {}
    policy = kwargs.get("retry")
    return policy.tally[0] if isinstance(policy, CountingRetry) else 0


def is_cluster(redis: AnyRedis) -> bool:
    return isinstance(redis, RedisCluster)


class TornDown(RedisConnectionError):
    """redis-py's asyncio connection was torn down by another task in the middle of a command."""


def torn_down(error: BaseException) -> bool:
    """Whether `error` is redis-py's asyncio connection met without its socket: during a failover another
    task (the cluster client's reconnect of a node's connections, a health check) disconnects it between
    its is-connected check and its write, and redis-py raises AttributeError "'NoneType' object has no
    attribute 'writelines'". Only that: an AttributeError on None raised inside redis-py's own code."""
    if not isinstance(error, AttributeError) or not str(error).startswith("'NoneType' object has no attribute"):
        return False
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}redis{os.sep}" in tb.tb_frame.f_code.co_filename


@contextlib.contextmanager
def torn_down_as_connection_error():
    """Raise a torn-down connection (torn_down) as the connection error it is (the API answers 503 and the
    caller retries with its reference), not as an AttributeError (a 500); any other error as it is."""
    try:
        yield
    except AttributeError as e:
        if torn_down(e):
            raise TornDown(f"the connection was torn down mid-command ({e}); retry") from e
        raise
