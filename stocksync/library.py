"""Every call of the function library (lua/stocksync.lua), typed: one wrapper per registered function.

A wrapper lays out one function's keys and arguments as the function's header comment in the Lua source
says, and returns a `Call`: the command to send and `parse`, which turns the reply into a typed value.
`await call.run(redis)` sends one call; `pipelined` sends many in one round trip, and the two batchers
(the intake's stocksync.batcher and the workers' consumers.ledger) send many commands together and hand
each reply to its call's `parse`. Nothing else in stocksync lays out an FCALL or reads a reply by
position. FUNCTIONS maps each registered function to its wrapper (tests/test_library.py holds it against
the `redis.register_function` names of the Lua source, both ways).

Arguments are passed as given: callers check them first (stocksync.limits); the library checks them again
and refuses with an `ERR stocksync:` reply, raised here as InvalidArgument.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from redis.exceptions import ResponseError

from .errors import REJECTIONS, InvalidArgument
from .keys import Keys

T = TypeVar("T")


class Status(enum.StrEnum):
    """The status of a stock change (stocksync_decrement, _adjust, _set, _order)."""

    OK = "ok"
    INSUFFICIENT = "insufficient"  # fewer units than the change needs: nothing changed
    UNKNOWN_SKU = "unknown_sku"  # no such SKU: nothing changed, nothing remembered
    CONFLICT = "conflict"  # stocksync_set's expected version differs: nothing changed


class RestockStatus(enum.StrEnum):
    """The status of stocksync_restock_claim."""

    RESERVED = "reserved"  # the units are reserved for this restock: apply them, then mark them done
    DONE = "done"  # this restock was applied before
    NONE = "none"  # everything taken was restocked already


def refusal(error: Exception) -> Exception:
    """A library refusal (`ERR stocksync: ...`) as InvalidArgument; any other error as it is."""
    return InvalidArgument(str(error)) if str(error).startswith("stocksync:") else error


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One call of a library function: the command, and how to read its reply."""

    command: tuple
    parse: Callable[[Any], T]

    async def run(self, redis, **target) -> T:
        """Send it alone (`target`: redis-py's target_nodes, to address one cluster node)."""
        try:
            reply = await redis.execute_command(*self.command, **target)
        except ResponseError as e:
            raise refusal(e) from None
        return self.parse(reply)

    def result(self, reply: Any) -> T | Exception:
        """The typed reply, or the error a pipeline handed back in its place (not raised)."""
        if isinstance(reply, Exception):
            return refusal(reply)
        return self.parse(reply)


async def pipelined(redis, calls: Sequence[Call]) -> list:
    """Every call in one round trip, each atomic on its own; a refused call's place holds its error."""
    async with redis.pipeline(transaction=False) as pipe:
        for call in calls:
            pipe.execute_command(*call.command)
        replies = await pipe.execute(raise_on_error=False)
    return [call.result(reply) for call, reply in zip(calls, replies, strict=True)]


def _fcall(function: str, keys: Sequence[str], args: Sequence, parse: Callable[[Any], T],
           read_only: bool = False) -> Call[T]:
    return Call(("FCALL_RO" if read_only else "FCALL", function, len(keys), *keys, *args), parse)


# Stock ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of a change to one SKU (available and version after the call)."""

    sku: str
    status: Status
    available: int
    version: int
    replayed: bool

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

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
    status: Status
    lines: tuple[LineState, ...]
    replayed: bool

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    @property
    def short_lines(self) -> tuple[LineState, ...]:
        """The lines that could not be covered (empty when the order was taken)."""
        return () if self.ok else tuple(line for line in self.lines if line.short)

    def raise_for_status(self) -> OrderOutcome:
        if not self.ok:
            raise REJECTIONS[self.status](self)
        return self


def _change(function: str, keys: Keys, sku: str, amount: int, source: str, ref: str, *extra) -> Call[Outcome]:
    """A one-SKU change: KEYS sku, events, reference; ARGV amount, source, ref[, extra]."""
    p = keys.partition(sku)

    def parse(reply) -> Outcome:
        status, available, version, replayed = reply
        return Outcome(sku, Status(status), int(available), int(version), bool(replayed))

    return _fcall(function, (keys.sku(sku, p), keys.events(p), keys.idem(p, ref)), (amount, source, ref, *extra),
                  parse)


