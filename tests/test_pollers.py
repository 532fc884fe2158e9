"""The order pollers: orders found without their webhooks, against the simulators' order books and order
APIs (served on loopback) and a real Redis. Each test resets the simulators it uses; their order-API rate
limits are lifted through /_sim/market except where pacing is the point."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from consumers.runner import run_workers
from stocksync.api.app import create_app
from stocksync.channels import ChannelConfig, load_channels, parse_channel
from stocksync.devtools.simulators.market import MarketSim
from stocksync.devtools.testing import config, wait_for
from stocksync.events import read_range
from stocksync.metrics import Metrics
from stocksync.orders.intake import Intake
from stocksync.orders.pollers.client import PollError
from stocksync.orders.pollers.options import PollOptions
from stocksync.orders.pollers.poller import READERS, OrderPoller
from stocksync.orders.pollers.reader import floor_s
from stocksync.orders.pollers.report import PassReport
from stocksync.orders.pollers.service import OrderPollers
from stocksync.settings import Settings, SettingsError
from stocksync.store import StockStore

from .apihelp import AMAZON_TOKEN, FK_APP, FK_SECRET, FK_URL, SHOPIFY_SECRET, running

pytestmark = pytest.mark.usefixtures("api_env")
KINDS = ("shopify", "amazon", "flipkart")
FAST = {"getOrders": [1000, 1000], "getOrderItems": [1000, 1000]}  # the poller's own pace, lifted
ROOT = Path(__file__).resolve().parent.parent


# ----- the simulators, driven over HTTP ----------------------------------------------------------------------


class Market:
    """One simulator and an HTTP client of its control endpoints."""

    def __init__(self, sim: MarketSim, url: str, client: httpx.AsyncClient) -> None:
        self.sim, self.url, self.client, self.name = sim, url, client, sim.name

    async def post(self, path: str, body: dict) -> dict:
        r = await self.client.post(self.url + path, json=body)
        assert r.status_code == 200, r.text
        return r.json()

    async def order(self, lines: list[tuple[str, int]], webhook: str = "drop") -> str | None:
        reply = await self.post("/_sim/orders", {"lines": [{"sku": s, "qty": q} for s, q in lines],
                                                 "webhook": webhook})
        return reply["order_id"]

    async def cancel(self, order_id: str, webhook: str = "drop") -> dict:
        return await self.post(f"/_sim/orders/{order_id}/cancel", {"webhook": webhook})

    async def refund(self, order_id: str, lines: list[dict] | None = None, webhook: str = "drop", **more: Any) -> dict:
        body = {"webhook": webhook, **more, **({"lines": lines} if lines else {})}
        return await self.post(f"/_sim/orders/{order_id}/refund", body)

    async def lift_limits(self) -> None:
        limits = {op: None for op in self.sim.ORDER_LIMITS}
        if limits:
            await self.post("/_sim/market", {"limits": limits})

    async def deliveries(self) -> list[dict]:
        r = await self.client.get(self.url + "/_sim/webhooks")
        return r.json()["deliveries"]

    async def delivered(self) -> bool:
        return all(d["state"] not in ("pending",) for d in await self.deliveries())

    def line_refs(self) -> set[str]:
        """The take reference of every line of every order in the book."""
        refs = set()
        for n in range(1, len(self.sim.book) + 1):
            order = self.sim.book.by_number(n)
            for line in order.lines:
                key = line.line_id if self.name == "flipkart" else f"{order.order_id}:{line.line_id}"
                refs.add(f"{self.name}:{key}")
        return refs


@pytest.fixture
async def markets(sims) -> Any:
    async with httpx.AsyncClient(timeout=30) as client:
        out = {}
        for name in KINDS:
            sim, url = sims[name]
            sim.reset()
            out[name] = Market(sim, url, client)
            await out[name].lift_limits()
        yield out


def channel_tables(markets: dict[str, Market], **options: Any) -> dict[str, dict]:
    """The three channels' tables, pointed at the simulators (webhook secrets as tests/apihelp.py's)."""
    common = {"settle_s": 0, **options}
    return {
        "shopify": {"kind": "shopify", "url": markets["shopify"].url,
                    "credentials": {"token": "TEST_SHOPIFY_TOKEN", "webhook_secret": "T_SHOPIFY_SECRET"},
                    "options": {"location_id": "gid://shopify/Location/1", "restock": "refund", **common}},
        "amazon": {"kind": "amazon", "url": markets["amazon"].url,
                   "credentials": {"access_token": "TEST_AMAZON_TOKEN", "webhook_token": "T_AMAZON_TOKEN"},
                   "options": {"seller_id": "A2SIMSELLER000", "order_api_limits": FAST, **common}},
        "flipkart": {"kind": "flipkart", "url": markets["flipkart"].url,
                     "credentials": {"access_token": "TEST_FLIPKART_TOKEN", "app_id": "T_FK_APP",
                                     "app_secret": "T_FK_SECRET"},
                     "options": {"location_id": "LOC0123456789abcdef0123456789abcdef", "product_id_format": "{sha}",
                                 "notification_url": FK_URL, **common}},
    }


def with_channels(settings: Settings, markets: dict[str, Market], **options: Any) -> Settings:
    return settings.with_(sections={"channels": channel_tables(markets, **options)})


async def point_webhooks(market: Market, api_url: str) -> None:
    body: dict[str, Any] = {"url": f"{api_url}/webhooks/{market.name}",
                            "secret": {"shopify": SHOPIFY_SECRET, "amazon": AMAZON_TOKEN, "flipkart": FK_SECRET}[market.name]}
    if market.name == "flipkart":
        body.update(app_id=FK_APP, signed_url=FK_URL)
    await market.post("/_sim/webhooks", body)


def poller(store: StockStore, cfg: ChannelConfig, intake: Intake | None = None, owner: str | None = None) -> OrderPoller:
    return OrderPoller(store, cfg, intake or Intake(store, Metrics()),
                       PollOptions.from_config(cfg, store.settings.idem_ttl_s), owner=owner)


def sim_config(market: Market, **options: Any) -> ChannelConfig:
    if market.name == "amazon":
        options.setdefault("order_api_limits", FAST)
    return config(market.name, market.url, settle_s=0, **options)


async def past_this_second() -> None:
    """A pass reads orders updated before its end, in whole seconds: wait for the clock to pass the second
    of the orders placed so far."""
    target = int(time.time()) + 1
    await wait_for(lambda: time.time() >= target, 3, "the next second", interval=0.01)


async def seed(store: StockStore, market: Market, stock: dict[str, int]) -> None:
    market.sim.seed(stock)
    for sku, n in stock.items():
        await store.set(sku, n, ref=f"seed-{market.name}-{sku}", source="test")


async def takes_and_restocks(store: StockStore) -> tuple[collections.Counter, collections.Counter]:
    """Counts of each reference among the events: order takes (delta < 0) and restocks (delta > 0)."""
    takes, restocks = collections.Counter(), collections.Counter()
    for event in await changes(store):
        (takes if event.delta < 0 else restocks)[event.ref] += 1
    return takes, restocks


async def changes(store: StockStore) -> list:
    """Every stock change of the orders (the seeds left out)."""
    out = []
    for p in range(store.keys.partitions):
        out += [e for e in await read_range(store.redis, store.keys, p) if e.source != "test" and e.type == "stock.changed"]
    return out


async def restocked_per_line(store: StockStore) -> dict[str, int]:
    """Units restocked per line (the take's reference), whatever the restocks' own references."""
    takes = {e.ref for e in await changes(store) if e.delta < 0}
    out: dict[str, int] = collections.Counter()
    for e in await changes(store):
        if e.delta > 0:
            out[next(t for t in takes if e.ref.startswith(t + ":"))] += e.delta
    return dict(out)


async def one_pass(store: StockStore, cfg: ChannelConfig, **kwargs: Any):
    p = poller(store, cfg)
    try:
        return await p.run_pass(**kwargs)
    finally:
        await p.reader.close()


async def stocks(store: StockStore, skus: list[str]) -> dict[str, int]:
    return {sku: (await store.get(sku)).available for sku in skus}


@contextlib.contextmanager
def serve_api(settings: Settings) -> Iterator[str]:
    """The API app on loopback (uvicorn in a thread, its lifespan run), for webhooks the simulators send."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


# ----- orders whose webhooks were lost ----------------------------------------------------------------------


async def sell_cancel_refund(market: Market, n: int = 12, webhook: str = "drop") -> list[str]:
    """n orders of A and B; the first cancelled, the second partly refunded (restocked where the marketplace
    restocks refunds), the third refunded twice in parts (Flipkart: two partial cancellations)."""
    ids = [await market.order([("A", 3), ("B", 1)], webhook) for _ in range(n)]
    await market.cancel(ids[0], webhook)
    lines = market.sim.order(ids[1])["lines"]
    refund_kw = {"restock_type": "return"} if market.name == "shopify" else {}
    await market.refund(ids[1], [{"line_id": lines[0]["line_id"], "qty": 1}], webhook, **refund_kw)
    third = market.sim.order(ids[2])["lines"][0]["line_id"]
    await market.refund(ids[2], [{"line_id": third, "qty": 1}], webhook, **refund_kw)
    # (a second apart: Flipkart's receiver restocks a cancellation under x<shipment>@<timestamp>, whole
    # seconds, so two parts cancelled within a second share an id and the second is taken for the first)
    await past_this_second()
    await market.refund(ids[2], [{"line_id": third, "qty": 1}], webhook, **refund_kw)
    return ids


@pytest.mark.parametrize("kind", KINDS)
async def test_orders_whose_webhooks_were_dropped_are_applied_by_one_pass(store, markets, kind):
    market = markets[kind]
    await seed(store, market, {"A": 100, "B": 100})
    ids = await sell_cancel_refund(market)
    await past_this_second()
    p = poller(store, sim_config(market))
    report = await p.run_pass(since_ms=int(time.time() * 1000) - 60_000)
    await p.reader.close()
    # Stock is what the marketplace sold and restocked: its own listing, seeded alike.
    assert await stocks(store, ["A", "B"]) == market.sim.quantities
    assert market.sim.quantities != {"A": 100, "B": 100}
    takes, restocks = await takes_and_restocks(store)
    assert set(takes) == market.line_refs() and set(takes.values()) == {1}
    assert set(restocks.values()) == {1} and restocks  # each restock once
    assert report.found_by_polling == len(ids)  # the cancelled one too: taken here first, then restocked
    stats = await p.stats.read()
    assert int(stats["found_by_polling"]) == report.found_by_polling and stats["last_error"] == ""
    # A second pass finds everything applied.
    again = await one_pass(store, sim_config(market), since_ms=int(time.time() * 1000) - 60_000)
    assert (again.applied, again.found_by_polling) == (0, 0)
    assert await takes_and_restocks(store) == (takes, restocks)


@pytest.fixture
def other_prefix(redis_url):
    """A second fresh prefix (removed afterwards), for the same orders applied another way."""
    import uuid

    import redis as sync_redis  # (the conftest's own cleanup, for a prefix it does not know)

    p = f"t{uuid.uuid4().hex[:12]}"
    yield p
    client = sync_redis.Redis.from_url(redis_url)
    for pattern in (f"{{{p}:*", f"{p}:*"):
        keys = list(client.scan_iter(match=pattern.replace("{", r"\{"), count=1000))
        if keys:
            client.delete(*keys)
    client.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_polled_orders_apply_exactly_what_their_webhooks_apply(store, settings, other_prefix, markets, kind):
    """The same orders, delivered by webhook to the API under one prefix and read by the poller under another,
    change stock by the same amounts under the same references (line keys, SKUs, quantities, restock
    suffixes)."""
    market = markets[kind]
    hooked = with_channels(settings.with_(prefix=other_prefix), markets)
    async with await StockStore.connect(hooked) as other:
        await seed(other, market, {"A": 100, "B": 100})
        await seed(store, market, {"A": 100, "B": 100})
        with serve_api(hooked) as api:
            await point_webhooks(market, api)
            await sell_cancel_refund(market, webhook="deliver")
            await wait_for(market.delivered, 20, "every webhook delivered")
        by_webhook, units_by_webhook = await takes_and_restocks(other), await restocked_per_line(other)
        assert await stocks(other, ["A", "B"]) == market.sim.quantities
    await past_this_second()
    cfg = load_channels(with_channels(settings, markets))[kind]
    report = await one_pass(store, cfg, since_ms=int(time.time() * 1000) - 60_000)
    polled = await takes_and_restocks(store)
    assert await stocks(store, ["A", "B"]) == market.sim.quantities
    assert report.found_by_polling == 12 and report.refused == 0
    if kind != "flipkart":
        assert polled == by_webhook
        return
    # Flipkart's receiver names a cancellation by a digest of its notification, which the search cannot
    # rebuild: the same lines are taken under the same references and restocked the same units.
    assert polled[0] == by_webhook[0]
    assert await restocked_per_line(store) == units_by_webhook


# ----- webhooks and the poller at once --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_a_webhook_and_the_poller_racing_for_the_same_order_apply_it_once(store, settings, markets, kind):
    """Webhooks land about when the poller first sees their orders (a second after they were placed), while
    the poller passes again and again over every order of the last minute: each line is taken once and
    restocked once, whoever comes first."""
    market = markets[kind]
    hooked = with_channels(settings, markets)
    await seed(store, market, {"A": 1000, "B": 1000})
    p = poller(store, load_channels(hooked)[kind])
    rng, ids, done = random.Random(kind), [], asyncio.Event()

    async def poll() -> None:
        while not done.is_set():
            await p.run_pass(settle=False)

    with serve_api(hooked) as api:
        await point_webhooks(market, api)
        await market.post("/_sim/market", {"late_s": 1.0})
        task = asyncio.create_task(poll())
        try:
            for i in range(30):
                passes = p.passes
                await wait_for(lambda passes=passes: p.passes > passes or task.done(), 10, "a pass")
                ids.append(await market.order([("A", 1 + i % 3), ("B", 1)], rng.choice(["late", "late", "twice"])))
                if i % 6 == 5:
                    await market.cancel(ids[i - 2], rng.choice(["late", "deliver"]))
            await wait_for(market.delivered, 30, "every webhook delivered")
            await past_this_second()
            passes = p.passes
            await wait_for(lambda: p.passes > passes + 1 or task.done(), 10, "a pass over everything")
        finally:
            done.set()
            await task
            await p.reader.close()
    takes, restocks = await takes_and_restocks(store)
    assert set(takes.values()) == {1} and set(restocks.values()) == {1}
    cancelled = {ids[i - 2] for i in range(30) if i % 6 == 5}
    for ref in market.line_refs():
        if _order_of(market, ref) not in cancelled:
            assert ref in takes
        else:  # taken and restocked, or (its cancellation came first) neither
            assert (ref in takes) == any(r.startswith(ref + ":") for r in restocks), ref
    assert await stocks(store, ["A", "B"]) == market.sim.quantities
    stats = await p.stats.read()
    assert 0 <= int(stats.get("found_by_polling", 0)) <= 30 and stats["last_error"] == ""


def _order_of(market: Market, ref: str) -> str:
    """The order id of a line's take reference."""
    if market.name != "flipkart":
        return ref.split(":")[1]
    return market.sim.book.by_line(ref.split(":")[1]).order_id


# ----- stopping, failing, resuming -------------------------------------------------------------------------------


@pytest.mark.parametrize("stop", ["cancelled", "outage"])
async def test_a_pass_stopped_midway_resumes_from_its_cursor_and_applies_nothing_twice(store, markets, stop):
    market = markets["shopify"]
    await seed(store, market, {"A": 100})
    ids = [await market.order([("A", 1)]) for _ in range(30)]
    await market.cancel(ids[3])
    await past_this_second()
    cfg = sim_config(market, poll_page_size=2)
    first, report = poller(store, cfg), PassReport("shopify")
    since = int(time.time() * 1000) - 60_000
    if stop == "cancelled":  # the process is killed after three pages (maybe in the middle of the fourth)
        market.sim.set_faults(latency_ms=100)  # (so that the pass is still under way when it is killed)
        task = asyncio.create_task(first.run_pass(since_ms=since, report=report))
        await wait_for(lambda: report.pages >= 3, 10, "three pages")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        market.sim.set_faults(latency_ms=0)
    else:  # the marketplace fails the third page
        first.reader.api.retries = 0

        def fail_after_two() -> bool:
            if report.pages == 2:
                market.sim.outage(True)
            return False

        with pytest.raises(PollError, match="503"):
            await first.run_pass(since_ms=since, report=report, halt=fail_after_two)
        market.sim.outage(False)
    await first.reader.close()
    cursor = await first.cursors.get("orders")
    newest = max(market.sim.order(i)["updated_ms"] for i in ids)
    assert cursor is not None and cursor <= floor_s(newest) < floor_s(int(time.time() * 1000))
    takes, _ = await takes_and_restocks(store)
    assert 0 < len(takes) < 30 and set(takes.values()) == {1}
    # The next pass starts at the cursor (less the overlap) and applies the rest, nothing twice.
    second = await one_pass(store, cfg)
    takes, restocks = await takes_and_restocks(store)
    assert set(takes) == market.line_refs() and set(takes.values()) == {1} and list(restocks.values()) == [1]
    assert await stocks(store, ["A"]) == market.sim.quantities
    assert 30 - 2 <= report.found_by_polling + second.found_by_polling <= 30  # (a page cut short is not counted)
    assert await first.cursors.get("orders") > cursor


async def test_the_cursor_never_moves_past_an_order_that_failed_to_apply(store, markets):
    market = markets["shopify"]
    await seed(store, market, {"A": 100, "BAD": 5})
    before = [await market.order([("A", 1)]) for _ in range(3)]
    bad = await market.order([("BAD", 1)])
    await past_this_second()
    after = [await market.order([("A", 2)]) for _ in range(3)]
    await past_this_second()
    await store.redis.delete(store.keys.sku("BAD"))
    await store.redis.set(store.keys.sku("BAD"), "not a hash")  # every library call on it fails (WRONGTYPE)
    cfg = dataclasses.replace(sim_config(market, poll_page_size=1, poll_overlap_s=5), poll_s=0.1)
    p, stop = poller(store, cfg), asyncio.Event()
    await p.cursors.advance("orders", floor_s(market.sim.order(before[0])["created_ms"]))
    task = asyncio.create_task(p.run(stop))
    try:
        await wait_for(_stat(p, "last_error", lambda v: "WRONGTYPE" in v), 10, "the failure recorded")
        cursor = await p.cursors.get("orders")
        bad_ms = market.sim.order(bad)["updated_ms"]
        assert cursor <= floor_s(bad_ms) < floor_s(market.sim.order(after[0])["updated_ms"])
        takes, _ = await takes_and_restocks(store)
        assert {r.split(":")[1] for r in takes} == set(before)  # nothing after the order that failed
        # Fixed: the next pass applies it and the orders after it, and moves on.
        await store.redis.delete(store.keys.sku("BAD"))
        await store.set("BAD", 5, ref="fixed", source="test")
        await wait_for(_stat(p, "last_error", lambda v: v == ""), 10, "a pass that succeeds")
    finally:
        stop.set()
        await task
    takes, _ = await takes_and_restocks(store)
    assert set(takes) == market.line_refs() and set(takes.values()) == {1}
    assert await stocks(store, ["A", "BAD"]) == market.sim.quantities
    assert await p.cursors.get("orders") > floor_s(market.sim.order(after[-1])["updated_ms"])


def _stat(p: OrderPoller, name: str, ok):
    async def check() -> bool:
        value = (await p.stats.read()).get(name)
        return value is not None and ok(value)
    return check


# ----- one poller per channel --------------------------------------------------------------------------------


async def test_two_pollers_of_one_channel_only_one_polls(store, markets):
    market = markets["flipkart"]
    cfg = dataclasses.replace(sim_config(market, poll_lease_s=0.6), poll_s=0.05)
    a, b = poller(store, cfg, owner="a"), poller(store, cfg, owner="b")
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    task_a = asyncio.create_task(a.run(stop_a))
    await wait_for(lambda: a.passes >= 1, 10, "a's first pass")
    task_b = asyncio.create_task(b.run(stop_b))
    try:
        await wait_for(lambda: a.passes >= 40, 20, "two seconds of a's passes")  # > 3 leases: renewed
        assert b.passes == 0 and not b.polling.is_set() and await a.lease.holder() == "a"
        stop_a.set()
        await task_a
        await wait_for(lambda: b.passes >= 1, 5, "b taking over")
        assert await b.lease.holder() == "b" and not a.polling.is_set()
    finally:
        stop_a.set()
        stop_b.set()
        await asyncio.gather(task_a, task_b)
    assert await b.lease.holder() is None  # given back on the way out


# ----- settings ---------------------------------------------------------------------------------------------------


def test_poll_s_is_checked_where_channels_are_read():
    table = {"kind": "shopify", "url": "http://127.0.0.1:9"}
    assert parse_channel("s", table).poll_s == 0
    assert parse_channel("s", {**table, "poll_s": 30}).poll_s == 30
    for bad in (-1, "60", True, 0.01, 90_000):
        with pytest.raises(SettingsError, match="poll_s"):
            parse_channel("s", {**table, "poll_s": bad})
    with pytest.raises(SettingsError, match="no order API"):
        parse_channel("hook", {"kind": "webhook", "url": "http://127.0.0.1:9", "poll_s": 5})


async def test_an_overlap_beyond_the_references_retention_is_refused_at_start(store, settings, markets):
    tables = channel_tables(markets, poll_overlap_s=4000)
    tables["shopify"]["poll_s"] = 60
    short = settings.with_(idem_ttl_s=3600, sections={"channels": tables})
    with pytest.raises(SettingsError, match=r"reach back further than the references are remembered"):
        PollOptions.from_config(load_channels(short)["shopify"], short.idem_ttl_s)
    with pytest.raises(SettingsError, match="STOCKSYNC_IDEM_TTL 3600"):
        await run_workers(short, ["shopify"])  # the worker process refuses before it connects
    fine = settings.with_(idem_ttl_s=3600 * 48, sections={"channels": tables})
    assert OrderPollers(fine, load_channels(fine).values()).options["shopify"].overlap_s == 4000
    p = poller(store, load_channels(settings.with_(sections={"channels": tables}))["flipkart"])
    with pytest.raises(SettingsError, match="further back than the references are remembered"):
        await p.run_pass(since_ms=int(time.time() * 1000) - 3 * 86_400_000)
    await p.reader.close()
    assert await p.cursors.all() == {}
    tables["amazon"]["poll_s"] = 60
    tables["amazon"]["options"]["order_api_limits"] = {"getOrders": [0, 1]}
    odd = settings.with_(sections={"channels": tables})
    with pytest.raises(SettingsError, match="order_api_limits.getOrders"):
        OrderPollers(odd, load_channels(odd).values())


# ----- per marketplace ----------------------------------------------------------------------------------------


async def test_shopify_an_order_larger_than_a_page_allows_is_read_whole(store, markets):
    market = markets["shopify"]
    skus = {f"L{i}": 10 for i in range(30)}
    await seed(store, market, skus)
    big = await market.order([(sku, 2) for sku in skus])  # 30 lines: the page query asks for 20
    lines = market.sim.order(big)["lines"]
    for line in lines[:4]:  # 4 refunds: the page query asks for 3
        await market.refund(big, [{"line_id": line["line_id"], "qty": 1}], restock_type="return")
    small = await market.order([("L0", 1)])
    await past_this_second()
    report = await one_pass(store, sim_config(market), since_ms=int(time.time() * 1000) - 60_000)
    takes, restocks = await takes_and_restocks(store)
    assert set(takes) == market.line_refs() and len(restocks) == 4
    assert await stocks(store, list(skus)) == market.sim.quantities
    assert report.found_by_polling == 2 and small
    # More than 10 refunds: the order cannot be read whole, and the pass stops there (cursor kept).
    for line in lines[10:17]:
        await market.refund(big, [{"line_id": line["line_id"], "qty": 1}], restock_type="no_restock")
    await past_this_second()
    with pytest.raises(PollError, match=f"order {big} has more than"):
        await one_pass(store, sim_config(market), since_ms=int(time.time() * 1000) - 60_000)


async def test_flipkart_a_line_cancelled_in_parts_is_restocked_what_was_cancelled(store, settings, markets):
    """The search shows an item's cancelled units so far: the poller restocks what its line's record does
    not hold yet, whether an earlier part came by webhook or by an earlier pass."""
    market = markets["flipkart"]
    await seed(store, market, {"A": 100})
    hooked = with_channels(settings, markets)
    cfg = load_channels(hooked)["flipkart"]
    order = await market.order([("A", 5)], webhook="drop")
    line = market.sim.order(order)["lines"][0]["line_id"]
    since = int(time.time() * 1000) - 60_000
    with serve_api(hooked) as api:
        await point_webhooks(market, api)
        await market.refund(order, [{"line_id": line, "qty": 1}], webhook="deliver")  # restocks nothing yet:
        await wait_for(market.delivered, 10, "the cancellation's webhook")  # (its take was not applied)
        await past_this_second()
        await one_pass(store, cfg, since_ms=since)  # takes 5, restocks 1
        assert await stocks(store, ["A"]) == market.sim.quantities == {"A": 96}
        await market.refund(order, [{"line_id": line, "qty": 2}], webhook="deliver")  # by webhook: 2
        await wait_for(market.delivered, 10, "the second cancellation's webhook")
        await past_this_second()
        await market.refund(order, [{"line_id": line, "qty": 1}], webhook="drop")  # lost
        await past_this_second()
        await one_pass(store, cfg, since_ms=since)
    assert await stocks(store, ["A"]) == market.sim.quantities == {"A": 99}
    _, restocks = await takes_and_restocks(store)
    assert len(restocks) == 3 and set(restocks.values()) == {1}


async def test_amazon_paces_its_calls_and_honours_429(store, markets):
    """The one test at (scaled) rate limits: the poller keeps to each operation's pace and gets no 429;
    told a faster pace than the marketplace's, it waits out each 429's Retry-After, takes the rate from
    x-amzn-RateLimit-Limit and still reads every order."""
    market = markets["amazon"]
    await market.post("/_sim/market", {"limits": {"getOrders": {"rate": 2, "burst": 2},
                                                  "getOrderItems": {"rate": 10, "burst": 5}}})
    await seed(store, market, {"A": 100})
    for _ in range(25):
        await market.order([("A", 1)])
    await past_this_second()
    paced = sim_config(market, poll_page_size=10, order_api_limits={"getOrders": [2, 2], "getOrderItems": [9, 4]})
    start = time.monotonic()
    report = await one_pass(store, paced, since_ms=int(time.time() * 1000) - 60_000)
    elapsed = time.monotonic() - start
    calls = [c for c in market.sim.calls if c.op in ("getOrders", "getOrderItems")]
    assert report.orders == 25 and report.pages == 3 and not [c for c in calls if c.outcome == "throttled"]
    assert elapsed >= (25 - 4) / (9 * 0.9) * 0.9  # the burst, then 9 a second less a tenth
    assert market.sim.max_rate(op="getOrderItems") <= 5 + 10
    # Too fast a pace: 429s, honoured.
    for _ in range(15):
        await market.order([("A", 1)])
    await past_this_second()
    eager = sim_config(market, poll_page_size=100, order_api_limits={"getOrderItems": [1000, 1000]})
    p = poller(store, eager)
    try:
        report = await p.run_pass(since_ms=int(time.time() * 1000) - 60_000)
    finally:
        await p.reader.close()
    assert report.orders == 40 and p.reader.api.throttled > 0 and p.reader.paces["getOrderItems"].limit == 10
    takes, _ = await takes_and_restocks(store)
    assert set(takes) == market.line_refs() and set(takes.values()) == {1}
    assert await stocks(store, ["A"]) == market.sim.quantities


def test_amazon_paces_at_its_usage_plans_by_default():
    reader = READERS["amazon"](config("amazon", "http://127.0.0.1:9"), None, PollOptions())
    assert {op: (p.limit, p.capacity) for op, p in reader.paces.items()} == {
        "getOrders": (0.0167, 20.0), "getOrderItems": (0.5, 30.0)}


# ----- the command line, the worker process, the metric -------------------------------------------------------


def toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return "{ " + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + " }"


def write_config(path: Path, tables: dict[str, dict]) -> Path:
    tables = {**tables, "ebay": {"kind": "webhook", "url": "http://127.0.0.1:9/ebay"}}
    text = "".join(f"[channels.{name}]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in table.items()) + "\n"
                   for name, table in tables.items())
    path.write_text(text)
    return path


async def stocksync(settings: Settings, config_file: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "REDIS_URL": settings.redis_url, "STOCKSYNC_PREFIX": settings.prefix,
           "STOCKSYNC_CONFIG": str(config_file)}
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "stocksync", *args], capture_output=True,
                                   text=True, env=env, timeout=120, cwd=ROOT)


