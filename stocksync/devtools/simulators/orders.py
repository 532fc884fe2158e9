"""The order book the marketplace simulators share: what buyers bought, cancelled and got refunded.

Pure data, no HTTP and no locking (the simulator calls it under its lock). An order holds lines (the
marketplace's line id, the channel SKU, the quantity ordered, the units taken off it since by refunds
or the cancellation and, of those, the units put back on the listing) and its refunds; its status is
``open``, ``partially_refunded``, ``refunded`` or ``cancelled``. Times are wall-clock milliseconds,
never going backwards within a book, so "updated since" pages cannot miss an order because the
clock stepped back.

Two orders of the book serve the order-list APIs: by creation, (created_ms, number), and by last
update, (updated_ms, change), where change counts every change to the book, so that an order changed
twice within a millisecond still moves behind every other. Both are kept sorted, so that a page
starts with a bisect, not a scan: a position in either is the pair of the last order a page
returned, which is what the APIs' cursors and next-page tokens carry. An order changed after a page
moves behind the position and is read again by the next pages, as a poller wants.

Ids follow each marketplace's format (``Ids``); every book draws a random run number that goes into
them, so two runs (or a reset) against the same stocksync never reuse an order or line id, which
stocksync would take for a redelivery of the old order.
"""

from __future__ import annotations

import bisect
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

MAX_LINES = 250  # lines of one order (Shopify's and stocksync's receiver's bound)
MAX_QTY = 2**31 - 1


@dataclass(slots=True)
class Line:
    line_id: str
    sku: str
    qty: int  # ordered
    refunded: int = 0  # taken off the order since (refunds and the cancellation)
    restocked: int = 0  # of those, put back on the listing

    @property
    def current(self) -> int:
        return self.qty - self.refunded


@dataclass(slots=True)
class RefundLine:
    refund_line_id: str
    line: Line
    qty: int


@dataclass(slots=True)
class Refund:
    refund_id: str
    created_ms: int
    restock_type: str  # return | cancel | no_restock (Shopify's words, used by every simulator)
    lines: list[RefundLine]
    cancellation: bool = False  # made by the order's cancellation


@dataclass(slots=True)
class Order:
    order_id: str
    number: int  # 1, 2, ... in order of creation
    lines: list[Line]
    created_ms: int
    updated_ms: int
    status: str = "open"
    cancelled_ms: int | None = None
    refunds: list[Refund] = field(default_factory=list)
    change: int = 0  # the book's count of changes when this order last changed: its place in update order

    def view(self) -> dict[str, Any]:
        """The order as GET /_sim/orders/{id} shows it."""
        return {
            "order_id": self.order_id,
            "number": self.number,
            "status": self.status,
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
            "cancelled_ms": self.cancelled_ms,
            "lines": [
                {"line_id": ln.line_id, "sku": ln.sku, "qty": ln.qty, "current": ln.current,
                 "refunded": ln.refunded, "restocked": ln.restocked}
                for ln in self.lines
            ],
            "refunds": [
                {"refund_id": r.refund_id, "created_ms": r.created_ms, "restock_type": r.restock_type,
                 "cancellation": r.cancellation,
                 "lines": [{"refund_line_id": rl.refund_line_id, "line_id": rl.line.line_id, "qty": rl.qty}
                           for rl in r.lines]}
                for r in self.refunds
            ],
        }


@dataclass(frozen=True)
class Ids:
    """A marketplace's id formats: each gets (run, n) with n counting from 1 in the book."""

    order: Callable[[int, int], str]
    line: Callable[[int, int], str]
    refund: Callable[[int, int], str] = lambda run, n: f"{run}{n:09d}"
    refund_line: Callable[[int, int], str] = lambda run, n: f"{run}{n:010d}"


