"""The intake's typed records: what it remembers of an order line, and what it answers for one.

    <prefix>:wh:line:<channel>:<line key>      "state|qty|sku" of a line (LineRecord)

A line record outlives the library's reference (line_ttl_days, against 48 hours), so that a cancellation
or a return weeks later restocks only what was taken, into the SKU it was taken from.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from stocksync.library import Outcome

from .webhooks import Line, Restock


class LineState(enum.StrEnum):
    TAKEN = "t"
    REFUSED = "r"  # insufficient when it was taken: the order was listed as a rejection
    UNKNOWN = "u"  # the SKU did not exist: nothing was taken
    CANCELLED = "c"  # cancelled (restocked whole) before it was taken: a late take takes nothing
    WAITING = "w"  # restocks came before the take: they wait for it (<line>:waiting)

    @property
    def settled(self) -> bool:
        """Taken or refused for good: a later delivery of the line is answered from the record."""
        return self in (LineState.TAKEN, LineState.REFUSED)


@dataclass(frozen=True, slots=True)
class LineRecord:
    state: LineState
    qty: int
    sku: str

    @classmethod
    def parse(cls, value: Any) -> LineRecord | None:
        """A record as GET (or SET ... GET) answers it; None for no record (or SET's plain OK)."""
        if not isinstance(value, str) or value[1:2] != "|":
            return None
        state, qty, sku = value.split("|", 2)
        return cls(LineState(state), int(qty), sku)

    def value(self) -> str:
        return f"{self.state}|{self.qty}|{self.sku}"


MISSING: Any = object()  # a reply field this line's answer leaves out


@dataclass(slots=True)
class LineResult:
    """One line of a delivery's reply (the JSON omits the fields left MISSING)."""

    line: str
    order_id: str
    line_id: str
    channel_sku: str | None
    op: str  # take | restock
    sku: str | None = MISSING
    qty: int = MISSING
    status: str = MISSING
    available: int | None = MISSING
    version: int | None = MISSING
    replayed: bool = MISSING
    reason: str = MISSING
    restocked: int = MISSING

    @classmethod
    def of(cls, line: Line, op: str, **known: Any) -> LineResult:
        return cls(line.key, line.order_id, line.line_id, line.channel_sku, op, **known)

    def merge(self, outcome: Outcome) -> None:
        self.status, self.available, self.version, self.replayed = (outcome.status, outcome.available,
                                                                    outcome.version, outcome.replayed)

    def known(self, name: str) -> Any:
        value = getattr(self, name)
        return None if value is MISSING else value

    def to_json(self) -> dict:
        return {name: value for name in self.__slots__ if (value := getattr(self, name)) is not MISSING}


@dataclass(slots=True)
class RestockItem:
    """A restock the intake will apply: `taken` units of `sku` were taken for its line, `before` of them
    restocked by versions before 0.3 (a counter no longer written)."""

    result: LineResult
    restock: Restock
    sku: str
    taken: int
    before: int = 0
    units: int = field(default=0)  # reserved for it (stocksync_restock_claim)

    @property
    def wanted(self) -> int:
        """Units to restock: what was taken for a full restock (a cancellation), else what the restock says."""
        return self.taken if self.restock.full else self.restock.line.qty