def iso_ago(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds))


async def test_reconcile_orders_prints_progress_and_a_summary(store, settings, markets, tmp_path):
    market = markets["shopify"]
    await seed(store, market, {"A": 100})
    for _ in range(12):
        await market.order([("A", 2)])
    await past_this_second()
    market.sim.set_faults(latency_ms=300)  # six pages of two: a couple of seconds
    cfg = write_config(tmp_path / "stocksync.toml", channel_tables(markets, poll_page_size=2))
    out = await stocksync(settings, cfg, "reconcile", "orders", "shopify", "--since", iso_ago(60))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("shopify: 6 pages, 12 orders read, 12 lines applied, 0 already applied, 0 refused, "
                                  "0 skipped; 12 orders found only by polling")
    progress = [line for line in out.stderr.splitlines() if line.endswith(" so far")]
    assert progress and all(line.startswith("shopify: ") and "orders read" in line for line in progress)
    assert await stocks(store, ["A"]) == market.sim.quantities == {"A": 76}
    # Again, from the cursor it left (less the overlap): everything is applied already.
    market.sim.set_faults(latency_ms=0)
    again = await stocksync(settings, cfg, "reconcile", "orders", "shopify")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().endswith("12 already applied, 0 refused, 0 skipped; 0 orders found only by polling")
    assert await stocks(store, ["A"]) == {"A": 76}


