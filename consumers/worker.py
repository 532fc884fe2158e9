"""The channel worker: read the events streams as the channel's consumer group, coalesce per SKU, push
the channel's view of each SKU's current quantity, record what the channel accepted, acknowledge.

One ChannelWorker per channel (a process may run several; several processes of one channel share its
streams as consumers of the same group). Tasks of a ChannelWorker:

* a reader per partition: XREADGROUP (its own pending entries first, after a restart under the same
  consumer name), into the Coalescer; it stops pulling while the circuit is not closed. At max_pending
  held entries it keeps reading new entries (an urgent change must not sit unread behind a backlog) but
  holds only urgent entries and those of SKUs held as urgent; the others stay pending under this consumer and
  unacknowledged, and the reader reads them again from its pending list (history from a per-partition
  cursor, count limited to the room left) once below max_pending. Past twice max_pending (urgent
  entries) it stops reading altogether, so memory stays bounded;
* the dispatcher: hands the most urgent ready SKUs, batch_size at a time, to push tasks, at most
  max_in_flight at once, so reads keep flowing while pushes are in flight;
* a push (stocksync_push_claim, the adapter call, stocksync_push_done): lease the SKUs, read the current
  quantity and the version the channel has; skip (acknowledge) what the channel already has; push the
  rest; record the accepted versions and XACK the entries they cover in one call. The claims and dones
  of concurrent pushes are merged into one call per partition (ledger.LedgerBatcher, group commit). Transient failures
  back off with full jitter (Retry-After honoured) and feed the circuit breaker; permanent ones and
  SKUs past max_attempts go to the dead-letter stream with their XACK (stocksync_dead_letter). A call
  that got no answer (timeout, dropped connection) keeps its lease and schedules a recheck: the current
  quantity is pushed again recheck_ms later even if the channel has that version, since the abandoned
  request may land after a newer push. What is owed is kept in Redis too (stocksync_recheck), so a
  worker that dies owing it leaves it to the others. Channel SKU names come from ChannelSkus (the admin
  API's map, then the config file's);
* housekeeping: XAUTOCLAIM of entries idle past reclaim_idle_ms when another consumer of the group has
  pending entries and has not read for that long (a dead one's; live consumers, this one included, are
  left alone, so the entries one defers at max_pending are not delivered again and again), the rechecks
  dead workers owed, removal of consumers idle with nothing pending, the trimmer, a heartbeat in
  <prefix>:status:<channel>, and a refresh of the SKU map (a SKU whose channel name changed is pushed
  again; 0 is listed under an old name no SKU uses any more);
* an initial sync, when this worker created the channel's group on a stream that no longer holds every
  change (or finds one unfinished): every SKU the channel does not have at its current version, pushed
  once (resync.py).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from redis.exceptions import RedisError

from stocksync import library
from stocksync.channels import ChannelConfig
from stocksync.connection import AnyRedis
from stocksync.keys import Keys

from . import groups, ledger, resync
from .adapters import Adapter, PushError, Result, TransientError, Update, make_adapter, push_rank
from .coalescer import NORMAL, URGENT, ZERO, Coalescer, Entry, SkuWork
from .options import WorkerOptions
from .retry import CLOSED, CircuitBreaker, backoff_s
from .skumap import ChannelSkus
from .trimmer import trim_all

log = logging.getLogger(__name__)

LEASE_MARGIN_S = 0.25  # a call must end this long before the lease does
CONTENDED_RETRY_S = 0.02  # another consumer holds the SKU's lease: look again after this
LIMITER_QUEUE_S = 0.25  # at most this much of the rate limit's worth of pushes handed to the adapter at once


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


class ChannelWorker:
    def __init__(self, redis: AnyRedis, keys: Keys, config: ChannelConfig, options: WorkerOptions | None = None,
                 adapter: Adapter | None = None, on_accept: Callable[[Accepted], None] | None = None) -> None:
        self.redis, self.keys, self.config = redis, keys, config
        self.options = options or WorkerOptions()
        self.channel = config.name
        self.consumer = self.options.consumer
        self.adapter = adapter or make_adapter(config)
        self.on_accept = on_accept
        o = self.options
        self.breaker = CircuitBreaker(o.breaker_threshold, o.breaker_open_ms / 1000, o.breaker_max_open_ms / 1000)
        self.coalescer = Coalescer(self._rank)
        self.skus = ChannelSkus(redis, keys, config)
        # an unanswered push may land this long after it ended: push the current quantity again then
        self.recheck_s = (o.recheck_ms / 1000) if o.recheck_ms else 4 * self.adapter.timeout_s
        self.ledger = ledger.LedgerBatcher(redis, keys, self.channel, self.consumer, self.options.lease_ms)
        self.paused_until = 0.0  # a 429's Retry-After, channel-wide
        self.in_flight = 0
        self.stats = collections.Counter()
        self.last_push_ms = 0
        self.last_error = ""
        self._kick = asyncio.Event()
        self._wake_at = 0.0  # when the sleeping dispatcher wakes on its own (0: it is awake)
        self._linger_until: float | None = None  # a partial batch waits until then to fill up
        self._pull_ok = asyncio.Event()
        self._stopping = asyncio.Event()
        self._pushes: set[asyncio.Task] = set()
        self._accepted: dict[str, tuple[int, int]] = {}  # sku -> (version, ms), for on_accept of skipped entries
        # partition -> a history cursor: our pending entries after it may not be held (deferred at
        # max_pending, or from a previous life under this name: "0" at start); absent: all are held
        self._resume: dict[int, str] = {p: "0" for p in range(keys.partitions)}
        self._hard_cap = 2 * self.options.max_pending  # held entries past which reads stop
        self._remapped: dict[str, str] = {}  # SKU -> old channel SKU, of a map change not yet acted on
        self._orphans: set[str] = set()  # channel SKUs no SKU uses any more, to be listed at 0
        self._retiring = False
        self.started = asyncio.Event()

    # ----- ordering --------------------------------------------------------------------------------

    def _rank(self, e: Entry) -> int:
        """ZERO: a drop to 0 listed (each sale of the channel is an oversell until it lists 0); URGENT: where
        an oversell can happen, a low listed quantity or a sharp drop; NORMAL: the rest."""
        listed = self.config.rules.listed(e.available)
        if listed == 0 and e.delta < 0:
            return ZERO
        before = e.available - e.delta
        return URGENT if listed <= self.options.low_stock or (e.delta < 0 and -e.delta * 2 >= before) else NORMAL

    def _urgent(self, e: Entry) -> bool:
        return self._rank(e) != NORMAL

    # ----- running -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until stop() (or cancellation); in-flight pushes are allowed to finish."""
        unsynced = await groups.ensure_groups(self.redis, self.keys, self.channel, self.options.start_id)
        await self.skus.refresh()
        self._update_gates()
        tasks = [asyncio.create_task(self._reader(p), name=f"read-{self.channel}-{p}")
                 for p in range(self.keys.partitions)]
        sync = asyncio.create_task(self._initial_sync(unsynced), name=f"sync-{self.channel}") if unsynced else None
        tasks += [asyncio.create_task(self._dispatcher(), name=f"dispatch-{self.channel}"),
                  asyncio.create_task(self._housekeeping(), name=f"housekeeping-{self.channel}")]
        self.started.set()
        log.info("worker %s of channel %s started (%d partitions)", self.consumer, self.channel, self.keys.partitions)
        try:
            stop = asyncio.create_task(self._stopping.wait())
            done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stop and t.exception():
                    raise t.exception()
        finally:
            self._stopping.set()
            tasks += [sync] if sync else []
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._pushes:
                await asyncio.wait(self._pushes, timeout=self.adapter.timeout_s + 1)
            for t in self._pushes:
                t.cancel()
            try:
                await self.redis.hdel(self.keys.channel_status(self.channel), self.consumer)
            except RedisError:
                pass
            await self.adapter.close()

    def stop(self) -> None:
        self._stopping.set()

    def _update_gates(self) -> None:
        if self.breaker.state == CLOSED and len(self.coalescer) < self._hard_cap:
            self._pull_ok.set()
        else:
            self._pull_ok.clear()

    # ----- reading -----------------------------------------------------------------------------------

    async def _reader(self, p: int) -> None:
        stream, failures, o = self.keys.events(p), 0, self.options
        while not self._stopping.is_set():
            if not self._pull_ok.is_set():
                await self._wait(self._pull_ok, 0.5)
                self._update_gates()
                continue
            room = o.max_pending - len(self.coalescer)
            resume = self._resume.get(p)
            history = resume is not None and room > 0  # our own pending entries not held (deferred, or a previous life's)
            try:
                reply = await self.redis.xreadgroup(
                    self.channel, self.consumer, {stream: resume if history else ">"},
                    count=min(o.read_count, room) if history else o.read_count,
                    block=None if history else o.block_ms)
                failures = 0
            except RedisError as e:
                failures += 1
                log.warning("%s: reading %s failed (%s); retrying", self.channel, stream, e)
                await self._wait(self._stopping, min(0.1 * 2 ** failures, 5))
                continue
            entries = reply[0][1] if reply else []
            if history and self._resume.get(p) == resume:  # (unless _take_in moved the cursor back meanwhile)
                if entries:
                    self._resume[p] = entries[-1][0]
                else:
                    del self._resume[p]
            if not entries:
                continue
            try:
                await self._take_in(p, entries)
            except Exception as e:  # noqa: BLE001 - a reader that dies stops the whole worker
                # What was not taken in stays pending under our name: read again from our pending list.
                self._defer(p, entries[0][0])
                failures += 1
                log.exception("%s: taking in %d entries of %s failed; going on", self.channel, len(entries), stream)
                self.last_error = f"{type(e).__name__}: {e}"[:300]
                await self._wait(self._stopping, min(0.1 * 2 ** failures, 5))

    async def _take_in(self, p: int, entries: list, deliveries: dict[str, int] | None = None) -> None:
        """Hold the entries for pushing. A Redis error while dead-lettering one entry or acknowledging the
        deleted ones is logged and skipped: those entries stay pending under this consumer (the reader reads
        them again from its pending list), and the rest of the batch is still taken in. At max_pending only
        entries of urgent or held SKUs are taken in, the others are deferred the same way."""
        junk, deferred, o = [], 0, self.options
        for entry_id, fields in entries:
            held = len(self.coalescer)
            if held >= o.max_pending and (held >= self._hard_cap or entry_id in self.coalescer):
                # at the hard cap nothing more is held; (an entry held already is not deferred either)
                if entry_id not in self.coalescer:
                    deferred += 1
                    self._defer(p, entry_id)
                continue
            e = groups.parse(p, entry_id, fields)
            if e is None:
                if fields:  # not a stock event: keep it for an operator
                    try:
                        await library.dead_letter(self.keys, p, self.channel, fields.get("sku") or "?", 0,
                                                 "malformed", 0, f"fields {sorted(fields)}", [entry_id]).run(self.redis)
                    except RedisError as err:
                        self._take_in_failed("dead-lettering malformed entry " + entry_id, err)
                        self._defer(p, entry_id)
                else:  # deleted from the stream: nothing to push
                    junk.append(entry_id)
                continue
            if deliveries and deliveries.get(entry_id, 1) > self.options.max_deliveries:
                try:
                    await self._dead_letter(e.sku, p, [e], "max_deliveries", deliveries[entry_id],
                                            "delivered too often (consumers died handling it?)")
                except RedisError as err:
                    self._take_in_failed("dead-lettering entry " + entry_id, err)
                    self._defer(p, entry_id)
                continue
            if held >= o.max_pending and not self._urgent(e) and not self.coalescer.is_urgent(e.sku):
                # at max_pending only urgent entries, and those of SKUs held as urgent (acknowledged with
                # their push), are taken in; this one stays pending, unacknowledged, and is read again once
                # there is room (a held SKU's push carries the current quantity anyway: the entry is then
                # acknowledged without a call). Holding every entry of a held SKU instead would fill the
                # hard cap when most SKUs are held, and stop the reads again.
                deferred += 1
                self._defer(p, entry_id)
                continue
            self.coalescer.add(e)
        if deferred:
            self.stats["deferred"] += deferred
        if junk:
            try:
                await self.redis.xack(self.keys.events(p), self.channel, *junk)
            except RedisError as err:
                self._take_in_failed(f"acknowledging {len(junk)} deleted entries", err)
                self._defer(p, junk[0])
        self._update_gates()
        self._launch()

    def _defer(self, p: int, entry_id: str) -> None:
        """entry_id, pending under this consumer, is not held: move p's history cursor to just before it."""
        before = _id_before(entry_id)
        cursor = self._resume.get(p)
        if cursor is None or _id_tuple(before) < _id_tuple(cursor):
            self._resume[p] = before

    def _take_in_failed(self, what: str, error: RedisError) -> None:
        self.stats["take_in_errors"] += 1
        self.last_error = f"{self.channel}: {what} failed: {error}"[:300]
        log.warning("%s: %s failed (%s); it stays pending and is read again later", self.channel, what, error)

    # ----- dispatching -------------------------------------------------------------------------------

    async def _dispatcher(self) -> None:
        while not self._stopping.is_set():
            self._kick.clear()
            self._start_pushes()
            now = time.monotonic()
            wake = self._next_timer()
            if self.breaker.state != CLOSED and self.breaker.wait_s() > 0:
                wake = min(wake, now + self.breaker.wait_s())
            self._wake_at = wake
            await self._wait(self._kick, wake - now)
            self._wake_at = 0.0  # awake: nothing needs to kick

    def _launch(self) -> None:
        """Start pushes while there is room and ready work. Called directly where work or room appears
        (entries taken in, a push ended), which is cheaper than waking the dispatcher each time (a
        wait_for per wake-up: a task and a timer); the dispatcher is woken only when a timer it sleeps
        on may have changed (a delayed SKU, a channel-wide pause, the circuit)."""
        if self._stopping.is_set():
            return
        self._start_pushes()
        if self.breaker.state != CLOSED or self._next_timer() < self._wake_at:
            self._kick.set()

    def _next_timer(self) -> float:
        """The earliest time the dispatcher must look again (a delayed SKU due, a pause ending)."""
        now = time.monotonic()
        at = now + 1.0
        if self.paused_until > now:
            at = min(at, self.paused_until)
        due = self.coalescer.next_due()
        if due is not None:
            at = min(at, max(due, now + 0.001))
        if self._linger_until is not None:
            at = min(at, max(self._linger_until, now + 0.001))
        return at

    def _start_pushes(self) -> None:
        linger = self.options.linger_ms / 1000 if self.adapter.batch_size > 1 else 0.0
        self._linger_until = None
        while (self.in_flight < self._room_in_flight() and time.monotonic() >= self.paused_until
               and self.coalescer.has_ready()):
            if linger and self.in_flight and self.breaker.state == CLOSED:
                # a call is already under way: let a partial batch fill up for a moment (fewer calls)
                self._linger_until = self.coalescer.linger_until(self.adapter.batch_size, linger)
                if self._linger_until is not None:
                    break
            if not self.breaker.allow():
                break
            probe = self.breaker.probe
            batch = self.coalescer.take(1 if probe else self.adapter.batch_size)
            if not batch:
                if probe:
                    self.breaker.probing = False
                break
            self.in_flight += 1
            task = asyncio.create_task(self._push(batch, probe))
            self._pushes.add(task)
            task.add_done_callback(self._pushes.discard)

    def _room_in_flight(self) -> int:
        """Pushes that may be under way at once. Behind a client-side rate limit, pushes past what it lets
        through in the next LIMITER_QUEUE_S would only queue inside the adapter (first come, first
        served), where an urgent SKU handed out later waits behind them: keep them in the coalescer
        instead, ranked."""
        limiter = getattr(self.adapter, "limiter", None)
        if limiter is None:
            return self.adapter.max_in_flight
        return min(self.adapter.max_in_flight, max(2, int(limiter.capacity + limiter.rate * LIMITER_QUEUE_S)))

    async def _push(self, batch: list[SkuWork], probe: bool) -> None:
        push_rank.set(min(w.urgency for w in batch))  # (this task's own context: the rate limiter's order)
        try:
            await self._push_batch(batch, probe)
        except Exception as e:  # Redis down, a bug: hold the SKUs and try again later
            log.exception("%s: push of %d SKUs failed", self.channel, len(batch))
            self.last_error = f"{type(e).__name__}: {e}"[:300]
            if probe:
                self.breaker.failure()
            retry = time.monotonic() + 1.0
            for w in batch:
                if w.busy:
                    self.coalescer.settle(w, None, retry_at=retry)
        finally:
            self.in_flight -= 1
            self._update_gates()
            self._launch()

    async def _push_batch(self, batch: list[SkuWork], probe: bool) -> None:
        o = self.options
        start = time.monotonic()
        deadline = start + o.lease_ms / 1000 - LEASE_MARGIN_S
        works = {w.sku: w for w in batch}
        parts: dict[int, list[str]] = collections.defaultdict(list)
        for w in batch:
            parts[w.partition].append(w.sku)
        if len(parts) == 1:
            ((p, skus),) = parts.items()
            claims = [await self.ledger.claim(p, skus)]
        else:
            claims = await asyncio.gather(*(self.ledger.claim(p, skus) for p, skus in parts.items()))
        release: dict[int, list[str]] = collections.defaultdict(list)
        accepted: dict[int, dict[str, int]] = collections.defaultdict(dict)
        acks: dict[int, list[str]] = collections.defaultdict(list)
        settle: list[tuple[SkuWork, int | None, float | None, list[str] | None]] = []
        updates: list[Update] = []
        owed: list[SkuWork] = []  # rechecks owed from now on (stocksync_recheck)
        repaid: list[SkuWork] = []  # rechecks this push settled
        for c in (c for part in claims for c in part):
            w = works[c.sku]
            if not c.leased:
                settle.append((w, None, time.monotonic() + CONTENDED_RETRY_S, None))
                continue
            release[w.partition].append(c.sku)
            if c.version is None:  # the SKU is gone: nothing to list
                if w.recheck_at:
                    repaid.append(w)
                log.warning("%s: SKU %s no longer exists; acknowledging its entries", self.channel, c.sku)
                acks[w.partition] += w.ids
                settle.append((w, None, None, w.ids))
            elif c.pushed >= w.version and not w.forced:  # the channel has this version or newer: no call
                acks[w.partition] += [e.id for e in w.entries.values() if e.version <= c.pushed]
                settle.append((w, c.pushed, None, None))
                self.stats["skipped"] += 1
                self._report(w, c.pushed, None)
            else:  # (a recheck pushes the current quantity even when the channel has its version)
                updates.append(Update(c.sku, self.skus.channel_sku(c.sku), self.config.rules.listed(c.available),
                                      c.version))

        results: dict[str, Result] = {}
        error: PushError | None = None
        if updates:
            try:
                results = {r.sku: r for r in await self.adapter.push(updates, deadline)}
            except PushError as e:
                error = e
            except Exception as e:  # an adapter bug or an unexpected reply: treat as transient
                log.exception("%s: adapter error", self.channel)
                error = TransientError(f"{type(e).__name__}: {e}")
            self.stats["calls"] += 1
            if error is not None:
                self.last_error = str(error)
                results = {u.sku: Result.failed(u.sku, str(error), permanent=error.permanent,
                                                retry_after=error.retry_after, ambiguous=error.ambiguous)
                           for u in updates}
                if isinstance(error, TransientError) and error.throttled:
                    self.stats["throttled"] += 1
                    self.paused_until = max(self.paused_until, time.monotonic() + (error.retry_after or 1.0))
                    if probe:
                        self.breaker.probing = False
                elif not error.permanent:
                    self.stats["failed_calls"] += 1
                    self.breaker.failure()
            else:
                self.breaker.success()

        closed = self.breaker.state == CLOSED or probe
        throttled = bool(updates) and isinstance(error, TransientError) and error.throttled
        for u in updates:
            w = works[u.sku]
            r = results.get(u.sku) or Result.failed(u.sku, "the channel did not answer for this SKU", permanent=False)
            if r.ok:
                if w.recheck_at and w.started >= w.recheck_at:  # this push is the channel's last word
                    repaid.append(w)
                accepted[w.partition][u.sku] = u.version
                acks[w.partition] += [e.id for e in w.entries.values() if e.version <= u.version]
                settle.append((w, u.version, None, None))
                self.stats["accepted"] += 1
                self._report(w, u.version, u.quantity)
                continue
            w.last_error = r.error
            self.last_error = r.error
            if r.ambiguous:
                # Sent without an answer: the channel may still apply it, after a newer push (Amazon and
                # Flipkart have no compare-and-swap). Keep the lease (it covers the abandoned request until
                # it expires; our own retries renew it), and push the current quantity again once that
                # request can no longer land, so the channel's last word is the current quantity.
                release[w.partition].remove(u.sku)
                owed.append(w)
                self.stats["unanswered"] += 1
            elif throttled:
                # the channel's pace, not this SKU's failure: no attempt counted (no growing backoff, no
                # dead letter); it is ready again when the channel-wide pause ends, in urgency order
                settle.append((w, None, max(self.paused_until, time.monotonic() + CONTENDED_RETRY_S), None))
                continue
            if not r.permanent and closed and not probe:
                w.attempts += 1
            if not w.entries:  # a recheck alone: retried with backoff, given up after max_attempts
                if r.permanent or w.attempts >= o.max_attempts:
                    log.warning("%s: recheck of SKU %s given up: %s", self.channel, u.sku, r.error)
                    repaid.append(w)
                    settle.append((w, None, None, None))
                else:
                    delay = backoff_s(max(w.attempts, 1), o.backoff_base_ms / 1000, o.backoff_cap_ms / 1000,
                                      r.retry_after)
                    settle.append((w, None, time.monotonic() + delay, None))
                continue
            if r.permanent or w.attempts >= o.max_attempts:
                reason = "permanent" if r.permanent else "max_attempts"
                await self._dead_letter(u.sku, w.partition, list(w.entries.values()), reason, w.attempts + r.permanent,
                                        r.error)
                settle.append((w, None, None, w.ids))
            else:
                delay = backoff_s(max(w.attempts, 1), o.backoff_base_ms / 1000, o.backoff_cap_ms / 1000, r.retry_after)
                settle.append((w, None, time.monotonic() + delay, None))

        await self._record_rechecks(owed, repaid)
        touched = set(release) | set(acks)
        if len(touched) == 1:
            (p,) = touched
            await self.ledger.done(p, accepted[p], acks[p], release[p])
        elif touched:
            await asyncio.gather(*(self.ledger.done(p, accepted[p], acks[p], release[p]) for p in touched))
        if updates:
            self.last_push_ms = int(time.time() * 1000)
        elif probe:  # nothing was called: the probe has not told us anything
            self.breaker.probing = False
        late: dict[int, list[str]] = collections.defaultdict(list)
        acked: dict[int, set[str]] = {}
        for w, covered, retry_at, drop in settle:
            gone = self.coalescer.settle(w, covered, retry_at=retry_at, drop=drop)
            if covered is not None:
                done_ids = acked.setdefault(w.partition, set(acks[w.partition]))
                late[w.partition] += [e.id for e in gone if e.id not in done_ids]
        # entries taken in while the push was being recorded, at or below the version the channel now has
        # (the pushed version is the store's, newer than the entries read): acknowledge them too
        for p, ids in late.items():
            if not ids:
                continue
            try:
                await self.redis.xack(self.keys.events(p), self.channel, *ids)
            except RedisError as e:
                log.warning("%s: acknowledging %d covered entries failed (%s); read again later", self.channel,
                            len(ids), e)
                self._defer(p, min(ids, key=_id_tuple))

    async def _record_rechecks(self, owed: list[SkuWork], repaid: list[SkuWork]) -> None:
        """Set the rechecks this push made owed (after recheck_s), or settled, here and in Redis: a worker
        that dies owing one leaves it to the others (housekeeping pushes what is owed reclaim_idle_ms past
        its time). Recorded before any entry of those SKUs can be acknowledged (they stay pending until a
        later push is accepted). A settled one is settled with the time it was owed, so a later debt (an
        unanswered push by another worker since) stays."""
        due = collections.defaultdict(list)
        for w in owed:
            due[w.partition].append(w.sku)
        for p, skus in due.items():
            await self._owe(p, skus, self.recheck_s)
        now_ms = int(time.time() * 1000)
        done = collections.defaultdict(list)
        for w in repaid:
            done[(w.partition, w.owed_ms or now_ms)].append(w.sku)
            w.recheck_at, w.owed_ms = 0.0, 0
        for (p, ms), skus in done.items():
            await library.recheck(self.keys, p, self.channel, "done", ms, skus).run(self.redis)

    async def _owe(self, partition: int, skus: list[str], delay_s: float) -> None:
        """A push of each SKU's current quantity is owed delay_s from now, whatever version the channel has:
        held here, and in Redis so that another worker pays it if this one dies."""
        due_ms = int(time.time() * 1000 + delay_s * 1000)
        at = time.monotonic() + delay_s
        for sku in skus:
            self.coalescer.recheck(sku, partition, at, due_ms)
        await library.recheck(self.keys, partition, self.channel, "due", due_ms, skus).run(self.redis)

    async def _take_over_rechecks(self) -> None:
        """Push what other workers owed and did not push reclaim_idle_ms past its time (they died)."""
        until_ms = int(time.time() * 1000) - self.options.reclaim_idle_ms
        now = time.monotonic()
        for p in range(self.keys.partitions):
            for sku, owed_ms in await library.owed(self.redis, self.keys, p, self.channel, until_ms):
                w = self.coalescer.work.get(sku)
                if w is None or not w.recheck_at:
                    self.stats["rechecks_taken_over"] += 1
                    self.coalescer.recheck(sku, p, now, owed_ms)
        self._launch()

    async def _dead_letter(self, sku: str, p: int, entries: list[Entry], reason: str, attempts: int, error: str) -> None:
        version = max((e.version for e in entries), default=0)
        dlq_id = await library.dead_letter(self.keys, p, self.channel, sku, version, reason, attempts,
                                          error, [e.id for e in entries]).run(self.redis)
        if dlq_id:
            self.stats["dead_letters"] += 1
            log.warning("%s: SKU %s dead-lettered (%s after %d attempts): %s", self.channel, sku, reason, attempts, error)

    def _report(self, w: SkuWork, version: int, quantity: int | None) -> None:
        if self.on_accept is None:
            return
        now_ms = int(time.time() * 1000)
        if quantity is not None:
            self._accepted[w.sku] = (version, now_ms)
            at = now_ms
        else:  # already accepted earlier (by us, or another consumer): that is when it reached the channel
            v, ms = self._accepted.get(w.sku, (0, now_ms))
            at = ms if v >= version else now_ms
        covered = tuple((e.ts_ms, self._rank(e)) for e in w.entries.values() if e.version <= version)
        if covered:
            self.on_accept(Accepted(self.channel, w.sku, version, quantity if quantity is not None else -1, at, covered))

    # ----- initial sync ------------------------------------------------------------------------------

    async def _initial_sync(self, partitions: list[int]) -> None:
        """Push every SKU of these partitions that the channel does not have at its current version (the
        group was created on a stream that no longer holds every change), then delete their marks. It
        shares the adapter (its rate limit and connections) with the pushes of new changes and runs one
        batch at a time beside them; a partition where some SKU failed is gone over again later."""
        for p in partitions:
            await self._sync_partition(p)

    async def _sync_partition(self, p: int) -> None:
        delay, last_log = 1.0, time.monotonic()

        def progress(report: resync.ResyncReport) -> None:
            nonlocal last_log
            self.stats["initial_sync"] = report.done
            if time.monotonic() - last_log >= 10:
                last_log = time.monotonic()
                log.info("%s: initial sync of partition %d: %d SKUs pushed, %d current already, %d failed",
                         self.channel, p, report.pushed, report.current, report.failed)

        while not self._stopping.is_set():
            await self._channel_open()
            try:
                report = await resync.resync(self.redis, self.keys, self.config, partitions=[p], force=False,
                                             adapter=self.adapter, progress=progress, ready=self._channel_open)
                await self._sync_busy(report)
                if report.refused:  # (no entry to dead-letter: said here)
                    log.warning("%s: initial sync of partition %d: the channel refused %d SKUs for good, e.g. %s",
                                self.channel, p, report.refused, _examples(report.failures))
                if not report.failed:
                    await self.redis.delete(self.keys.resync(p, self.channel))
                    log.info("%s: initial sync of partition %d done: %d SKUs pushed, %d current already, "
                             "%d refused", self.channel, p, report.pushed, report.current, report.refused)
                    return
                log.warning("%s: initial sync of partition %d: %d SKUs failed (e.g. %s); going over it again in "
                            "%.0f s", self.channel, p, report.failed, _examples(report.failures), delay)
            except Exception as e:  # noqa: BLE001 - Redis down, an adapter bug: go over it again later
                log.exception("%s: initial sync of partition %d failed; going over it again in %.0f s",
                              self.channel, p, delay)
                self.last_error = f"initial sync: {type(e).__name__}: {e}"[:300]
            await self._wait(self._stopping, delay)
            delay = min(delay * 2, 60.0)

    async def _sync_busy(self, report: resync.ResyncReport) -> None:
        """SKUs another consumer was pushing during the pass are gone over again once their leases are
        free (that push may fail): the pass is not done before each of them was taken or found current."""
        busy = report.busy_skus
        while busy and not self._stopping.is_set():
            await self._wait(self._stopping, CONTENDED_RETRY_S * 10)
            again = await resync.resync(self.redis, self.keys, self.config, skus=busy, force=False,
                                        adapter=self.adapter, ready=self._channel_open)
            report.absorb(again)
            busy = again.busy_skus

    async def _channel_open(self) -> None:
        """Wait while the channel is paused (a 429's Retry-After) or its circuit is not closed: what runs
        beside the pushes of new changes (the initial sync) does not call a channel the worker spares."""
        while not self._stopping.is_set():
            wait = max(self.paused_until - time.monotonic(), 0.0)
            if self.breaker.state != CLOSED:
                wait = max(wait, self.breaker.wait_s(), 0.1)
            if wait <= 0:
                return
            await self._wait(self._stopping, wait)

    # ----- housekeeping ------------------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        o = self.options
        now = time.monotonic()
        due = {"reclaim": now + o.reclaim_idle_ms / 2000, "heartbeat": now,
               "trim": now + o.trim_interval_ms / 1000 if o.trim_interval_ms else float("inf"),
               "reap": now + min(o.reap_idle_ms / 4000, 60.0),
               "skumap": now + o.sku_map_refresh_ms / 1000 if o.sku_map_refresh_ms else float("inf")}
        while not self._stopping.is_set():
            now = time.monotonic()
            try:
                if now >= due["heartbeat"]:
                    due["heartbeat"] = now + o.heartbeat_ms / 1000
                    await self.heartbeat()
                if now >= due["reclaim"]:
                    due["reclaim"] = now + max(o.reclaim_idle_ms / 2000, 0.05)
                    if self.breaker.state == CLOSED:
                        await self.reclaim()
                        await self._take_over_rechecks()
                if now >= due["trim"]:
                    due["trim"] = now + o.trim_interval_ms / 1000
                    await trim_all(self.redis, self.keys, o.retention_ms)
                if now >= due["skumap"]:
                    due["skumap"] = now + o.sku_map_refresh_ms / 1000
                    await self._refresh_sku_map()
                if now >= due["reap"]:
                    due["reap"] = now + min(o.reap_idle_ms / 4000, 60.0)
                    for p in range(self.keys.partitions):
                        for name in await library.reap_consumers(self.keys, p, self.channel, o.reap_idle_ms,
                                                                self.consumer).run(self.redis):
                            log.info("%s: removed idle consumer %s", self.channel, name)
            except RedisError as e:
                log.warning("%s: housekeeping failed: %s", self.channel, e)
            await self._wait(self._stopping, max(min(due.values()) - time.monotonic(), 0.005))

    async def _refresh_sku_map(self) -> None:
        """Push a SKU whose channel name changed under its new name now (no sale may come for a while), and
        list 0 under an old name that no SKU uses any more: orders of that listing would take nothing.
        (The map is taken as read at once: what a Redis error interrupts here is done at the next refresh.)"""
        changed = await self.skus.refresh()
        if changed:
            log.info("%s: channel SKU changed for %d SKUs; pushing them again", self.channel, len(changed))
        self._remapped.update(changed)
        for sku, old in list(self._remapped.items()):
            await self._owe(self.keys.partition(sku), [sku], 0.0)
            if not getattr(self.adapter, "versioned", False):  # (a versioned receiver owns its names)
                self._orphans.add(old)
            del self._remapped[sku]
        self._launch()
        for name in list(self._orphans):
            if self.skus.in_use(name, bool(await self.redis.exists(self.keys.sku(name)))):
                self._orphans.discard(name)
        if self._orphans and not self._retiring:
            self._retiring = True
            task = asyncio.create_task(self._retire(sorted(self._orphans)))
            self._pushes.add(task)
            task.add_done_callback(self._pushes.discard)

    async def _retire(self, names: list[str]) -> None:
        """List 0 under channel SKUs no SKU uses any more; what fails for now is tried at the next refresh."""
        try:
            for i in range(0, len(names), self.adapter.batch_size):
                batch = names[i : i + self.adapter.batch_size]
                try:
                    results = await self.adapter.push([Update(n, n, 0, 0) for n in batch],
                                                      time.monotonic() + self.adapter.timeout_s + 1)
                except PushError as e:
                    log.warning("%s: listing 0 under %d unused channel SKUs failed (%s); trying again later",
                                self.channel, len(batch), e)
                    return
                for r in results:
                    if r.ok or r.permanent:  # (permanent: no such listing, nothing to retire)
                        self._orphans.discard(r.sku)
                        log.info("%s: channel SKU %s is no SKU's any more: %s", self.channel, r.sku,
                                 "listed 0" if r.ok else f"not retired ({r.error})")
        finally:
            self._retiring = False

    async def reclaim(self) -> int:
        """Claim entries idle past reclaim_idle_ms from the group's consumers when one of the others looks
        dead (pending entries, no read for reclaim_idle_ms)."""
        total = 0
        for p in range(self.keys.partitions):
            if not await self._anyone_dead(p):
                continue
            claimed, deleted = await groups.autoclaim(self.redis, self.keys, p, self.channel, self.consumer,
                                                      self.options.reclaim_idle_ms)
            if deleted:
                self.stats["reclaimed_deleted"] += len(deleted)
                log.info("%s: %d pending entries were deleted from the stream; dropped", self.channel, len(deleted))
            fresh = [(i, f) for i, f in claimed if i not in self.coalescer]
            if not fresh:
                continue
            counts = await groups.deliveries(self.redis, self.keys, p, self.channel, self.consumer, [i for i, _ in fresh])
            self.stats["reclaimed"] += len(fresh)
            total += len(fresh)
            log.info("%s: reclaimed %d idle entries of partition %d", self.channel, len(fresh), p)
            await self._take_in(p, fresh, counts)
        return total

    async def _anyone_dead(self, p: int) -> bool:
        """Whether another consumer of the group has pending entries on p and has not read for
        reclaim_idle_ms (a live one reads at least every block_ms, even while holding max_pending)."""
        for c in await self.redis.xinfo_consumers(self.keys.events(p), self.channel):
            if c["name"] != self.consumer and int(c["pending"]) and int(c["idle"]) >= self.options.reclaim_idle_ms:
                return True
        return False

    def status(self) -> dict:
        return {
            "consumer": self.consumer, "host": socket.gethostname(), "pid": os.getpid(),
            "ts_ms": int(time.time() * 1000), "heartbeat_ms": self.options.heartbeat_ms, "circuit": self._circuit(),
            "circuit_opened": self.breaker.opened_total, "last_push_ms": self.last_push_ms,
            "last_error": self.last_error, "held": len(self.coalescer), "in_flight": self.in_flight,
            **{k: int(v) for k, v in self.stats.items()},
        }

    def _circuit(self) -> str:
        """The breaker's state, or `throttled` while a 429's Retry-After pauses the channel (a 429 is the
        channel's pace, not a failure: it never opens the circuit, counts an attempt or dead-letters)."""
        if self.breaker.state == CLOSED and self.paused_until > time.monotonic():
            return "throttled"
        return self.breaker.state

    async def heartbeat(self) -> None:
        await self.redis.hset(self.keys.channel_status(self.channel), self.consumer, orjson.dumps(self.status()))

    async def _wait(self, event: asyncio.Event, seconds: float) -> None:
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            pass


def _examples(failures: dict[str, str], n: int = 3) -> str:
    return "; ".join(f"{sku}: {why}" for sku, why in list(failures.items())[:n])


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _id_before(entry_id: str) -> str:
    """The stream ID just before entry_id (a history read from it starts at entry_id)."""
    ms, seq = _id_tuple(entry_id)
    if seq:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-18446744073709551615" if ms else "0"
