"""The trimmer: keep each events stream bounded without losing what a channel still needs.

`stocksync_trim` trims by MINID to the oldest of: now - retention, and for every consumer group its
oldest pending entry and the first entry it has not been delivered. So an entry leaves the stream only
once every channel acknowledged it and it is older than the retention kept for audit. Any worker may
run it (running it twice at once is harmless).
"""

from __future__ import annotations

from stocksync import library
from stocksync.connection import AnyRedis
from stocksync.keys import Keys


async def trim_all(redis: AnyRedis, keys: Keys, retention_ms: int) -> int:
    """Trim every partition's stream; answers the number of entries removed."""
    total = 0
    for p in range(keys.partitions):
        trimmed, _ = await library.trim(keys, p, retention_ms).run(redis)
        total += trimmed
    return total