@pytest.mark.parametrize(("args", "message"), [
    (["nope"], "no channel named 'nope'"),
    (["ebay"], "channel ebay is of kind webhook, which has no order API"),
    (["shopify", "--since", "yesterday"], "--since 'yesterday' is not an ISO 8601 time"),
    (["shopify", "--since", "{3 days ago}"], "further back than the references are remembered"),
    (["shopify", "--since", "{in an hour}"], "--since is in the future"),
])
async def test_reconcile_orders_refuses_bad_input_and_changes_nothing(settings, markets, tmp_path, sync_redis, args,
                                                                       message):
    args = [{"{3 days ago}": iso_ago(3 * 86400), "{in an hour}": iso_ago(-3600)}.get(a, a) for a in args]
    cfg = write_config(tmp_path / "stocksync.toml", channel_tables(markets))
    out = await stocksync(settings, cfg, "reconcile", "orders", *args)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("stocksync: ") and message in out.stderr, out.stderr
    assert not list(sync_redis.scan_iter(match=f"*{settings.prefix}*"))


async def test_reconcile_orders_exits_1_when_the_order_api_fails(store, settings, markets, tmp_path):
    market = markets["flipkart"]
    await seed(store, market, {"A": 10})
    await market.order([("A", 1)])
    market.sim.outage(True)
    cfg = write_config(tmp_path / "stocksync.toml", channel_tables(markets))
    out = await stocksync(settings, cfg, "reconcile", "orders", "flipkart", "--since", iso_ago(60))
    assert out.returncode == 1
    assert "503" in out.stderr and "the cursor stays at the last page applied" in out.stderr
    assert await stocks(store, ["A"]) == {"A": 10}
    assert await store.redis.zscore(store.keys.poll_cursor("flipkart"), "preDispatch") is None


