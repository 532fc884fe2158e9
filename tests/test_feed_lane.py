"""Amazon's feed lane (consumers/feeds.py) against real Redis and the Amazon simulator's Feeds API.

The simulator processes each feed after a short delay (set per test) and applies its quantities then, so a
feed processed after a newer patch overwrites it, as Amazon's would. Workers run in-process, except where
one is killed (a process, SIGKILL)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from consumers.adapters import check_options, make_adapter
from consumers.dlq import list_dead_letters
from consumers.worker import ChannelWorker
from stocksync.devtools.testing import config, toml_channel, wait_for
from stocksync.settings import SettingsError

from .helpers import worker_options

ROOT = Path(__file__).resolve().parent.parent
# quick feeds: the lane's pacing and the simulator's limits scaled down from minutes to fractions of seconds
LANE = {"lane": "feeds", "rate_limit": 2, "burst": 1, "feed_after_s": 0, "feed_linger_s": 0.1,
        "feed_poll_s": 0.1, "create_feed_rate": 20, "create_feed_burst": 5}
FAST_LIMITS = {"createFeed": {"rate": 20, "burst": 5}, "getFeedDocument": None, "getFeed": None}


@pytest.fixture
def amazon(sims):
    sim, url = sims["amazon"]
    sim.reset()
    sim.set_market(limits=FAST_LIMITS)
    sim.set_feeds(delay_s=0.3)
    return sim, url


class Lane:
    """One Amazon worker with the feed lane, as a task of the test's event loop."""

    def __init__(self, store, url, **options) -> None:
        self.store = store
        self.config = config("amazon", url, **{**LANE, **options})
        self.worker = ChannelWorker(store.redis, store.keys, self.config, worker_options())
        self.task = None

    async def __aenter__(self):
        self.task = asyncio.create_task(self.worker.run())
        return self

    async def __aexit__(self, *exc):
        self.worker.stop()
        await self.task

    @property
    def stats(self):
        return self.worker.stats


async def acknowledged(store) -> bool:
    for g in await store.redis.xinfo_groups(store.keys.events(0)):
        if g["name"] == "amazon" and (g["pending"] or g["lag"]):
            return False
    return True


async def listed_right(store, sim, skus) -> bool:
    quantities = sim.quantities
    for sku in skus:
        if quantities.get(sku) != (await store.get(sku)).available:
            return False
    return True


async def settled(store, sim, skus) -> bool:
    return (await listed_right(store, sim, skus) and await acknowledged(store)
            and not await store.redis.hlen(store.keys.feeds("amazon")))


def created_feeds(sim):
    return [c for c in sim.calls if c.op == "createFeed" and c.status == 202]


async def test_a_feed_accepted_acknowledges_its_entries(store, amazon):
    sim, url = amazon
    skus = [f"F-{i}" for i in range(30)]
    for sku in skus:
        await store.set(sku, 50)
    async with Lane(store, url) as lane:
        await wait_for(lambda: settled(store, sim, skus), 20, "every SKU listed and every entry acknowledged")
        for i, sku in enumerate(skus[:10]):  # ordinary sales: fed too
            await store.decrement(sku, 1 + i % 3, ref=f"sale-{i}", source="shopify")
        await wait_for(lambda: settled(store, sim, skus), 20, "the sales listed and acknowledged")
        assert lane.stats["feeds_done"] >= 2 and lane.stats["feed_errors"] == 0
    fed = {sku for f in sim.feeds() for sku in f["applied"]}
    patched = {i["sku"] for c in sim.calls if c.method == "PATCH" for i in c.items}
    assert len(fed) >= 28 and fed | patched >= set(skus)  # (the patch lane takes what its rate leaves room for)
    pushed = await store.redis.hgetall(store.keys.pushed(0, "amazon"))
    for sku in skus:
        assert int(pushed[sku]) == (await store.get(sku)).version


async def test_a_message_the_report_refuses_is_retried_then_dead_lettered(store, amazon):
    sim, url = amazon
    sim.set_feeds(error_skus=["BAD"])
    skus = [*[f"OK-{i}" for i in range(5)], "BAD"]  # (the first is patched: the patch calls have room for one)
    for sku in skus:
        await store.set(sku, 20)
    async with Lane(store, url, feed_max_attempts=2, rate_limit=0.2):
        await wait_for(lambda: listed_right(store, sim, skus[:-1]), 20, "the good SKUs listed")
        await wait_for(lambda: list_dead_letters(store.redis, store.keys, "amazon"), 20, "BAD dead-lettered")
        await wait_for(lambda: acknowledged(store), 10, "every entry acknowledged (BAD's by its dead letter)")
    (dead,) = await list_dead_letters(store.redis, store.keys, "amazon")
    assert dead.sku == "BAD" and dead.reason == "max_attempts" and dead.attempts == 2 and "8541" in dead.error
    assert "BAD" not in sim.quantities  # never listed: each feed refused it
    documents = [f for f in sim.feeds() if f["status"] == "DONE"]
    assert len(documents) >= 2  # the first feed and the retry


async def test_a_patch_overwritten_by_an_older_feed_is_pushed_again(store, amazon):
    sim, url = amazon
    sim.set_feeds(delay_s=1.5)
    skus = [f"R-{i}" for i in range(5)]
    for sku in skus:
        await store.set(sku, 30)
    async with Lane(store, url, rate_limit=5, burst=2) as lane:
        await wait_for(lambda: lane.stats["feeds_created"] >= 1, 10, "a feed in flight")
        (feed,) = [f for f in sim.feeds()]
        assert feed["status"] == "IN_QUEUE"
        sku = (await in_flight(store))[-1]  # (the first SKUs may have been patched: the patch calls had room)
        await store.set(sku, 0)  # a drop to 0: patched at once, while the feed (holding 30) is queued
        await wait_for(lambda: sim.quantities.get(sku) == 0, 5, "the drop to 0 patched")
        assert sim.feeds()[0]["status"] == "IN_QUEUE"  # (the patch came first)
        await wait_for(lambda: sim.feeds()[0]["status"] == "DONE", 10, "the feed processed")
        await wait_for(lambda: settled(store, sim, skus), 20, "the listing right after the feed landed")
        assert lane.stats["feed_rechecks"] >= 1
    history = sim.history(sku)
    # the feed's 30 landed after the patch's 0 (the hazard), and the lane's push of 0 came after it
    assert history[-3:] == [0, 30, 0], history


