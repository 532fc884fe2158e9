"""Loading the `stocksync` Redis Functions library.

The Lua source ships inside the package (stocksync/lua/ in the wheel, lua/ in a source checkout). Functions
survive restarts and failovers (they are persisted and replicated like data), so the loader only acts
when the library is missing, older than this package's, or loaded with another reference TTL. On a
cluster it checks and loads every primary.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from redis.exceptions import ResponseError

from . import library
from .connection import AnyRedis, is_cluster

log = logging.getLogger(__name__)
_TTL_LINE = re.compile(r"^local IDEM_TTL_S = \d+$", re.M)


@cache
def _raw_source() -> str:
    packaged = resources.files("stocksync").joinpath("lua", "stocksync.lua")
    if packaged.is_file():
        return packaged.read_text()
    checkout = Path(__file__).resolve().parent.parent / "lua" / "stocksync.lua"
    return checkout.read_text()


def library_version() -> str:
    match = re.search(r"^local VERSION = '([0-9.]+)'$", _raw_source(), re.M)
    assert match, "lua/stocksync.lua has no VERSION line"
    return match.group(1)


def library_source(idem_ttl_s: int) -> str:
    """The library with the deployment's reference TTL written in."""
    source, n = _TTL_LINE.subn(f"local IDEM_TTL_S = {int(idem_ttl_s)}", _raw_source())
    assert n == 1, "lua/stocksync.lua has no IDEM_TTL_S line"
    return source


def _as_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


@dataclass(frozen=True)
class LoadResult:
    node: str
    action: str  # loaded | replaced | current | newer
    version: str


async def _loaded(redis: AnyRedis, **target) -> tuple[str | None, int | None]:
    try:
        version = await library.version().run(redis, **target)
        ttl = await library.idem_ttl().run(redis, **target)
    except ResponseError as e:
        if "function not found" in str(e).lower():
            return None, None
        raise
    return str(version), int(ttl)


async def _ensure_one(redis: AnyRedis, node: str, idem_ttl_s: int, force: bool, **target) -> LoadResult:
    mine = library_version()
    version, ttl = await _loaded(redis, **target)
    if version is not None and not force:
        if _as_tuple(version) > _as_tuple(mine):
            log.warning("%s has stocksync library %s, newer than this package's %s; keeping it", node, version, mine)
            return LoadResult(node, "newer", version)
        if version == mine and ttl == idem_ttl_s:
            return LoadResult(node, "current", version)
    await redis.execute_command("FUNCTION", "LOAD", "REPLACE", library_source(idem_ttl_s), **target)
    action = "loaded" if version is None else "replaced"
    log.info("%s stocksync library %s on %s", action, mine, node)
    return LoadResult(node, action, mine)


async def ensure_loaded(redis: AnyRedis, idem_ttl_s: int, force: bool = False) -> list[LoadResult]:
    """Load or replace the library where it is missing, older or configured differently."""
    if not is_cluster(redis):
        return [await _ensure_one(redis, "redis", idem_ttl_s, force)]
    results = []
    for node in redis.get_primaries():
        results.append(await _ensure_one(redis, node.name, idem_ttl_s, force, target_nodes=node))
    return results