async def test_a_worker_process_polls_its_channel(store, settings, markets, tmp_path):
    """`stocksync worker` starts the channel's poller beside its ChannelWorker (consumers/runner.py), holds the
    lease while it runs, and gives it back when it stops."""
    market = markets["amazon"]
    await seed(store, market, {"A": 50})
    tables = channel_tables(markets, poll_lease_s=2)
    tables["amazon"]["poll_s"] = 0.2
    cfg = write_config(tmp_path / "stocksync.toml", tables)
    env = {**os.environ, "REDIS_URL": settings.redis_url, "STOCKSYNC_PREFIX": settings.prefix,
           "STOCKSYNC_CONFIG": str(cfg)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "stocksync", "worker", "--channel", "amazon",
                                                env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE)
    try:
        await wait_for(lambda: store.redis.get(store.keys.poll_lease("amazon")), 20, "the worker's poller")
        for _ in range(5):
            await market.order([("A", 3)])
        await wait_for(lambda: _available(store, "A", 50 - 15), 20, "the orders polled")
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert await store.redis.get(store.keys.poll_lease("amazon")) is None
    assert int((await store.redis.hgetall(store.keys.poll_stats("amazon")))["found_by_polling"]) == 5


async def _available(store: StockStore, sku: str, n: int) -> bool:
    return (await store.get(sku)).available == n


