"""Where a cluster client sends stocksync's commands: their keys read from the command itself.

redis-py's cluster client finds the keys of a command flagged `movablekeys` (FCALL, FCALL_RO, XREAD,
XREADGROUP: every library call and every stream read of stocksync) by asking one node, `COMMAND GETKEYS
...`, before each such command: a second round trip per call, all of them to that one node (the node of
the URL). When that node dies, every such command fails with a ConnectionError, on every slot, and goes
on failing after its replica took over: the client never asks another node (found by killing the
primary behind REDIS_URL under traffic: the direct calls failed for as long as the test ran, on primaries
that were alive). The keys of these four commands are where their syntax says, so they are read here
without asking anyone; every other command goes the library's way.
"""

from __future__ import annotations

from typing import Any

from redis._parsers import AsyncCommandsParser


def command_keys(args: tuple) -> tuple | None:
    """The keys of FCALL/FCALL_RO (after numkeys; () for none) and XREAD/XREADGROUP (after STREAMS: the
    first half), or None for any other command."""
    name = str(args[0]).upper() if args else ""
    if name in ("FCALL", "FCALL_RO") and len(args) >= 3:
        return tuple(args[3 : 3 + int(args[2])])
    if name in ("XREAD", "XREADGROUP"):
        words = [(a.decode(errors="replace") if isinstance(a, bytes) else str(a)).upper() for a in args]
        if "STREAMS" in words:
            rest = args[words.index("STREAMS") + 1 :]
            return tuple(rest[: len(rest) // 2])
    return None


class LocalKeysParser(AsyncCommandsParser):
    async def get_keys(self, *args: Any) -> tuple | None:
        keys = command_keys(args)
        if keys is not None:
            return keys or None  # (None: no key, the client picks any node)
        return await super().get_keys(*args)
