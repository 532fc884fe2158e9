"""The channel worker in-process, against real Redis and the simulators over loopback HTTP."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import pytest

from consumers.options import WorkerOptions
from consumers.testing import SIM_CLASSES, config, use_simulator_credentials, wait_for
from consumers.worker import ChannelWorker
from stocksync.channels import Rules
from stocksync.simulators import serve

CHANNELS = ("shopify", "amazon", "flipkart")


@pytest.fixture(scope="module")
def sims():
    use_simulator_credentials()
    sims = {name: cls() for name, cls in SIM_CLASSES.items()}
    with serve(sims["shopify"]) as s, serve(sims["amazon"]) as a, serve(sims["flipkart"]) as f, \
            serve(sims["webhook"]) as w:
        yield {name: (sims[name], url) for name, url in zip(("shopify", "amazon", "flipkart", "webhook"),
                                                             (s, a, f, w), strict=True)}


@pytest.fixture
def fresh(sims):
    for sim, _ in sims.values():
        sim.reset()
    return sims


class Running:
    """Workers running as tasks of the test's event loop; accepted versions recorded per channel/SKU."""

    def __init__(self, store, sims, channels, options: WorkerOptions, rules=None, **adapter_options):
        self.store, self.sims = store, sims
        self.accepted = defaultdict(list)  # (channel, sku) -> [version, ...] in acceptance order
        self.configs = {}
        self.workers = []
        for name in channels:
            sim, url = sims[name]
            cfg = config(name, url, rules=(rules or {}).get(name, Rules()), **adapter_options.get(name, {}))
            self.configs[name] = cfg
            self.workers.append(ChannelWorker(store.redis, store.keys, cfg, options, on_accept=self._on_accept))
        self.tasks = []

    def _on_accept(self, a):
        if a.quantity >= 0:
            self.accepted[(a.channel, a.sku)].append(a.version)

    async def __aenter__(self):
        self.tasks = [asyncio.create_task(w.run()) for w in self.workers]
        return self

    async def __aexit__(self, *exc):
        for w in self.workers:
            w.stop()
        await asyncio.gather(*self.tasks)

    def worker(self, name):
        return next(w for w in self.workers if w.channel == name)

    async def converged(self, skus, channels=None) -> bool:
        self.diff = []
        for name in channels or self.configs:
            sim = self.sims[name][0]
            listed = sim.quantities
            for sku in skus:
                stock = await self.store.get(sku)
                if listed.get(sku) != self.configs[name].rules.listed(stock.available):
                    self.diff.append((name, sku, listed.get(sku), stock.available))
        return not self.diff


async def all_acknowledged(store, channels) -> bool:
    for name in channels:
        for p in range(store.keys.partitions):
            info = {g["name"]: g for g in await store.redis.xinfo_groups(store.keys.events(p))}
            if info[name]["pending"] or info[name]["lag"]:
                return False
    return True


def opts(**kw) -> WorkerOptions:
    base = dict(block_ms=100, reclaim_idle_ms=2000, lease_ms=3000, backoff_base_ms=20, backoff_cap_ms=200,
                breaker_open_ms=200, breaker_max_open_ms=400, trim_interval_ms=0, heartbeat_ms=200)
    base.update(kw)
    return WorkerOptions(**base)


def in_version_order(history, sequence) -> bool:
    """history (quantities a channel accepted) is a subsequence of sequence (the listed quantity at each
    version, in version order): no push carried an older version after a newer one."""
    i = 0
    for q in history:
        while i < len(sequence) and sequence[i] != q:
            i += 1
        if i == len(sequence):
            return False
    return True


async def listed_by_version(store, sku, rules):
    events = await store.redis.xrange(store.keys.events(store.keys.partition(sku)))
    return [rules.listed(int(f["available"])) for _, f in events if f["sku"] == sku and f["type"] == "stock.changed"]


async def test_concurrent_orders_from_three_channels_converge(store, fresh):
    skus = [f"SKU-{i}" for i in range(20)]
    for sku in skus:
        await store.set(sku, 40)
    rules = {"shopify": Rules(buffer=2), "amazon": Rules(share=50), "flipkart": Rules(end_when=3, max_listed=30)}
    async with Running(store, fresh, CHANNELS, opts(), rules, amazon={"rate_limit": 500, "burst": 50}) as run:
        rng = random.Random(7)

        async def sell(channel, n):
            for i in range(n):
                await store.decrement(rng.choice(skus), rng.randint(1, 3), ref=f"{channel}-{i}", source=channel)
                await asyncio.sleep(0)

        async def race(i):  # two channels selling the same SKU at the same moment
            await asyncio.gather(store.decrement("SKU-0", 1, ref=f"race-a-{i}", source="amazon"),
                                 store.decrement("SKU-0", 1, ref=f"race-s-{i}", source="shopify"))

        await asyncio.gather(sell("shopify", 150), sell("amazon", 150), sell("flipkart", 150),
                             *(race(i) for i in range(10)))
        try:
            await wait_for(lambda: run.converged(skus), 20, "every channel to list the canonical stock")
        except AssertionError:
            print(run.diff, [w.status() for w in run.workers])
            raise
        for name in CHANNELS:
            sim = fresh[name][0]
            for sku in skus:
                assert in_version_order(sim.history(sku), await listed_by_version(store, sku, run.configs[name].rules))
                seen = run.accepted[(name, sku)]
                assert seen == sorted(seen), f"{name} {sku} went backwards: {seen}"
            pushed = await store.redis.hgetall(store.keys.pushed(0, name))
            for sku in skus:
                assert int(pushed[sku]) == (await store.get(sku)).version
        await wait_for(lambda: all_acknowledged(store, CHANNELS), 10, "every entry acknowledged")


async def test_a_thousand_changes_to_one_sku_take_a_handful_of_calls(store, fresh):
    await store.set("HOT", 5000)
    async with Running(store, fresh, CHANNELS, opts()) as run:
        await wait_for(lambda: run.converged(["HOT"]), 10, "the initial quantity")
        calls_before = {name: len(fresh[name][0].calls) for name in CHANNELS}
        await store.decrement_many([("HOT", 1, f"r{i}") for i in range(1000)], source="shopify")
        assert (await store.get("HOT")).available == 4000
        await wait_for(lambda: run.converged(["HOT"]), 10, "the final quantity")
        for name in CHANNELS:
            sim = fresh[name][0]
            calls = [c for c in sim.calls[calls_before[name]:] if any(i["sku"] == "HOT" for i in c.items)]
            assert 1 <= len(calls) <= 6, f"{name}: {len(calls)} calls"
            assert sim.history("HOT")[-1] == 4000