async def test_metrics_export_the_orders_found_by_polling(store, settings, markets):
    market = markets["shopify"]
    await seed(store, market, {"A": 10})
    for _ in range(3):
        await market.order([("A", 1)])
    await past_this_second()
    with_tables = with_channels(settings, markets)
    await one_pass(store, load_channels(with_tables)["shopify"], since_ms=int(time.time() * 1000) - 60_000)
    tables = channel_tables(markets)
    tables["ebay"] = {"kind": "webhook", "url": "http://127.0.0.1:9/ebay"}
    async with running(settings.with_(sections={"channels": tables})) as client:
        text = (await client.get("/metrics")).text
    found = [line for line in text.splitlines() if line.startswith("stocksync_orders_found_by_polling")]
    assert sorted(found) == ['stocksync_orders_found_by_polling_total{channel="amazon"} 0.0',
                             'stocksync_orders_found_by_polling_total{channel="flipkart"} 0.0',
                             'stocksync_orders_found_by_polling_total{channel="shopify"} 3.0']
    assert "# TYPE stocksync_orders_found_by_polling_total counter" in text


def webhook_mode(rng: random.Random) -> str:
    """5% of webhooks dropped, 5% delivered twice."""
    roll = rng.random()
    return "drop" if roll < 0.05 else "twice" if roll < 0.10 else "deliver"


