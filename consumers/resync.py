"""Pushing SKUs' current quantity to a channel outside the stream: resync, initial sync, dead-letter replay.

A worker pushes what changes. Some listings need the current quantity without a change to carry it:
- a channel added to a running deployment, whose group starts on a stream that no longer holds every
  change (trimmed, or a group created at "$"): the SKUs that did not change since are not listed there
  until they are pushed once. The worker does that itself when it creates such a group (initial_sync);
- listings edited by hand on the marketplace, or a channel restored from a backup: `stocksync resync`;
- dead letters after the cause was fixed: `stocksync dlq replay` (consumers/dlq.py).

Every push here goes through the push cycle (consumers/cycle.py) under a lease owner of its own (never
the worker's consumer name: the library renews a lease for its own owner, so sharing it would let two
pushes of one SKU overlap): it reads the current quantity and the version the channel has in the same
call as the lease, and records the accepted version (never lowering it), so a worker pushing the same
SKU at the same time is never overtaken by an older quantity. A push that got no answer leaves a recheck
owed (cycle.recheck_delay_s: worker.recheck_ms, or 4 x the adapter's timeout, later), which a worker pays
worker.reclaim_idle_ms after it is due: the abandoned request may land after a newer push. Pushes go
through the channel's adapter, with its batch size, rate limit and timeouts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field

from stocksync.channels import ChannelConfig
from stocksync.connection import AnyRedis
from stocksync.keys import Keys
from stocksync.store import scan_skus

from .cycle import ACCEPTED, BUSY, CURRENT, GONE, REFUSED, PushCycle, Round, Want, owner_name, standalone


@dataclass
class PushReport:
    """What one batch's push did, SKU by SKU."""

    pushed: dict[str, int] = field(default_factory=dict)  # SKU -> version the channel accepted now
    current: dict[str, int] = field(default_factory=dict)  # SKU -> version the channel had already (no call)
    gone: list[str] = field(default_factory=list)  # SKUs that no longer exist (nothing to list)
    busy: list[str] = field(default_factory=list)  # SKUs another consumer is pushing right now (their current quantity)
    refused: dict[str, str] = field(default_factory=dict)  # SKU -> why the channel refused it for good
    failed: dict[str, str] = field(default_factory=dict)  # SKU -> why the channel did not take it for now

    @classmethod
    def of(cls, rnd: Round) -> PushReport:
        report = cls()
        for p in rnd.pushed:
            sku, status = p.job.sku, p.status
            if status == ACCEPTED:
                report.pushed[sku] = p.version
            elif status == CURRENT:
                report.current[sku] = p.version
            elif status == GONE:
                report.gone.append(sku)
            elif status == BUSY:
                report.busy.append(sku)
            elif status == REFUSED:
                report.refused[sku] = p.error
            else:  # failed, throttled, or sent without an answer
                report.failed[sku] = p.error
        return report


SAMPLE = 100  # SKUs a ResyncReport names per kind (its counts are exact): a pass over 1M SKUs stays small


@dataclass
class ResyncReport:
    """What a resync did, in counts, naming up to SAMPLE of the SKUs that need attention."""

    pushed: int = 0
    current: int = 0
    busy: int = 0
    gone: int = 0
    refused: int = 0
    failed: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # SKU refused (for good) or failed (for now) -> why
    gone_skus: list[str] = field(default_factory=list)
    busy_skus: list[str] = field(default_factory=list)  # all of them: a few at a time are being pushed

    @property
    def ok(self) -> bool:
        return not self.failed and not self.refused

    @property
    def done(self) -> int:
        return self.pushed + self.current + self.gone + self.busy + self.refused

    def add(self, r: PushReport) -> None:
        self.pushed += len(r.pushed)
        self.current += len(r.current)
        self.busy += len(r.busy)
        self.gone += len(r.gone)
        self.refused += len(r.refused)
        self.failed += len(r.failed)
        for sku, why in (*r.refused.items(), *r.failed.items()):
            if len(self.failures) < SAMPLE:
                self.failures[sku] = why
        self.gone_skus += r.gone[: SAMPLE - len(self.gone_skus)]
        self.busy_skus += r.busy

    def absorb(self, again: ResyncReport) -> None:
        """Fold in a pass over the SKUs this one found busy (they stay counted as busy here)."""
        for kind in ("pushed", "current", "gone", "refused", "failed"):
            setattr(self, kind, getattr(self, kind) + getattr(again, kind))
        self.failures.update(list(again.failures.items())[: SAMPLE - len(self.failures)])


async def push_skus(cycle: PushCycle, partition: int, skus: list[str], *, force: bool) -> PushReport:
    """Push the current quantity of `skus` (all of one partition, at most the adapter's batch size);
    unless `force`, skip those the channel already has at their current version."""
    return PushReport.of(await cycle.run([Want(sku, partition, forced=force) for sku in skus]))


async def resync(redis: AnyRedis, keys: Keys, config: ChannelConfig, *, skus: Iterable[str] | None = None,
                 partitions: Iterable[int] | None = None, force: bool = True, cycle: PushCycle | None = None,
                 progress: Callable[[ResyncReport], None] | None = None,
                 ready: Callable[[], Awaitable[None]] | None = None, recheck_ms: int = 0) -> ResyncReport:
    """Push the current quantity of every SKU (of `partitions`, default all), or of `skus`, to the channel,
    a batch at a time. `force=False`: only SKUs the channel does not have at their current version.
    progress(report so far) is called after every batch; `ready()` is awaited before each. `cycle`: the
    push cycle to use (a worker's initial sync); by default one of its own, under an owner drawn for this
    run, with the channel's adapter (`recheck_ms`: worker.recheck_ms)."""
    if cycle is None:
        async with standalone(redis, keys, config, owner=owner_name("resync"), recheck_ms=recheck_ms) as cycle:
            return await resync(redis, keys, config, skus=skus, partitions=partitions, force=force, cycle=cycle,
                                progress=progress, ready=ready)
    report = ResyncReport()
    async for p, batch in _batches(redis, keys, skus, partitions, cycle.adapter.batch_size):
        if ready is not None:
            await ready()
        report.add(await push_skus(cycle, p, batch, force=force))
        if progress is not None:
            progress(report)
    return report


def partition_batches(skus: Iterable[tuple[int, str]], size: int) -> Iterator[tuple[int, list[str]]]:
    """(partition, up to `size` SKUs of it), partitions in order, from (partition, SKU) pairs."""
    by_partition: dict[int, list[str]] = {}
    for p, sku in skus:
        by_partition.setdefault(p, []).append(sku)
    for p, names in sorted(by_partition.items()):
        for i in range(0, len(names), size):
            yield p, names[i : i + size]


async def _batches(redis: AnyRedis, keys: Keys, skus: Iterable[str] | None, partitions: Iterable[int] | None,
                   size: int) -> AsyncIterator[tuple[int, list[str]]]:
    """(partition, up to `size` SKUs of it): the given SKUs, or every SKU of the partitions."""
    if skus is not None:
        for batch in partition_batches(((keys.partition(s), s) for s in dict.fromkeys(skus)), size):
            yield batch
        return
    for p in range(keys.partitions) if partitions is None else partitions:
        batch: list[str] = []
        async for sku in scan_skus(redis, keys, p):
            if sku in batch:  # (SCAN may answer a key twice)
                continue
            batch.append(sku)
            if len(batch) == size:
                yield p, batch
                batch = []
        if batch:
            yield p, batch
