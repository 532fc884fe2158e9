"""Which partitions a channel worker reads: leases, shared by the channel's worker processes.

    {<prefix>:<p>}:reader:<channel>   string: the consumer reading partition p for that channel (PX TTL)
    <prefix>:readers:<channel>        sorted set: consumer -> until when it counts as live (ms)

Each worker process of a channel reads only the partitions whose lease it holds. Every third of
`worker.partition_lease_ms` it says it is live, renews its leases, and balances: with L live workers and
C partitions it may read, its share is ceil(C / L); it takes free partitions up to its share, gives back
those above it while another live worker is below it, and takes a partition nobody took for a whole round
whatever its share (so none is left unread when the others may not read it: `--partitions`). A worker that
dies (SIGKILL) stops renewing; its leases expire after partition_lease_ms and the others take its
partitions over; its pending entries are reclaimed as before (XAUTOCLAIM, reclaim_idle_ms).

Why leases and not a fixed split: a dead worker's partitions must be read again without an operator, and
workers come and go. Two workers reading one partition for a moment (a lease that expired while its
holder stalled) is harmless: both are consumers of the channel's group, each entry goes to one of them,
and the per-SKU push lease keeps their pushes of a SKU apart. A partition nobody reads only delays its
pushes until a lease is taken. `--partitions 0,2,5-7` (worker.partitions) restricts what a process may
lease, e.g. to keep a channel's partitions of one primary on one host; partition_lease_ms = 0 turns leases
off: every worker reads every partition, as before. With one partition (a single Redis) there are no
leases either: every worker reads it and the consumer group shares its entries among them (a lease would
leave all workers but one idle).

A reader gives a partition back only between two reads and only when it holds no deferred entry of it
(entries pending under its name and not held, read again from its history cursor), so no entry is left
pending under a live consumer that no longer reads it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from stocksync.settings import SettingsError

from .options import parse_partitions
from .state import ChannelState

log = logging.getLogger(__name__)


def allowed(text: str, partitions: int) -> list[int]:
    """The partitions a worker may lease: those of `text` (all when empty), each checked against the
    deployment's count."""
    chosen = parse_partitions(text)
    beyond = sorted(p for p in chosen if p >= partitions)
    if beyond:
        raise SettingsError(f"partitions: {', '.join(map(str, beyond))} beyond this deployment's {partitions} "
                            f"partitions (0-{partitions - 1}; stored in the meta key)")
    return sorted(chosen) if chosen else list(range(partitions))


class PartitionLeases:
    """Holds a worker's partition leases and starts/stops its readers to match (start(p) / stop(p) ->
    whether p was given back cleanly: its reader ended with no deferred entry)."""

    def __init__(self, state: ChannelState, start: Callable[[int], None],
                 stop: Callable[[int], asyncio.Future]) -> None:
        self.state, self.start, self.stop = state, start, stop
        o = state.options
        self.ttl_ms = o.partition_lease_ms
        self.allowed = allowed(o.partitions, state.keys.partitions)
        self.mine: set[int] = set()
        self._free_last_round: set[int] = set()
        self.ready = asyncio.Event()  # set after the first round (the worker has what it can take)

    def key(self, p: int) -> str:
        return f"{self.state.keys.tag(p)}:reader:{self.state.channel}"

    @property
    def members(self) -> str:
        return f"{self.state.keys.prefix}:readers:{self.state.channel}"

    async def run(self) -> None:
        s = self.state
        while not s.stopping.is_set():
            try:
                await self.round()
            except Exception as e:  # noqa: BLE001 - Redis away: keep what we have, the leases say the rest
                log.warning("%s: partition leases: %s: %s; keeping partitions %s", s.channel, type(e).__name__, e,
                            sorted(self.mine))
            self.ready.set()
            await s.sleep(self.ttl_ms / 3000)

    async def round(self) -> None:
        """Say we are live, renew ours, read who holds what, then give back or take to match our share."""
        s, now = self.state, int(time.time() * 1000)
        await s.redis.zadd(self.members, {s.consumer: now + self.ttl_ms})
        await s.redis.zremrangebyscore(self.members, "-inf", now)
        live = set(await s.redis.zrange(self.members, 0, -1)) | {s.consumer}
        holders = await self._holders()
        for p in sorted(self.mine):
            if holders.get(p) != s.consumer:  # expired and taken by another (we stalled): theirs now
                log.warning("%s: lost the lease of partition %d to %s", s.channel, p, holders.get(p))
                await self._let_go(p, delete=False)
        for p, holder in holders.items():
            if holder == s.consumer and p not in self.mine:  # ours from before (a restart under --consumer)
                self._take(p)
        await self._renew()
        share = math.ceil(len(self.allowed) / max(len(live), 1))
        counts = {c: sum(1 for h in holders.values() if h == c) for c in live}
        await self._balance(share, counts, holders)

    async def _holders(self) -> dict[int, str | None]:
        async with self.state.redis.pipeline(transaction=False) as pipe:
            for p in self.allowed:
                pipe.get(self.key(p))
            return dict(zip(self.allowed, await pipe.execute(), strict=True))

    async def _renew(self) -> None:
        async with self.state.redis.pipeline(transaction=False) as pipe:
            for p in sorted(self.mine):
                pipe.pexpire(self.key(p), self.ttl_ms)
            await pipe.execute()

    async def _balance(self, share: int, counts: dict[str, int], holders: dict[int, str | None]) -> None:
        s = self.state
        deficit = sum(max(share - n, 0) for c, n in counts.items() if c != s.consumer)
        for p in sorted(self.mine, reverse=True)[: min(len(self.mine) - share, deficit)]:
            await self._let_go(p, delete=True)
        free = {p for p, h in holders.items() if h is None}
        for p in sorted(free):
            if len(self.mine) < share or p in self._free_last_round:
                if await s.redis.set(self.key(p), s.consumer, nx=True, px=self.ttl_ms):
                    self._take(p)
        self._free_last_round = free

    def _take(self, p: int) -> None:
        self.mine.add(p)
        self.start(p)
        log.info("%s: reading partition %d (lease taken)", self.state.channel, p)

    async def _let_go(self, p: int, delete: bool) -> None:
        """Stop reading p; give its lease back if it is still ours and the reader ended cleanly."""
        self.mine.discard(p)
        clean = await self.stop(p)
        if not clean:  # deferred entries of p pending under our name: keep reading it
            self._take(p)
            return
        if delete and await self.state.redis.get(self.key(p)) == self.state.consumer:
            await self.state.redis.delete(self.key(p))
            log.info("%s: gave partition %d back (balancing)", self.state.channel, p)

    async def release_all(self) -> None:
        """On a clean stop: give every lease back so the others take them at once (no wait for expiry)."""
        s = self.state
        for p in sorted(self.mine):
            if await s.redis.get(self.key(p)) == s.consumer:
                await s.redis.delete(self.key(p))
        await s.redis.zrem(self.members, s.consumer)
