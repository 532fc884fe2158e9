"""Consumer groups on the events streams: creation, reclaiming, parsing entries, stream IDs."""

from __future__ import annotations

import logging

from redis.exceptions import ResponseError

from stocksync.connection import AnyRedis
from stocksync.keys import Keys

from .coalescer import Entry

log = logging.getLogger(__name__)


async def ensure_groups(redis: AnyRedis, keys: Keys, channel: str, start_id: str = "0") -> list[int]:
    """One group per channel, named after it, on every partition's stream (MKSTREAM; BUSYGROUP is fine).

    A group that starts on a stream that no longer holds every change ever added (trimmed or deleted
    entries, or a start past existing history) would never hear of the SKUs that did not change since:
    such a partition gets an initial sync. The mark (keys.resync) is set *before* the group is created
    (a crash in between leaves the mark, not a group without it) and taken back once the group exists and
    the stream is seen to have lost nothing before it (from then on the trimmer keeps what the group has
    not read). Answers the partitions whose mark is present (new, or of a sync that did not finish)."""
    for p in range(keys.partitions):
        stream, mark = keys.events(p), keys.resync(p, channel)
        marked = await _group_missing_on_a_stream(redis, stream, channel)
        if marked:
            await redis.set(mark, start_id)
        try:
            await redis.xgroup_create(stream, channel, id=start_id, mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        if marked and not await _missed_changes(redis, stream, channel):
            await redis.delete(mark)
    return [p for p in range(keys.partitions) if await redis.exists(keys.resync(p, channel))]


async def _group_missing_on_a_stream(redis: AnyRedis, stream: str, channel: str) -> bool:
    try:
        return all(g["name"] != channel for g in await redis.xinfo_groups(stream))
    except ResponseError:  # no such stream yet: a group created with it has nothing to miss
        return False


async def _missed_changes(redis: AnyRedis, stream: str, channel: str) -> bool:
    """Whether the (existing) group misses changes: the stream lost entries (entries-added > length, Redis
    7+; assumed when unknown), or the group starts at or past its first entry (created at "$" or at an ID;
    a group some consumer already read from counts too, which only costs an initial sync not needed)."""
    info = await redis.xinfo_stream(stream)
    length = int(info["length"])
    if int(info.get("entries-added", length + 1)) > length:
        return True
    first = await redis.xrange(stream, count=1)
    if not first:
        return False
    group = next(g for g in await redis.xinfo_groups(stream) if g["name"] == channel)
    return id_tuple(str(group["last-delivered-id"])) >= id_tuple(first[0][0])


def parse(partition: int, entry_id: str, fields: dict | None) -> Entry | None:
    """An entry as the worker needs it; None when it is deleted or not a stock event (malformed)."""
    if not fields:
        return None
    try:
        return Entry(entry_id, partition, fields["sku"], int(fields["version"]), int(fields["available"]),
                     int(fields.get("delta", 0)), fields.get("source", ""))
    except (KeyError, ValueError):
        log.warning("entry %s of partition %d is not a stock event: %r", entry_id, partition, fields)
        return None


async def autoclaim(redis: AnyRedis, keys: Keys, partition: int, channel: str, consumer: str, min_idle_ms: int,
                    count: int = 200) -> tuple[list[tuple[str, dict | None]], list[str]]:
    """XAUTOCLAIM every entry idle past min_idle_ms, following the cursor to the end of the pending list.
    Answers the claimed entries and the IDs Redis reported deleted (it drops those from the list)."""
    stream, cursor = keys.events(partition), "0-0"
    claimed: list[tuple[str, dict | None]] = []
    deleted: list[str] = []
    while True:
        reply = await redis.execute_command("XAUTOCLAIM", stream, channel, consumer, min_idle_ms, cursor,
                                            "COUNT", count)
        cursor, entries = reply[0], reply[1]
        deleted += list(reply[2]) if len(reply) > 2 else []
        for item in entries:
            entry_id, flat = item[0], item[1]
            fields = dict(zip(flat[::2], flat[1::2], strict=True)) if isinstance(flat, list) else flat
            claimed.append((entry_id, fields))
        if cursor in ("0-0", b"0-0"):
            return claimed, deleted


async def deliveries(redis: AnyRedis, keys: Keys, partition: int, channel: str, consumer: str,
                     ids: list[str]) -> dict[str, int]:
    """Times each of `ids` (pending for consumer) has been delivered."""
    if not ids:
        return {}
    lo, hi = min(ids, key=id_tuple), max(ids, key=id_tuple)
    rows = await redis.xpending_range(keys.events(partition), channel, min=lo, max=hi, count=len(ids) * 4 + 100,
                                      consumername=consumer)
    wanted = set(ids)
    return {r["message_id"]: int(r["times_delivered"]) for r in rows if r["message_id"] in wanted}


def id_tuple(entry_id: str) -> tuple[int, int]:
    """A stream ID as (ms, seq), to compare IDs in stream order."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def id_before(entry_id: str) -> str:
    """The stream ID just before entry_id (a history read from it starts at entry_id)."""
    ms, seq = id_tuple(entry_id)
    if seq:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-18446744073709551615" if ms else "0"
