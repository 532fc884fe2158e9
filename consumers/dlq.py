"""Dead letters: what a channel refused for good, or what failed too often, kept for an operator.

Each channel has a dead-letter stream per partition, `<tag>:dlq:<channel>`, with one entry per SKU
moved there (fields sku, version, reason, attempts, error, ids, group, ts), written by
stocksync_dead_letter atomically with the XACK of the entries (`dead_letter`, called by the worker).
`replay` pushes each listed SKU's *current* quantity (not the dead version) through the channel's
adapter (the push cycle, consumers/cycle.py, under an owner of its own), and only once the channel
accepted it removes the dead letters (stocksync_dlq_resolve, which also records the accepted version).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from stocksync import library
from stocksync.channels import ChannelConfig
from stocksync.connection import AnyRedis
from stocksync.keys import Keys

from .adapters import Adapter
from .cycle import Held, owner_name, standalone
from .resync import partition_batches, push_skus

log = logging.getLogger(__name__)


async def dead_letter(redis: AnyRedis, keys: Keys, channel: str, partition: int, sku: str, entries: Sequence[Held],
                      reason: str, attempts: int, error: str) -> str | None:
    """Move the entries of one SKU to the dead-letter stream with their XACK; answers the dead letter's ID,
    None when none of them was still pending (settled elsewhere meanwhile)."""
    version = max((e.version for e in entries), default=0)
    dlq_id = await library.dead_letter(keys, partition, channel, sku, version, reason, attempts, error,
                                       [e.id for e in entries]).run(redis)
    if dlq_id:
        log.warning("%s: SKU %s dead-lettered (%s after %d attempts): %s", channel, sku, reason, attempts, error)
    return dlq_id


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
    """A lease owner of its own for one replay run: two replays at once (two operators, a cron) never share
    a SKU's lease, since the library renews a lease for its own owner."""
    return owner_name("dlq-replay")


async def replay(redis: AnyRedis, keys: Keys, config: ChannelConfig, *, skus: set[str] | None = None,
                 ids: set[str] | None = None, adapter: Adapter | None = None, owner: str | None = None,
                 lease_ms: int = 15000, recheck_ms: int = 0) -> ReplayReport:
    """Push the current quantity of the dead-lettered SKUs (all, or those of `skus` / dead-letter `ids`),
    then remove the dead letters of those the channel accepted (or had at their current version already).
    `owner`: the lease owner, by default one drawn for this run; `recheck_ms`: worker.recheck_ms."""
    report = ReplayReport()
    letters = [d for d in await list_dead_letters(redis, keys, config.name)
               if (skus is None or d.sku in skus) and (ids is None or d.id in ids)]
    by_sku: dict[tuple[int, str], list[str]] = defaultdict(list)
    for d in letters:
        by_sku[(d.partition, d.sku)].append(d.id)
    if not by_sku:
        return report
    async with standalone(redis, keys, config, owner=owner or replay_owner(), adapter=adapter, lease_ms=lease_ms,
                          recheck_ms=recheck_ms) as cycle:
        for p, names in partition_batches(sorted(by_sku), cycle.adapter.batch_size):
            pushed = await push_skus(cycle, p, names, force=False)
            settled = {**pushed.current, **pushed.pushed, **dict.fromkeys(pushed.gone, 0)}
            for sku, version in settled.items():
                await library.dlq_resolve(keys, p, config.name, sku, version, by_sku[(p, sku)]).run(redis)
                report.resolved.append(sku)
            report.failed.update({**pushed.failed, **pushed.refused})
            report.failed.update(dict.fromkeys(pushed.busy, "a worker is pushing this SKU right now; replay again shortly"))
    return report
