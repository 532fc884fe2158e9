"""The reader: a channel worker's XREADGROUP loop per partition, into the coalescer.

Each partition's stream is read as the channel's consumer group (its own pending entries first, after a
restart under the same consumer name). The reader stops pulling while the circuit is not closed. At
max_pending held entries it keeps reading new entries (an urgent change must not sit unread behind a
backlog) but holds only urgent entries and those of SKUs held as urgent; the others stay pending under
this consumer and unacknowledged, and the reader reads them again from its pending list (history from a
per-partition cursor, count limited to the room left) once below max_pending. Past twice max_pending
(urgent entries) it stops reading altogether, so memory stays bounded.

An entry that is not a stock event is dead-lettered (`malformed`) for an operator; one deleted from the
stream meanwhile is acknowledged; one delivered more than max_deliveries times (reclaimed from consumers
that died handling it) is dead-lettered. Housekeeping hands reclaimed entries to take_in() too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from redis.exceptions import RedisError

from stocksync import connection, library

from . import dlq, groups
from .coalescer import Entry
from .ranks import NORMAL
from .state import ChannelState

log = logging.getLogger(__name__)

# What _take did with an entry (or the entry itself: to dead-letter, delivered too often)
HELD, DEFERRED, DELETED, MALFORMED = "held", "deferred", "deleted", "malformed"


class Reader:
    def __init__(self, state: ChannelState, launch: Callable[[], None] | None = None) -> None:
        self.state = state
        self.launch = launch or _nothing  # called when entries were taken in: pushes may start
        # partition -> a history cursor: our pending entries after it may not be held (deferred at
        # max_pending, or from a previous life under this name: "0" at start); absent: all are held
        self.resume: dict[int, str] = {p: "0" for p in range(state.keys.partitions)}
        self.seen: dict[int, tuple[int, int]] = {}  # partition -> the newest entry counted by the risk model
        self.leaving: set[int] = set()  # partitions whose reader ends after its current read (lease given up)

    async def run(self, p: int) -> None:
        """Read partition p until the worker stops or leave(p); our own pending entries of p first."""
        s = self.state
        stream, failures, retries = s.keys.events(p), 0, connection.retries(s.redis)
        self.leaving.discard(p)
        self.resume.setdefault(p, "0")  # (read before, entries may be pending under our name: held no more)
        while not s.stopping.is_set() and p not in self.leaving:
            if not s.pull_ok.is_set():
                await s.wait_pull()
                continue
            if connection.retries(s.redis) != retries:  # (see below)
                retries = connection.retries(s.redis)
                self.defer(p, "0-1")
            try:
                entries = await self._read(p, stream)
                failures = 0
            # AttributeError raised inside redis-py: its asyncio connection can be torn down by another task in
            # the middle of a command during a failover ('NoneType' object has no attribute 'writelines'); it
            # used to kill the reader, and the worker with it. One raised by our own code is a bug: not caught.
            except (RedisError, OSError, AttributeError) as e:
                if isinstance(e, AttributeError) and not _raised_in_redis_py(e):
                    raise
                # An XREADGROUP whose reply was lost (here, or retried by the connection) may have
                # delivered entries we do not hold: go over our pending entries again from the start.
                failures += 1
                self.defer(p, "0-1")
                s.outage.failed(e, f"reading {stream}")
                await s.sleep(min(0.1 * 2 ** failures, 5))
                continue
            if not entries:
                continue
            try:
                await self.take_in(p, entries)
            except Exception as e:  # noqa: BLE001 - a reader that dies stops the whole worker
                # What was not taken in stays pending under our name: read again from our pending list.
                self.defer(p, entries[0][0])
                failures += 1
                log.exception("%s: taking in %d entries of %s failed; going on", s.channel, len(entries), stream)
                s.error(f"{type(e).__name__}: {e}")
                await s.sleep(min(0.1 * 2 ** failures, 5))

    async def _read(self, p: int, stream: str) -> list:
        """One XREADGROUP: our own pending entries not held (from the history cursor, as many as there is
        room for), or else new entries (blocking)."""
        s, o = self.state, self.state.options
        room = o.max_pending - len(s.coalescer)
        resume = self.resume.get(p)
        history = resume is not None and room > 0
        reply = await s.redis.xreadgroup(
            s.channel, s.consumer, {stream: resume if history else ">"},
            count=min(o.read_count, room) if history else o.read_count,
            block=None if history else o.block_ms)
        entries = reply[0][1] if reply else []
        if history and self.resume.get(p) == resume:  # (unless take_in moved the cursor back meanwhile)
            if entries:
                self.resume[p] = entries[-1][0]
            else:
                del self.resume[p]
        return entries

    async def take_in(self, p: int, entries: list, deliveries: dict[str, int] | None = None) -> None:
        """Hold the entries for pushing. A Redis error while dead-lettering one entry or acknowledging the
        deleted ones is logged and skipped: those entries stay pending under this consumer (the reader reads
        them again from its pending list), and the rest of the batch is still taken in. At max_pending only
        entries of urgent or held SKUs are taken in, the others are deferred the same way."""
        s = self.state
        deleted, deferred = [], 0
        for entry_id, fields in entries:
            taken = self._take(p, entry_id, fields, deliveries)
            if taken is HELD:
                continue
            if taken is DEFERRED:
                deferred += 1
            elif taken is DELETED:  # deleted from the stream: nothing to push
                deleted.append(entry_id)
            elif taken is MALFORMED:  # not a stock event: kept for an operator
                await self._dead_letter_malformed(p, entry_id, fields)
            else:
                await self._dead_letter_redelivered(p, taken, deliveries[entry_id])
        if deferred:
            s.stats["deferred"] += deferred
        if deleted:
            try:
                await s.redis.xack(s.keys.events(p), s.channel, *deleted)
            except RedisError as err:
                self._failed(f"acknowledging {len(deleted)} deleted entries", err)
                self.defer(p, deleted[0])
        s.update_gates()
        self.launch()

    def _take(self, p: int, entry_id: str, fields: dict | None, deliveries: dict[str, int] | None) -> str | Entry:
        s, o = self.state, self.state.options
        coalescer = s.coalescer
        held = len(coalescer)
        if held >= o.max_pending and (held >= s.hard_cap or (p, entry_id) in coalescer):
            # at the hard cap nothing more is held; (an entry held already is not deferred either)
            if (p, entry_id) in coalescer:
                return HELD
            self.defer(p, entry_id)
            return DEFERRED
        e = groups.parse(p, entry_id, fields)
        if e is None:
            return MALFORMED if fields else DELETED
        newest = groups.id_tuple(entry_id)
        if newest > self.seen.get(p, (0, 0)):  # (an entry read again, deferred or reclaimed, counts once)
            self.seen[p] = newest
            s.risk.saw(e.sku, e.delta, e.source)  # every take read counts toward its source's velocity
        if deliveries and deliveries.get(entry_id, 1) > o.max_deliveries:
            return e
        if held >= o.max_pending and coalescer.rank(e) == NORMAL and not coalescer.is_urgent(e.sku):
            # at max_pending only urgent entries, and those of SKUs held as urgent (acknowledged with
            # their push), are taken in; this one stays pending, unacknowledged, and is read again once
            # there is room (a held SKU's push carries the current quantity anyway: the entry is then
            # acknowledged without a call). Holding every entry of a held SKU instead would fill the
            # hard cap when most SKUs are held, and stop the reads again.
            self.defer(p, entry_id)
            return DEFERRED
        coalescer.add(e)
        return HELD

    async def _dead_letter_redelivered(self, p: int, e: Entry, deliveries: int) -> None:
        s = self.state
        try:
            if await dlq.dead_letter(s.redis, s.keys, s.channel, p, e.sku, [e], "max_deliveries", deliveries,
                                     "delivered too often (consumers died handling it?)"):
                s.stats["dead_letters"] += 1
        except RedisError as err:
            self._failed("dead-lettering entry " + e.id, err)
            self.defer(p, e.id)

    async def _dead_letter_malformed(self, p: int, entry_id: str, fields: dict) -> None:
        s = self.state
        try:
            await library.dead_letter(s.keys, p, s.channel, fields.get("sku") or "?", 0, "malformed", 0,
                                      f"fields {sorted(fields)}", [entry_id]).run(s.redis)
        except RedisError as err:
            self._failed("dead-lettering malformed entry " + entry_id, err)
            self.defer(p, entry_id)

    def defer(self, p: int, entry_id: str) -> None:
        """entry_id, pending under this consumer, is not held: move p's history cursor to just before it."""
        before = groups.id_before(entry_id)
        cursor = self.resume.get(p)
        if cursor is None or groups.id_tuple(before) < groups.id_tuple(cursor):
            self.resume[p] = before

    def _failed(self, what: str, error: RedisError) -> None:
        s = self.state
        s.stats["take_in_errors"] += 1
        s.error(f"{s.channel}: {what} failed: {error}")
        log.warning("%s: %s failed (%s); it stays pending and is read again later", s.channel, what, error)


def _nothing() -> None:
    pass


def _raised_in_redis_py(error: BaseException) -> bool:
    """Whether the innermost frame of the error's traceback is redis-py's own code."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}redis{os.sep}" in tb.tb_frame.f_code.co_filename