class OrderBook:
    def __init__(self, ids: Ids) -> None:
        self.ids = ids
        self.run = 100_000 + secrets.randbelow(900_000)  # six digits, never a leading zero
        self._by_number: list[Order] = []
        self._by_id: dict[str, Order] = {}
        self._by_line: dict[str, Order] = {}
        self._updated: list[tuple[int, int, int]] = []  # (updated_ms, change, number), sorted
        self._changes = 0
        self._last_ms = 0
        self._lines = self._refunds = self._refund_lines = 0

    def __len__(self) -> int:
        return len(self._by_number)

    def now_ms(self) -> int:
        self._last_ms = max(self._last_ms, int(time.time() * 1000))
        return self._last_ms

    def get(self, order_id: str) -> Order | None:
        return self._by_id.get(order_id)

    def by_line(self, line_id: str) -> Order | None:
        return self._by_line.get(line_id)

    def by_number(self, number: int) -> Order | None:
        return self._by_number[number - 1] if 1 <= number <= len(self._by_number) else None

    # ----- changes --------------------------------------------------------------------------------

    def add(self, lines: list[tuple[str, int]], now_ms: int | None = None) -> Order:
        """A new open order of (sku, qty) lines (the caller checked the listing covers them)."""
        now = self.now_ms() if now_ms is None else now_ms
        number = len(self._by_number) + 1
        run, line_id = self.run, self.ids.line
        first = self._lines
        self._lines += len(lines)
        order = Order(
            self.ids.order(run, number),
            number,
            [Line(line_id(run, first + i + 1), sku, qty) for i, (sku, qty) in enumerate(lines)],
            now,
            now,
        )
        self._by_number.append(order)
        self._by_id[order.order_id] = order
        for line in order.lines:
            self._by_line[line.line_id] = order
        self._changes += 1
        order.change = self._changes
        self._updated.append((now, order.change, number))  # now is the book's latest time: still sorted
        return order

    def refund(self, order: Order, taken: list[tuple[Line, int]], restock_type: str, restock: bool,
               cancellation: bool = False) -> Refund:
        """Take ``taken`` (line, units) off ``order``; ``restock``: the units go back on the listing
        (the caller adds them to it)."""
        self._refunds += 1
        refund_lines = []
        for line, qty in taken:
            self._refund_lines += 1
            line.refunded += qty
            if restock:
                line.restocked += qty
            refund_lines.append(RefundLine(self.ids.refund_line(self.run, self._refund_lines), line, qty))
        now = self.now_ms()
        refund = Refund(self.ids.refund(self.run, self._refunds), now, restock_type, refund_lines, cancellation)
        order.refunds.append(refund)
        if order.status != "cancelled":
            order.status = "refunded" if all(ln.current == 0 for ln in order.lines) else "partially_refunded"
        self.touch(order, now)
        return refund

    def cancel(self, order: Order) -> None:
        now = self.now_ms()
        order.status, order.cancelled_ms = "cancelled", now
        self.touch(order, now)

    def touch(self, order: Order, now_ms: int) -> None:
        """The order changed: move it to the end of the update order."""
        del self._updated[bisect.bisect_left(self._updated, (order.updated_ms, order.change))]
        self._changes += 1
        order.updated_ms, order.change = now_ms, self._changes
        self._updated.append((now_ms, order.change, order.number))  # now_ms is the book's latest time

    # ----- reading, for the order-list APIs ---------------------------------------------------------

    def scan(self, by: str, lo_ms: int, hi_ms: int | None, after: tuple[int, int] | None = None) -> Iterator[Order]:
        """Orders whose ``by`` time ("updated" or "created") is in [lo_ms, hi_ms), in that order,
        strictly after the position ``after`` (``position()`` of the last order of a previous page).
        Lazy: a page takes what it needs. Do not change the book while iterating."""
        start = (lo_ms, 0) if after is None or after < (lo_ms, 0) else (after[0], after[1] + 1)
        # indexes, not slices: a slice would copy the rest of a 100,000-order book for every page
        if by == "updated":
            keys, orders = self._updated, self._by_number
            for i in range(bisect.bisect_left(keys, start), len(keys)):
                updated_ms, _, number = keys[i]
                if hi_ms is not None and updated_ms >= hi_ms:
                    return
                yield orders[number - 1]
            return
        orders = self._by_number
        for i in range(bisect.bisect_left(orders, start, key=lambda o: (o.created_ms, o.number)), len(orders)):
            if hi_ms is not None and orders[i].created_ms >= hi_ms:
                return
            yield orders[i]


def position(order: Order, by: str) -> tuple[int, int]:
    """Where ``order`` stands in the ``by`` order: what a cursor carries."""
    return (order.updated_ms, order.change) if by == "updated" else (order.created_ms, order.number)


def shortfall(listed: dict[str, int], lines: list[tuple[str, int]]) -> dict[str, Any] | None:
    """The first line the listing does not cover (several lines of one SKU add up), or None."""
    wanted: dict[str, int] = {}
    for i, (sku, qty) in enumerate(lines):
        wanted[sku] = wanted.get(sku, 0) + qty
        have = listed.get(sku, 0)
        if wanted[sku] > have:
            return {"line": i, "sku": sku, "wanted": wanted[sku], "listed": have}
    return None


# ----- times as the APIs show and filter them ----------------------------------------------------------


def iso(ms: int, offset_minutes: int = 0, z: bool = True) -> str:
    """``ms`` in whole seconds, ISO 8601: "...Z" (UTC with ``z``), else with the offset, "+05:30"."""
    tz = timezone(timedelta(minutes=offset_minutes))
    text = datetime.fromtimestamp(ms // 1000, tz).isoformat()
    return text[:-6] + "Z" if z and offset_minutes == 0 else text


def parse_time(text: Any) -> int | None:
    """ISO 8601 (a date, or a date and time, with Z, an offset or none: UTC) in ms, or None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def bounds(op: str, t_ms: int) -> tuple[int | None, int | None]:
    """The [lo, hi) range of order times in ms that ``<time> op t`` selects, comparing as the APIs do:
    the order's time in whole seconds (what they show) against ``t``. So a cursor read off a page never
    skips an order updated later within the same second."""
    floor_s, ceil_s = t_ms // 1000, -(-t_ms // 1000)
    return {
        ">=": (ceil_s * 1000, None),
        ">": ((floor_s + 1) * 1000, None),
        "<=": (None, (floor_s + 1) * 1000),
        "<": (None, ceil_s * 1000),
    }[op]
