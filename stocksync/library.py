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
    """The status of a stock change (stocksync_decrement, _adjust, _set, _order, _count, _ship, _cancel,
    _reserve)."""

    OK = "ok"
    INSUFFICIENT = "insufficient"  # fewer units than the change needs: nothing changed
    UNKNOWN_SKU = "unknown_sku"  # no such SKU: nothing changed, nothing remembered
    CONFLICT = "conflict"  # stocksync_set's expected version differs: nothing changed


class ReservationStatus(enum.StrEnum):
    """The status of stocksync_commit and stocksync_release."""

    OK = "ok"  # committed (or released) now, or before (replayed)
    EXPIRED = "expired"  # its time had passed: its units went back to available
    RELEASED = "released"  # released before: it holds nothing (commit)
    COMMITTED = "committed"  # a sale already (release: cancel its order lines instead)
    INSUFFICIENT = "insufficient"  # it never held anything
    UNKNOWN = "unknown"  # no such reservation (or forgotten, a reference window after it ended)


class BundleStatus(enum.StrEnum):
    """The status of stocksync_bundle_set and stocksync_bundle_delete."""

    OK = "ok"
    UNCHANGED = "unchanged"  # the same definition: nothing changed
    NOT_BUNDLE = "not_bundle"  # (delete) a plain SKU: nothing changed
    UNKNOWN_SKU = "unknown_sku"  # (delete) no such SKU


class RestockStatus(enum.StrEnum):
    """The status of stocksync_restock_claim and stocksync_ship_claim."""

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


def count(keys: Keys, sku: str, on_hand: int, source: str, ref: str,
          expected_version: int | None = None) -> Call[Outcome]:
    """stocksync_count: a warehouse count sets on_hand (creating the SKU); committed stays, so available is
    on_hand - committed - reserved; insufficient when the count is below committed + reserved."""
    extra = () if expected_version is None else (expected_version,)
    return _change("stocksync_count", keys, sku, on_hand, source, ref, *extra)


@dataclass(frozen=True, slots=True)
class Moved(Outcome):
    """The result of stocksync_ship or stocksync_cancel: `units` shipped out of committed, or (cancel)
    taken back from committed (the rest of qty was restocked onto on_hand: a line taken before 0.6)."""

    units: int


def _moved(function: str, keys: Keys, sku: str, qty: int, source: str, ref: str) -> Call[Moved]:
    p = keys.partition(sku)

    def parse(reply) -> Moved:
        status, available, version, replayed, units = reply
        return Moved(sku, Status(status), int(available), int(version), bool(replayed), int(units))

    return _fcall(function, (keys.sku(sku, p), keys.events(p), keys.idem(p, ref)), (qty, source, ref), parse)


def ship(keys: Keys, sku: str, qty: int, source: str, ref: str) -> Call[Moved]:
    """stocksync_ship: qty units of an order line left: out of committed and on_hand (a bundle: its components)."""
    return _moved("stocksync_ship", keys, sku, qty, source, ref)


def cancel(keys: Keys, sku: str, qty: int, source: str, ref: str) -> Call[Moved]:
    """stocksync_cancel: qty units of an order line will not ship: back to available, out of committed."""
    return _moved("stocksync_cancel", keys, sku, qty, source, ref)


def get(keys: Keys, sku: str) -> Call[Stock | None]:
    """stocksync_get (FCALL_RO): one SKU's stock, None when it does not exist."""

    def parse(reply) -> Stock | None:
        if not reply:
            return None
        available, reserved, version, updated_ms, source = reply
        return Stock(sku, int(available), int(reserved), int(version), int(updated_ms), source)

    return _fcall("stocksync_get", (keys.sku(sku),), (), parse, read_only=True)


@dataclass(frozen=True, slots=True)
class Quantities:
    """stocksync_stock: a SKU's quantities. available = on_hand - committed - reserved; a bundle has no
    on_hand (None) and its components; a component lists its bundles."""

    sku: str
    available: int
    on_hand: int | None
    committed: int
    reserved: int
    version: int
    updated_ms: int
    source: str
    components: dict[str, int]
    bundles: tuple[str, ...]

    @property
    def is_bundle(self) -> bool:
        return bool(self.components)


