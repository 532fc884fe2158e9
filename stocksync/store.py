"""StockStore: the async Python API over the function library.

Every change goes through one FCALL, so the same guarantees hold for Python callers and for services that
call the functions directly. Results are small frozen dataclasses; call `raise_for_status()` on one to get
an exception for a rejection instead.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable, Mapping

from . import connection, durability, functions, library
from .errors import InvalidArgument
from .keys import Keys
from .library import Call, Moved, OrderOutcome, Outcome, Quantities, Stock
from .settings import Settings

log = logging.getLogger(__name__)


class StockStore:
    def __init__(self, redis: connection.AnyRedis, keys: Keys, settings: Settings | None = None,
                 waitaof: bool = True) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings or Settings(prefix=keys.prefix, partitions=keys.partitions)
        # when a change counts as done: every FCALL that changes stock is followed by its wait
        self.durability = durability.from_settings(self.settings, keys.durable_mark, waitaof)
        # RedisCluster fails (MaxConnectionsError) instead of waiting when a node's pool is exhausted;
        # bound this store's calls in flight so a burst of callers queues instead.
        self._gate = asyncio.Semaphore(connection.MAX_CONNECTIONS)

    async def run(self, call: Call):
        """One call of the function library, answered once it is as durable as the settings ask (a write in
        `replicated` or `fsync` durability). Reservations, bundles and orders across partitions go through
        here too, so that every change the API acknowledges waits alike."""
        return await self._run(call)

    async def _run(self, call: Call):
        async with self._gate:
            with connection.torn_down_as_connection_error():  # (a 503, not a 500: stocksync.connection)
                if not self.durability.wanted([call.command]):
                    return await call.run(self.redis)
                (reply,) = await durability.pipelined(self.redis, self.durability, [call.command])
        result = call.result(reply)
        if isinstance(result, Exception):
            raise result
        return result

    @classmethod
    async def connect(
        cls, settings: Settings | None = None, *, redis: connection.AnyRedis | None = None, load: bool = True
    ) -> StockStore:
        """Open a store: connect, read (or fix, on first use) the partition count, load the library."""
        settings = settings or Settings.load()
        redis = redis or connection.connect(settings)
        partitions = await _partitions(redis, settings)
        if load:
            await functions.ensure_loaded(redis, settings.idem_ttl_s)
        waitaof = settings.durability != "fsync" or await durability.has_waitaof(redis)
        return cls(redis, Keys(settings.prefix, partitions), settings, waitaof)

    async def close(self) -> None:
        await self.redis.aclose()

    async def __aenter__(self) -> StockStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # One SKU ------------------------------------------------------------------------------------------

    async def decrement(self, sku: str, qty: int, *, ref: str, source: str) -> Outcome:
        """Take qty units, or nothing (status insufficient). `ref` makes it exactly-once."""
        return await self._run(library.decrement(self.keys, _sku(sku), _int(qty), source, ref))

    async def adjust(self, sku: str, delta: int, *, ref: str | None = None, source: str = "api") -> Outcome:
        """Add (delta > 0) or remove units. Without a ref, a retry would apply twice."""
        ref = ref or uuid.uuid4().hex
        return await self._run(library.adjust(self.keys, _sku(sku), _int(delta), source, ref))

    async def set(
        self,
        sku: str,
        available: int,
        *,
        ref: str | None = None,
        source: str = "api",
        expected_version: int | None = None,
    ) -> Outcome:
        """Set the absolute quantity (creating the SKU); status conflict if expected_version differs."""
        expected = None if expected_version is None else _int(expected_version)
        return await self._run(library.set_available(self.keys, _sku(sku), _int(available), source,
                                                     ref or uuid.uuid4().hex, expected))

    async def get(self, sku: str) -> Stock | None:
        return await self._run(library.get(self.keys, _sku(sku)))

    async def quantities(self, sku: str) -> Quantities | None:
        """on_hand, committed, reserved and available (a bundle: its components, no on_hand)."""
        return await self._run(library.stock(self.keys, _sku(sku)))

    async def count(self, sku: str, on_hand: int, *, ref: str | None = None, source: str = "api",
                    expected_version: int | None = None) -> Outcome:
        """A warehouse count: on_hand becomes `on_hand`, committed stays (status insufficient, nothing
        changed, if the count is below committed + reserved); creates the SKU."""
        expected = None if expected_version is None else _int(expected_version)
        return await self._run(library.count(self.keys, _sku(sku), _int(on_hand), source, ref or uuid.uuid4().hex,
                                             expected))

    async def ship(self, sku: str, qty: int, *, ref: str, source: str = "api") -> Moved:
        """qty units of sold lines left the warehouse: out of committed and on_hand (`units`: how many were
        committed; lines sold before library 0.6 were not)."""
        return await self._run(library.ship(self.keys, _sku(sku), _int(qty), source, ref))

    async def cancel(self, sku: str, qty: int, *, ref: str, source: str = "api") -> Moved:
        """qty units of sold lines will not ship: back to available (out of committed as far as it holds them)."""
        return await self._run(library.cancel(self.keys, _sku(sku), _int(qty), source, ref))

    # Many SKUs ----------------------------------------------------------------------------------------

    async def order(self, lines: Mapping[str, int] | Iterable[tuple[str, int]], *, ref: str, source: str) -> OrderOutcome:
        """Take every line or none. All SKUs must be in one partition (always so with one partition)."""
        items = list(lines.items() if isinstance(lines, Mapping) else lines)
        if not items:
            raise InvalidArgument("an order needs at least one line")
        partitions = {self.keys.partition(sku) for sku, _ in items}
        if len(partitions) > 1:
            raise InvalidArgument(
                f"the order's SKUs span partitions {sorted(partitions)}; an all-or-nothing order must "
                "stay in one partition"
            )
        lines = [(_sku(sku), _int(qty)) for sku, qty in items]
        return await self._run(library.order(self.keys, partitions.pop(), lines, source, ref))

    async def _pipelined(self, calls: list[Call]) -> list:
        """Every call in one round trip, each atomic on its own; a refused call's place holds its error."""
        async with self._gate:
            with connection.torn_down_as_connection_error():
                if not self.durability.wanted([c.command for c in calls]):
                    return await library.pipelined(self.redis, calls)
                replies = await durability.pipelined(self.redis, self.durability, [c.command for c in calls])
        return [call.result(reply) for call, reply in zip(calls, replies, strict=True)]

    async def decrement_many(self, items: Iterable[tuple[str, int, str]], *, source: str) -> list[Outcome]:
        """Pipeline one decrement per (sku, qty, ref): one round trip, each call still atomic on its own."""
        calls = [library.decrement(self.keys, _sku(sku), _int(qty), source, ref) for sku, qty, ref in items]
        out = await self._pipelined(calls)
        for o in out:
            if isinstance(o, Exception):
                raise o
        return out

    async def set_many(
        self, items: Iterable[tuple[str, int, int | None]], *, ref_of, source: str
    ) -> list[Outcome | Exception]:
        """Pipeline one set per (sku, available, expected_version or None), the reference of each from
        ref_of(sku); a refused item's place holds its error (InvalidArgument for a stocksync refusal), the others still apply."""
        calls = []
        for sku, available, expected in items:
            calls.append(library.set_available(self.keys, _sku(sku), _int(available), source, ref_of(sku),
                                               None if expected is None else _int(expected)))
        return await self._pipelined(calls)

    async def get_many(self, skus: Iterable[str]) -> list[Stock | None]:
        """Each SKU's stock (None where it does not exist), in one round trip."""
        replies = await self._pipelined([library.get(self.keys, _sku(sku)) for sku in skus])
        for r in replies:
            if isinstance(r, Exception):
                raise r
        return replies

    async def references_exist(self, items: Iterable[tuple[str, str]]) -> list[bool]:
        """For each (sku, ref): whether a change under that reference is remembered (it would replay), in
        one round trip."""
        calls = [library.ref(self.keys, self.keys.partition(sku), ref) for sku, ref in items]
        results = await self._pipelined(calls)
        for r in results:
            if isinstance(r, Exception):
                raise r
        return [r is not None for r in results]

    async def skus(self, partition: int | None = None, count: int = 1000):
        """Yield every SKU (optionally of one partition); SCAN, so safe on a live server."""
        for p in range(self.keys.partitions) if partition is None else [partition]:
            async for sku in scan_skus(self.redis, self.keys, p, count):
                yield sku


