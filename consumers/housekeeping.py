"""A channel worker's housekeeping: what it does besides reading and pushing, each on its own period.

* reclaim (every reclaim_idle_ms / 2, while the circuit is closed): XAUTOCLAIM of entries idle past
  reclaim_idle_ms when another consumer of the group has pending entries and has not read for that long
  (a dead one's; live consumers, this one included, are left alone, so the entries one defers at
  max_pending are not delivered again and again); then the rechecks other workers owed and did not push
  reclaim_idle_ms past their time (they died) are taken over;
* reap: consumers idle reap_idle_ms with nothing pending are removed from the group;
* trim: the trimmer (consumers/trimmer.py), every trim_interval_ms (0: never);
* heartbeat: the worker's status in <prefix>:status:<channel>, every heartbeat_ms;
* SKU map refresh, every sku_map_refresh_ms: a SKU whose channel name changed is pushed again under its
  new name at once (no sale may come for a while), and 0 is listed under an old name no SKU uses any more
  (orders of that listing would take nothing; not on a versioned channel, whose receiver retires names
  itself). The map is taken as read at once: what a Redis error interrupts is done at the next refresh.
  The per-SKU rules (stocksync.inventory_rules) are re-read on the same period when they changed, and the
  SKUs whose rules changed are pushed again at once;
* expire, every second: the reservations of every partition whose time has passed end (their holds go
  back to available: stocksync_expire), whether or not a call touches them.

A Redis error ends the round (what was due stays due) and is logged as part of the outage (the worker's
ChannelState.outage: bounded lines, no traceback); housekeeping goes on. A heartbeat that reaches Redis
ends the outage. Heartbeats of other consumers of the channel older than STALE_BEATS beats (and at least
STALE_MIN_S) are removed with each heartbeat: a killed worker's does not stay for ever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
from redis.exceptions import RedisError

from stocksync import library
from stocksync.reservations import expire_due

from . import groups
from .adapters import PushError, Update
from .retry import CLOSED
from .state import ChannelState
from .status import read_beat, stale_beats
from .trimmer import trim_all

log = logging.getLogger(__name__)
UNRENEWED_BEATS = 3  # a heartbeat unchanged this many of its beats is not being renewed
EXPIRE_EVERY_S = 1.0  # due reservations end at most this late when no call touches them

TakeIn = Callable[[int, list, dict[str, int]], Awaitable[None]]  # (partition, entries, deliveries)
Owe = Callable[[int, list[str], float], Awaitable[None]]  # (partition, SKUs, delay s): a recheck owed


@dataclass(slots=True)
class _Chore:
    run: Callable[[], Awaitable[object]]
    period: float  # seconds
    due: float  # time.monotonic()


class Housekeeping:
    def __init__(self, state: ChannelState, take_in: TakeIn, launch: Callable[[], None], owe: Owe) -> None:
        self.state, self.take_in, self.launch, self.owe = state, take_in, launch, owe
        self._remapped: dict[str, str] = {}  # SKU -> old channel SKU, of a map change not yet acted on
        self._orphans: set[str] = set()  # channel SKUs no SKU uses any more, to be listed at 0
        self._retiring = False
        self._beats: dict[str, tuple[str, float]] = {}  # consumer -> its heartbeat as last read, since when

    async def run(self) -> None:
        s = self.state
        chores = self._chores()
        while not s.stopping.is_set():
            now = time.monotonic()
            try:
                for chore in chores:
                    if now >= chore.due:
                        chore.due = now + chore.period
                        await chore.run()
            except RedisError as e:
                s.outage.failed(e, "housekeeping")
            await s.sleep(max(min(c.due for c in chores) - time.monotonic(), 0.005))

    def _chores(self) -> list[_Chore]:
        o, now = self.state.options, time.monotonic()
        reap = min(o.reap_idle_ms / 4000, 60.0)
        chores = [_Chore(self.heartbeat, o.heartbeat_ms / 1000, now),
                  _Chore(self._reclaim, max(o.reclaim_idle_ms / 2000, 0.05), now + o.reclaim_idle_ms / 2000)]
        if o.trim_interval_ms:
            chores.append(_Chore(self._trim, o.trim_interval_ms / 1000, now + o.trim_interval_ms / 1000))
        if o.sku_map_refresh_ms:
            period = o.sku_map_refresh_ms / 1000
            chores.append(_Chore(self.refresh_sku_map, period, now + period))
            chores.append(_Chore(self.refresh_rules, period, now + period))
        chores.append(_Chore(self._expire, EXPIRE_EVERY_S, now + EXPIRE_EVERY_S))
        chores.append(_Chore(self._reap, reap, now + reap))
        return chores

    async def heartbeat(self) -> None:
        s = self.state
        key = s.keys.channel_status(s.channel)
        await s.redis.hset(key, s.consumer, orjson.dumps(s.status()))
        s.beat_at = time.monotonic()
        s.outage.ok()
        beats = await s.redis.hgetall(key)
        gone = [name for name in stale_beats(beats, int(time.time() * 1000), keep=s.consumer)
                if name in self._unrenewed(beats)]
        if gone:  # (a killed worker never removes its own)
            await s.redis.hdel(key, *gone)
            log.info("%s: removed the heartbeats of %d workers gone for good: %s", s.channel, len(gone),
                     ", ".join(sorted(gone)))

    def _unrenewed(self, beats: dict[str, str]) -> set[str]:
        """The heartbeats that have not changed for UNRENEWED_BEATS of their beats, by this process's own
        clock. A heartbeat is removed only when its timestamp is old and it is not being renewed: the
        timestamps come from the workers' hosts' clocks, and a skew between hosts must not make live workers
        remove each other's heartbeats (a live one rewrites its own every beat)."""
        now = time.monotonic()
        self._beats = {name: self._beats[name] if name in self._beats and self._beats[name][0] == raw else (raw, now)
                       for name, raw in beats.items()}
        return {name for name, (raw, since) in self._beats.items()
                if (now - since) * 1000 > UNRENEWED_BEATS * int(read_beat(raw).get("heartbeat_ms", 1000))}

    async def _trim(self) -> None:
        s = self.state
        await trim_all(s.redis, s.keys, s.options.retention_ms)

    async def _expire(self) -> None:
        s = self.state
        ended = await expire_due(s.redis, s.keys)
        if ended:
            s.stats["reservations_expired"] += ended

    async def refresh_rules(self) -> None:
        """Re-read the per-SKU rules when they changed; push the SKUs whose rules changed again now."""
        s = self.state
        changed = await s.rules.refresh()
        s.risk.overrides = s.rules.rules
        if changed:
            log.info("%s: rules changed for %d SKUs; pushing them again", s.channel, len(changed))
            for sku in sorted(changed):
                await self.owe(s.keys.partition(sku), [sku], 0.0)
            self.launch()

    async def _reap(self) -> None:
        s = self.state
        for p in range(s.keys.partitions):
            for name in await library.reap_consumers(s.keys, p, s.channel, s.options.reap_idle_ms,
                                                     s.consumer).run(s.redis):
                log.info("%s: removed idle consumer %s", s.channel, name)

    # ----- reclaiming --------------------------------------------------------------------------------

    async def _reclaim(self) -> None:
        if self.state.breaker.state == CLOSED:
            await self.reclaim()
            await self._take_over_rechecks()

    async def reclaim(self) -> int:
        """Claim entries idle past reclaim_idle_ms from the group's consumers when one of the others looks
        dead (pending entries, no read for reclaim_idle_ms)."""
        s = self.state
        total = 0
        for p in range(s.keys.partitions):
            if not await self._anyone_dead(p):
                continue
            claimed, deleted = await groups.autoclaim(s.redis, s.keys, p, s.channel, s.consumer,
                                                      s.options.reclaim_idle_ms)
            if deleted:
                s.stats["reclaimed_deleted"] += len(deleted)
                log.info("%s: %d pending entries were deleted from the stream; dropped", s.channel, len(deleted))
            fresh = [(i, f) for i, f in claimed if (p, i) not in s.coalescer]
            if not fresh:
                continue
            counts = await groups.deliveries(s.redis, s.keys, p, s.channel, s.consumer, [i for i, _ in fresh])
            s.stats["reclaimed"] += len(fresh)
            total += len(fresh)
            log.info("%s: reclaimed %d idle entries of partition %d", s.channel, len(fresh), p)
            await self.take_in(p, fresh, counts)
        return total

    async def _anyone_dead(self, p: int) -> bool:
        """Whether another consumer of the group has pending entries on p and has not read for
        reclaim_idle_ms (a live one reads at least every block_ms, even while holding max_pending)."""
        s = self.state
        for c in await s.redis.xinfo_consumers(s.keys.events(p), s.channel):
            if c["name"] != s.consumer and int(c["pending"]) and int(c["idle"]) >= s.options.reclaim_idle_ms:
                return True
        return False

    async def _take_over_rechecks(self) -> None:
        """Push what other workers owed and did not push reclaim_idle_ms past its time (they died)."""
        s = self.state
        until_ms = int(time.time() * 1000) - s.options.reclaim_idle_ms
        now = time.monotonic()
        for p in range(s.keys.partitions):
            for sku, owed_ms in await library.owed(s.redis, s.keys, p, s.channel, until_ms):
                w = s.coalescer.work.get(sku)
                if w is None or not w.recheck_at:
                    s.stats["rechecks_taken_over"] += 1
                    s.coalescer.recheck(sku, p, now, owed_ms)
        self.launch()

    # ----- the SKU map -------------------------------------------------------------------------------

    async def refresh_sku_map(self) -> None:
        """Push a SKU whose channel name changed under its new name now (no sale may come for a while), and
        list 0 under an old name that no SKU uses any more: orders of that listing would take nothing.
        (The map is taken as read at once: what a Redis error interrupts here is done at the next refresh.)"""
        s = self.state
        changed = await s.skus.refresh()
        if changed:
            log.info("%s: channel SKU changed for %d SKUs; pushing them again", s.channel, len(changed))
        self._remapped.update(changed)
        for sku, old in list(self._remapped.items()):
            await self.owe(s.keys.partition(sku), [sku], 0.0)
            if not s.adapter.versioned:  # (a versioned receiver owns its names)
                self._orphans.add(old)
            del self._remapped[sku]
        self.launch()
        for name in list(self._orphans):
            if s.skus.in_use(name, bool(await s.redis.exists(s.keys.sku(name)))):
                self._orphans.discard(name)
        if self._orphans and not self._retiring:
            self._retiring = True
            s.spawn(self._retire(sorted(self._orphans)))

    async def _retire(self, names: list[str]) -> None:
        """List 0 under channel SKUs no SKU uses any more; what fails for now is tried at the next refresh."""
        s, adapter = self.state, self.state.adapter
        try:
            for i in range(0, len(names), adapter.batch_size):
                batch = names[i : i + adapter.batch_size]
                try:
                    results = await adapter.push([Update(n, n, 0, 0) for n in batch],
                                                 time.monotonic() + adapter.timeout_s + 1)
                except PushError as e:
                    log.warning("%s: listing 0 under %d unused channel SKUs failed (%s); trying again later",
                                s.channel, len(batch), e)
                    return
                for r in results:
                    if r.ok or r.permanent:  # (permanent: no such listing, nothing to retire)
                        self._orphans.discard(r.sku)
                        log.info("%s: channel SKU %s is no SKU's any more: %s", s.channel, r.sku,
                                 "listed 0" if r.ok else f"not retired ({r.error})")
        finally:
            self._retiring = False
