"""Pushing SKUs' current quantity to a channel outside the stream: resync, initial sync, dead-letter replay.

A worker pushes what changes. Some listings need the current quantity without a change to carry it:
- a channel added to a running deployment, whose group starts on a stream that no longer holds every
  change (trimmed, or a group created at "$"): the SKUs that did not change since are not listed there
  until they are pushed once. The worker does that itself when it creates such a group (initial_sync);
- listings edited by hand on the marketplace, or a channel restored from a backup: `stocksync resync`;
- dead letters after the cause was fixed: `stocksync dlq replay` (consumers/dlq.py).

Every push here takes the SKU's lease under an owner of its own (never the worker's consumer name: the
library renews a lease for its own owner, so sharing it would let two pushes of one SKU overlap), reads
the current quantity and the version the channel has in the same call, and records the accepted version
(never lowering it), so a worker pushing the same SKU at the same time is never overtaken by an older
quantity. A push that got no answer leaves a recheck owed 4 x the adapter's timeout later
(stocksync_recheck), which a worker pays worker.reclaim_idle_ms after it is due: the abandoned request
may land after a newer push. Pushes go through the channel's adapter, with its
batch size, rate limit and timeouts.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field

from stocksync import library
from stocksync.channels import ChannelConfig
from stocksync.connection import AnyRedis
from stocksync.keys import Keys
from stocksync.store import scan_skus

from .adapters import Adapter, PushError, Result, Update, make_adapter
from .skumap import ChannelSkus

log = logging.getLogger(__name__)

def owner_name(kind: str) -> str:
    """A lease owner of its own for one run (<kind>-host-pid-uuid): two runs at once never share a lease."""
    return f"{kind}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


@dataclass
class PushReport:
    """What one batch's push did, SKU by SKU."""

    pushed: dict[str, int] = field(default_factory=dict)  # SKU -> version the channel accepted now
    current: dict[str, int] = field(default_factory=dict)  # SKU -> version the channel had already (no call)
    gone: list[str] = field(default_factory=list)  # SKUs that no longer exist (nothing to list)
    busy: list[str] = field(default_factory=list)  # SKUs another consumer is pushing right now (their current quantity)
    refused: dict[str, str] = field(default_factory=dict)  # SKU -> why the channel refused it for good
    failed: dict[str, str] = field(default_factory=dict)  # SKU -> why the channel did not take it for now


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


class Pusher:
    """Pushes of the current quantity of given SKUs to one channel, under one lease owner."""

    def __init__(self, redis: AnyRedis, keys: Keys, config: ChannelConfig, *, adapter: Adapter | None = None,
                 owner: str | None = None, lease_ms: int = 15000) -> None:
        self.redis, self.keys, self.config = redis, keys, config
        self.owner = owner or owner_name("resync")
        self.lease_ms = lease_ms
        self._own_adapter = adapter is None
        self.adapter = adapter or make_adapter(config)
        self.names = ChannelSkus(redis, keys, config)  # channel SKUs as the worker pushes them

    async def __aenter__(self) -> Pusher:
        await self.names.refresh()
        return self

    async def __aexit__(self, *exc) -> None:
        if self._own_adapter:
            await self.adapter.close()

    async def push(self, partition: int, skus: list[str], *, force: bool) -> PushReport:
        """Push the current quantity of `skus` (all of one partition, at most the adapter's batch size);
        unless `force`, skip those the channel already has at their current version."""
        report = PushReport()
        deadline = time.monotonic() + self.lease_ms / 1000 - 0.25
        claims = await library.push_claim(self.keys, partition, self.config.name, self.owner, skus,
                                    self.lease_ms).run(self.redis)
        leased = [c.sku for c in claims if c.leased]
        updates = []
        for c in claims:
            if not c.leased:
                report.busy.append(c.sku)
            elif c.version is None:
                report.gone.append(c.sku)
            elif c.pushed >= c.version and not force:
                report.current[c.sku] = c.pushed
            else:
                updates.append(Update(c.sku, self.names.channel_sku(c.sku), self.config.rules.listed(c.available),
                                      c.version))
        unanswered: list[str] = []
        try:
            if updates:
                unanswered = await self._call(updates, deadline, report)
        finally:
            await library.push_done(self.keys, partition, self.config.name, self.owner, report.pushed, [],
                              leased).run(self.redis)
        if unanswered:
            # Sent without an answer: the channel may apply it after a newer push by a worker. Owe the
            # channel the current quantity once it can no longer land; the workers pay what is owed.
            due_ms = int(time.time() * 1000 + 4000 * self.adapter.timeout_s)
            await library.recheck(self.keys, partition, self.config.name, "due", due_ms, unanswered).run(self.redis)
        return report

    async def _call(self, updates: list[Update], deadline: float, report: PushReport) -> list[str]:
        """Push; answers the SKUs whose request got no answer (it may still be applied)."""
        try:
            results = list(await self.adapter.push(updates, deadline))
        except PushError as e:
            results = [Result.failed(u.sku, str(e), permanent=e.permanent, ambiguous=e.ambiguous) for u in updates]
        by_sku = {r.sku: r for r in results}
        unanswered = []
        for u in updates:
            r = by_sku.get(u.sku) or Result.failed(u.sku, "the channel did not answer for this SKU", permanent=False)
            if r.ok:
                report.pushed[u.sku] = u.version
            elif r.permanent:
                report.refused[u.sku] = r.error
            else:
                report.failed[u.sku] = r.error
                if r.ambiguous:
                    unanswered.append(u.sku)
        return unanswered


async def resync(redis: AnyRedis, keys: Keys, config: ChannelConfig, *, skus: Iterable[str] | None = None,
                 partitions: Iterable[int] | None = None, force: bool = True, adapter: Adapter | None = None,
                 progress: Callable[[ResyncReport], None] | None = None,
                 ready: Callable[[], Awaitable[None]] | None = None) -> ResyncReport:
    """Push the current quantity of every SKU (of `partitions`, default all), or of `skus`, to the channel,
    a batch at a time. `force=False`: only SKUs the channel does not have at their current version.
    progress(report so far) is called after every batch; `ready()` is awaited before each."""
    report = ResyncReport()
    async with Pusher(redis, keys, config, adapter=adapter) as pusher:
        async for p, batch in _batches(redis, keys, skus, partitions, pusher.adapter.batch_size):
            if ready is not None:
                await ready()
            report.add(await pusher.push(p, batch, force=force))
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
