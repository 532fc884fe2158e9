"""A history checker for fault tests: every outcome clients were told, against the final streams and stock.

    history = History(durability="local")
    history.told(ref, sku, "ok", available=7, version=12, via="fcall")   # an answer a client got
    history.unanswered(ref, sku, via="api")                              # a call that got no answer
    report = history.check(events, stock)     # events: {sku: [Event, ...]} of every stream; stock: {sku: Stock}
    report.ok, report.lost, report.summary()

What it checks, per acknowledged change (status ok; refusals change nothing and are not checked):
* lost: its reference is not in the final stream of its SKU. With durability `local` (acknowledged once the
  primary applied it, replication asynchronous) a failover may lose the last acknowledged changes: they are
  counted and reported, and `ok` tolerates them; with any other mode (`replicated`, `fsync`: acknowledged
  only once durable as configured) `ok` needs none lost;
* diverged: its reference is in the stream with another version or quantity than the client was told
  (never allowed);
* applied twice: a reference in more than one `stock.changed` entry (never allowed: G2);
* the stock and its stream agree: each SKU's version and available are those of its last change (G3).
A call that got no answer may have applied or not; it is only checked for being applied at most once.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

DURABILITIES = ("local", "replicated", "fsync")


@dataclass(frozen=True, slots=True)
class Told:
    ref: str
    sku: str
    status: str
    available: int | None
    version: int | None
    via: str


@dataclass
class Report:
    durability: str
    acknowledged: int = 0
    unanswered: int = 0
    lost: list[Told] = field(default_factory=list)
    diverged: list[tuple[Told, int, int]] = field(default_factory=list)  # (told, version, available) found
    twice: list[str] = field(default_factory=list)
    disagree: list[str] = field(default_factory=list)  # SKUs whose stock is not their last change's

    @property
    def ok(self) -> bool:
        lost_allowed = self.durability == "local"
        return not (self.diverged or self.twice or self.disagree) and (lost_allowed or not self.lost)

    def summary(self) -> str:
        return (f"durability {self.durability}: {self.acknowledged} acknowledged changes, {len(self.lost)} lost, "
                f"{len(self.diverged)} diverged, {len(self.twice)} applied twice, {self.unanswered} unanswered "
                f"calls, {len(self.disagree)} SKUs whose stock disagrees with their stream")


class History:
    def __init__(self, durability: str = "local") -> None:
        if durability not in DURABILITIES:
            raise ValueError(f"durability must be one of {', '.join(DURABILITIES)}, not {durability!r}")
        self.durability = durability
        self.answers: list[Told] = []
        self.no_answer: list[tuple[str, str, str]] = []

    def told(self, ref: str, sku: str, status: str, *, available: int | None = None, version: int | None = None,
             via: str = "") -> None:
        self.answers.append(Told(ref, sku, status, available, version, via))

    def unanswered(self, ref: str, sku: str, via: str = "") -> None:
        self.no_answer.append((ref, sku, via))

    def check(self, events: dict[str, list], stock: dict) -> Report:
        """events: every stock event per SKU (stocksync.events.Event, stream order); stock: the final
        Stock per SKU (stocksync.library.Stock, None for an unknown SKU)."""
        report = Report(self.durability, unanswered=len(self.no_answer))
        applied: dict[str, list] = collections.defaultdict(list)
        for sku_events in events.values():
            for e in sku_events:
                if e.type == "stock.changed" and e.ref:
                    applied[e.ref].append(e)
        report.twice = sorted(ref for ref, found in applied.items() if len(found) > 1)
        for t in self.answers:
            if t.status != "ok":
                continue
            report.acknowledged += 1
            found = applied.get(t.ref)
            if not found:
                report.lost.append(t)
            elif t.version is not None and (found[0].version, found[0].available) != (t.version, t.available):
                report.diverged.append((t, found[0].version, found[0].available))
        for sku, sku_events in events.items():
            changes = [e for e in sku_events if e.type == "stock.changed"]
            s = stock.get(sku)
            if changes and (s is None or (s.version, s.available) != (changes[-1].version, changes[-1].available)):
                report.disagree.append(sku)
        return report