def stock(keys: Keys, sku: str) -> Call[Quantities | None]:
    """stocksync_stock (FCALL_RO): a SKU's on_hand, committed, reserved and available (None: unknown)."""

    def parse(reply) -> Quantities | None:
        if not reply:
            return None
        available, on_hand, committed, reserved, version, updated_ms, source, components, bundles = reply
        return Quantities(sku, int(available), _opt_int(on_hand), int(committed), int(reserved), int(version),
                          int(updated_ms), source, {c: int(q) for c, q in zip(components[::2], components[1::2], strict=True)},
                          tuple(bundles))

    return _fcall("stocksync_stock", (keys.sku(sku),), (), parse, read_only=True)


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


# Bundles ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BundleOutcome:
    sku: str
    status: BundleStatus
    available: int  # the bundle's quantity now (0 once deleted)
    version: int


def _bundle_keys(keys: Keys, bundle: str, components: Sequence[str]) -> int:
    p = keys.partition(bundle)
    apart = [c for c in components if keys.partition(c) != p]
    if apart:
        raise InvalidArgument(
            f"bundle {bundle!r} is in partition {p}, its component(s) {', '.join(map(repr, apart))} in another: a "
            "bundle and its components must share a partition. Name them with a common pin, e.g. "
            f"'{bundle}{{group}}' and '{apart[0]}{{group}}' (docs/keys.md, pinning), or use one partition")
    return p


def bundle_set(keys: Keys, bundle: str, components: Mapping[str, int], source: str, ref: str) -> Call[BundleOutcome]:
    """stocksync_bundle_set: define or redefine a bundle (components -> units of each)."""
    p = _bundle_keys(keys, bundle, list(components))
    k = (keys.events(p), keys.sku(bundle, p), *(keys.sku(c, p) for c in components))
    return _fcall("stocksync_bundle_set", k, (source, ref, *components.values()),
                  lambda r: BundleOutcome(bundle, BundleStatus(r[0]), int(r[1]), int(r[2])))


def bundle_delete(keys: Keys, bundle: str, source: str, ref: str) -> Call[BundleOutcome]:
    """stocksync_bundle_delete: the bundle becomes a plain SKU at 0 (every channel lists 0 under its name)."""
    p = keys.partition(bundle)
    return _fcall("stocksync_bundle_delete", (keys.events(p), keys.sku(bundle, p)), (source, ref),
                  lambda r: BundleOutcome(bundle, BundleStatus(r[0]), int(r[1]), int(r[2])))


# Reservations ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Held:
    """stocksync_reserve: held (ok) or not (insufficient, unknown_sku); lines as they stand now."""

    reservation_id: str
    status: Status
    lines: tuple[LineState, ...]
    replayed: bool
    ms_left: int  # until it expires (the time to live on first use; 0 once ended or when nothing is held)

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    @property
    def short_lines(self) -> tuple[LineState, ...]:
        return () if self.ok else tuple(line for line in self.lines if line.short)


@dataclass(frozen=True, slots=True)
class ReservationOutcome:
    """stocksync_commit / stocksync_release."""

    reservation_id: str
    status: ReservationStatus
    lines: tuple[tuple[str, int | None, int | None], ...]  # (sku, available, version) now
    replayed: bool


@dataclass(frozen=True, slots=True)
class Reservation:
    """stocksync_reservation: a reservation as it stands."""

    reservation_id: str
    state: str  # held | committed | released | expired | insufficient
    expires_ms: int
    ms_left: int
    lines: dict[str, int]
    source: str


