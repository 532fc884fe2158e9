"""Loading the `stocksync` Redis Functions library.

The Lua source ships inside the package (stocksync/lua/ in the wheel, lua/ in a source checkout). Functions
survive restarts and failovers (they are persisted and replicated like data), so the loader only acts
when the library is missing, older than this package's, or loaded with another reference TTL. On a
cluster it checks and loads every primary.

Upgrading from a library before 0.5.0, which kept each reference as a key of its own with a TTL: the
new library keeps them in buckets, and must still honour the old keys until the last of them expires.
The loader writes that moment into the library it loads (LEGACY_UNTIL: the node's clock at the upgrade
+ the old library's TTL + 1 s); until then every call also reads the old key (one GET), after it none
does. Later loads carry the moment over while it is in the future.
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
_LEGACY_LINE = re.compile(r"^local LEGACY_UNTIL = \d+$", re.M)
RECORDS_IN_BUCKETS = (0, 5, 0)  # the first library version that keeps references in buckets


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


def library_source(idem_ttl_s: int, legacy_until: int = 0) -> str:
    """The library with the deployment's reference TTL written in, and the unix second until which
    references recorded by a library before 0.5.0 are still read (0: none)."""
    source, n = _TTL_LINE.subn(f"local IDEM_TTL_S = {int(idem_ttl_s)}", _raw_source())
    assert n == 1, "lua/stocksync.lua has no IDEM_TTL_S line"
    source, n = _LEGACY_LINE.subn(f"local LEGACY_UNTIL = {int(legacy_until)}", source)
    assert n == 1, "lua/stocksync.lua has no LEGACY_UNTIL line"
    return source


def _as_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


@dataclass(frozen=True)
class LoadResult:
    node: str
    action: str  # loaded | replaced | current | newer
    version: str
    legacy_until: int = 0  # unix second until which pre-0.5.0 reference keys are read (0: none)


@dataclass(frozen=True)
class _Loaded:
    version: str | None  # None: no library
    ttl: int | None
    legacy_until: int


async def _fcall0(redis: AnyRedis, call: library.Call, **target):
    """A no-argument library call, or None when the function does not exist (no library, or an older one)."""
    try:
        return await call.run(redis, **target)
    except ResponseError as e:
        if "function not found" in str(e).lower():
            return None
        raise


async def _loaded(redis: AnyRedis, **target) -> _Loaded:
    version = await _fcall0(redis, library.version(), **target)
    if version is None:
        return _Loaded(None, None, 0)
    ttl = await _fcall0(redis, library.idem_ttl(), **target)
    legacy = await _fcall0(redis, library.legacy_until(), **target)
    return _Loaded(str(version), None if ttl is None else int(ttl), int(legacy or 0))


async def _legacy_until(redis: AnyRedis, loaded: _Loaded, idem_ttl_s: int, **target) -> int:
    """Until when the library to load must read pre-0.5.0 reference keys (unix seconds; 0: never)."""
    if loaded.version is None:
        return 0  # no library, so no references it recorded (functions are kept with the data)
    now = int((await redis.execute_command("TIME", **target))[0])
    if _as_tuple(loaded.version) < RECORDS_IN_BUCKETS:
        return now + (loaded.ttl or idem_ttl_s) + 1
    return loaded.legacy_until if loaded.legacy_until > now else 0


async def _ensure_one(redis: AnyRedis, node: str, idem_ttl_s: int, force: bool, **target) -> LoadResult:
    mine = library_version()
    loaded = await _loaded(redis, **target)
    if loaded.version is not None and not force:
        if _as_tuple(loaded.version) > _as_tuple(mine):
            log.warning("%s has stocksync library %s, newer than this package's %s; keeping it", node,
                        loaded.version, mine)
            return LoadResult(node, "newer", loaded.version, loaded.legacy_until)
        if loaded.version == mine and loaded.ttl == idem_ttl_s:
            return LoadResult(node, "current", loaded.version, loaded.legacy_until)
    legacy_until = await _legacy_until(redis, loaded, idem_ttl_s, **target)
    await redis.execute_command("FUNCTION", "LOAD", "REPLACE", library_source(idem_ttl_s, legacy_until), **target)
    action = "loaded" if loaded.version is None else "replaced"
    log.info("%s stocksync library %s on %s", action, mine, node)
    if legacy_until:
        log.info("%s: references recorded by library %s are read until unix time %d", node, loaded.version,
                 legacy_until)
    return LoadResult(node, action, mine, legacy_until)


async def ensure_loaded(redis: AnyRedis, idem_ttl_s: int, force: bool = False) -> list[LoadResult]:
    """Load or replace the library where it is missing, older or configured differently."""
    if not is_cluster(redis):
        return [await _ensure_one(redis, "redis", idem_ttl_s, force)]
    results = []
    for node in redis.get_primaries():
        results.append(await _ensure_one(redis, node.name, idem_ttl_s, force, target_nodes=node))
    return results
