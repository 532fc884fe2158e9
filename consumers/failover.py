"""After a failover on a cluster: push again what this worker pushed from writes the new primary lost.

Replication is asynchronous: a primary can acknowledge a change, the worker push it to the channel, and the
primary die before its replica received it. The promoted replica has the SKU at the version before, and the
`pushed:<channel>` record rolled back with it (same slot), so nothing says the channel lists a quantity
that no longer exists; a SKU that sells again is pushed anew, but a quiet one would stay wrong (G4).

So a worker remembers what it pushed lately (SKU -> version, the last REMEMBER_S seconds) and looks every
second at which node serves each partition; when one changes (a failover, or a slot moved), it reads the
current version of the SKUs it remembers there and owes a push of the current quantity (cycle.owe, kept in
Redis as any recheck) for each whose version went back (or that is gone). Limits: only what this worker
pushed is known (a worker that died in the same failover leaves its SKUs to `stocksync resync`); on one
Redis (no cluster) this does not run (a restart from AOF keeps what it acknowledged with appendfsync always).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from stocksync import library

from .pusher import Accepted
from .state import ChannelState

log = logging.getLogger(__name__)
REMEMBER_S = 300.0  # a failover takes seconds; what was pushed longer ago than this was replicated
MAX_REMEMBERED = 200_000


class FailoverWatch:
    def __init__(self, state: ChannelState, owe: Callable[[int, list[str], float], Awaitable[None]],
                 launch: Callable[[], None]) -> None:
        self.state, self.owe, self.launch = state, owe, launch
        self.pushed: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()  # sku -> (version, at)
        self.nodes: dict[int, str] = {}  # partition -> the node serving it at the last look

    def accepted(self, a: Accepted) -> None:
        self.pushed[a.sku] = (a.version, time.monotonic())
        self.pushed.move_to_end(a.sku)
        while len(self.pushed) > MAX_REMEMBERED:
            self.pushed.popitem(last=False)

    async def run(self) -> None:
        s = self.state
        while not s.stopping.is_set():
            try:
                await self.look()
            # (the cluster is changing: look again in a second; AttributeError: see consumers/reader.py)
            except (RedisError, OSError, AttributeError) as e:
                log.debug("%s: failover watch: %s", s.channel, e)
            await s.sleep(1.0)

    async def look(self) -> None:
        s = self.state
        self._forget_old()
        for p in range(s.keys.partitions):
            node = s.redis.get_node_from_key(s.keys.events(p)).name
            before = self.nodes.get(p)
            self.nodes[p] = node
            if before is not None and before != node:
                await self.repair(p, before, node)

    async def repair(self, p: int, before: str, now: str) -> None:
        s = self.state
        skus = [sku for sku in self.pushed if s.keys.partition(sku) == p]
        if not skus:
            return
        current = await library.pipelined(s.redis, [library.get(s.keys, sku) for sku in skus])
        behind = [sku for sku, stock in zip(skus, current, strict=True)
                  if not isinstance(stock, Exception) and (stock is None or stock.version < self.pushed[sku][0])]
        log.warning("%s: partition %d moved from %s to %s (failover?); %d of the %d SKUs pushed lately went back "
                    "to an older version: pushing their current quantity", s.channel, p, before, now, len(behind),
                    len(skus))
        s.stats["failover_repushes"] += len(behind)
        if behind:
            await self.owe(p, behind, 0.0)
            self.launch()

    def _forget_old(self) -> None:
        horizon = time.monotonic() - REMEMBER_S
        while self.pushed and next(iter(self.pushed.values()))[1] < horizon:
            self.pushed.popitem(last=False)