def reserve(keys: Keys, partition: int, reservation_id: str, lines: Sequence[tuple[str, int]], ttl_ms: int,
            source: str) -> Call[Held]:
    """stocksync_reserve: hold every line (one partition) or none, for ttl_ms; the id is the reference."""

    def parse(reply) -> Held:
        status, rows, replayed, ms_left = reply
        states = tuple(LineState(sku, qty, _opt_int(row[1]), _opt_int(row[2]))
                       for (sku, qty), row in zip(lines, rows, strict=True))
        return Held(reservation_id, Status(status), states, bool(replayed), int(ms_left))

    k = (keys.events(partition), keys.reservation(partition, reservation_id),
         *(keys.sku(sku, partition) for sku, _ in lines))
    return _fcall("stocksync_reserve", k, (source, ttl_ms, *(qty for _, qty in lines)), parse)


def _settle(function: str, keys: Keys, partition: int, reservation_id: str, source: str) -> Call[ReservationOutcome]:
    def parse(reply) -> ReservationOutcome:
        status, rows, replayed = reply
        return ReservationOutcome(reservation_id, ReservationStatus(status),
                                  tuple((row[0], _opt_int(row[1]), _opt_int(row[2])) for row in rows), bool(replayed))

    return _fcall(function, (keys.events(partition), keys.reservation(partition, reservation_id)), (source,), parse)


def commit(keys: Keys, partition: int, reservation_id: str, source: str) -> Call[ReservationOutcome]:
    """stocksync_commit: the held units become a sale (reserved -> committed), once."""
    return _settle("stocksync_commit", keys, partition, reservation_id, source)


def release(keys: Keys, partition: int, reservation_id: str, source: str) -> Call[ReservationOutcome]:
    """stocksync_release: the held units go back to available, once."""
    return _settle("stocksync_release", keys, partition, reservation_id, source)


def reservation(keys: Keys, partition: int, reservation_id: str) -> Call[Reservation | None]:
    """stocksync_reservation (FCALL_RO): a reservation's state, expiry and lines (None: unknown)."""

    def parse(reply) -> Reservation | None:
        if not reply:
            return None
        state, expires_ms, ms_left, flat, source = reply
        return Reservation(reservation_id, state, int(expires_ms), int(ms_left),
                           {s: int(q) for s, q in zip(flat[::2], flat[1::2], strict=True)}, source)

    return _fcall("stocksync_reservation", (keys.reservation(partition, reservation_id),), (), parse, read_only=True)


def expire(keys: Keys, partition: int, count: int) -> Call[tuple[int, int]]:
    """stocksync_expire: end up to `count` due reservations of the partition; (ended, next expiry ms or 0)."""
    return _fcall("stocksync_expire", (keys.events(partition),), (count,), lambda r: (int(r[1]), int(r[2])))


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
    from_committed: int = 0  # of the units, those a cancellation takes back from committed (stocksync_cancel)


def restock_claim(keys: Keys, channel: str, line_key: str, restock_id: str, units: int, taken: int, ttl_s: int,
                  restocked_before: int = 0, kind: str = "none") -> Call[RestockClaim]:
    """stocksync_restock_claim: reserve one restock's units of an order line, capped at what was taken;
    kind cancel | return for a line taken into committed (how its units split), none for one taken
    before library 0.6."""
    return _fcall("stocksync_restock_claim", (keys.webhook_line_restocks(channel, line_key),),
                  (restock_id, units, taken, ttl_s, restocked_before, kind),
                  lambda r: RestockClaim(RestockStatus(r[0]), int(r[1]), bool(r[2]), int(r[3]) if len(r) > 3 else 0))


def ship_claim(keys: Keys, channel: str, line_key: str, shipment_id: str, units: int, taken: int,
               ttl_s: int) -> Call[RestockClaim]:
    """stocksync_ship_claim: reserve one shipment's units of an order line, capped at its unshipped units."""
    return _fcall("stocksync_ship_claim", (keys.webhook_line_restocks(channel, line_key),),
                  (shipment_id, units, taken, ttl_s),
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
    "stocksync_count": count, "stocksync_ship": ship, "stocksync_cancel": cancel, "stocksync_stock": stock,
    "stocksync_bundle_set": bundle_set, "stocksync_bundle_delete": bundle_delete, "stocksync_reserve": reserve,
    "stocksync_commit": commit, "stocksync_release": release, "stocksync_reservation": reservation,
    "stocksync_expire": expire, "stocksync_ship_claim": ship_claim,
}
