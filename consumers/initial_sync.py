"""A channel worker's initial sync: every SKU pushed once to a channel whose group misses history.

When the worker created the channel's group on a stream that no longer holds every change (trimmed, or
a group created at "$"), or finds a partition marked by a sync that did not finish (groups.ensure_groups),
the group alone would never hear of the SKUs that did not change since. So every SKU of those partitions
that the channel does not have at its current version is pushed once (resync.resync, without force),
then the partition's mark is deleted. The sync shares the worker's adapter (its rate limit and
connections) and runs one batch at a time beside the pushes of new changes, at NORMAL rank, waiting while
the channel is paused or its circuit is not closed. It leases under an owner of its own (never the
worker's consumer name: the library renews a lease for its own owner). A partition where some SKU failed
for now is gone over again later (1 s, doubling to 60 s); SKUs the channel refuses for good are logged
with a few examples (there is no entry to dead-letter) and do not keep the sync going. A worker that dies
during it leaves the mark, and the next worker of the channel to start goes over it again.
"""

from __future__ import annotations

import logging
import time

from . import resync
from .cycle import PushCycle
from .state import ChannelState

log = logging.getLogger(__name__)

BUSY_RETRY_S = 0.2  # SKUs another consumer was pushing during the pass: looked at again after this


class InitialSync:
    def __init__(self, state: ChannelState, cycle: PushCycle) -> None:
        self.state, self.cycle = state, cycle

    async def run(self, partitions: list[int]) -> None:
        """Push every SKU of these partitions that the channel does not have at its current version, then
        delete their marks."""
        for p in partitions:
            await self._sync_partition(p)

    async def _sync_partition(self, p: int) -> None:
        s = self.state
        delay = 1.0
        progress = _Progress(s, p)
        log.info("%s: initial sync of partition %d: pushing every SKU the channel does not have at its current "
                 "version (progress every 10 s)", s.channel, p)
        while not s.stopping.is_set():
            await s.channel_open()
            try:
                failed = await self._pass(p, progress)
                if failed is None:
                    return
                log.warning("%s: initial sync of partition %d: %d SKUs failed (e.g. %s); going over it again in "
                            "%.0f s", s.channel, p, failed.failed, examples(failed.failures), delay)
            except Exception as e:  # noqa: BLE001 - Redis down, an adapter bug: go over it again later
                log.exception("%s: initial sync of partition %d failed; going over it again in %.0f s",
                              s.channel, p, delay)
                s.error(f"initial sync: {type(e).__name__}: {e}")
            await s.sleep(delay)
            delay = min(delay * 2, 60.0)

    async def _pass(self, p: int, progress: _Progress) -> resync.ResyncReport | None:
        """One pass over the partition: None when it is done (its mark deleted), else its report."""
        s = self.state
        report = await resync.resync(s.redis, s.keys, s.config, partitions=[p], force=False, cycle=self.cycle,
                                     progress=progress, ready=s.channel_open)
        await self._sync_busy(report)
        if report.refused:  # (no entry to dead-letter: said here)
            log.warning("%s: initial sync of partition %d: the channel refused %d SKUs for good, e.g. %s",
                        s.channel, p, report.refused, examples(report.failures))
        if report.failed:
            return report
        await s.redis.delete(s.keys.resync(p, s.channel))
        log.info("%s: initial sync of partition %d done: %d SKUs pushed, %d current already, %d refused",
                 s.channel, p, report.pushed, report.current, report.refused)
        return None

    async def _sync_busy(self, report: resync.ResyncReport) -> None:
        """SKUs another consumer was pushing during the pass are gone over again once their leases are
        free (that push may fail): the pass is not done before each of them was taken or found current."""
        s = self.state
        busy = report.busy_skus
        while busy and not s.stopping.is_set():
            await s.sleep(BUSY_RETRY_S)
            again = await resync.resync(s.redis, s.keys, s.config, skus=busy, force=False, cycle=self.cycle,
                                        ready=s.channel_open)
            report.absorb(again)
            busy = again.busy_skus


class _Progress:
    """Counts the sync's progress into the heartbeat, and logs it every 10 s."""

    def __init__(self, state: ChannelState, partition: int) -> None:
        self.state, self.partition, self.last_log = state, partition, time.monotonic()

    def __call__(self, report: resync.ResyncReport) -> None:
        s = self.state
        s.stats["initial_sync"] = report.done
        if time.monotonic() - self.last_log >= 10:
            self.last_log = time.monotonic()
            log.info("%s: initial sync of partition %d: %d SKUs pushed, %d current already, %d failed",
                     s.channel, self.partition, report.pushed, report.current, report.failed)


def examples(failures: dict[str, str], n: int = 3) -> str:
    return "; ".join(f"{sku}: {why}" for sku, why in list(failures.items())[:n])
