"""Amazon's feed lane: the changes that are not urgent go out in JSON_LISTINGS_FEED feeds, the urgent ones
keep being patched one SKU a call (docs/channels/amazon.md, "Bulk: the feed lane").

Under Amazon's patch limit (5 calls/s) most changes of a busy catalogue never get a call; a feed carries up
to 25,000 SKUs, but only 5 feeds go in per 5 minutes and each takes minutes to process. So:

* routing: a SKU held by the worker goes to the lane when it is not urgent: no drop to 0, no low stock
  (consumers/ranks.py, or `patch_at_or_below`), its oversell risk (consumers/risk.py) at or below
  `patch_risk_above`, no recheck owed, and the patch calls are busy (handed out while the rate limiter has
  a token to spare, it is patched, unless a feed holding it is in flight); or when it waited
  `feed_after_s` in the coalescer. Its entries leave the coalescer unacknowledged: the lane holds them;
* a feed is built when the createFeed bucket has a token (5 per 5 minutes: one a minute, the burst spent
  gradually after quiet times) and the oldest gathered SKU waited `feed_linger_s`: each SKU's current quantity
  and version are read (stocksync_push_claim, the lease released at once: a feed holds no lease for
  minutes), what the channel has already is acknowledged, the rest becomes one message each. A SKU in a
  feed still in flight waits for the next: two feeds of one SKU are never in flight at once;
* the feed is recorded in Redis (consumers/feed_records.py) before createFeed, then polled (getFeed every
  `feed_poll_s`); once done, its report is settled: the SKUs' leases are taken for a moment (never
  waited for: a patch holds its lease while it waits for the rate limiter), the versions accepted are
  recorded and the entries they cover acknowledged (G5). A SKU whose recorded version is newer than the
  feed's was patched while the feed was in flight, one whose lease is taken is being patched right now:
  the feed may have overwritten that patch when Amazon processed it, so a push of its current quantity is
  owed now (stocksync_recheck, a patch: G4) where the feed lists more than it should, ahead of the urgent
  changes (at the rank of a drop to 0 if that is 0); where it lists less, the SKU goes in the next feed. A
  SKU the report refused is gathered again, and dead-lettered after `feed_max_attempts` feeds; a FATAL or
  CANCELLED feed refuses every SKU;
* a lane that starts (the worker restarted, or another worker took the lane over) resumes the feeds
  recorded in Redis the same way; the entries of a dead worker are reclaimed by the others as usual.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable

from redis.exceptions import RedisError

from stocksync import library
from stocksync.library import Claim

from . import dlq
from .adapters import PushError, TransientError, Update
from .coalescer import Entry, SkuWork
from .cycle import PushCycle, owner_name
from .feed_records import FeedRecords, Flight, Held
from .pusher import Accepted
from .ranks import NORMAL, URGENT, ZERO
from .retry import backoff_s
from .risk import expected_min
from .state import ChannelState

log = logging.getLogger(__name__)

TICK_S = 0.1  # the lane looks at its work this often
SWEEP_S = 0.25  # and at the coalescer's non-urgent SKUs this often (a pass over every held SKU)
LANE_RENEW_S = 1.0  # the lane's lease is renewed this often (its TTL: twice worker.lease_ms)
CLAIM_CHUNK = 500  # SKUs a stocksync_push_claim call

Push = Callable[[list[SkuWork], bool], Awaitable[None]]


class FeedLane:
    def __init__(self, state: ChannelState, cycle: PushCycle, on_accept: Callable[[Accepted], None] | None) -> None:
        self.state, self.cycle, self.on_accept = state, cycle, on_accept
        self.client = state.adapter.feeds
        self.options = state.adapter.lane
        self.records = FeedRecords(state.redis, state.keys, state.channel)
        self.owner = owner_name("feeds")  # the lane's leases, apart from the worker's patches
        self.launch: Callable[[], None] = lambda: None  # the dispatcher's: a recheck owed may start a patch
        self.gathering: dict[str, Held] = {}
        self.flights: dict[str, Flight] = {}  # document id -> feed
        self.flying: dict[str, str] = {}  # sku -> document id of the feed it is in
        self.ids: set[str] = set()  # entries the lane holds
        self.active = False
        self._renew_at = 0.0
        self._sweep_at = 0.0
        self._last_create = 0.0

    @classmethod
    def for_channel(cls, state: ChannelState, cycle: PushCycle,
                    on_accept: Callable[[Accepted], None] | None) -> FeedLane | None:
        """The lane of a channel whose adapter has one (Amazon with lane = "feeds"), else None."""
        return cls(state, cycle, on_accept) if getattr(state.adapter, "feeds", None) is not None else None

    # ----- routing ---------------------------------------------------------------------------------

    def route(self, push: Push) -> Push:
        """The dispatcher's push: what the lane takes goes to a feed, the rest to `push` (a patch)."""

        async def routed(batch: list[SkuWork], probe: bool) -> None:
            if self.active and not probe:
                busy = self._patch_busy()
                batch = [w for w in batch if not ((busy or w.sku in self.flying) and self._divert(w))]
            if batch:
                await push(batch, probe)

        return routed

    def _patch_busy(self) -> bool:
        limiter = self.state.adapter.limiter
        return limiter is not None and (limiter.waiting > 0 or limiter.available() < 1)

    def _non_urgent(self, w: SkuWork, now: float) -> bool:
        """Whether w may wait for a feed: not urgent now, and not expected to be within feed_horizon_s. A SKU
        fed and then patched while its feed is in flight costs a second patch once the feed lands, and lists
        the feed's older quantity in between: one whose sales may take it to low stock before then is kept
        on the patch lane (its sales velocity on every channel, consumers/risk.py, at a high quantile),
        unless it waited half a feed interval there (the patch calls are taken by urgent SKUs: waiting on
        would make it later than the next feed)."""
        o, s = self.options, self.state
        if not w.entries or w.recheck_at or w.forced or w.urgency != NORMAL or w.risk > o.patch_risk_above:
            return False
        if now - w.since >= o.interval_s / 2:
            return True
        latest = max(w.entries.values(), key=lambda e: e.version)
        mark = s.options.low_stock if o.patch_at_or_below is None else o.patch_at_or_below
        others = s.risk.others.get(w.sku)
        rate = s.risk.velocity(w.sku, now) + (others.at(now, s.risk.tau_s) if others is not None else 0.0)
        expected = rate * o.feed_horizon_s
        return self.cycle.listed(w.sku, latest.available) - expected - 3 * math.sqrt(expected) > mark

    def _divert(self, w: SkuWork) -> bool:
        """Take a SKU handed out for a patch into the lane instead; whether it was taken."""
        if not self._non_urgent(w, time.monotonic()):
            return False
        self._hold(self.state.coalescer.settle(w, None, drop=list(w.entries)))
        return True

    def sweep(self) -> None:
        """Take the non-urgent SKUs that waited feed_after_s in the coalescer (the patch calls are busy)."""
        coalescer, after = self.state.coalescer, self.options.feed_after_s
        now = time.monotonic()
        for sku, w in list(coalescer.work.items()):
            if not w.busy and now - w.since >= after and self._non_urgent(w, now):
                self._hold(coalescer.detach(sku))
        self.state.update_gates()

    def _hold(self, entries: Iterable[Entry]) -> None:
        now = time.monotonic()
        for e in entries:
            if e.id in self.ids:  # (read again from the pending list: held here already)
                continue
            h = self.gathering.get(e.sku)
            if h is None:
                h = self.gathering[e.sku] = Held(e.sku, e.partition, now)
            h.entries[e.id] = e
            self.ids.add(e.id)

    def _regather(self, h: Held) -> None:
        """Gather h again (a feed refused it, or it waits for the next), merged with what came meanwhile."""
        mine = self.gathering.get(h.sku)
        if mine is None:
            self.gathering[h.sku] = h
            return
        mine.entries.update(h.entries)
        mine.since, mine.forced = min(mine.since, h.since), mine.forced or h.forced
        mine.attempts, mine.not_before = max(mine.attempts, h.attempts), max(mine.not_before, h.not_before)

    # ----- the loop ------------------------------------------------------------------------------------

    async def run(self) -> None:
        s = self.state
        while not s.stopping.is_set():
            try:
                await self._turn()
            except (RedisError, PushError) as e:
                log.warning("%s: feed lane: %s", s.channel, e)
                s.error(f"feed lane: {e}")
                await s.sleep(1.0)
            except Exception as e:  # noqa: BLE001 - the lane must not stop the worker; its state is in Redis
                log.exception("%s: feed lane failed; going on", s.channel)
                s.error(f"feed lane: {type(e).__name__}: {e}")
                await s.sleep(1.0)
            await s.sleep(TICK_S)
        with contextlib.suppress(RedisError):
            await self.records.release_lane(self.owner)

    async def _turn(self) -> None:
        now = time.monotonic()
        if now >= self._renew_at:
            self._renew_at = now + LANE_RENEW_S
            held = await self.records.hold_lane(self.owner, 2 * self.state.options.lease_ms)
            if held and not self.active:
                await self._start()
            elif not held and self.active:
                self._stop()
        if not self.active:
            return
        if now >= self._sweep_at:
            self._sweep_at = now + SWEEP_S
            self.sweep()
        for flight in [f for f in self.flights.values() if f.feed_id is None and f.retry_at <= now]:
            if self.client.create_limit.available() >= 1:  # (else acquire() would hold the whole lane)
                await self._create(flight)
        if self._feed_due(now):
            await self._build()
        for flight in [f for f in self.flights.values() if f.feed_id is not None and f.next_poll <= now]:
            await self._poll(flight)

    async def _start(self) -> None:
        """Take the lane: resume the feeds recorded in Redis, and the createFeed quota they used."""
        s = self.state
        ago = await self.records.restore(self.client.create_limit)
        if ago is not None:  # (the pacing goes on from the last feed created, whoever created it)
            self._last_create = time.monotonic() - ago
        for flight in await self.records.load():
            self.flights[flight.document_id] = flight
            for sku in flight.items:
                self.flying[sku] = flight.document_id
        self.active = True
        log.info("%s: feed lane started by %s (%d feeds in flight resumed)", s.channel, s.consumer, len(self.flights))

    def _stop(self) -> None:
        """Another worker holds the lane now: give the entries back to the patches (its lane settles the
        feeds recorded in Redis)."""
        s = self.state
        log.warning("%s: feed lane lost to another worker; patching everything", s.channel)
        held = list(self.gathering.values()) + [h for f in self.flights.values() for h in f.held.values()]
        self.active = False
        self.gathering, self.flights, self.flying, self.ids = {}, {}, {}, set()
        for h in held:
            for e in h.entries.values():
                s.coalescer.add(e)
        s.update_gates()
        self.launch()

    # ----- building and submitting --------------------------------------------------------------------

    def _feed_due(self, now: float) -> bool:
        """A feed may go: a createFeed token (one a cycle, or the burst after a quiet time), and a SKU
        gathered feed_linger_s ago that is in no feed in flight."""
        if any(f.feed_id is None for f in self.flights.values()):
            return False  # (one still waits for createFeed: feeds go in the order they were built)
        if self.flights and now - self._last_create < self.options.interval_s:
            return False  # one feed in flight at a time, unless it is a whole cycle old: its SKUs would miss the
            # next feed (two feeds of a SKU never fly together), which then waits for them instead
        ready = [h.since for h in self.gathering.values() if h.sku not in self.flying and h.not_before <= now]
        if not ready or now - min(ready) < self.options.feed_linger_s:
            return False
        # The burst is spent gradually: a full bucket lets a feed go interval/burst after the last, one token
        # left a whole interval after it (the quota's steady pace: one feed a cycle, whatever the load)
        limiter = self.client.create_limit
        tokens = limiter.available()
        spacing = self.options.interval_s * max(limiter.capacity + 1 - tokens, 1) / limiter.capacity
        return tokens >= 1 and now - self._last_create >= spacing

    async def _build(self) -> None:
        """One feed of the gathered SKUs, oldest first: current quantities read, then uploaded and created."""
        now = time.monotonic()
        chosen = sorted((h for h in self.gathering.values() if h.sku not in self.flying and h.not_before <= now),
                        key=lambda h: h.since)[: self.options.feed_max_messages]
        for h in chosen:
            del self.gathering[h.sku]
        try:
            flight = await self._upload(chosen)
        except BaseException:  # (Redis failed, or the worker stops): nothing reached Amazon, gathered again
            for h in chosen:
                if h.entries or h.forced:
                    self._regather(h)
            raise
        if flight is None:  # (nothing to send, or the upload failed: what still needs a feed waits for the next)
            for h in chosen:
                if h.entries or h.forced:
                    self._regather(h)
            return
        await self.records.save(flight)  # (before createFeed: a feed Amazon may have is never unknown)
        self.flights[flight.document_id] = flight
        for sku in flight.items:
            self.flying[sku] = flight.document_id
        await self._create(flight)

    async def _upload(self, chosen: list[Held]) -> Flight | None:
        """Read the chosen SKUs, settle what needs no message, upload the others' feed document."""
        parts = {h.sku: h.partition for h in chosen}
        claims = await self._claim(list(parts), parts)
        going: list[tuple[Held, list[Entry]]] = []
        updates, items, held = self._messages(chosen, claims, going)
        await self._done(parts, {}, going, [sku for sku, c in claims.items() if c.leased])
        self._forget(going)
        if not updates:
            return None
        try:
            document_id = await self.client.upload(self.client.document(updates))
        except PushError as e:  # nothing reached Amazon: gathered again, tried again shortly
            log.warning("%s: uploading a feed of %d SKUs failed: %s", self.state.channel, len(updates), e)
            for h in held.values():
                h.not_before = time.monotonic() + (e.retry_after or 5.0)
            return None
        return Flight(document_id, int(time.time() * 1000), items, held=held)

    def _messages(self, chosen: list[Held], claims: dict[str, Claim], going: list[tuple[Held, list[Entry]]]):
        """The feed's updates from the claims; the entries of what needs none go to `going`."""
        s, cycle = self.state, self.cycle
        updates: list[Update] = []
        items: dict[str, tuple[int, int, int]] = {}
        held: dict[str, Held] = {}
        now_ms = int(time.time() * 1000)
        for h in chosen:
            c = claims[h.sku]
            if not c.leased:  # being patched right now: the next feed
                self._regather(h)
            elif c.version is None or (not h.forced and c.pushed >= h.version):  # gone, or the channel has it
                entries = list(h.entries.values())
                going.append((h, entries))
                self._report(h.sku, c.pushed, -1, now_ms, entries)
            else:
                quantity = cycle.listed(h.sku, c.available)
                updates.append(Update(h.sku, s.skus.channel_sku(h.sku), quantity, c.version))
                items[h.sku] = (h.partition, c.version, quantity)
                held[h.sku] = h
        return updates, items, held

    def _forget(self, going: list[tuple[Held, list[Entry]]]) -> None:
        """The lane lets go of entries _done acknowledged (after it did: what a failure interrupts stays)."""
        for h, entries in going:
            for e in entries:
                h.entries.pop(e.id, None)
                self.ids.discard(e.id)

    async def _create(self, flight: Flight) -> None:
        """createFeed of an uploaded feed; on a 429 (or an error) tried again after Retry-After."""
        s = self.state
        try:
            flight.feed_id = await self.client.create(flight.document_id)
        except PushError as e:
            if isinstance(e, TransientError) and e.throttled:
                s.stats["feed_throttled"] += 1
            flight.retry_at = time.monotonic() + (e.retry_after if e.retry_after is not None else 5.0)
            log.warning("%s: createFeed failed (%s); again in %.1f s", s.channel, e, flight.retry_at - time.monotonic())
            return
        now = time.monotonic()
        self._last_create, flight.next_poll = now, now + self.options.feed_poll_s
        await self.records.save(flight)
        await self.records.created(int(time.time() * 1000))
        s.stats["feeds_created"] += 1
        s.stats["feed_messages"] += len(flight.items)
        log.info("%s: feed %s created with %d SKUs", s.channel, flight.feed_id, len(flight.items))

    # ----- settling a feed ----------------------------------------------------------------------------

    async def _poll(self, flight: Flight) -> None:
        try:
            status = await self.client.status(flight.feed_id)
            if not status.done:
                flight.next_poll = time.monotonic() + self.options.feed_poll_s
                return
            if status.status == "DONE" and status.result_id:
                errors = await self.client.report(status.result_id, len(flight.items))
            else:
                errors = dict.fromkeys(range(1, len(flight.items) + 1), f"the feed ended {status.status}")
        except PushError as e:
            flight.next_poll = time.monotonic() + max(self.options.feed_poll_s, e.retry_after or 0.0)
            log.warning("%s: polling feed %s failed: %s", self.state.channel, flight.feed_id, e)
            return
        await self._settle(flight, errors)

    async def _settle(self, flight: Flight, errors: dict[int, str]) -> None:
        """Record what the feed's report accepted, acknowledge it, owe a patch where a newer patch may have
        been overwritten, gather or dead-letter what it refused; then forget the feed."""
        s, now_ms = self.state, int(time.time() * 1000)
        parts = {sku: item[0] for sku, item in flight.items.items()}
        claims = await self._claim(list(flight.items), parts)
        accepted: dict[int, dict[str, int]] = defaultdict(dict)
        owed: dict[int, list[str]] = defaultdict(list)
        refused: list[tuple[Held, str]] = []
        going: list[tuple[Held, list[Entry]]] = []
        urged: dict[str, tuple[int, float]] = {}  # sku owed a patch -> (rank, risk): a listing left too high
        for i, (sku, (p, version, quantity)) in enumerate(flight.items.items(), 1):
            h = flight.held.get(sku) or Held(sku, p, time.monotonic(), forced=True)  # (resumed: no entries)
            c, error = claims[sku], errors.get(i)
            # patched while the feed was in flight (a newer version recorded, or a patch under way right now,
            # its lease taken: it may have reached Amazon before the feed was processed)
            pushed, patched = c.pushed, c.pushed > version or not c.leased
            if error is not None:
                refused.append((h, error))
                continue
            accepted[p][sku] = version
            listed = self.cycle.listed(sku, c.available or 0)
            if patched and listed != quantity:  # the feed may have overwritten the patch when processed:
                if listed < quantity:  # listing too much: patched (again) now, ahead of the rest
                    owed[p].append(sku)
                    urged[sku] = (ZERO if listed == 0 else URGENT, self._risk(sku, quantity, listed))
                else:  # too little (lost sales at worst, no oversell): the next feed
                    self._regather(Held(sku, p, time.monotonic(), forced=True))
            done = [e for e in h.entries.values() if e.version <= max(version, pushed)]
            going.append((h, done))
            self._report(sku, version, quantity, now_ms, done)
        for p, skus in owed.items():
            s.stats["feed_rechecks"] += len(skus)
            await self.cycle.owe(p, skus, 0.0)
            for sku in skus:
                s.coalescer.urge(sku, *urged[sku])
        await self._done(parts, accepted, going, [sku for sku, c in claims.items() if c.leased])
        self._forget(going)
        await self._refused(refused)
        await self.records.drop(flight)
        self._land(flight)
        self.launch()

    def _risk(self, sku: str, listed: int, should: int) -> float:
        """Expected units sold past `should` while `listed` stays up (the risk model's, consumers/risk.py,
        with the feed's quantity as what is listed): the recheck's place among the patches."""
        model = self.state.risk
        mean = model.velocity(sku) * model.land_s
        return expected_min(mean, listed) - expected_min(mean, should)

    def _land(self, flight: Flight) -> None:
        self.flights.pop(flight.document_id, None)
        for sku in flight.items:
            if self.flying.get(sku) == flight.document_id:
                del self.flying[sku]
        self.state.stats["feeds_done"] += 1

    async def _refused(self, refused: list[tuple[Held, str]]) -> None:
        """Gathered again with a backoff, or dead-lettered after feed_max_attempts feeds refused it."""
        s, o = self.state, self.options
        for h, error in refused:
            s.stats["feed_errors"] += 1
            h.attempts += 1
            if h.attempts < o.feed_max_attempts:
                h.not_before = time.monotonic() + backoff_s(h.attempts, s.options.backoff_base_ms / 1000,
                                                            s.options.backoff_cap_ms / 1000)
                self._regather(h)
                continue
            entries = list(h.entries.values())
            if not entries:  # (a resumed feed's SKU: nothing held to dead-letter)
                log.warning("%s: SKU %s refused by %d feeds, given up: %s", s.channel, h.sku, h.attempts, error)
                continue
            if await dlq.dead_letter(s.redis, s.keys, s.channel, h.partition, h.sku, entries, "max_attempts",
                                     h.attempts, f"feed: {error}"):
                s.stats["dead_letters"] += 1
            for e in entries:
                self.ids.discard(e.id)

    # ----- Redis ---------------------------------------------------------------------------------------

    async def _claim(self, skus: list[str], parts: dict[str, int]) -> dict[str, Claim]:
        """Each SKU's lease (released by _done at once: never held while waiting), quantity, version and the
        version the channel has; a SKU being patched right now is answered not leased."""
        s, out = self.state, {}
        by_part: dict[int, list[str]] = defaultdict(list)
        for sku in skus:
            by_part[parts[sku]].append(sku)
        for p, names in by_part.items():
            for i in range(0, len(names), CLAIM_CHUNK):
                for c in await library.push_claim(s.keys, p, s.channel, self.owner, names[i : i + CLAIM_CHUNK],
                                                  s.options.lease_ms).run(s.redis):
                    out[c.sku] = c
        return out

    async def _done(self, parts: dict[str, int], accepted: dict[int, dict[str, int]],
                    going: list[tuple[Held, list[Entry]]], release: list[str] | None = None) -> None:
        """Record accepted versions, acknowledge the entries `going`, release the lane's leases (of every SKU
        of `parts`, or of `release`), CLAIM_CHUNK of each a call (a feed's 25,000 would pass Lua's limit)."""
        s = self.state
        leases: dict[int, list[str]] = defaultdict(list)
        for sku in parts if release is None else release:
            leases[parts[sku]].append(sku)
        acks: dict[int, list[str]] = defaultdict(list)
        for h, entries in going:
            acks[h.partition] += [e.id for e in entries]
        for p in set(leases) | set(acks) | set(accepted):
            pairs, ids, names = list(accepted.get(p, {}).items()), acks.get(p, []), leases.get(p, [])
            for i in range(0, max(len(pairs), len(ids), len(names)), CLAIM_CHUNK):
                chunk = slice(i, i + CLAIM_CHUNK)
                await library.push_done(s.keys, p, s.channel, self.owner, dict(pairs[chunk]), ids[chunk],
                                        names[chunk]).run(s.redis)

    def _report(self, sku: str, version: int, quantity: int, now_ms: int, entries: list[Entry]) -> None:
        if self.on_accept is not None and entries:
            rank = self.state.coalescer.rank
            self.on_accept(Accepted(self.state.channel, sku, version, quantity, now_ms,
                                    tuple((e.ts_ms, rank(e)) for e in entries)))
