"""Group commit for the webhook intake: the commands of concurrent requests go out together, one round trip.

While a batch is in flight, callers queue; when it returns, everything queued goes in the next one. Alone,
a caller waits one round trip as before; under load the cost of a round trip (most of a webhook's CPU
time in redis-py) is shared by every request in the batch. Each command is still its own atomic call:
batching changes when commands are sent, never what they do.

Durability (stocksync.durability): a batch that changes anything ends with the configured wait (a SET of
the mark, then WAIT or WAITAOF) on its connection, so one wait covers every request of the batch (group
commit). When it falls short, the requests that sent writes get NotDurable (the API answers 503: the
marketplace retries under the same references); those that only read get their replies. On a cluster
the batch goes out as one round trip per node, each node's writes followed by a mark and a wait on
that node (stocksync.cluster_wire): one wait per node per batch; a node that cannot confirm fails the
whole batch with a retryable error.
"""

from __future__ import annotations

import asyncio

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stocksync import cluster_wire
from stocksync.connection import TornDown, is_cluster, torn_down
from stocksync.durability import Durability, NotDurable
from stocksync.wire import pack, round_trip

__all__ = ["Batcher", "pack"]


class Batcher:
    """Sends the commands of concurrent requests together: one pipeline, one round trip for many."""

    def __init__(self, redis, max_batch: int = 1000, durability: Durability | None = None) -> None:
        self.redis, self.max_batch = redis, max_batch
        self.durability = durability or Durability()
        self._queue: list[tuple[list[tuple], asyncio.Future]] = []
        self._busy = False
        # A single Redis: the batch is packed here and written on one pooled connection (redis-py's
        # Pipeline packs and parses each command through several layers of Python, most of the batch's
        # cost). A cluster routes each command to its node: RedisCluster's pipeline does that.
        self._pool = None if is_cluster(redis) else redis.connection_pool

    async def call(self, commands: list[tuple]) -> list:
        """The replies of `commands` (errors as ResponseError values, not raised)."""
        if not commands:
            return []
        future = asyncio.get_running_loop().create_future()
        self._queue.append((commands, future))
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().call_soon(self._start)
        return await future

    def _start(self) -> None:
        batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
        task = asyncio.ensure_future(self._send(batch))
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task) -> None:
        if self._queue:
            self._start()
        else:
            self._busy = False

    async def _send(self, batch: list[tuple[list[tuple], asyncio.Future]]) -> None:
        commands = [command for each, _ in batch for command in each]
        durable = self.durability.wanted(commands)
        suffix = self.durability.suffix() if durable and self._pool is not None else []
        commands += suffix
        short = None
        try:
            if self._pool is None and durable:
                # a cluster: one round trip and one wait per node (stocksync.cluster_wire)
                replies, waits = await cluster_wire.round_trips(self.redis, self.durability, commands)
                short = next(filter(None, map(self._short, waits)), None)
            elif self._pool is None:
                replies = await self._pipeline(commands)
            else:
                try:
                    replies = await self._direct(commands)
                except (RedisConnectionError, RedisTimeoutError):
                    # Every command the intake batches can be sent twice (reads, FCALLs with their
                    # reference, a restock reservation by its id, SETs of the same value): sent again
                    # through redis-py, with its retries. One answer can differ: a line record's SET ... GET
                    # that was applied the first time answers its own value, so a cancellation marker it
                    # replaced then is not seen (the take is not put back; see Intake._cancel).
                    replies = await self._pipeline(commands)
        except BaseException as e:  # noqa: BLE001 - every waiter gets the failure
            if torn_down(e):  # (redis-py's connection torn down mid-command: a 503, not a 500)
                e = TornDown(f"the connection was torn down mid-command ({e}); retry")
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        if suffix:
            short = self._short(replies[len(replies) - len(suffix):])
        i = 0
        for each, future in batch:
            if not future.done():
                if short is not None and self.durability.wanted(each):
                    future.set_exception(short)
                else:
                    future.set_result(replies[i: i + len(each)])
            i += len(each)

    def _short(self, replies: list) -> Exception | None:
        """The durability wait's verdict: None when the batch's changes are as durable as configured."""
        try:
            self.durability.check(replies)
        except (NotDurable, ResponseError, RedisConnectionError) as e:
            return e
        return None

    async def _pipeline(self, commands: list[tuple]) -> list:
        async with self.redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute(raise_on_error=False)

    async def _direct(self, commands: list[tuple]) -> list:
        return await round_trip(self._pool, commands)
