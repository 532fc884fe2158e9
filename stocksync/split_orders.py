"""All-or-nothing orders whose lines live in several partitions (on a cluster: several slots, often several
primaries), where no single function call can take them all.

    outcome = await SplitOrders(store).place({"MUG": 1, "LAMP": 2}, ref="shop:O-7", source="shop")
    outcome.status      # ok (every line taken) | insufficient | unknown_sku (nothing taken) | expired

How: each partition's lines are held by one reservation with an expiry (stocksync_reserve, id
`<p>-<token of ref>`); once every hold is answered the decision is written once (`<prefix>:xorder:<ref>`,
SET NX: `commit` if every partition held its lines, else `release`), then every hold is committed
(reserved -> committed) or released. Every step is idempotent under the order's reference: calling place()
again with the same ref and lines (a retry, or a recovery after the caller died) replays the holds,
follows the decision already written and finishes it.

What a crash of the caller leaves (tests/test_split_orders.py kills it at each step):
* before the decision: holds only; they expire after ttl_ms by themselves (reads never count an expired
  hold, the next write or the workers' sweep gives the units back) and nothing is taken;
* after the decision, part of the commits done: the committed lines are taken (once), the others are held
  until they expire. A retry before then commits the rest (the order is whole); a retry after one expired
  undoes the committed lines (stocksync_cancel under `<ref>:undo:<sku>`: committed -> available, once) and
  answers `expired` (the order is taken whole or not at all, in the end). Without any retry the order stays
  partly taken: whoever places split orders must retry them until answered (as marketplaces resend webhooks).
No unit stays held past its expiry, and no line is taken twice (each commit and each undo happens once).
A hold answered with no time left (it expired before the decision) counts as not held.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from . import library
from .errors import InvalidArgument
from .library import ReservationStatus, Status
from .reservations import token_of
from .store import StockStore

DEFAULT_HOLD_MS = 30_000


@dataclass(frozen=True)
class SplitOutcome:
    ref: str
    status: str  # ok | insufficient | unknown_sku | expired
    decision: str  # commit | release
    holds: dict[int, str]  # partition -> reservation id
    short: tuple[str, ...] = ()  # SKUs of the partitions that could not hold their lines
    replayed: bool = False  # the decision was written before this call (a retry, or another caller)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class SplitOrders:
    def __init__(self, store: StockStore, on_step: Callable[[str], None] | None = None) -> None:
        self.store, self.keys = store, store.keys
        self.on_step = on_step or (lambda step: None)  # (called after each step: tests crash the caller there)

    def decision_key(self, ref: str) -> str:
        return f"{self.keys.prefix}:xorder:{ref}"

    async def place(self, lines: Mapping[str, int], *, ref: str, source: str,
                    ttl_ms: int = DEFAULT_HOLD_MS) -> SplitOutcome:
        groups = self._groups(lines)
        holds = {p: f"{p}-{token_of(ref)}" for p in groups}
        redis = self.store.redis
        decision, short, unknown = await redis.get(self.decision_key(ref)), [], False
        replayed = decision is not None
        if decision is None:
            replies = await asyncio.gather(*(self._hold(p, holds[p], groups[p], ttl_ms, source) for p in groups))
            for p, held in zip(groups, replies, strict=True):
                if not held.ok or held.ms_left <= 0:
                    short += [sku for sku, _ in groups[p]]
                    unknown = unknown or held.status == Status.UNKNOWN_SKU
            want = "release" if short else "commit"
            first = await redis.set(self.decision_key(ref), want, nx=True, get=True,
                                    ex=self.store.settings.idem_ttl_s)
            decision, replayed = first or want, first is not None  # (another caller decided first: follow it)
            self.on_step("decided")
        if decision == "commit":
            return replace(await self._commit(ref, groups, holds, source), replayed=replayed)
        await self._release(holds, source)
        status = "unknown_sku" if unknown else "insufficient"
        return SplitOutcome(ref, status, "release", holds, tuple(short), replayed)

    def _groups(self, lines: Mapping[str, int]) -> dict[int, list[tuple[str, int]]]:
        if not lines:
            raise InvalidArgument("an order needs at least one line")
        groups: dict[int, list[tuple[str, int]]] = {}
        for sku, qty in lines.items():
            groups.setdefault(self.keys.partition(sku), []).append((sku, qty))
        return dict(sorted(groups.items()))

    async def _hold(self, p: int, rid: str, items: list[tuple[str, int]], ttl_ms: int, source: str):
        held = await self.store.run(library.reserve(self.keys, p, rid, items, ttl_ms, source))
        self.on_step(f"held:{p}")
        return held

    async def _commit(self, ref: str, groups: dict, holds: dict[int, str], source: str) -> SplitOutcome:
        missed = []
        for p, rid in holds.items():  # (one after another: a crash between two is the case to recover)
            done = await self.store.run(library.commit(self.keys, p, rid, source))
            if done.status != ReservationStatus.OK:
                missed.append(p)
            self.on_step(f"committed:{p}")
        if not missed:
            return SplitOutcome(ref, "ok", "commit", holds)
        await self._undo(ref, groups, holds, missed, source)
        return SplitOutcome(ref, "expired", "commit", holds, tuple(s for p in missed for s, _ in groups[p]))

    async def _undo(self, ref: str, groups: dict, holds: dict[int, str], missed: list[int], source: str) -> None:
        """A hold expired before its commit: give back what the others took (each line once: its own
        reference), so that the order is taken whole or not at all."""
        for p in holds:
            if p in missed:
                continue
            for sku, qty in groups[p]:
                await self.store.cancel(sku, qty, ref=f"{ref}:undo:{sku}"[:256], source=source)
                self.on_step(f"undone:{sku}")

    async def _release(self, holds: dict[int, str], source: str) -> None:
        for p, rid in holds.items():
            await self.store.run(library.release(self.keys, p, rid, source))
            self.on_step(f"released:{p}")
