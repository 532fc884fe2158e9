"""Reservations: units held for a while (a checkout during payment), then committed as a sale, released,
or given back by themselves when their time passes (library 0.6: stocksync_reserve, _commit, _release).

A reservation holds every line or none, in one partition (a bundle line holds its components). Its id is
its reference: `<partition>-<token>`, so that a commit or a release by id finds its partition. The admin
API derives the token from the request's Idempotency-Key, so a retried POST answers the same reservation.
Expiry needs nothing to run at that moment: reads never count an expired hold, the next writing call on
a held SKU gives it back, and the workers' housekeeping ends due reservations every second
(`expire_due`).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable, Mapping

from . import library
from .connection import AnyRedis
from .errors import InvalidArgument
from .keys import Keys
from .library import Held, Reservation, ReservationOutcome
from .limits import MAX_EXPIRE_COUNT, MAX_HOLD_MS, MAX_ORDER_LINES, MAX_QTY
from .store import StockStore

_ID_RE = re.compile(r"^(\d{1,5})-([A-Za-z0-9_.:-]{1,200})$")


def token_of(key: str) -> str:
    """The id token of a reservation made with an Idempotency-Key (the same key, the same reservation)."""
    return hashlib.sha256(key.encode()).hexdigest()[:24]


class Reservations:
    def __init__(self, store: StockStore) -> None:
        self.store, self.keys = store, store.keys

    def partition_of(self, reservation_id: str) -> int | None:
        """The partition a reservation id names; None when it is not such an id (so no such reservation)."""
        m = _ID_RE.match(reservation_id)
        if not m or int(m.group(1)) >= self.keys.partitions:
            return None
        return int(m.group(1))

    async def reserve(self, lines: Mapping[str, int] | Iterable[tuple[str, int]], *, ttl_ms: int, source: str,
                      token: str | None = None) -> Held:
        """Hold every line or none for ttl_ms (1 ms .. 7 days); `token` names it (default: a new one)."""
        items = list(lines.items() if isinstance(lines, Mapping) else lines)
        if not 1 <= len(items) <= MAX_ORDER_LINES:
            raise InvalidArgument(f"a reservation needs 1 to {MAX_ORDER_LINES} lines, got {len(items)}")
        for sku, qty in items:
            if not isinstance(sku, str) or isinstance(qty, bool) or not isinstance(qty, int) or not 1 <= qty <= MAX_QTY:
                raise InvalidArgument(f"line {sku!r}: qty must be a whole number from 1 to {MAX_QTY}")
        if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int) or not 1 <= ttl_ms <= MAX_HOLD_MS:
            raise InvalidArgument(f"ttl_ms must be between 1 and {MAX_HOLD_MS}, got {ttl_ms!r}")
        partitions = {self.keys.partition(sku) for sku, _ in items}
        if len(partitions) > 1:
            raise InvalidArgument(f"the reservation's SKUs span partitions {sorted(partitions)}; a reservation "
                                  "holds all its lines or none, so they must share one (pin them: docs/keys.md)")
        p = partitions.pop()
        rid = f"{p}-{token or uuid.uuid4().hex}"
        return await self.store.run(library.reserve(self.keys, p, rid, items, ttl_ms, source))

    async def _settle(self, call, reservation_id: str, source: str) -> ReservationOutcome:
        p = self.partition_of(reservation_id)
        if p is None:
            return ReservationOutcome(reservation_id, library.ReservationStatus.UNKNOWN, (), False)
        return await self.store.run(call(self.keys, p, reservation_id, source))

    async def commit(self, reservation_id: str, *, source: str) -> ReservationOutcome:
        """The held units become a sale (committed), once; expired, released or unknown otherwise."""
        return await self._settle(library.commit, reservation_id, source)

    async def release(self, reservation_id: str, *, source: str) -> ReservationOutcome:
        """The held units go back to available, once."""
        return await self._settle(library.release, reservation_id, source)

    async def get(self, reservation_id: str) -> Reservation | None:
        p = self.partition_of(reservation_id)
        if p is None:
            return None
        return await self.store.run(library.reservation(self.keys, p, reservation_id))


async def expire_due(redis: AnyRedis, keys: Keys, count: int = MAX_EXPIRE_COUNT) -> int:
    """End the due reservations of every partition (at most `count` per partition); how many ended."""
    ended = 0
    for p in range(keys.partitions):
        n, _ = await library.expire(keys, p, count).run(redis)
        ended += n
    return ended
