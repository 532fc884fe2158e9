"""Coalescing and ordering: the entries a worker holds, grouped per SKU, handed out most urgent first.

Many changes to one SKU become one push of its current quantity. A SKU is handed out to at most one push
at a time (pushes of one SKU never overlap within a process; the lease does it across processes), and
the SKUs where an oversell is likeliest go first: the highest expected units oversold before the push
lands (consumers/risk.py: the SKU's sales velocity, how far the channel lists above what it should, the
channel's time to land a push), then by rank (consumers/ranks.py: a drop to 0, then a low listed
quantity or a sharp drop, then the rest), then oldest first. A SKU goes at the risk of its latest held
change and the rank of its most urgent one.

A SKU can also be due for a recheck (recheck()): a push of its current quantity at a given time even if
the channel already has that version (after a push that got no answer and may still land late, or when
its channel SKU changed). Such a SKU is held, with or without entries, until a push started at or after
that time succeeds (repaid() clears it).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .ranks import NORMAL


@dataclass(slots=True)
class Entry:
    id: str
    partition: int
    sku: str
    version: int
    available: int
    delta: int
    source: str = ""  # who made the change (a channel's name for its takes)

    @property
    def ts_ms(self) -> int:
        return int(self.id.split("-", 1)[0])


@dataclass(slots=True)
class SkuWork:
    sku: str
    partition: int
    entries: dict[str, Entry] = field(default_factory=dict)
    since: float = 0.0  # monotonic time the oldest held entry arrived
    urgency: int = NORMAL
    risk: float = 0.0  # expected units the channel oversells before this push lands (consumers/risk.py)
    attempts: int = 0
    not_before: float = 0.0
    busy: bool = False  # a push of this SKU is in flight
    recheck_at: float = 0.0  # monotonic time a push of the current quantity is due whatever was pushed (0: none)
    owed_ms: int = 0  # the same as recorded in Redis (stocksync_recheck), wall-clock ms
    forced: bool = False  # the push in flight is such a recheck
    started: float = 0.0  # monotonic time the push in flight was handed out

    @property
    def version(self) -> int:
        return max((e.version for e in self.entries.values()), default=0)

    @property
    def ids(self) -> list[str]:
        return list(self.entries)


class Coalescer:
    def __init__(self, rank: Callable[[Entry], int], risk: Callable[[Entry], float] | None = None) -> None:
        self.rank = rank  # (Entry) -> ZERO | URGENT | NORMAL (consumers/ranks.py)
        self.risk = risk  # (Entry) -> expected oversold units (consumers/risk.py); None: ranks alone
        self.work: dict[str, SkuWork] = {}
        # (partition, entry id): stream IDs are per stream, so two partitions' entries can share an ID (two
        # changes in the same millisecond on two streams: both "<ms>-0"); the partition tells them apart
        self.ids: set[tuple[int, str]] = set()
        self._ready: list[tuple[float, int, float, int, str]] = []  # (-risk, rank, since, seq, sku)
        self._later: list[tuple[float, int, str]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, held: tuple[int, str]) -> bool:
        """(partition, entry id) in coalescer: whether that entry is held."""
        return held in self.ids

    def add(self, entry: Entry) -> bool:
        """Hold an entry; False if it was held already."""
        if (entry.partition, entry.id) in self.ids:
            return False
        self.ids.add((entry.partition, entry.id))
        w = self.work.get(entry.sku)
        if w is None:
            w = self.work[entry.sku] = SkuWork(entry.sku, entry.partition, since=time.monotonic())
            fresh = True
        else:
            fresh = not w.entries and not w.busy
        w.entries[entry.id] = entry
        rank = self.rank(entry)
        risk = round(self.risk(entry), 3) if self.risk is not None else 0.0  # (the latest change's)
        if rank < w.urgency or risk > w.risk:  # queued again ahead (the old heap item is skipped as stale)
            fresh = fresh or not w.busy
        w.urgency, w.risk = min(rank, w.urgency), risk
        if fresh and not w.busy:
            self._queue(w)
        return True

    def total_risk(self) -> float:
        """Expected units oversold, summed over the held SKUs (as of when each was ranked)."""
        return sum(w.risk for w in self.work.values())

    def is_urgent(self, sku: str) -> bool:
        """Whether sku is held with an urgent entry (a drop to 0 included)."""
        w = self.work.get(sku)
        return w is not None and w.urgency < NORMAL

    def recheck(self, sku: str, partition: int, at: float, owed_ms: int) -> None:
        """Push sku's current quantity at `at` (monotonic) even if the channel has its version already;
        owed_ms: when Redis says it is owed (settled with that time once pushed)."""
        w = self.work.get(sku)
        if w is None:
            w = self.work[sku] = SkuWork(sku, partition, since=time.monotonic())
        w.recheck_at = max(w.recheck_at, at)
        w.owed_ms = max(w.owed_ms, owed_ms)
        if not w.busy:
            self._queue(w)

    def urge(self, sku: str, rank: int, risk: float) -> None:
        """Hand sku out at `rank` and `risk` or ahead (a recheck whose listing may be too high, which no
        entry says: consumers/feeds.py)."""
        w = self.work.get(sku)
        if w is not None and (rank < w.urgency or risk > w.risk):
            w.urgency, w.risk = min(rank, w.urgency), max(round(risk, 3), w.risk)
            if not w.busy:
                self._queue(w)

    def repaid(self, w: SkuWork) -> None:
        """The recheck owed for w was paid (or given up): it is held for its entries only."""
        w.recheck_at, w.owed_ms = 0.0, 0

    def detach(self, sku: str) -> list[Entry]:
        """Hand a held SKU's entries to another lane (Amazon's feeds: consumers/feeds.py), which pushes and
        acknowledges them: forgotten here, unacknowledged. Not while a push of it is in flight; a recheck
        owed for it stays."""
        w = self.work.get(sku)
        if w is None or w.busy or not w.entries:
            return []
        out = list(w.entries.values())
        for e in out:
            self.ids.discard(e.id)
        w.entries.clear()
        w.urgency, w.risk = NORMAL, 0.0
        if w.recheck_at:
            self._queue(w)  # (due at its time: its heap item among the ready ones is skipped now)
        else:
            del self.work[sku]
        return out

    def _due(self, w: SkuWork, now: float) -> bool:
        return bool(w.entries) or 0 < w.recheck_at <= now

    def _queue(self, w: SkuWork) -> None:
        if not w.entries:  # a recheck only
            heapq.heappush(self._later, (max(w.recheck_at, w.not_before), next(self._seq), w.sku))
            return
        if w.not_before > time.monotonic():
            heapq.heappush(self._later, (w.not_before, next(self._seq), w.sku))
        else:
            heapq.heappush(self._ready, (-w.risk, w.urgency, w.since, next(self._seq), w.sku))

    def next_due(self) -> float | None:
        """Monotonic time the earliest delayed SKU becomes ready."""
        return self._later[0][0] if self._later else None

    def take(self, n: int) -> list[SkuWork]:
        """Up to n ready SKUs, most urgent first; they are busy until settle()."""
        now = time.monotonic()
        while self._later and self._later[0][0] <= now:
            _, _, sku = heapq.heappop(self._later)
            w = self.work.get(sku)
            if w is not None and not w.busy and (w.entries or w.recheck_at):
                heapq.heappush(self._ready, (-w.risk, w.urgency, w.since, next(self._seq), sku))
        out: list[SkuWork] = []
        seen: set[str] = set()
        while self._ready and len(out) < n:
            *_, sku = heapq.heappop(self._ready)
            w = self.work.get(sku)
            if w is None or w.busy or not self._due(w, now) or sku in seen or w.not_before > now:
                continue  # a stale heap item (the SKU was queued twice, settled or delayed since)
            seen.add(sku)
            w.busy = True
            w.forced = 0 < w.recheck_at <= now
            w.started = now
            out.append(w)
        return out

    def linger_until(self, n: int, linger_s: float) -> float | None:
        """For a channel taking n SKUs a call: None when a call should start now (n ready SKUs, or an
        urgent one, or the oldest ready one has waited linger_s), else the time to look again."""
        if not self._ready or len(self._ready) >= n:  # (stale heap items make this an upper bound)
            return None
        neg_risk, urgency, since, _, _ = self._ready[0]
        if neg_risk < 0 or urgency < NORMAL or time.monotonic() >= since + linger_s:
            return None
        return since + linger_s

    def has_ready(self) -> bool:
        now = time.monotonic()
        return bool(self._ready) or bool(self._later and self._later[0][0] <= now)

    def settle(self, w: SkuWork, covered: int | None, *, retry_at: float | None = None,
               drop: list[str] | None = None) -> list[Entry]:
        """A push of w ended. Entries at or below `covered` (the version the channel now has) and those
        in `drop` are forgotten (returned); the rest wait, from retry_at on if given."""
        gone = []
        for entry_id, e in list(w.entries.items()):
            if (covered is not None and e.version <= covered) or (drop and entry_id in drop):
                gone.append(w.entries.pop(entry_id))
                self.ids.discard((w.partition, entry_id))
        w.busy = w.forced = False
        if covered is not None:
            w.attempts = 0
        if retry_at is not None:
            w.not_before = retry_at
        if not w.entries and not w.recheck_at:
            del self.work[w.sku]
        else:
            w.urgency = min((self.rank(e) for e in w.entries.values()), default=NORMAL)
            latest = max(w.entries.values(), key=lambda e: e.version, default=None)
            w.risk = round(self.risk(latest), 3) if self.risk is not None and latest is not None else 0.0
            if covered is not None:
                w.since = time.monotonic()
            self._queue(w)
        return gone