async def test_createfeed_429_is_waited_out(store, amazon):
    sim, url = amazon
    sim.set_market(limits={"createFeed": {"rate": 0.5, "burst": 1}})
    sim.set_feeds(delay_s=1.0)
    first, second = [f"A-{i}" for i in range(5)], [f"B-{i}" for i in range(5)]
    async with Lane(store, url, rate_limit=0.2, create_feed_rate=50) as lane:  # a client bucket too generous
        for sku in first:
            await store.set(sku, 10)
        await wait_for(lambda: lane.stats["feeds_created"] >= 1, 10, "the first feed")
        for sku in second:
            await store.set(sku, 10)
        await wait_for(lambda: settled(store, sim, first + second), 30, "both batches listed and acknowledged")
        assert lane.stats["feed_throttled"] >= 1
    creates = [c for c in sim.calls if c.op == "createFeed"]
    throttled = [i for i, c in enumerate(creates) if c.status == 429]
    assert throttled, [c.status for c in creates]
    for i in throttled:  # the next try waited for Retry-After (2 s: a token at 0.5/s, rounded up)
        assert i + 1 < len(creates) and creates[i + 1].t - creates[i].t >= 1.9
    assert sim.max_rate(2.0, op="createFeed") <= 2  # (burst 1 + 0.5/s over 2 s)


@pytest.fixture
def lane_config(tmp_path, settings, amazon):
    _, url = amazon
    text = [f'redis_url = "{settings.redis_url}"', f'prefix = "{settings.prefix}"', "", "[worker]", "block_ms = 100",
            "reclaim_idle_ms = 600", "lease_ms = 1500", "heartbeat_ms = 100", "backoff_base_ms = 20",
            "backoff_cap_ms = 200", "trim_interval_ms = 0", "", toml_channel(config("amazon", url, **LANE))]
    path = tmp_path / "stocksync.toml"
    path.write_text("\n".join(text))
    return path


def start_worker(cfg: Path, consumer: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "consumers", "--config", str(cfg), "worker", "--channel", "amazon",
                             "--consumer", consumer], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=(cfg.parent / f"{consumer}.log").open("wb"), env={**os.environ})


async def test_a_worker_killed_with_a_feed_in_flight_converges_after_restart(store, amazon, lane_config):
    sim, _ = amazon
    sim.set_feeds(delay_s=4.0)
    skus = [f"K-{i}" for i in range(10)]
    for sku in skus:
        await store.set(sku, 40)
    first = start_worker(lane_config, "first")
    try:
        await wait_for(lambda: created_feeds(sim), 20, "a feed created")
        await wait_for(lambda: recorded_feeds(store), 5, "the feed recorded with its feedId")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    assert sim.feeds()[0]["status"] == "IN_QUEUE"
    assert await store.redis.hlen(store.keys.feeds("amazon")) == 1  # the feed in flight, recorded
    sku = (await in_flight(store))[-1]
    await store.set(sku, 0)  # patched by the next worker before the old feed (40) is processed
    second = start_worker(lane_config, "second")
    try:
        await wait_for(lambda: settled(store, sim, skus), 40, "every SKU listed right and acknowledged")
        await wait_for(lambda: sim.feeds()[0]["status"] == "DONE", 10, "the old feed processed")
        await wait_for(lambda: settled(store, sim, skus), 20, "still right after the old feed landed")
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(20)
    # the old feed's 40 landed after the new worker's patch of 0, and the resumed feed was settled by pushing
    # 0 again (without the record in Redis the listing would stay at 40)
    assert sim.history(sku)[-3:] == [0, 40, 0], sim.history(sku)


async def in_flight(store) -> list[str]:
    """The SKUs of the feeds recorded in flight, in message order."""
    rows = await store.redis.hgetall(store.keys.feeds("amazon"))
    return [sku for f in map(orjson.loads, rows.values()) for sku in f["skus"]]


async def recorded_feeds(store) -> list[str]:
    rows = await store.redis.hgetall(store.keys.feeds("amazon"))
    return [f["feed"] for f in map(orjson.loads, rows.values()) if f["feed"]]


@pytest.mark.parametrize(("option", "value", "says"), [
    ("lane", "bulk", '"patch" (every change patched) or "feeds"'),
    ("feed_max_messages", 30_000, "from 1 to 25000"),
    ("create_feed_rate", 0, "a number > 0"),
    ("feed_poll_s", "15", "a number > 0"),
    ("patch_at_or_below", -1, "a whole number >= 0"),
    ("feed_max_attempts", True, "a whole number >= 1"),
])
def test_bad_lane_options_are_refused_naming_the_option(option, value, says):
    with pytest.raises(SettingsError) as e:
        check_options(config("amazon", "http://127.0.0.1:1", **{option: value}))
    assert f"channels.amazon.options.{option} must be" in str(e.value) and says in str(e.value)
    check_options(config("amazon", "http://127.0.0.1:1", lane="feeds", feed_max_messages=25_000))  # the bounds pass
    assert make_adapter(config("amazon", "http://127.0.0.1:1")).feeds is None  # (lane "patch" by default)
