"""The push cycle every pusher shares (consumers/cycle.py), against a real Redis and a simulator."""

from __future__ import annotations

import pytest

from consumers import cycle
from consumers.adapters import make_adapter
from consumers.cycle import PushCycle, Want
from consumers.ledger import LedgerBatcher
from consumers.skumap import ChannelSkus
from stocksync import library
from stocksync.channels import Rules
from stocksync.devtools.testing import config


@pytest.fixture
def amazon(sims):
    sim, url = sims["amazon"]
    sim.reset()
    return sim, config("amazon", url, rules=Rules(buffer=1), timeout_s=0.3, rate_limit=1000, burst=100)


@pytest.fixture
def flipkart(sims):
    sim, url = sims["flipkart"]
    sim.reset()
    return sim, config("flipkart", url, rules=Rules(buffer=1))


def push_cycle(store, cfg, adapter, *, owner="pusher", **policy) -> PushCycle:
    ledger = LedgerBatcher(store.redis, store.keys, cfg.name, owner, 5000)
    return PushCycle(store.redis, store.keys, cfg, adapter, ChannelSkus(store.redis, store.keys, cfg), ledger,
                     recheck_s=cycle.recheck_delay_s(0, adapter.timeout_s), **policy)


def test_one_recheck_delay():
    assert cycle.recheck_delay_s(800, 5.0) == 0.8  # worker.recheck_ms
    assert cycle.recheck_delay_s(0, 0.3) == pytest.approx(1.2)  # else 4 x the adapter's timeout


async def test_each_sku_of_a_push_is_claimed_sorted_and_recorded(store, flipkart):
    sim, cfg = flipkart
    for sku, qty in (("NEW", 5), ("HAS", 7), ("BUSY", 3)):
        await store.set(sku, qty, source="test")
    await library.push_done(store.keys, 0, "flipkart", "x", {"HAS": 1}, [], []).run(store.redis)  # the channel has HAS
    await library.push_claim(store.keys, 0, "flipkart", "someone-else", ["BUSY"], 60_000).run(store.redis)
    async with make_adapter(cfg) as adapter:
        pc = push_cycle(store, cfg, adapter)
        for forced in (False, True):
            rnd = await pc.run([Want(s, 0, forced=forced) for s in ("NEW", "HAS", "BUSY", "NONE")])
            status = {p.job.sku: p.status for p in rnd.pushed}
            assert status == {"NEW": cycle.ACCEPTED, "HAS": cycle.ACCEPTED if forced else cycle.CURRENT,
                              "BUSY": cycle.BUSY, "NONE": cycle.GONE}
    assert sim.history("NEW") == [4, 4] and sim.history("HAS") == [6]  # the channel's view (buffer 1)
    assert "BUSY" not in sim.quantities
    assert await store.redis.hgetall(store.keys.pushed(0, "flipkart")) == {"NEW": "1", "HAS": "1"}
    assert not await store.redis.exists(*(store.keys.lease(0, "flipkart", s) for s in ("NEW", "HAS")))
    assert await store.redis.get(store.keys.lease(0, "flipkart", "BUSY")) == "someone-else"


@pytest.mark.parametrize("hold", [False, True])
async def test_an_unanswered_push_owes_a_recheck_and_the_worker_keeps_its_lease(store, amazon, hold):
    sim, cfg = amazon
    await store.set("L", 10, source="test")
    sim.set_faults(latency_ms=600)
    async with make_adapter(cfg) as adapter:
        rnd = await push_cycle(store, cfg, adapter, hold_unanswered=hold).run([Want("L", 0)])
    (p,) = rnd.pushed
    assert p.status == cycle.UNANSWERED and p.result.ambiguous
    owed_ms = await store.redis.zscore(store.keys.recheck(0, "amazon"), "L")
    assert owed_ms and owed_ms >= rnd.claimed_ms + 1200 - 50  # 4 x the 0.3 s timeout from now
    assert not await store.redis.hexists(store.keys.pushed(0, "amazon"), "L")
    leased = await store.redis.get(store.keys.lease(0, "amazon", "L"))
    assert leased == ("pusher" if hold else None)  # a command releases it; the worker keeps it


async def test_a_push_that_fails_mid_way_releases_its_leases(store, amazon):
    _, cfg = amazon
    await store.set("A", 1, source="test")

    async def decide(rnd):
        raise RuntimeError("the pusher's own bug")

    async with make_adapter(cfg) as adapter:
        with pytest.raises(RuntimeError):
            await push_cycle(store, cfg, adapter).run([Want("A", 0)], decide=decide)
    assert await store.redis.hget(store.keys.pushed(0, "amazon"), "A") == "1"  # accepted: recorded
    assert not await store.redis.exists(store.keys.lease(0, "amazon", "A"))
