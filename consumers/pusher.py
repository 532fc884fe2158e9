"""A channel worker's pushes: a batch the dispatcher handed out, through the push cycle, settled into the
coalescer.

Each push goes through consumers/cycle.py under the worker's consumer name (its claims and dones merged
with those of concurrent pushes, one call per partition: ledger.LedgerBatcher): lease the SKUs, read the
current quantity and the version the channel has; skip (acknowledge) what the channel already has; push
the rest; record the accepted versions and XACK the entries they cover in one call. What a push's answer
means here:

* accepted, or current already: the entries covered are forgotten (and on_accept hears of them);
* transient failures back off with full jitter (Retry-After honoured) and feed the circuit breaker;
  permanent ones and SKUs past max_attempts go to the dead-letter stream with their XACK
  (stocksync_dead_letter). Attempts count only while the circuit is closed (a probe does not count);
* a 429 is the channel's pace, not a failure: the whole channel pauses until its Retry-After (1 s without
  one), and the SKUs of that call are ready again when the pause ends, in rank order, without counting an
  attempt (no growing backoff, no dead letter);
* a call that got no answer (timeout, dropped connection) keeps its lease and owes a recheck: the current
  quantity is pushed again recheck_ms later even if the channel has that version, since the abandoned
  request may land after a newer push. What is owed is kept in Redis too (stocksync_recheck), so a worker
  that dies owing it leaves it to the others. A push started at or after a recheck's time that the
  channel accepts repays it;
* a SKU another consumer is pushing (its lease is taken) is looked at again CONTENDED_RETRY_S later.

Channel SKU names come from ChannelSkus (the admin API's map, then the config file's).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import RedisError

from . import dlq, groups
from .adapters import PushError, TransientError
from .coalescer import SkuWork
from .cycle import ACCEPTED, BUSY, CURRENT, GONE, THROTTLED, UNANSWERED, PushCycle, Pushed, Round
from .retry import CLOSED, backoff_s
from .state import ChannelState

log = logging.getLogger(__name__)

CONTENDED_RETRY_S = 0.02  # another consumer holds the SKU's lease: look again after this

# How one SKU is settled into the coalescer after its push: (the push, version the channel now has or
# None, ready again from this time or None, entry IDs to forget or None)
Settle = tuple[Pushed, "int | None", "float | None", "list[str] | None"]


@dataclass(frozen=True, slots=True)
class Accepted:
    """What on_accept hears: `channel` accepted `version` of `sku`, covering entries committed at these
    times (ms) with these urgencies."""

    channel: str
    sku: str
    version: int
    quantity: int
    accepted_ms: int
    entries: tuple[tuple[int, int], ...]  # (commit ms, rank: ZERO, URGENT or NORMAL)


class Pusher:
    def __init__(self, state: ChannelState, cycle: PushCycle, defer: Callable[[int, str], None],
                 on_accept: Callable[[Accepted], None] | None = None) -> None:
        self.state, self.cycle = state, cycle
        self.defer = defer  # (partition, entry ID): an entry pending under this consumer is not held
        self.on_accept = on_accept
        self._accepted: dict[str, tuple[int, int]] = {}  # sku -> (version, ms), for on_accept of skipped entries

    async def push(self, batch: list[SkuWork], probe: bool) -> None:
        """Push a batch handed out by the coalescer (probe: the half-open circuit's one call)."""
        s = self.state
        try:
            settle: list[Settle] = []
            decide = functools.partial(self._decide, probe=probe, settle=settle)
            rnd = await self.cycle.run(batch, rank=min(w.urgency for w in batch), decide=decide)
            if rnd.called and rnd.error is None and any(p.result is not None and p.result.ok for p in rnd.pushed):
                s.last_push_ms = int(time.time() * 1000)  # (`last push` is the last call the channel accepted)
            elif probe:  # nothing was called: the probe has not told us anything
                s.breaker.probing = False
            late = self._settle(settle)
            if late:
                await self._acknowledge(late)
        except Exception as e:  # Redis down, a bug: hold the SKUs and try again later
            if isinstance(e, RedisError):  # (one outage, one bounded log: stocksync.outage)
                s.outage.failed(e, "push")
            else:
                log.exception("%s: push of %d SKUs failed", s.channel, len(batch))
            s.error(f"{type(e).__name__}: {e}")
            if probe:
                s.breaker.failure()
            retry = time.monotonic() + 1.0
            for w in batch:
                if w.busy:
                    s.coalescer.settle(w, None, retry_at=retry)

    async def _decide(self, rnd: Round, *, probe: bool, settle: list[Settle]) -> None:
        """What each SKU's outcome means for this worker (before the cycle records and acknowledges)."""
        s = self.state
        if rnd.called:
            s.push_seconds.observe(time.monotonic() - rnd.claimed_at)  # (the call came right after the claims)
            self._heard(rnd.error, probe)
        closed = s.breaker.state == CLOSED or probe
        for p in rnd.pushed:
            w, status = p.job, p.status
            if status == BUSY:
                settle.append((p, None, rnd.claimed_at + CONTENDED_RETRY_S, None))
            elif status == GONE:  # nothing to list
                p.repays = bool(w.recheck_at)
                log.warning("%s: SKU %s no longer exists; acknowledging its entries", s.channel, w.sku)
                settle.append((p, None, None, w.ids))
            elif status == CURRENT:  # the channel has this version or newer: no call
                settle.append((p, p.version, None, None))
                s.stats["skipped"] += 1
                self._report(w, p.version, None, rnd.claimed_ms)
            elif status == ACCEPTED:
                p.repays = bool(w.recheck_at) and w.started >= w.recheck_at  # this push is the channel's last word
                settle.append((p, p.version, None, None))
                s.stats["accepted"] += 1
                now_ms = int(time.time() * 1000)
                if w.entries:
                    s.risk.landed(w.sku, p.update.quantity, min(e.ts_ms for e in w.entries.values()), now_ms,
                                  risk=w.risk)
                self._report(w, p.version, p.update.quantity, now_ms)
            else:
                await self._failed(p, probe, closed, settle)

    def _heard(self, error: PushError | None, probe: bool) -> None:
        """The call's outcome as a whole: the circuit breaker's, and a 429's channel-wide pause."""
        s = self.state
        s.stats["calls"] += 1
        if error is None:
            s.breaker.success()
            return
        s.last_error = str(error)
        if isinstance(error, TransientError) and error.throttled:
            s.stats["throttled"] += 1
            s.paused_until = max(s.paused_until, time.monotonic() + (error.retry_after or 1.0))
            if probe:
                s.breaker.probing = False
        elif not error.permanent:
            s.stats["failed_calls"] += 1
            s.breaker.failure()

    async def _failed(self, p: Pushed, probe: bool, closed: bool, settle: list[Settle]) -> None:
        s, o, w, r = self.state, self.state.options, p.job, p.result
        s.last_error = r.error
        if p.status == UNANSWERED:  # (the cycle keeps its lease and owes the recheck)
            s.stats["unanswered"] += 1
        elif p.status == THROTTLED:  # the channel's pace: ready again when the pause ends, no attempt counted
            settle.append((p, None, max(s.paused_until, time.monotonic() + CONTENDED_RETRY_S), None))
            return
        if not r.permanent and closed and not probe:
            w.attempts += 1
        give_up = r.permanent or w.attempts >= o.max_attempts
        if not w.entries:  # a recheck alone: retried with backoff, given up after max_attempts
            if give_up:
                log.warning("%s: recheck of SKU %s given up: %s", s.channel, w.sku, r.error)
                p.repays = True
            settle.append((p, None, None if give_up else self._backoff(w, r.retry_after), None))
        elif give_up:
            entries = list(w.entries.values())
            if await dlq.dead_letter(s.redis, s.keys, s.channel, w.partition, w.sku, entries,
                                     "permanent" if r.permanent else "max_attempts", w.attempts + r.permanent, r.error):
                s.stats["dead_letters"] += 1
            settle.append((p, None, None, [e.id for e in entries]))
        else:
            settle.append((p, None, self._backoff(w, r.retry_after), None))

    def _backoff(self, w: SkuWork, retry_after: float | None) -> float:
        o = self.state.options
        return time.monotonic() + backoff_s(max(w.attempts, 1), o.backoff_base_ms / 1000, o.backoff_cap_ms / 1000,
                                            retry_after)

    def _settle(self, settle: list[Settle]) -> dict[int, list[str]]:
        """Hand the SKUs back to the coalescer; answers the entries to acknowledge still, per partition:
        those taken in while the push was being recorded, at or below the version the channel now has (the
        pushed version is the store's, newer than the entries read)."""
        s = self.state
        late: dict[int, list[str]] = {}
        for p, covered, retry_at, drop in settle:
            gone = s.coalescer.settle(p.job, covered, retry_at=retry_at, drop=drop)
            if covered is not None and len(gone) > len(p.acks):
                acked = set(p.acks)
                late.setdefault(p.job.partition, []).extend(e.id for e in gone if e.id not in acked)
        return late

    async def _acknowledge(self, late: dict[int, list[str]]) -> None:
        s = self.state
        for partition, ids in late.items():
            try:
                await s.redis.xack(s.keys.events(partition), s.channel, *ids)
            except RedisError as e:
                log.warning("%s: acknowledging %d covered entries failed (%s); read again later", s.channel,
                            len(ids), e)
                self.defer(partition, min(ids, key=groups.id_tuple))

    def _report(self, w: SkuWork, version: int, quantity: int | None, now_ms: int) -> None:
        if self.on_accept is None:
            return
        if quantity is not None:
            self._accepted[w.sku] = (version, now_ms)
            at = now_ms
        else:  # already accepted earlier (by us, or another consumer): that is when it reached the channel
            v, ms = self._accepted.get(w.sku, (0, now_ms))
            at = ms if v >= version else now_ms
        rank = self.state.coalescer.rank
        covered = tuple((e.ts_ms, rank(e)) for e in w.entries.values() if e.version <= version)
        if covered:
            self.on_accept(Accepted(self.state.channel, w.sku, version, quantity if quantity is not None else -1,
                                    at, covered))
