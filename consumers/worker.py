"""The channel worker: read the events streams as the channel's consumer group, coalesce per SKU, push
the channel's view of each SKU's current quantity, record what the channel accepted, acknowledge.

One ChannelWorker per channel (a process may run several; several processes of one channel share its
streams as consumers of the same group). It composes one object per role, each in a module named for it
(what the roles share: consumers/state.py):

* a reader per partition (consumers/reader.py): XREADGROUP into the coalescer (consumers/coalescer.py),
  its own pending entries first; at max_pending it holds only urgent entries and defers the rest,
  reading them again later from a per-partition history cursor; past twice max_pending it stops reading;
* the dispatcher (consumers/dispatcher.py): hands the most urgent ready SKUs (consumers/ranks.py),
  batch_size at a time, to push tasks, at most max_in_flight at once, so reads keep flowing while pushes
  are in flight;
* the pushes (consumers/pusher.py): each batch through the push cycle (consumers/cycle.py: claim ->
  adapter call -> done, the same for resync, the initial sync and dead-letter replay), then settled:
  acknowledged, backed off, dead-lettered, or owed a recheck after a push that got no answer (kept in
  Redis, so a worker that dies owing it leaves it to the others);
* housekeeping (consumers/housekeeping.py): reclaim of a dead consumer's entries, the rechecks dead
  workers owed, removal of idle consumers, the trimmer, a heartbeat in <prefix>:status:<channel>, and a
  refresh of the SKU map (a SKU whose channel name changed is pushed again; 0 is listed under an old name
  no SKU uses any more) and of the per-SKU rules (a SKU whose rules changed is pushed again), and the end
  of due reservations (stocksync_expire);
* on a cluster, the failover watch (consumers/failover.py): SKUs it pushed from writes a failover lost are
  pushed again at their current quantity;
* the partition leases (consumers/partitions.py): which partitions this process reads, shared with the
  channel's other worker processes, a dead one's taken over once its leases expire;
* an initial sync (consumers/initial_sync.py), when this worker created the channel's group on a stream
  that no longer holds every change (or finds one unfinished): every SKU the channel does not have at its
  current version, pushed once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis.exceptions import RedisError

from stocksync import logs
from stocksync.channels import ChannelConfig
from stocksync.connection import AnyRedis, is_cluster
from stocksync.keys import Keys

from . import groups, metrics
from .adapters import Adapter, make_adapter
from .cycle import PushCycle, owner_name, recheck_delay_s
from .dispatcher import Dispatcher
from .failover import FailoverWatch
from .feeds import FeedLane
from .housekeeping import Housekeeping
from .initial_sync import InitialSync
from .ledger import LedgerBatcher
from .options import WorkerOptions
from .partitions import PartitionLeases
from .pusher import Accepted, Pusher
from .reader import Reader
from .state import ChannelState

log = logging.getLogger(__name__)

__all__ = ["Accepted", "ChannelWorker"]


class ChannelWorker:
    def __init__(self, redis: AnyRedis, keys: Keys, config: ChannelConfig, options: WorkerOptions | None = None,
                 adapter: Adapter | None = None, on_accept: Callable[[Accepted], None] | None = None) -> None:
        options = options or WorkerOptions()
        adapter = adapter or make_adapter(config)
        on_accept = _both(metrics.Propagation(config.name), on_accept)  # (the propagation lag histogram)
        self.state = s = ChannelState(redis, keys, config, options, adapter)
        self.channel, self.adapter, self.breaker, self.coalescer, self.stats = (
            s.channel, adapter, s.breaker, s.coalescer, s.stats)
        recheck_s = recheck_delay_s(options.recheck_ms, adapter.timeout_s)
        # the worker's own pushes, under its consumer name (claims and dones merged across pushes)
        cycle = PushCycle(redis, keys, config, adapter, s.skus,
                          LedgerBatcher(redis, keys, s.channel, s.consumer, options.lease_ms),
                          recheck_s=recheck_s, rechecks=s.coalescer, hold_unanswered=True,
                          contain_adapter_errors=True, listed=s.risk.listed)
        self.reader = Reader(s)
        # on a cluster: what this worker pushed from writes a failover lost is pushed again (consumers/failover.py)
        self.failover = FailoverWatch(s, cycle.owe, lambda: self.dispatcher.launch()) if is_cluster(redis) else None
        if self.failover:
            on_accept = _both(on_accept, self.failover.accepted)
        self.pusher = Pusher(s, cycle, self.reader.defer, on_accept)
        # Amazon's feed lane (consumers/feeds.py), when the channel has one: it takes the non-urgent pushes
        self.feeds = FeedLane.for_channel(s, cycle, on_accept)
        self.dispatcher = Dispatcher(s, self.feeds.route(self.pusher.push) if self.feeds else self.pusher.push)
        self.reader.launch = self.dispatcher.launch  # (the reader starts pushes as it takes entries in)
        if self.feeds:
            self.feeds.launch = self.dispatcher.launch
        self.housekeeping = Housekeeping(s, self.reader.take_in, self.dispatcher.launch, cycle.owe)
        # the initial sync leases under an owner of its own: it pushes beside the worker's own pushes
        sync_ledger = LedgerBatcher(redis, keys, s.channel, owner_name("initial-sync"), options.lease_ms)
        self.initial_sync = InitialSync(s, PushCycle(redis, keys, config, adapter, s.skus, sync_ledger,
                                                     recheck_s=recheck_s, listed=s.risk.listed))
        self.readers: dict[int, asyncio.Task] = {}  # partition -> its reader task
        # one partition (a single Redis): every worker reads it, sharing its entries through the consumer group
        # as before; leases would leave all but one worker idle
        leased = options.partition_lease_ms and keys.partitions > 1
        self.leases = PartitionLeases(s, self._start_reader, self._stop_reader) if leased else None
        self.started = asyncio.Event()
        metrics.watch(self)

    async def run(self) -> None:
        """Run until stop() (or cancellation); in-flight pushes are allowed to finish. Every record logged
        by the worker's tasks carries its channel and consumer name (stocksync.logs)."""
        with logs.bound(channel=self.state.channel, worker=self.state.consumer):  # (tasks made inside inherit it)
            await self._run()

    async def _run(self) -> None:
        s = self.state
        unsynced = await groups.ensure_groups(s.redis, s.keys, s.channel, s.options.start_id)
        await s.skus.refresh()
        await s.rules.refresh()
        s.risk.overrides = s.rules.rules
        s.update_gates()
        tasks = [asyncio.create_task(self.dispatcher.run(), name=f"dispatch-{s.channel}"),
                 asyncio.create_task(self.housekeeping.run(), name=f"housekeeping-{s.channel}")]
        if self.failover:
            tasks.append(asyncio.create_task(self.failover.run(), name=f"failover-{s.channel}"))
        if self.leases:
            tasks.append(asyncio.create_task(self.leases.run(), name=f"leases-{s.channel}"))
            await _first(self.leases.ready.wait(), tasks)  # (the first round: what this worker reads)
        else:  # every worker reads every partition
            for p in range(s.keys.partitions):
                self._start_reader(p)
        sync = asyncio.create_task(self.initial_sync.run(unsynced), name=f"sync-{s.channel}") if unsynced else None
        if self.feeds:
            tasks.append(asyncio.create_task(self.feeds.run(), name=f"feeds-{s.channel}"))
        self.started.set()
        log.info("worker %s of channel %s started (%d partitions, reading %s)", s.consumer, s.channel,
                 s.keys.partitions, "by lease" if self.leases else "all")
        try:
            stop = asyncio.create_task(s.stopping.wait())
            done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stop and t.exception():
                    raise t.exception()
        finally:
            await self._shut_down(tasks + ([sync] if sync else []))

    def _start_reader(self, p: int) -> None:
        s = self.state
        task = self.readers[p] = asyncio.create_task(self.reader.run(p), name=f"read-{s.channel}-{p}")

        def ended(t: asyncio.Task) -> None:  # a reader never ends with an error (reader.py contains them)
            if not t.cancelled() and t.exception():
                log.error("%s: the reader of partition %d failed: %r; stopping the worker", s.channel, p, t.exception())
                s.stopping.set()

        task.add_done_callback(ended)

    async def _stop_reader(self, p: int) -> bool:
        """End p's reader after its current read; answers whether it left no deferred entry of p behind."""
        self.reader.leaving.add(p)
        task = self.readers.pop(p, None)
        if task is not None:
            await asyncio.wait([task])
        return p not in self.reader.resume

    async def _shut_down(self, tasks: list[asyncio.Task]) -> None:
        s = self.state
        s.stopping.set()
        tasks = tasks + list(self.readers.values())
        if self.leases:  # given back at once: the channel's other workers need not wait for them to expire
            try:
                await self.leases.release_all()
            except RedisError:
                pass
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if s.tasks:
            await asyncio.wait(s.tasks, timeout=s.adapter.timeout_s + 1)
        for t in list(s.tasks):
            t.cancel()
        try:
            await s.redis.hdel(s.keys.channel_status(s.channel), s.consumer)
        except RedisError:
            pass
        await s.adapter.close()
        s.health.close()
        metrics.forget(self)
        log.info("worker %s of channel %s stopped", s.consumer, s.channel)

    def stop(self) -> None:
        self.state.stopping.set()

    def status(self) -> dict:
        return self.state.status()

    async def heartbeat(self) -> None:
        await self.housekeeping.heartbeat()


async def _first(wanted, tasks: list[asyncio.Task]) -> None:
    """Await `wanted`, unless one of `tasks` ends first (its error raised)."""
    waiting = asyncio.ensure_future(wanted)
    done, _ = await asyncio.wait([waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if waiting not in done:
        waiting.cancel()
        for t in done:
            t.result()


def _both(first: Callable[[Accepted], None], second: Callable[[Accepted], None] | None) -> Callable[[Accepted], None]:
    if second is None:
        return first

    def both(accepted: Accepted) -> None:
        first(accepted)
        second(accepted)

    return both
