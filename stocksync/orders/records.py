"""The intake's typed records: what it remembers of an order line, and what it answers for one.

    <prefix>:wh:line:<channel>:<line key>      "state|qty|sku" of a line (LineRecord); a take into committed
                                               (library 0.6+) writes its qty with a sign: "t|+2|MUG"

A line record outlives the library's reference (line_ttl_days, against 48 hours), so that a cancellation
or a return weeks later restocks only what was taken, into the SKU it was taken from. Whether the take
moved its units into committed decides how the line is shipped and restocked: "t|2|MUG", taken before
0.6, left on_hand when it was taken (shipping it changes nothing, restocking it adds units back as 0.5
did); "t|+2|MUG" is shipped out of committed and cancelled back from it. (Processes before 0.6 read the
signed qty as the same number.)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from stocksync.library import Outcome

from .webhooks import Line, Restock, Ship


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
    committed: bool = False  # taken into committed (library 0.6+): shipped and cancelled through committed

    @classmethod
    def parse(cls, value: Any) -> LineRecord | None:
        """A record as GET (or SET ... GET) answers it; None for no record (or SET's plain OK)."""
        if not isinstance(value, str) or value[1:2] != "|":
            return None
        state, qty, sku = value.split("|", 2)
        return cls(LineState(state), int(qty), sku, qty.startswith("+"))

    def value(self) -> str:
        return f"{self.state}|{'+' if self.committed else ''}{self.qty}|{self.sku}"


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
    shipped: int = MISSING  # (a ship) units taken out of committed

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
    """A restock (or a shipment) the intake will apply: `taken` units of `sku` were taken for its line,
    `before` of them restocked by versions before 0.3 (a counter no longer written); `committed`: taken into
    committed (library 0.6+)."""

    result: LineResult
    restock: Restock | Ship
    sku: str
    taken: int
    before: int = 0
    committed: bool = False
    units: int = field(default=0)  # reserved for it (stocksync_restock_claim / _ship_claim)
    from_committed: int = field(default=0)  # of the units, those a cancellation takes back from committed

    @property
    def kind(self) -> str:
        """How stocksync_restock_claim splits it: cancel | return for a committed line, none for one taken
        before 0.6."""
        if not self.committed:
            return "none"
        return "return" if getattr(self.restock, "returned", False) else "cancel"

    @property
    def wanted(self) -> int:
        """Units to restock: what was taken for a full restock (a cancellation), else what the restock says."""
        return self.taken if self.restock.full else self.restock.line.qty
