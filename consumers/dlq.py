"""Dead letters: what a channel refused for good, or what failed too often, kept for an operator.

Each channel has a dead-letter stream per partition, `<tag>:dlq:<channel>`, with one entry per SKU
moved there (fields sku, version, reason, attempts, error, ids, group, ts), written by
stocksync_dead_letter atomically with the XACK of the entries. `replay` pushes each listed SKU's
*current* quantity (not the dead version) through the channel's adapter, and only once the channel
accepted it removes the dead letters (stocksync_dlq_resolve, which also records the accepted version).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

from stocksync.channels import ChannelConfig
from stocksync.connection import AnyRedis
from stocksync.keys import Keys

from . import ledger
from .adapters import Adapter, PushError, Update, make_adapter
from .skumap import ChannelSkus

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    partition: int
    sku: str
    version: int
    reason: str
    attempts: int
    error: str
    ids: tuple[str, ...]
    ts_ms: int

    def line(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.ts_ms / 1000))
        return (f"{self.id:<17} p{self.partition} {self.sku} v{self.version} {self.reason} "
                f"attempts={self.attempts} at {when}: {self.error}")


async def list_dead_letters(redis: AnyRedis, keys: Keys, channel: str, count: int | None = None) -> list[DeadLetter]:
    """Every dead letter of the channel (oldest first across partitions), at most `count`."""
    out: list[DeadLetter] = []
    for p in range(keys.partitions):
        for entry_id, f in await redis.xrange(keys.dlq(p, channel), count=count):
            out.append(DeadLetter(entry_id, p, f.get("sku", ""), int(f.get("version", 0)), f.get("reason", ""),
                                  int(f.get("attempts", 0)), f.get("error", ""),
                                  tuple(i for i in f.get("ids", "").split(",") if i), int(f.get("ts", 0))))
    out.sort(key=lambda d: (d.ts_ms, d.id))
    return out[:count] if count else out


@dataclass
class ReplayReport:
    resolved: list[str] = field(default_factory=list)  # SKUs the channel accepted (dead letters removed)
    failed: dict[str, str] = field(default_factory=dict)  # SKU -> error (dead letters kept)

    @property
    def ok(self) -> bool:
        return not self.failed


def replay_owner() -> str:
    """A lease owner of its own for one replay run (dlq-replay-host-pid-uuid): two replays at once (two
    operators, a cron) never share a SKU's lease, since the library renews a lease for its own owner."""
    return f"dlq-replay-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


async def replay(redis: AnyRedis, keys: Keys, config: ChannelConfig, *, skus: set[str] | None = None,
                 ids: set[str] | None = None, adapter: Adapter | None = None, owner: str | None = None,
                 lease_ms: int = 15000) -> ReplayReport:
    """Push the current quantity of the dead-lettered SKUs (all, or those of `skus` / dead-letter `ids`).
    `owner`: the lease owner, by default one drawn for this run (replay_owner())."""
    owner = owner or replay_owner()
    report = ReplayReport()
    own_adapter = adapter is None
    adapter = adapter or make_adapter(config)
    try:
        letters = [d for d in await list_dead_letters(redis, keys, config.name)
                   if (skus is None or d.sku in skus) and (ids is None or d.id in ids)]
        by_sku: dict[tuple[int, str], list[str]] = defaultdict(list)
        for d in letters:
            by_sku[(d.partition, d.sku)].append(d.id)
        items = sorted(by_sku)
        names = ChannelSkus(redis, keys, config)  # channel SKUs as the worker pushes them (edited map first)
        if items:
            await names.refresh()
        for i in range(0, len(items), adapter.batch_size):
            await _replay_batch(redis, keys, config, adapter, owner, lease_ms, items[i : i + adapter.batch_size],
                                by_sku, report, names)
    finally:
        if own_adapter:
            await adapter.close()
    return report


async def _replay_batch(redis, keys, config, adapter, owner, lease_ms, items, by_sku, report, names) -> None:
    deadline = time.monotonic() + lease_ms / 1000 - 0.25
    updates, versions, leased = [], {}, defaultdict(list)
    for p, sku in items:
        (c,) = await ledger.claim(redis, keys, p, config.name, owner, [sku], lease_ms)
        if not c.leased:
            report.failed[sku] = "a worker is pushing this SKU right now; replay again shortly"
            continue
        leased[p].append(sku)
        if c.version is None:  # the SKU is gone: nothing to list; the dead letters go
            await ledger.dlq_resolve(redis, keys, p, config.name, sku, 0, by_sku[(p, sku)])
            report.resolved.append(sku)
        elif c.pushed >= c.version:  # the channel already has the current version
            await ledger.dlq_resolve(redis, keys, p, config.name, sku, c.pushed, by_sku[(p, sku)])
            report.resolved.append(sku)
        else:
            versions[sku] = (p, c.version)
            updates.append(Update(sku, names.channel_sku(sku), config.rules.listed(c.available), c.version))
    try:
        if updates:
            try:
                results = {r.sku: r for r in await adapter.push(updates, deadline)}
            except PushError as e:
                for u in updates:
                    report.failed[u.sku] = str(e)
                return
            for u in updates:
                p, version = versions[u.sku]
                r = results.get(u.sku)
                if r is not None and r.ok:
                    await ledger.dlq_resolve(redis, keys, p, config.name, u.sku, version, by_sku[(p, u.sku)])
                    report.resolved.append(u.sku)
                else:
                    report.failed[u.sku] = r.error if r else "no answer for this SKU"
    finally:
        for p, skus in leased.items():
            await ledger.done(redis, keys, p, config.name, owner, {}, [], skus)
