"""Durability you choose: when a change counts as done (settings `durability`, STOCKSYNC_DURABILITY).

    local       the primary applied it (its reply). Lost if the primary is lost before its replica and its
                disk have it (a failover, or a crash with appendfsync everysec / no persistence).
    replicated  and at least `min_replicas` replicas have it: `WAIT min_replicas timeout` after the change.
                Survives the loss of the primary (the promoted replica has it); not a crash of all of them
                at once unless they persist too.
    fsync       and the primary wrote it to its append-only file and fsynced it: `WAITAOF 1 0 timeout`
                (Redis / Valkey 7.2+; needs appendonly yes). Survives a crash or power loss of the primary's
                host (its disk kept); not the loss of that disk. On a server without WAITAOF, fsync is
                accepted only with appendfsync always, where Redis fsyncs each write before replying.

WAIT and WAITAOF wait for the writes made on *their* connection (its last write's replication offset),
so they go in the same round trip, on the same connection, as the changes: a pipeline of the changes, a
SET of `Keys.durable_mark`, then the wait. The SET is there for retries: a call replayed under its
reference (G2) writes nothing, and the wait alone would not cover the first call's write that it replays
(made on another connection, maybe not replicated yet); the SET moves the connection's offset past it.
On Redis Cluster the same goes to each node the changes were made on, with a mark on that node (its
partition's `{<prefix>:<p>}:durable`): stocksync.cluster_wire.

What waits: the changes of stock through StockStore and the webhook intake (its line records and
delivery ids too, in the same batches). What does not: the workers' bookkeeping (versions pushed, leases,
acknowledgements): lost in a failover, it only costs a push made again (the runbook, "Redis failed over").

A shortfall (fewer replicas, or no fsync, within `durability_timeout_ms`) raises NotDurable. The change
is applied on the primary and will usually reach the replica; the caller retries with the same
reference, which replays and waits again: the API answers 503 with the reason, so a marketplace
redelivers its webhook, and the order is applied once.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import cluster_wire
from .connection import is_cluster
from .settings import Settings
from .wire import round_trip

MARK_TTL_MS = 60_000
READS = frozenset({"FCALL_RO", "GET", "HGET", "HMGET", "HGETALL", "EXISTS", "XRANGE", "XREVRANGE", "ZRANGEBYSCORE",
                   "HLEN", "HEXISTS", "XLEN", "TTL", "PTTL", "TYPE", "PING"})


class NotDurable(RedisError):
    """The change was applied but is not as durable as configured yet: retry it with the same reference.
    (A RedisError: every caller that handles an unavailable Redis handles this one too.)"""


@dataclass(frozen=True)
class Durability:
    mode: str = "local"
    min_replicas: int = 1
    timeout_ms: int = 1000
    waitaof: bool = True  # the server has WAITAOF (else fsync relies on appendfsync always)
    mark: str = "stocksync:durable"

    @property
    def waits(self) -> bool:
        """Whether changes need a wait after them."""
        return self.mode == "replicated" or (self.mode == "fsync" and self.waitaof)

    def suffix(self, mark_key: str | None = None) -> list[tuple]:
        """The commands that follow the changes, on their connection ([] in local mode). On a cluster the
        mark is a key of the node that made the changes (stocksync.cluster_wire picks it)."""
        if not self.waits:
            return []
        mark = ("SET", mark_key or self.mark, "1", "PX", MARK_TTL_MS)
        if self.mode == "replicated":
            return [mark, ("WAIT", self.min_replicas, self.timeout_ms)]
        return [mark, ("WAITAOF", 1, 0, self.timeout_ms)]

    def check(self, replies: list) -> None:
        """The replies of suffix(): raise NotDurable unless the changes are as durable as configured."""
        if not replies:
            return
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        got = replies[-1]
        if self.mode == "replicated" and int(got) < self.min_replicas:
            raise NotDurable(f"durability replicated: {int(got)} of the {self.min_replicas} replica(s) required "
                             f"acknowledged the change within {self.timeout_ms} ms; it is applied on the primary: "
                             "retry with the same reference")
        if self.mode == "fsync" and int(got[0]) < 1:
            raise NotDurable(f"durability fsync: the change was not fsynced to the append-only file within "
                             f"{self.timeout_ms} ms (is appendonly yes?); retry with the same reference")

    def wanted(self, commands: list[tuple]) -> bool:
        """Whether a batch of commands changes anything (a batch of reads needs no wait)."""
        return self.waits and any(str(c[0]).upper() not in READS for c in commands)


def from_settings(settings: Settings, mark: str, waitaof: bool = True) -> Durability:
    return Durability(settings.durability, settings.min_replicas, settings.durability_timeout_ms, waitaof, mark)


async def has_waitaof(redis) -> bool:
    """Whether the server knows WAITAOF: Redis 7.2+, or Valkey (which reports redis_version 7.2.4 from its
    first release). (COMMAND INFO would say so too, but redis-py cannot parse its reply for an unknown one.)"""
    return waitaof_in(str((await redis.info("server")).get("redis_version", "0")))


def waitaof_in(version: str) -> bool:
    parts = [int(p) if p.isdigit() else 0 for p in version.split(".")[:2]]
    return tuple(parts + [0] * (2 - len(parts))) >= (7, 2)


async def pipelined(redis, durability: Durability, commands: list[tuple]) -> list:
    """The replies of `commands` (errors in place, not raised), sent in one round trip on one connection
    with the durability wait after them; NotDurable when the wait falls short. Packed by hand (stocksync.wire)
    on a single Redis; through redis-py's pipeline (and its retries) after a connection error: the commands
    are changes under references and the wait, all safe to send again. On a cluster, one round trip per
    node with its own wait (stocksync.cluster_wire; cluster_wire.Unconfirmed when a node cannot confirm)."""
    if is_cluster(redis):
        replies, waits = await cluster_wire.round_trips(redis, durability, commands)
        for wait in waits:
            durability.check(wait)
        return replies
    suffix = durability.suffix() if durability.wanted(commands) else []
    sent = [*commands, *suffix]
    try:
        replies = await round_trip(redis.connection_pool, sent)
    except (RedisConnectionError, RedisTimeoutError):
        replies = None
    if replies is None:
        async with redis.pipeline(transaction=False) as pipe:
            for command in sent:
                pipe.execute_command(*command)
            replies = await pipe.execute(raise_on_error=False)
    if suffix:
        durability.check(replies[len(commands):])
    return replies[: len(commands)]
