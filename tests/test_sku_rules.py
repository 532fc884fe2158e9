"""Rules per SKU at run time: an override of a channel's buffer, max_listed or end_when for one SKU takes
effect on the SKU's next push, pushed at once, with no restart (and in resync), against real servers."""

from __future__ import annotations

import pytest

from consumers.resync import resync
from consumers.risk import RiskModel
from stocksync.channels import Rules
from stocksync.devtools.testing import config, wait_for
from stocksync.inventory_rules import ChannelRules, RuleStore, effective

from .helpers import worker_options as opts
from .test_worker import Running


@pytest.fixture
def fresh(sims):
    for sim, _ in sims.values():
        sim.reset()
    return sims


def test_the_risk_model_computes_listed_quantities_with_the_override():
    model = RiskModel("shop", Rules(buffer=2, max_listed=50))
    model.overrides = {"MUG": effective(model.rules, {"buffer": 5, "end_when": 3})}
    assert model.listed("MUG", 20) == 15 and model.listed("MUG", 8) == 0  # 3 <= end_when
    assert model.listed("PLATE", 20) == 18


async def test_a_rule_set_while_selling_is_pushed_at_once_without_a_restart(store, fresh):
    await store.set("MUG", 20, ref="i1")
    await store.set("PLATE", 20, ref="i2")
    rules = RuleStore(store.redis, store.keys)
    async with Running(store, fresh, ["shopify", "flipkart"], opts(sku_map_refresh_ms=100)) as run:
        shopify, flipkart = fresh["shopify"][0], fresh["flipkart"][0]
        await wait_for(lambda: shopify.quantities.get("MUG") == 20 and flipkart.quantities.get("MUG") == 20, 10,
                       "the first push")
        await rules.set(run.configs["shopify"], "MUG", {"buffer": 5, "max_listed": 12})
        await wait_for(lambda: shopify.quantities.get("MUG") == 12, 10, "the override to be pushed (no sale since)")
        await store.decrement("MUG", 10, ref="o1", source="amazon")
        await wait_for(lambda: shopify.quantities.get("MUG") == 5 and flipkart.quantities.get("MUG") == 10, 10,
                       "the next push under the override")
        assert shopify.quantities["PLATE"] == 20  # other SKUs keep the channel's rules
        await rules.delete("shopify", "MUG")
        await wait_for(lambda: shopify.quantities.get("MUG") == 10, 10, "the channel's rules again")


async def test_resync_applies_the_overrides(store, fresh):
    sim, url = fresh["shopify"]
    await store.set("MUG", 9, ref="i1")
    cfg = config("shopify", url, rules=Rules(buffer=1))
    await RuleStore(store.redis, store.keys).set(cfg, "MUG", {"end_when": 9})
    report = await resync(store.redis, store.keys, cfg, skus=["MUG"])
    assert report.ok and sim.quantities["MUG"] == 0  # 9 - 1 = 8 <= end_when 9


async def test_a_worker_reads_the_overrides_only_when_they_moved(store, sync_redis):
    cfg = config("shopify", "http://127.0.0.1:9")
    held = ChannelRules(store.redis, store.keys, cfg)
    assert await held.refresh() == set()
    store_ = RuleStore(store.redis, store.keys)
    await store_.set(cfg, "A", {"buffer": 1})
    await store_.set(cfg, "B", {"max_listed": 2})
    assert await held.refresh() == {"A", "B"} and held.rules_for("A").buffer == 1
    assert await held.refresh() == set()
    sync_redis.hset(store.keys.rules("shopify"), "C", '{"buffer": -4}')  # edited by hand, invalid: left out
    sync_redis.incr(store.keys.rules_version("shopify"))
    await store_.delete("shopify", "A")
    assert await held.refresh() == {"A"} and held.rules_for("C") == cfg.rules
