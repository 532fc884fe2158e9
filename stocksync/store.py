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
from dataclasses import dataclass

from redis.exceptions import ResponseError

from . import connection, functions
from .errors import REJECTIONS, InvalidArgument
from .keys import Keys
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of a change to one SKU (available and version after the call)."""

    sku: str
    status: str  # ok | insufficient | unknown_sku | conflict
    available: int
    version: int
    replayed: bool

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def raise_for_status(self) -> Outcome:
        if not self.ok:
            raise REJECTIONS[self.status](self)
        return self


@dataclass(frozen=True, slots=True)
class Stock:
    sku: str
    available: int
    reserved: int
    version: int
    updated_ms: int
    source: str


@dataclass(frozen=True, slots=True)
class LineState:
    sku: str
    qty: int
    available: int | None  # None: unknown SKU
    version: int | None

    @property
    def short(self) -> bool:
        return self.available is None or self.available < self.qty


@dataclass(frozen=True, slots=True)
class OrderOutcome:
    status: str  # ok | insufficient | unknown_sku
    lines: tuple[LineState, ...]
    replayed: bool

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def short_lines(self) -> tuple[LineState, ...]:
        """The lines that could not be covered (empty when the order was taken)."""
        return () if self.ok else tuple(line for line in self.lines if line.short)

    def raise_for_status(self) -> OrderOutcome:
        if not self.ok:
            raise REJECTIONS[self.status](self)
        return self


def _invalid(e: Exception) -> Exception:
    text = str(e)
    return InvalidArgument(text) if text.startswith("stocksync:") else e


class StockStore:
    def __init__(self, redis: connection.AnyRedis, keys: Keys, settings: Settings | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings or Settings(prefix=keys.prefix, partitions=keys.partitions)
        # RedisCluster fails (MaxConnectionsError) instead of waiting when a node's pool is exhausted;
        # bound this store's calls in flight so a burst of callers queues instead.
        self._gate = asyncio.Semaphore(connection.MAX_CONNECTIONS)

    async def _exec(self, *args):
        async with self._gate:
            try:
                return await self.redis.execute_command(*args)
            except ResponseError as e:
                raise _invalid(e) from None

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
        return cls(redis, Keys(settings.prefix, partitions), settings)

    async def close(self) -> None:
        await self.redis.aclose()

    async def __aenter__(self) -> StockStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # One SKU ------------------------------------------------------------------------------------------

    def command(self, function: str, sku: str, amount: int, source: str, ref: str) -> tuple:
        """The Redis command of one call of a one-SKU function (stocksync_decrement, _adjust, _set):
        `("FCALL", function, 3, sku key, events key, reference key, amount, source, ref)`, the one place
        that lays out their keys and arguments. For callers that send it themselves (the webhook intake
        batches many); `amount` is passed as it is (check it first), stocksync_set's expected version goes
        after it. `outcome` reads the reply."""
        if not isinstance(sku, str):
            raise InvalidArgument(f"SKU must be a string, got {type(sku).__name__}")
        keys = self.keys
        p = keys.partition(sku)
        return ("FCALL", function, 3, keys.sku(sku, p), keys.events(p), keys.idem(p, ref), amount, source, ref)

    @staticmethod
    def outcome(sku: str, reply: list | Exception) -> Outcome | Exception:
        """The Outcome of a one-SKU function's reply `[status, available, version, replayed]`; an error
        reply (as a pipeline returns it) is returned, not raised: InvalidArgument for a stocksync refusal."""
        if isinstance(reply, Exception):
            return _invalid(reply)
        status, available, version, replayed = reply
        return Outcome(sku, status, int(available), int(version), bool(replayed))

    async def _call(self, sku: str, command: tuple) -> Outcome:
        return self.outcome(sku, await self._exec(*command))

    async def decrement(self, sku: str, qty: int, *, ref: str, source: str) -> Outcome:
        """Take qty units, or nothing (status insufficient). `ref` makes it exactly-once."""
        return await self._call(sku, self.command("stocksync_decrement", sku, _int(qty), source, ref))

    async def adjust(self, sku: str, delta: int, *, ref: str | None = None, source: str = "api") -> Outcome:
        """Add (delta > 0) or remove units. Without a ref, a retry would apply twice."""
        ref = ref or uuid.uuid4().hex
        return await self._call(sku, self.command("stocksync_adjust", sku, _int(delta), source, ref))

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
        command = self.command("stocksync_set", sku, _int(available), source, ref or uuid.uuid4().hex)
        if expected_version is not None:
            command += (_int(expected_version),)
        return await self._call(sku, command)

    async def get(self, sku: str) -> Stock | None:
        reply = await self._exec("FCALL_RO", "stocksync_get", 1, self.keys.sku(sku))
        if not reply:
            return None
        available, reserved, version, updated_ms, source = reply
        return Stock(sku, int(available), int(reserved), int(version), int(updated_ms), source)

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
        p = partitions.pop()
        args = [len(items) + 2, self.keys.events(p), self.keys.idem(p, ref)]
        args += [self.keys.sku(sku) for sku, _ in items]
        args += [source, ref] + [_int(qty) for _, qty in items]
        status, reply_lines, replayed = await self._exec("FCALL", "stocksync_order", *args)
        states = tuple(
            LineState(sku, qty, _opt_int(line[1]), _opt_int(line[2]))
            for (sku, qty), line in zip(items, reply_lines, strict=True)
        )
        return OrderOutcome(status, states, bool(replayed))

    async def _pipelined(self, calls: list[tuple[str, tuple]]) -> list[Outcome | Exception]:
        """One FCALL per (sku, command) in one round trip, each atomic on its own; a refused call's place
        holds its error (InvalidArgument for a stocksync refusal)."""
        async with self._gate, self.redis.pipeline(transaction=False) as pipe:
            for _, command in calls:
                pipe.execute_command(*command)
            replies = await pipe.execute(raise_on_error=False)
        return [self.outcome(sku, reply) for (sku, _), reply in zip(calls, replies, strict=True)]

    async def decrement_many(self, items: Iterable[tuple[str, int, str]], *, source: str) -> list[Outcome]:
        """Pipeline one decrement per (sku, qty, ref): one round trip, each call still atomic on its own."""
        calls = [(sku, self.command("stocksync_decrement", sku, _int(qty), source, ref)) for sku, qty, ref in items]
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
            command = self.command("stocksync_set", sku, _int(available), source, ref_of(sku))
            calls.append((sku, command if expected is None else (*command, _int(expected))))
        return await self._pipelined(calls)

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


def _opt_int(value) -> int | None:
    return None if value is None else int(value)


async def _partitions(redis: connection.AnyRedis, settings: Settings) -> int:
    """The deployment's partition count: fixed by the first process that connects, read by all others."""
    meta = Keys(settings.prefix, 1).meta
    await redis.hsetnx(meta, "partitions", settings.partitions)
    stored = int(await redis.hget(meta, "partitions"))
    if stored != settings.partitions and settings.partitions != 1:
        log.warning("%s says %d partitions; using that, not the configured %d", meta, stored, settings.partitions)
    return stored