async def flash_buyer(market: Market, rng: random.Random, skus: list[str]) -> None:
    """40 orders of one or two lines; one in ten cancelled, one in ten of the rest partly refunded."""
    for _ in range(40):
        lines = [(rng.choice(skus), rng.randint(1, 3)) for _ in range(rng.randint(1, 2))]
        order_id = await market.order(lines, webhook_mode(rng))
        if order_id and rng.random() < 0.1:
            await market.cancel(order_id, webhook_mode(rng))
        elif order_id and rng.random() < 0.1 and market.name != "amazon":
            line = market.sim.order(order_id)["lines"][0]
            kw = {"restock_type": "return"} if market.name == "shopify" else {}
            await market.refund(order_id, [{"line_id": line["line_id"], "qty": 1}], webhook_mode(rng), **kw)


# ----- end to end ----------------------------------------------------------------------------------------------


async def test_a_flash_sale_with_lost_and_doubled_webhooks_adds_up_after_one_pass(store, settings, markets):
    """Buyers on the three marketplaces at once, webhooks to the running API with 5% of them dropped and 5%
    delivered twice, some orders cancelled and refunded (the same odds), then one poll pass per channel:
    every SKU's stock is its start less what the marketplaces sold plus what they restocked, and every line
    was taken once."""
    skus = [f"FLASH-{i}" for i in range(5)]
    hooked = with_channels(settings, markets)
    start = 400  # more than the three listings can sell, restocks resold included: nothing is refused
    for sku in skus:
        await store.set(sku, start, ref=f"seed-{sku}", source="test")
    for market in markets.values():
        market.sim.seed({sku: 40 for sku in skus})
    rng = random.Random(2024)
    since = int(time.time() * 1000) - 1000
    with serve_api(hooked) as api:
        for market in markets.values():
            await point_webhooks(market, api)
        await asyncio.gather(*(flash_buyer(m, rng, skus) for m in markets.values() for _ in range(3)))
        for market in markets.values():
            await wait_for(market.delivered, 60, f"{market.name}'s webhooks delivered")
        modes = collections.Counter()
        for market in markets.values():
            modes.update(d["mode"] for d in await market.deliveries())
        assert modes["drop"] and modes["twice"] and modes["deliver"] > 10 * modes["drop"]
        await past_this_second()
        reports = {}
        for name in KINDS:
            reports[name] = await one_pass(store, load_channels(hooked)[name], since_ms=since)
    # what the marketplaces sold less what they restocked: their listings' fall
    sold = {sku: sum(40 - m.sim.quantities[sku] for m in markets.values()) for sku in skus}
    assert any(sold.values())
    assert await stocks(store, skus) == {sku: start - sold[sku] for sku in skus}
    assert all(r.refused == 0 for r in reports.values())
    takes, restocks = await takes_and_restocks(store)
    assert set(takes.values()) == {1} and set(restocks.values()) <= {1}
    assert sum(r.found_by_polling for r in reports.values()) >= 1
    for market in markets.values():  # a line not taken: its cancellation's webhook came before anything took it
        for ref in market.line_refs() - set(takes):
            assert market.sim.order(_order_of(market, ref))["status"] == "cancelled", ref
    assert set(takes) <= set().union(*(m.line_refs() for m in markets.values()))


