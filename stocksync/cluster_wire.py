"""Durable round trips on Redis Cluster: each node's commands, a mark and the wait on one of its connections.

    round_trips(redis, durability, commands)  ->  (replies in order, [the wait's replies of each node])

WAIT and WAITAOF count the writes made on *their* connection, so on a cluster they must go on a connection
of the node that made the changes, after them (stocksync.durability). redis-py's cluster client picks a
connection per command and gives no way to do that, so here the commands are grouped by the node that owns
their slot (the client's slot map), and each group goes in one round trip on one pooled connection of its
node (stocksync.wire): its commands, a SET of a mark on that node, then the wait. The mark is in the slot
of the group's first written key when that key starts with a hash tag (`{<prefix>:<p>}:durable` for a
partition's keys), so a slot that moved fails the mark as it fails the change; a group that wrote only
untagged keys (the intake's line records) takes `{<prefix>:durable:<n>}`, the first n whose slot is on that
node. Groups go out concurrently: one wait per node per batch.

What cannot be confirmed raises a retryable error (a RedisConnectionError, which the API answers 503):
a connection error or timeout (the node died: did the change apply? its reference makes the retry safe,
G2), a MOVED/ASK/TRYAGAIN/CLUSTERDOWN reply (a failover moved the slot) or a slot no node covers. Either
way the slot map is read again first, so the caller's retry goes to the promoted replica.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any

from redis.exceptions import AskError, ClusterDownError, RedisClusterException, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .routing import command_keys
from .wire import round_trip

REDIRECTS = (AskError, TryAgainError, ClusterDownError)  # (MovedError is an AskError)
READ_MARGIN_S = 5.0  # beyond durability_timeout_ms, before a silent node's round trip is given up
REFRESH_S = 5.0  # at most this long reading the slot map again
MARK_SEARCH = 10_000  # names tried for a node's mark (a node owning any slot is found in about #nodes tries)


class Unconfirmed(RedisConnectionError):
    """The node of a change failed or gave its slot away before confirming it: the change may or may not
    be applied. Retry with the same reference (G2 makes the retry a replay if it was)."""


class NodePool:
    """One cluster node's connections, as stocksync.wire.round_trip takes a pool."""

    def __init__(self, node) -> None:
        self.node = node

    async def get_connection(self):
        return self.node.acquire_connection()  # (MaxConnectionsError, a ConnectionError, when exhausted)

    async def release(self, conn) -> None:
        self.node.release(conn)


def first_key(command: tuple) -> str | None:
    keys = command_keys(command)
    if keys is not None:
        return keys[0] if keys else None
    return command[1] if len(command) > 1 else None


def tagged_mark(key: str) -> str | None:
    """`{tag}:durable` for a key that starts with a non-empty hash tag (the same slot), else None."""
    end = key.find("}")
    return f"{key[: end + 1]}:durable" if key.startswith("{") and end > 1 else None


async def round_trips(redis, durability: Any, commands: list[tuple]) -> tuple[list, list[list]]:
    """The replies of `commands` (a command's error in its place) and, for each node the commands wrote
    on, the replies of its mark and wait (for durability.check). Unconfirmed when a node cannot confirm."""
    started = time.monotonic()
    try:
        groups = _group(redis, commands)
    except RedisClusterException as e:  # (SlotNotCoveredError: mid-failover)
        await refresh(redis, started)
        raise Unconfirmed(f"no node serves the change's slot now ({e}): retry with the same reference") from e
    plans = []
    for node, indexes in groups.items():
        sent = [commands[i] for i in indexes]
        suffix = durability.suffix(_mark(redis, node, sent, durability)) if durability.wanted(sent) else []
        plans.append((node, indexes, sent, suffix))
    # (a node that stops answering, SIGSTOPped or cut off, is given up after the wait's own time and a margin)
    deadline = durability.timeout_ms / 1000 + READ_MARGIN_S
    results = await asyncio.gather(*(_send(node, sent + suffix, deadline) for node, _, sent, suffix in plans),
                                   return_exceptions=True)
    replies: list = [None] * len(commands)
    waits = []
    for (node, indexes, sent, suffix), result in zip(plans, results, strict=True):
        if isinstance(result, BaseException):
            await _failed(redis, node, result, started)
        for i, reply in zip(indexes, result, strict=False):
            replies[i] = reply
        if suffix:
            waits.append(result[len(sent):])
    return replies, waits


async def _failed(redis, node, error: BaseException, started: float) -> None:
    """Raise what a node's failed round trip means to the caller, the slot map read again first."""
    if not isinstance(error, RedisConnectionError | RedisTimeoutError | Unconfirmed):
        raise error
    await node.disconnect_free_connections()  # (its other idle sockets died with it, most likely)
    await refresh(redis, started, node.name)
    raise Unconfirmed(f"node {node.name} did not confirm the change ({type(error).__name__}: {error}); its outcome "
                      "is unknown: retry with the same reference") from error


async def _send(node, commands: list[tuple], deadline: float) -> list:
    replies = await round_trip(NodePool(node), commands, deadline)
    moved = next((r for r in replies if isinstance(r, REDIRECTS)), None)
    if moved is not None:
        raise Unconfirmed(f"node {node.name} answered {moved}: the slot moved (a failover?)")
    return replies


def _group(redis, commands: list[tuple]) -> dict:
    groups: dict = {}
    for i, command in enumerate(commands):
        key = first_key(command)
        node = redis.get_node_from_key(key) if key is not None else redis.get_default_node()
        groups.setdefault(node, []).append(i)
    return groups


def _mark(redis, node, sent: list[tuple], durability: Any) -> str:
    """A key on `node` for the mark: in the slot of its first tagged written key, else the node's own."""
    for command in sent:
        key = first_key(command)
        if key is not None and durability.wanted([command]) and (mark := tagged_mark(key)):
            return mark
    for n in range(MARK_SEARCH):
        mark = f"{{{durability.mark}:{n}}}"
        if redis.get_node_from_key(mark) == node:
            return mark
    raise Unconfirmed(f"node {node.name} serves no slot in the client's map: retry")


class _Refreshed:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.at = 0.0


_refreshed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


async def refresh(redis, since: float, failed: str | None = None) -> None:
    """Read the cluster's slot map again, once for every caller that failed since `since` (a failover
    fails many calls at once: one CLUSTER SLOTS, not one each), asking the node that failed last and
    giving up after REFRESH_S (a frozen node would hold every caller here)."""
    state = _refreshed.setdefault(redis, _Refreshed())
    async with state.lock:
        if state.at > since:
            return
        try:
            async with asyncio.timeout(REFRESH_S):
                await redis.nodes_manager.initialize(last_failed_node_name=failed)
        except (RedisError, RedisClusterException, OSError, TimeoutError):
            pass  # (no node answered: the next failure tries again)
        state.at = time.monotonic()