async def scan_skus(redis: connection.AnyRedis, keys: Keys, partition: int, count: int = 1000):
    """Yield every SKU of a partition. SCAN: safe on a live server; a SKU may come twice, and one created
    meanwhile may be missed. On a cluster only the primary holding the partition's slot is scanned."""
    head = len(keys.tag(partition)) + len(":sku:")
    where = {"target_nodes": redis.get_node_from_key(keys.events(partition))} if connection.is_cluster(redis) else {}
    async for key in redis.scan_iter(match=keys.sku_pattern(partition), count=count, **where):
        yield key[head:]


def _int(value: int) -> int:
    # bool is an int in Python; a quantity of True is a bug, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"expected an integer, got {value!r}")
    return value


def _sku(value: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"SKU must be a string, got {type(value).__name__}")
    return value


async def _partitions(redis: connection.AnyRedis, settings: Settings) -> int:
    """The deployment's partition count: fixed by the first process that connects, read by all others."""
    meta = Keys(settings.prefix, 1).meta
    await redis.hsetnx(meta, "partitions", settings.partitions)
    stored = int(await redis.hget(meta, "partitions"))
    if stored != settings.partitions and settings.partitions != 1:
        log.warning("%s says %d partitions; using that, not the configured %d", meta, stored, settings.partitions)
    return stored
