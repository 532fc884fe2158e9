"""The channel worker in-process, against real Redis and the simulators over loopback HTTP."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import pytest

from consumers.dlq import list_dead_letters, replay
from consumers.options import WorkerOptions
from consumers.status import channel_status
from consumers.worker import ChannelWorker
from stocksync.channels import Rules
from stocksync.devtools.testing import (
    config,
    in_version_order,
    wait_for,
)

from .helpers import worker_options as opts

CHANNELS = ("shopify", "amazon", "flipkart")


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


async def test_a_channel_down_for_a_window_retries_opens_the_circuit_and_recovers(store, fresh):
    skus = [f"D-{i}" for i in range(10)]
    for sku in skus:
        await store.set(sku, 10)
    async with Running(store, fresh, ["flipkart", "shopify"], opts(breaker_threshold=3)) as run:
        await wait_for(lambda: run.converged(skus), 10, "the initial quantities")
        sim = fresh["flipkart"][0]
        sim.outage(True)
        for i, sku in enumerate(skus):
            await store.decrement(sku, 1 + i % 3, ref=f"down-{i}", source="shopify")
        flipkart = run.worker("flipkart")
        await wait_for(lambda: flipkart.breaker.state != "closed", 10, "the circuit to open")
        await wait_for(lambda: run.converged(skus, ["shopify"]), 10, "the healthy channel, meanwhile")
        # while open, the worker probes rarely instead of hammering the channel
        opened_at = len(sim.calls)
        await wait_for(lambda: flipkart.breaker.opened_total >= 2, 10, "a failed probe")
        assert len(sim.calls) - opened_at <= 4
        status = await channel_status(store.redis, store.keys, ["flipkart"])
        await flipkart.heartbeat()
        status = await channel_status(store.redis, store.keys, ["flipkart"])
        assert status["flipkart"]["circuit"] in ("open", "half_open")
        assert status["flipkart"]["pending"] > 0
        sim.outage(False)
        await wait_for(lambda: run.converged(skus), 15, "flipkart to catch up after the outage")
        assert flipkart.breaker.state == "closed"
        assert [c for c in sim.calls if c.outcome == "outage"]
        await wait_for(lambda: all_acknowledged(store, ["flipkart", "shopify"]), 10, "every entry acknowledged")
        assert await store.redis.xlen(store.keys.dlq(0, "flipkart")) == 0


async def test_a_sku_refused_for_good_is_dead_lettered_alone_and_replayed_after_the_fix(store, fresh):
    skus = [f"P-{i}" for i in range(6)]
    for sku in skus:
        await store.set(sku, 20)
    for name in ("amazon", "flipkart", "shopify"):
        fresh[name][0].set_faults(reject_skus={"P-3"})
    async with Running(store, fresh, ["amazon", "flipkart", "shopify"], opts()) as run:
        for i, sku in enumerate(skus):
            await store.decrement(sku, 2, ref=f"perm-{i}", source="amazon")
        others = [s for s in skus if s != "P-3"]
        await wait_for(lambda: run.converged(others), 10, "every other SKU")
        for name in ("amazon", "flipkart", "shopify"):
            await wait_for(lambda name=name: store.redis.xlen(store.keys.dlq(0, name)), 10, f"{name}'s dead letter")
            letters = await list_dead_letters(store.redis, store.keys, name)
            assert {d.sku for d in letters} == {"P-3"}, letters
            assert all(d.reason == "permanent" and d.attempts >= 1 and d.error for d in letters)
        await wait_for(lambda: all_acknowledged(store, ["amazon", "flipkart", "shopify"]), 10, "entries acknowledged")
        for name in ("amazon", "flipkart", "shopify"):
            fresh[name][0].set_faults(reject_skus=set())
            report = await replay(store.redis, store.keys, run.configs[name])
            assert report.resolved == ["P-3"] and report.ok
            assert await store.redis.xlen(store.keys.dlq(0, name)) == 0
        assert await run.converged(skus)


async def test_a_429_storm_never_exceeds_the_limit_plus_burst(store, fresh):
    sim = fresh["amazon"][0]
    sim.set_faults(rate_limit=10, burst=5)
    skus = [f"R-{i}" for i in range(40)]
    for sku in skus:
        await store.set(sku, 9)
    # the adapter is configured for twice the real limit: the server's 429s must slow it down
    async with Running(store, fresh, ["amazon"], opts(), amazon={"rate_limit": 20, "burst": 5}) as run:
        await wait_for(lambda: run.converged(skus), 30, "every SKU listed despite the rate limit")
    calls = sorted(c.t for c in sim.calls)
    worst = max(sum(1 for t in calls[i:] if t - c < 1.0) for i, c in enumerate(calls))
    assert sim.max_rate() <= 10 + 5
    assert worst <= 10 + 5, f"{worst} requests in one second"
    assert any(c.status == 429 for c in sim.calls)


async def test_429s_pause_the_channel_without_counting_attempts_or_dead_letters(store, fresh):
    sim = fresh["amazon"][0]
    sim.set_faults(rate_limit=4, burst=1)  # most calls answered 429 while the adapter thinks 50/s is fine
    skus = [f"Q-{i}" for i in range(12)]
    for sku in skus:
        await store.set(sku, 30)
    async with Running(store, fresh, ["amazon"], opts(max_attempts=2), amazon={"rate_limit": 50, "burst": 10}) as run:
        await wait_for(lambda: _circuit_is(store, "amazon", "throttled"), 10, "status showing the channel throttled")
        await wait_for(lambda: run.converged(skus), 30, "every SKU listed at the channel's pace")
        assert run.worker("amazon").breaker.opened_total == 0
    assert sum(c.status == 429 for c in sim.calls) > 2 * len(skus)  # far past max_attempts per SKU
    assert await store.redis.xlen(store.keys.dlq(0, "amazon")) == 0


async def _circuit_is(store, channel, state) -> bool:
    return (await channel_status(store.redis, store.keys, [channel]))[channel]["circuit"] == state


async def test_the_trimmer_never_removes_what_a_slow_channel_has_not_acknowledged(store, fresh):
    skus = [f"T-{i}" for i in range(30)]
    fresh["flipkart"][0].set_faults(latency_ms=150)
    for sku in skus:
        await store.set(sku, 100)
    async with Running(store, fresh, ["shopify", "flipkart"], opts(trim_interval_ms=20, retention_ms=0),
                       flipkart={"max_in_flight": 1, "batch_size": 1}) as run:
        for round_ in range(3):
            for i, sku in enumerate(skus):
                await store.decrement(sku, 1, ref=f"trim-{round_}-{i}", source="shopify")
        events = store.keys.events(0)
        # the fast channel is done and the trimmer has run, but the slow one still holds entries
        await wait_for(lambda: run.converged(skus, ["shopify"]), 10, "the fast channel")
        await wait_for(lambda: trimmed_down_to_flipkart(store), 10, "the trimmer to trim what both acknowledged")
        info = {g["name"]: g for g in await store.redis.xinfo_groups(events)}
        assert info["flipkart"]["pending"] + info["flipkart"]["lag"] > 0
        await wait_for(lambda: run.converged(skus), 20, "the slow channel")
        await wait_for(lambda: all_acknowledged(store, ["shopify", "flipkart"]), 10, "every entry acknowledged")
        assert run.worker("flipkart").stats["reclaimed_deleted"] == 0

        async def empty():
            return await store.redis.xlen(events) == 0

        await wait_for(empty, 5, "the stream trimmed to nothing")


async def trimmed_down_to_flipkart(store) -> bool:
    """The stream starts at flipkart's oldest unacknowledged entry (nothing it needs is gone)."""
    events = store.keys.events(0)
    first = await store.redis.xrange(events, count=1)
    pending = await store.redis.xpending(events, "flipkart")
    info = {g["name"]: g for g in await store.redis.xinfo_groups(events)}
    if not first or not pending["pending"]:
        return False
    assert _id(first[0][0]) <= _id(pending["min"])  # never trimmed past what flipkart holds
    undelivered = info["flipkart"]["last-delivered-id"]
    assert _id(first[0][0]) <= _id(undelivered) or info["flipkart"]["lag"] == 0
    return first[0][0] == pending["min"]