def decrement(keys: Keys, sku: str, qty: int, source: str, ref: str) -> Call[Outcome]:
    """stocksync_decrement: take qty units, or nothing (insufficient)."""
    return _change("stocksync_decrement", keys, sku, qty, source, ref)


def adjust(keys: Keys, sku: str, delta: int, source: str, ref: str) -> Call[Outcome]:
    """stocksync_adjust: add (delta > 0) or remove units."""
    return _change("stocksync_adjust", keys, sku, delta, source, ref)


def set_available(keys: Keys, sku: str, available: int, source: str, ref: str,
                  expected_version: int | None = None) -> Call[Outcome]:
    """stocksync_set: the absolute quantity, creating the SKU; conflict unless expected_version matches."""
    extra = () if expected_version is None else (expected_version,)
    return _change("stocksync_set", keys, sku, available, source, ref, *extra)


def order(keys: Keys, partition: int, lines: Sequence[tuple[str, int]], source: str, ref: str) -> Call[OrderOutcome]:
    """stocksync_order: every line of one partition, or none."""

    def parse(reply) -> OrderOutcome:
        status, rows, replayed = reply
        states = tuple(LineState(sku, qty, _opt_int(row[1]), _opt_int(row[2]))
                       for (sku, qty), row in zip(lines, rows, strict=True))
        return OrderOutcome(Status(status), states, bool(replayed))

    k = (keys.events(partition), keys.idem(partition, ref), *(keys.sku(sku, partition) for sku, _ in lines))
    return _fcall("stocksync_order", k, (source, ref, *(qty for _, qty in lines)), parse)


def get(keys: Keys, sku: str) -> Call[Stock | None]:
    """stocksync_get (FCALL_RO): one SKU's stock, None when it does not exist."""

    def parse(reply) -> Stock | None:
        if not reply:
            return None
        available, reserved, version, updated_ms, source = reply
        return Stock(sku, int(available), int(reserved), int(version), int(updated_ms), source)

    return _fcall("stocksync_get", (keys.sku(sku),), (), parse, read_only=True)


def ref(keys: Keys, partition: int, reference: str) -> Call[Status | None]:
    """stocksync_ref (FCALL_RO): the first outcome's status of a reference, None when not remembered."""
    return _fcall("stocksync_ref", (keys.idem(partition, reference),), (),
                  lambda r: None if r is None else Status(r), read_only=True)


def legacy_until() -> Call[int]:
    """stocksync_legacy_until: until when (unix s) the library also reads pre-0.5 reference keys; 0: never."""
    return _fcall("stocksync_legacy_until", (), (), int)


def version() -> Call[str]:
    """stocksync_version: the loaded library's version."""
    return _fcall("stocksync_version", (), (), str)


def idem_ttl() -> Call[int]:
    """stocksync_idem_ttl: seconds a reference is remembered, as loaded."""
    return _fcall("stocksync_idem_ttl", (), (), int)


# Channel propagation -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    sku: str
    leased: bool
    available: int | None  # None: the SKU does not exist
    version: int | None
    pushed: int  # the version the channel last accepted (0: none)


def push_claim(keys: Keys, partition: int, channel: str, owner: str, skus: Sequence[str],
               lease_ms: int) -> Call[list[Claim]]:
    """stocksync_push_claim: lease the SKUs and read their quantity and the version the channel has."""

    def parse(reply) -> list[Claim]:
        return [Claim(sku, bool(leased), None if v is None else int(a), None if v is None else int(v), int(p))
                for sku, leased, a, v, p in reply[1]]

    k = (keys.pushed(partition, channel), *(keys.sku(s) for s in skus),
         *(keys.lease(partition, channel, s) for s in skus))
    return _fcall("stocksync_push_claim", k, (channel, owner, lease_ms), parse)


def push_done(keys: Keys, partition: int, channel: str, owner: str, accepted: Mapping[str, int],
              ack_ids: Sequence[str], release: Sequence[str]) -> Call[tuple[int, int, int]]:
    """stocksync_push_done: record accepted versions (never lowering), XACK ack_ids, release the owner's
    leases of `release`; answers (raised, acked, released)."""
    k = (keys.pushed(partition, channel), keys.events(partition), *(keys.lease(partition, channel, s) for s in release))
    pairs = [x for sku, v in accepted.items() for x in (sku, v)]
    return _fcall("stocksync_push_done", k, (channel, owner, len(accepted), *pairs, *ack_ids),
                  lambda r: (int(r[1]), int(r[2]), int(r[3])))


