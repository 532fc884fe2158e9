"""The consumer side's calls into the function library (see the channel propagation section of
lua/stocksync.lua for each function's contract). Every call touches one partition's keys."""

from __future__ import annotations

from dataclasses import dataclass

from stocksync.connection import AnyRedis
from stocksync.keys import Keys


def lease_key(keys: Keys, partition: int, channel: str, sku: str) -> str:
    return keys.lease(partition, channel, sku)


@dataclass(frozen=True, slots=True)
class Claim:
    sku: str
    leased: bool
    available: int | None  # None: the SKU does not exist
    version: int | None
    pushed: int  # the version the channel last accepted (0: none)


async def claim(redis: AnyRedis, keys: Keys, partition: int, channel: str, owner: str, skus: list[str],
                lease_ms: int) -> list[Claim]:
    args = [keys.pushed(partition, channel)]
    args += [keys.sku(s) for s in skus] + [lease_key(keys, partition, channel, s) for s in skus]
    _, rows = await redis.execute_command("FCALL", "stocksync_push_claim", len(args), *args, channel, owner, lease_ms)
    return [Claim(sku, bool(leased), None if v is None else int(a), None if v is None else int(v), int(p))
            for sku, leased, a, v, p in rows]


async def done(redis: AnyRedis, keys: Keys, partition: int, channel: str, owner: str,
               accepted: dict[str, int], ack_ids: list[str], release: list[str]) -> tuple[int, int, int]:
    """Record accepted versions (never lowering), XACK ack_ids, release the owner's leases of `release`."""
    k = [keys.pushed(partition, channel), keys.events(partition)]
    k += [lease_key(keys, partition, channel, s) for s in release]
    argv: list = [channel, owner, len(accepted)]
    for sku, version in accepted.items():
        argv += [sku, version]
    argv += ack_ids
    _, raised, acked, released = await redis.execute_command("FCALL", "stocksync_push_done", len(k), *k, *argv)
    return int(raised), int(acked), int(released)


async def dead_letter(redis: AnyRedis, keys: Keys, partition: int, channel: str, sku: str, version: int,
                      reason: str, attempts: int, error: str, ids: list[str]) -> str | None:
    """Move the entries to the channel's dead-letter stream with their XACK; None if none was pending."""
    status, dlq_id, _ = await redis.execute_command(
        "FCALL", "stocksync_dead_letter", 2, keys.events(partition), keys.dlq(partition, channel),
        channel, sku, version, reason, attempts, error or "-", *ids)
    return dlq_id if status == "ok" else None


async def dlq_resolve(redis: AnyRedis, keys: Keys, partition: int, channel: str, sku: str, version: int,
                      dlq_ids: list[str]) -> int:
    _, _, deleted = await redis.execute_command(
        "FCALL", "stocksync_dlq_resolve", 2, keys.pushed(partition, channel), keys.dlq(partition, channel),
        channel, sku, version, *dlq_ids)
    return int(deleted)


async def trim(redis: AnyRedis, keys: Keys, partition: int, retention_ms: int) -> tuple[int, str]:
    _, trimmed, minid = await redis.execute_command("FCALL", "stocksync_trim", 1, keys.events(partition), retention_ms)
    return int(trimmed), minid


async def reap_consumers(redis: AnyRedis, keys: Keys, partition: int, group: str, idle_ms: int,
                         keep: str) -> list[str]:
    _, removed = await redis.execute_command(
        "FCALL", "stocksync_reap_consumers", 1, keys.events(partition), group, idle_ms, keep)
    return list(removed)
