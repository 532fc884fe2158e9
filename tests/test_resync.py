"""Pushing current quantities outside the stream: a channel added after the stream was trimmed (the
worker's initial sync), and `stocksync resync` after listings were edited by hand on the marketplace."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from consumers import groups
from consumers.options import WorkerOptions
from consumers.resync import resync
from consumers.testing import config, serving_simulators, toml_channel, wait_for
from consumers.worker import ChannelWorker
from stocksync.channels import Rules

ROOT = Path(__file__).resolve().parent.parent
SKUS = [f"R-{i}" for i in range(30)]
RULES = Rules(buffer=1)


@pytest.fixture(scope="module")
def sims():
    with serving_simulators() as served:
        yield served


@pytest.fixture
def shopify(sims):
    sim, url = sims["shopify"]
    sim.reset()
    return sim, config("shopify", url, rules=RULES)


def opts(**kw) -> WorkerOptions:
    return WorkerOptions(block_ms=100, lease_ms=3000, backoff_base_ms=20, backoff_cap_ms=200, trim_interval_ms=0,
                         heartbeat_ms=200, **kw)


async def seed(store, skus=SKUS) -> None:
    for i, sku in enumerate(skus):
        await store.set(sku, 10 + i)


async def seed_then_trim(store) -> None:
    await seed(store)
    await store.redis.xtrim(store.keys.events(0), maxlen=0, approximate=False)


async def synced(store, sim, what: str) -> None:
    await wait_for(lambda: lists_current(store, sim), 20, what)
    await wait_for(lambda: _gone(store, "shopify"), 5, "the initial sync's mark removed")


async def lists_current(store, sim, skus=SKUS) -> bool:
    listed = sim.quantities
    for sku in skus:
        if listed.get(sku) != RULES.listed((await store.get(sku)).available):
            return False
    return True


@contextlib.asynccontextmanager
async def running(store, cfg):
    worker = ChannelWorker(store.redis, store.keys, cfg, opts())
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await task


async def test_a_group_needs_an_initial_sync_only_where_the_stream_lost_changes(store):
    keys, r = store.keys, store.redis
    assert await groups.ensure_groups(r, keys, "fresh") == []  # no stream yet: nothing to miss
    await seed(store, SKUS[:3])
    assert await groups.ensure_groups(r, keys, "full") == []  # the whole history is there
    assert await groups.ensure_groups(r, keys, "tail", start_id="$") == [0]  # skips the history
    await r.xtrim(keys.events(0), maxlen=1, approximate=False)
    assert await groups.ensure_groups(r, keys, "late") == [0]  # trimmed: SKUs 0 and 1 never heard of
    assert await groups.ensure_groups(r, keys, "full") == []  # an existing group is not marked afterwards
    assert await r.exists(keys.resync(0, "late")) and not await r.exists(keys.resync(0, "full"))


async def test_a_channel_added_after_trimming_gets_every_skus_current_quantity(store, shopify):
    sim, cfg = shopify
    await seed_then_trim(store)  # weeks later, the history is gone
    async with running(store, cfg):
        await synced(store, sim, "every SKU listed on the new channel")
        await store.decrement(SKUS[0], 3, ref="after-sync", source="amazon")  # changes still flow
        await wait_for(lambda: lists_current(store, sim), 10, "the change after the sync")
    assert all(len(sim.history(s)) <= 2 for s in SKUS)  # each SKU pushed once by the sync, SKU 0 once more


async def test_an_unfinished_initial_sync_is_finished_by_the_next_worker(store, shopify):
    sim, cfg = shopify
    await seed_then_trim(store)
    # a worker created the group and marked the partition, then died before pushing anything
    assert await groups.ensure_groups(store.redis, store.keys, "shopify") == [0]
    assert sim.quantities == {}
    async with running(store, cfg):
        await synced(store, sim, "every SKU listed by the next worker")


async def test_the_initial_sync_goes_over_a_partition_again_until_every_sku_is_taken(store, shopify):
    sim, cfg = shopify
    await seed_then_trim(store)
    sim.outage(True)
    async with running(store, cfg):
        await wait_for(lambda: sim.calls, 10, "a sync call during the outage")
        assert await store.redis.exists(store.keys.resync(0, "shopify"))  # not done while the channel is down
        sim.outage(False)
        await synced(store, sim, "every SKU listed after the outage")


async def test_resync_puts_back_hand_edited_listings_and_missing_only_pushes_what_is_not_current(store, shopify):
    sim, cfg = shopify
    await seed(store)
    report = await resync(store.redis, store.keys, cfg)
    assert report.ok and sorted(report.pushed) == sorted(SKUS) and await lists_current(store, sim)
    sim.seed({SKUS[1]: 500, SKUS[2]: 0})  # someone edited two listings in the marketplace's admin
    missing = await resync(store.redis, store.keys, cfg, force=False)
    assert missing.pushed == {} and len(missing.current) == len(SKUS)  # the record says the channel is current
    assert sim.quantities[SKUS[1]] == 500
    forced = await resync(store.redis, store.keys, cfg, skus=[SKUS[1], SKUS[2]])
    assert sorted(forced.pushed) == [SKUS[1], SKUS[2]] and await lists_current(store, sim)


def test_the_resync_command(tmp_path, settings, sims):
    sim, url = sims["flipkart"]
    sim.reset()
    cfg = config("flipkart", url)
    path = tmp_path / "stocksync.toml"
    path.write_text(f'redis_url = "{settings.redis_url}"\nprefix = "{settings.prefix}"\n\n' + toml_channel(cfg))

    def run(*args):
        return subprocess.run([sys.executable, "-m", "stocksync", "--config", str(path), "resync", *args],
                              capture_output=True, text=True, cwd=ROOT, env={**os.environ}, timeout=60)

    for i, sku in enumerate(SKUS[:12]):
        assert subprocess.run([sys.executable, "-m", "stocksync", "--config", str(path), "sku", "set", sku,
                               str(5 + i)], capture_output=True, cwd=ROOT, timeout=30).returncode == 0
    out = run("flipkart")
    assert out.returncode == 0, out.stderr
    assert "12 pushed, 0 current already" in out.stdout
    assert sim.quantities == {s: 5 + i for i, s in enumerate(SKUS[:12])}
    assert "0 pushed, 12 current already" in run("flipkart", "--missing").stdout
    unknown = run("flipkart", "--sku", "NOPE")
    assert unknown.returncode == 1 and "unknown SKU 'NOPE'" in unknown.stderr
    bad = run("ebay")
    assert bad.returncode == 2 and "no channel named 'ebay'" in bad.stderr


async def _gone(store, channel) -> bool:
    return not await store.redis.exists(store.keys.resync(0, channel))