def dead_letter(keys: Keys, partition: int, channel: str, sku: str, version: int, reason: str, attempts: int,
                error: str, ids: Sequence[str]) -> Call[str | None]:
    """stocksync_dead_letter: move the entries to the dead-letter stream with their XACK; answers the dead
    letter's ID, None if none of them was pending."""
    return _fcall("stocksync_dead_letter", (keys.events(partition), keys.dlq(partition, channel)),
                  (channel, sku, version, reason, attempts, error or "-", *ids),
                  lambda r: r[1] if r[0] == "ok" else None)


def dlq_resolve(keys: Keys, partition: int, channel: str, sku: str, version: int,
                dlq_ids: Sequence[str]) -> Call[int]:
    """stocksync_dlq_resolve: record a replayed SKU's accepted version, delete its dead letters (answers how many)."""
    return _fcall("stocksync_dlq_resolve", (keys.pushed(partition, channel), keys.dlq(partition, channel)),
                  (channel, sku, version, *dlq_ids), lambda r: int(r[2]))


def trim(keys: Keys, partition: int, retention_ms: int) -> Call[tuple[int, str]]:
    """stocksync_trim: trim the events stream, never past what a group still needs; (trimmed, minid)."""
    return _fcall("stocksync_trim", (keys.events(partition),), (retention_ms,), lambda r: (int(r[1]), r[2]))


def reap_consumers(keys: Keys, partition: int, group: str, idle_ms: int, keep: str) -> Call[list[str]]:
    """stocksync_reap_consumers: remove the group's idle consumers holding nothing; their names."""
    return _fcall("stocksync_reap_consumers", (keys.events(partition),), (group, idle_ms, keep), lambda r: list(r[1]))


def recheck(keys: Keys, partition: int, channel: str, op: str, ms: int, skus: Sequence[str]) -> Call[int]:
    """stocksync_recheck: op 'due': a push of each SKU's current quantity is owed from `ms` on; 'done': the
    recheck owed at `ms` was paid (a later debt stays). Answers how many changed."""
    return _fcall("stocksync_recheck", (keys.recheck(partition, channel),), (channel, op, ms, *skus),
                  lambda r: int(r[1]))


async def owed(redis, keys: Keys, partition: int, channel: str, until_ms: int, count: int = 1000) -> list[tuple[str, int]]:
    """(SKU, when owed), for up to `count` SKUs owed a push (stocksync_recheck 'due') at or before until_ms
    and not settled since, the oldest first. (A plain read of the function's sorted set: no call needed.)"""
    rows = await redis.zrangebyscore(keys.recheck(partition, channel), "-inf", until_ms, start=0, num=count,
                                     withscores=True)
    return [(sku, int(ms)) for sku, ms in rows]


# The webhook intake ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RestockClaim:
    status: RestockStatus
    units: int  # reserved now (or before, replayed), or applied before (done)
    replayed: bool


def restock_claim(keys: Keys, channel: str, line_key: str, restock_id: str, units: int, taken: int, ttl_s: int,
                  restocked_before: int = 0) -> Call[RestockClaim]:
    """stocksync_restock_claim: reserve one restock's units of an order line, capped at what was taken."""
    return _fcall("stocksync_restock_claim", (keys.webhook_line_restocks(channel, line_key),),
                  (restock_id, units, taken, ttl_s, restocked_before),
                  lambda r: RestockClaim(RestockStatus(r[0]), int(r[1]), bool(r[2])))


def _opt_int(value) -> int | None:
    return None if value is None else int(value)


FUNCTIONS: dict[str, Callable[..., Call]] = {
    "stocksync_decrement": decrement, "stocksync_adjust": adjust, "stocksync_set": set_available,
    "stocksync_order": order, "stocksync_get": get, "stocksync_ref": ref, "stocksync_version": version,
    "stocksync_idem_ttl": idem_ttl, "stocksync_legacy_until": legacy_until,
    "stocksync_push_claim": push_claim, "stocksync_push_done": push_done, "stocksync_dead_letter": dead_letter,
    "stocksync_dlq_resolve": dlq_resolve, "stocksync_trim": trim, "stocksync_reap_consumers": reap_consumers,
    "stocksync_recheck": recheck, "stocksync_restock_claim": restock_claim,
}