async def test_flipkart_a_cancellation_restocked_by_the_poller_is_not_restocked_again_by_its_late_webhook(
    store, settings, markets,
):
    market = markets["flipkart"]
    await seed(store, market, {"A": 100})
    hooked = with_channels(settings, markets)
    since = int(time.time() * 1000) - 60_000
    with serve_api(hooked) as api:
        await point_webhooks(market, api)
        await market.post("/_sim/market", {"late_s": 2.0})
        whole = await market.order([("A", 3)], webhook="deliver")
        part = await market.order([("A", 4)], webhook="deliver")
        await wait_for(market.delivered, 10, "the orders' webhooks")
        await market.cancel(whole, webhook="late")
        line = market.sim.order(part)["lines"][0]["line_id"]
        await market.refund(part, [{"line_id": line, "qty": 1}], webhook="deliver")
        await wait_for(lambda: _delivered_count(market, 3), 10, "the partial cancellation's webhook")
        await past_this_second()
        report = await one_pass(store, load_channels(hooked)["flipkart"], since_ms=since)  # before the late one
        assert not await market.delivered()
        assert await stocks(store, ["A"]) == market.sim.quantities == {"A": 100 - 4 + 1}
        await wait_for(market.delivered, 10, "the late cancellation's webhook")
    assert await stocks(store, ["A"]) == {"A": 97}  # the late webhook restocked nothing more
    assert (report.found_by_polling, report.applied) == (0, 1)  # (the full restock; the part was held)


async def _delivered_count(market: Market, n: int) -> bool:
    return sum(d["state"] == "delivered" for d in await market.deliveries()) >= n