def _id(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


@pytest.mark.parametrize("channel", ["amazon", "webhook"])
async def test_a_sku_map_edited_while_running(store, fresh, channel):
    """The SKU is pushed under its new name at once (no sale may come for a while). Its old listing would go
    on selling units that no order of it takes (they name a channel SKU that maps to nothing): it lists 0,
    except on a webhook channel, whose receiver orders pushes by version per name and retires names itself.
    Mapped back, the SKU lists under its own name again."""
    sim = fresh[channel][0]
    retired = channel == "amazon"  # whether a name no SKU uses any more is listed at 0
    async with Running(store, fresh, [channel], WorkerOptions(trim_interval_ms=0, sku_map_refresh_ms=100)):
        await store.set("M", 4, source="test")
        await wait_for(lambda: sim.quantities.get("M") == 4, what="the push under the canonical name")
        await store.redis.hset(store.keys.sku_map(channel), "CH-M", "M")  # PUT .../sku-map/CH-M
        await wait_for(lambda: sim.quantities.get("CH-M") == 4 and sim.quantities.get("M") == (0 if retired else 4),
                       what="the new listing (no new event needed), and the old one")
        await store.decrement("M", 1, ref="o-m", source="test")
        await wait_for(lambda: sim.quantities.get("CH-M") == 3, what="the next change under the edited name")
        await store.redis.hdel(store.keys.sku_map(channel), "CH-M")  # DELETE .../sku-map/CH-M
        await wait_for(lambda: sim.quantities.get("M") == 3 and sim.quantities.get("CH-M") == (0 if retired else 3),
                       what="back under the canonical name, and the edited one")
    if retired:
        assert sim.history("M") == [4, 0, 3] and sim.history("CH-M") == [4, 3, 0]
    else:
        assert sim.history("M") == [4, 3] and sim.history("CH-M") == [4, 3]


async def test_drops_to_zero_go_ahead_of_a_backlog_of_low_quantities(store, fresh):
    """Under a rate limit, the channel lists units that no longer exist until a drop to 0 reaches it: it is
    pushed ahead of merely low quantities (which only may oversell), even those held longer."""
    sim = fresh["amazon"][0]
    zeros, lows = [f"Z-{i}" for i in range(3)], [f"L-{i}" for i in range(30)]
    for sku in zeros:
        await store.set(sku, 40)
    async with Running(store, fresh, ["amazon"], opts(), amazon={"rate_limit": 10, "burst": 1}) as run:
        await wait_for(lambda: run.converged(zeros), 10, "the SKUs listed at 40")
        for sku in lows:
            await store.set(sku, 4)  # listed 4, at the low-stock mark: 30 urgent pushes, 3 s at 10/s
        await wait_for(lambda: sum(sku in sim.quantities for sku in lows) >= 3, 10, "the low backlog under way")
        for sku in zeros:
            await store.decrement(sku, 40, ref=f"gone-{sku}", source="shopify")
        await wait_for(lambda: all(sim.quantities.get(sku) == 0 for sku in zeros), 5, "the drops to 0 listed")
        waiting = sum(sku not in sim.quantities for sku in lows)
        assert waiting >= 15, f"the drops to 0 waited behind {30 - waiting} of the 30 low quantities"
        await wait_for(lambda: run.converged(zeros + lows), 15, "the low quantities listed afterwards")


async def test_a_drop_to_zero_jumps_a_backlog_larger_than_max_pending(store, fresh):
    """A rate-limited channel holding its maximum of entries still reads on: the urgent change is taken in
    past the backlog and pushed next; the deferred entries are read again later and everything converges."""
    sim = fresh["amazon"][0]
    sim.set_faults(rate_limit=20, burst=5)
    skus = [f"B-{i}" for i in range(160)]  # 160 one-SKU calls at 20/s: an 8 s backlog
    for sku in skus:
        await store.set(sku, 40)  # 0 -> 40: not urgent
    async with Running(store, fresh, ["amazon"], opts(max_pending=20, read_count=50),
                       amazon={"rate_limit": 20, "burst": 5}) as run:
        worker = run.worker("amazon")
        await wait_for(lambda: worker.stats["accepted"] >= 5 and worker.stats["deferred"], 10, "the backlog under way")
        assert len(sim.history(skus[-1])) == 0, "the backlog drained before the drop"
        t0 = asyncio.get_running_loop().time()
        await store.decrement(skus[-1], 40, ref="drop-to-0", source="shopify")
        await wait_for(lambda: 0 in sim.history(skus[-1]), 2.0, "the drop to 0 pushed ahead of the backlog")
        waited = asyncio.get_running_loop().time() - t0
        listed = sum(1 for sku in skus if sim.quantities.get(sku) == 40)
        assert listed < len(skus) - 40, f"pushed after {waited:.2f} s, behind {listed} of the backlog"
        assert len(worker.coalescer) <= 2 * 20
        await wait_for(lambda: run.converged(skus), 30, "every SKU listed after the backlog")
        await wait_for(lambda: all_acknowledged(store, ["amazon"]), 10, "every entry acknowledged")
        for sku in skus:
            assert in_version_order(sim.history(sku), await listed_by_version(store, sku, Rules())), sku
        assert sim.history(skus[-1])[-1] == 0


async def test_a_worker_settles_the_recheck_it_owes_itself(store, fresh):
    """After a push that got no answer the worker owes the channel the current quantity; pushed on time, the
    debt recorded in Redis is settled by that push, not left for a takeover as if the worker had died."""
    sim = fresh["amazon"][0]
    await store.set("L", 10, source="test")
    async with Running(store, fresh, ["amazon"], opts(recheck_ms=800), amazon={"timeout_s": 0.3}) as run:
        worker = run.worker("amazon")
        await wait_for(lambda: sim.quantities.get("L") == 10, what="the first push")
        sim.set_faults(latency_ms=1000)
        arrived = sim.arrivals
        await store.decrement("L", 1, ref="o-1", source="amazon")  # its push gets no answer
        await wait_for(lambda: sim.arrivals > arrived, what="the unanswered push to reach the API")
        sim.set_faults(latency_ms=0)
        owed = store.keys.recheck(0, "amazon")
        await wait_for(lambda: store.redis.zscore(owed, "L"), 5, "the recheck owed")
        await wait_for(lambda: _none(store.redis.zscore(owed, "L")), 5, "the recheck settled")
        assert worker.stats["rechecks_taken_over"] == 0
        assert sim.history("L")[-1] == 9


async def _none(coro) -> bool:
    return await coro is None


async def test_auto_buffer_holds_back_a_hot_sku_sold_elsewhere_and_reports_the_risk(store, fresh):
    """buffer = "auto": Amazon lists a SKU that Shopify is selling fast below the canonical quantity (a unit
    Shopify sells while Amazon still lists it would be oversold on Amazon); a cold SKU is listed whole."""
    await store.set("HOT", 500, source="test")
    await store.set("COLD", 500, source="test")
    rules = {"amazon": Rules(buffer="auto", oversell_target=1.0)}
    async with Running(store, fresh, ["amazon"], opts(), rules) as run:
        for i in range(120):
            await store.decrement("HOT", 1, ref=f"hot-{i}", source="shopify")
        await store.adjust("COLD", 1, source="test")  # (a receipt: not demand)
        amazon = fresh["amazon"][0]

        async def settled() -> bool:
            return await all_acknowledged(store, ["amazon"]) and "COLD" in amazon.quantities

        await wait_for(settled, 20, "amazon caught up")
        hot, cold = (await store.get("HOT")).available, (await store.get("COLD")).available
        risk = run.worker("amazon").state.risk
        assert risk.buffer("HOT") > 0 and risk.buffer("COLD") == 0
        assert amazon.quantities["COLD"] == cold  # listed whole
        assert amazon.quantities["HOT"] < hot  # held back by the buffer of the last push
        assert "oversell_risk_units" in run.worker("amazon").status()
