"""The order poller of one channel: reads the marketplace's orders changed since its cursor and applies
them through the intake, as the webhooks would have, so that an order whose webhook never came is still
taken.

    poller = OrderPoller(store, config, intake)     # options from the channel's table, checked
    await poller.run(stop)                          # in a worker process: a pass every poll_s, under the lease
    report = await poller.run_pass(since_ms=..., settle=False)   # one pass now (`reconcile orders`)

A pass reads, for each of the reader's streams, the orders updated in [cursor - poll_overlap_s, now -
settle_s), oldest update first, a page at a time. Each page is applied in full before the cursor moves
to the second of its last order: its orders' first webhooks (the takes) together, then their later ones
(refunds, cancellations), each through Intake.apply(config, delivery) with no delivery id, so every line
goes through its line record and reference and an order both a webhook and the poller deliver is applied
once. A page that fails (the API, Redis, an order that cannot be read) stops the pass with the cursor
where the last applied page left it; the next pass reads from there again. At the end of a stream the
cursor moves to the pass's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from stocksync.channels import ChannelConfig, by_kind
from stocksync.orders.intake import Intake
from stocksync.orders.webhooks import Delivery
from stocksync.store import StockStore

from .amazon import AmazonReader
from .client import PollError
from .cursor import Cursors
from .flipkart import FlipkartReader
from .lease import Lease
from .options import PollOptions
from .reader import OrderReader, PolledOrder, floor_s
from .report import PassReport
from .shopify import ShopifyReader
from .stats import PollStats

log = logging.getLogger(__name__)
READERS: dict[str, type[OrderReader]] = by_kind((ShopifyReader, AmazonReader, FlipkartReader), "order reader",
                                                orders_in=True)
MAX_LINES = 500  # lines of one delivery handed to the intake (a page's orders are split, never an order)


def now_ms() -> int:
    return int(time.time() * 1000)


class OrderPoller:
    def __init__(self, store: StockStore, config: ChannelConfig, intake: Intake, options: PollOptions | None = None,
                 *, reader: OrderReader | None = None, owner: str | None = None) -> None:
        self.store, self.config, self.intake, self.name = store, config, intake, config.name
        self.options = options or PollOptions.from_config(config, store.settings.idem_ttl_s)
        self.reader = reader or READERS[config.kind](config, store, self.options)
        keys = store.keys
        self.cursors = Cursors(store.redis, keys.poll_cursor(config.name))
        self.lease = Lease(store.redis, keys.poll_lease(config.name), self.options.lease_s, owner)
        self.stats = PollStats(store.redis, keys.poll_stats(config.name))
        self.polling = asyncio.Event()  # set while this poller holds the lease
        self.passes = 0

    # One pass ---------------------------------------------------------------------------------------------

    async def run_pass(self, *, since_ms: int | None = None, settle: bool = True, report: PassReport | None = None,
                       halt: Callable[[], bool] | None = None) -> PassReport:
        """Read and apply the orders updated since the cursor (or `since_ms`) up to now - settle_s (`settle`
        False: now). `report` is updated page by page (a caller may show it meanwhile); `halt` is asked
        before each page and ends the pass early (the cursor stays at the last page)."""
        report = report or PassReport(self.name)
        now = now_ms()
        end = floor_s(now - (int(self.options.settle_s * 1000) if settle else 0))
        for stream in self.reader.streams:
            start = await self._start(stream, since_ms, end, now, report)
            if not await self._stream(stream, start, end, report, halt):
                break
        self.passes += 1
        await self.stats.add({"passes": 1}, last_pass_ms=now, last_error="")
        return report

    async def _start(self, stream: str, since_ms: int | None, end: int, now: int, report: PassReport) -> int:
        if since_ms is not None:
            self.options.check_since(since_ms, now, self.store.settings.idem_ttl_s)
            return floor_s(since_ms)
        cursor = await self.cursors.get(stream)
        # No cursor yet: the first pass reads only the overlap before its end (go further back once with
        # `stocksync reconcile orders <channel> --since ...`).
        start = (end if cursor is None else cursor) - int(self.options.overlap_s * 1000)
        oldest = floor_s(now - int(self.options.retention_s * 1000))
        if start < oldest:
            log.warning("%s: %s cursor is older than the references' retention; reading from %d ms on, not %d: "
                        "orders updated in between are not read", self.name, stream, oldest, start)
            report.gap_ms += oldest - start
            start = oldest
        return floor_s(start)

    async def _stream(self, stream: str, start: int, end: int, report: PassReport,
                      halt: Callable[[], bool] | None) -> bool:
        """Apply one stream's pages; False if `halt` ended it early."""
        last, ordered = start, True
        async with contextlib.aclosing(self.reader.pages(stream, start, end)) as pages:
            async for page in pages:
                read = page.orders
                page.orders = kept = [o for o in read if o.updated_ms < end]
                times = [o.updated_ms for o in kept]
                if ordered and any(a > b for a, b in zip([last, *times], times, strict=False)):
                    log.warning("%s: %s listed orders out of update order: its cursor moves only at the end of "
                                "a pass", self.name, stream)
                    ordered = False
                await self._apply(kept, report)
                await self.reader.applied(page)
                if kept:
                    last = max(last, *times)
                    if ordered:
                        await self.cursors.advance(stream, floor_s(times[-1]))
                if ordered and len(kept) < len(read):
                    break  # the rest was updated after the pass's end
                if halt is not None and halt():
                    return False
        await self.cursors.advance(stream, end)
        return True

    async def _apply(self, orders: list[PolledOrder], report: PassReport) -> None:
        """Apply a page: every order's first webhook together, then every order's second, ... (an order's
        events in the order its marketplace sends them); count it, and add it to the channel's stats."""
        page, found = PassReport(self.name, pages=1, orders=len(orders)), set()
        for events in _rounds(orders):
            for delivery in _merged(events):
                page.count(await self.intake.apply(self.config, delivery), found)
        page.found_by_polling = len(found)
        report.add(page)
        await self.stats.add(page.counters())

    # Polling in a worker process ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set: hold the channel's lease (waiting while another process holds it) and, while
        holding it, run a pass every poll_s. A failed pass is logged and counted; the next one retries."""
        try:
            while not stop.is_set():
                if await self._quietly(self.lease.acquire(), "take the lease"):
                    await self._lead(stop)
                await _wait(stop, min(self.options.poll_s, self.options.lease_s / 2))
        finally:
            await self.reader.close()

    async def _lead(self, stop: asyncio.Event) -> None:
        lost = asyncio.Event()
        renewing = asyncio.create_task(self._renew(lost))
        self.polling.set()
        log.info("%s: polling orders every %g s (lease %s)", self.name, self.options.poll_s, self.lease.owner)
        try:
            while not (stop.is_set() or lost.is_set()):
                await self._logged_pass(lambda: stop.is_set() or lost.is_set())
                await _wait(stop, self.options.poll_s, lost)
        finally:
            self.polling.clear()
            renewing.cancel()
            await self._quietly(self.lease.release(), "give the lease back")

    async def _renew(self, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.options.lease_s / 3)
            if await self._quietly(self.lease.renew(), "renew the lease") is False:
                log.warning("%s: the order poller's lease went to another process; polling stops here", self.name)
                lost.set()
                return

    async def _logged_pass(self, halt: Callable[[], bool]) -> None:
        try:
            report = await self.run_pass(halt=halt)
        except Exception as e:  # noqa: BLE001 - the cursor stays; the next pass reads the same orders again
            message = str(e) if isinstance(e, PollError) else f"{type(e).__name__}: {e}"
            log.error("%s: order poll failed, will retry: %s", self.name, message)
            await self._quietly(self.stats.add({}, last_error=message[:500], last_error_ms=now_ms()), "record it")
            return
        if report.found_by_polling:
            log.warning("%s: %d order(s) found only by polling (no webhook came within settle_s)", self.name,
                        report.found_by_polling)

    async def _quietly(self, call: Any, what: str) -> Any:
        """A Redis call whose failure must not end the poller (the next attempt may succeed)."""
        try:
            return await call
        except Exception as e:  # noqa: BLE001
            log.warning("%s: could not %s: %s: %s", self.name, what, type(e).__name__, e)
            return None


def _rounds(orders: list[PolledOrder]) -> list[list[Delivery]]:
    """The orders' first events, then their second ones, ..."""
    rounds: list[list[Delivery]] = []
    for order in orders:
        for i, event in enumerate(order.events):
            if i == len(rounds):
                rounds.append([])
            rounds[i].append(event)
    return rounds


def _merged(events: list[Delivery]) -> list[Delivery]:
    """Events of different orders as few deliveries of at most MAX_LINES lines (an event is never split:
    a cancellation's markers and restocks stay together)."""
    out: list[Delivery] = []
    size = MAX_LINES
    for event in events:
        n = len(event.takes) + len(event.restocks) + len(event.cancels)
        if not n:
            continue  # (a refund that restocks nothing)
        if size + n > MAX_LINES:
            out.append(Delivery(None, "polled orders"))
            size = 0
        out[-1].takes += event.takes
        out[-1].restocks += event.restocks
        out[-1].cancels += event.cancels
        size += n
    return out


async def _wait(stop: asyncio.Event, seconds: float, other: asyncio.Event | None = None) -> None:
    """Sleep `seconds`, or less if `stop` (or `other`) is set meanwhile."""
    waits = [asyncio.ensure_future(e.wait()) for e in (stop, other) if e is not None]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
