"""Bundles and multipacks (library 0.6), against real servers: the derived quantity, a sale that takes its
components all or nothing and once, an event per affected bundle on every change of a component, the
refusals, the partition pin, and storms with every channel's listing checked once traffic stops."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import defaultdict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stocksync import library
from stocksync.bundles import Bundles
from stocksync.channels import Rules
from stocksync.devtools.testing import wait_for
from stocksync.errors import InvalidArgument
from stocksync.events import read_range
from stocksync.keys import Keys, crc16, partition_of
from stocksync.settings import Settings
from stocksync.store import StockStore

from .helpers import snapshot
from .helpers import worker_options as opts
from .test_worker import CHANNELS, Running, all_acknowledged


@pytest.fixture
def fresh(sims):
    for sim, _ in sims.values():
        sim.reset()
    return sims


KITCHEN = {"MUG-2PACK": {"MUG": 2}, "MUG+PLATE": {"MUG": 1, "PLATE": 1}}


async def kitchen(store, mug=10, plate=5):
    await store.set("MUG", mug, ref=f"i-mug-{uuid.uuid4().hex}")
    await store.set("PLATE", plate, ref=f"i-plate-{uuid.uuid4().hex}")
    b = Bundles(store)
    for sku, parts in KITCHEN.items():
        await b.set(sku, parts)
    return b


def derived(parts: dict[str, int], available: dict[str, int]) -> int:
    return min(available[c] // q for c, q in parts.items())


async def test_a_bundle_lists_the_fewest_whole_bundles_its_components_make(store, sync_redis):
    b = await kitchen(store, mug=9, plate=5)
    assert (await store.get("MUG-2PACK")).available == 4 and (await store.get("MUG+PLATE")).available == 5
    q = await b.get("MUG-2PACK")
    assert (q.on_hand, q.components, q.committed) == (None, {"MUG": 2}, 0)
    assert (await store.quantities("MUG")).bundles == ("MUG-2PACK", "MUG+PLATE")
    # Setting the same definition changes nothing; the same bundle's event history starts with its definition.
    before = snapshot(sync_redis, store.keys.prefix)
    assert (await b.set("MUG+PLATE", {"MUG": 1, "PLATE": 1})).status == "unchanged"
    assert snapshot(sync_redis, store.keys.prefix) == before
    events = [e for e in await read_range(store.redis, store.keys, 0) if e.sku == "MUG-2PACK"]
    assert [(e.available, e.version) for e in events] == [(4, 1)]


async def test_selling_a_bundle_takes_its_components_all_or_nothing_once(store):
    await kitchen(store, mug=3, plate=1)
    sale = await store.decrement("MUG+PLATE", 1, ref="shopify:1:1", source="shopify")
    assert (sale.status, sale.available, sale.replayed) == ("ok", 0, False)
    again = await store.decrement("MUG+PLATE", 1, ref="shopify:1:1", source="shopify")
    assert again.replayed and (again.status, again.available, again.version) == ("ok", 0, sale.version)
    mug, plate = await store.quantities("MUG"), await store.quantities("PLATE")
    assert (mug.available, mug.committed, plate.available, plate.committed) == (2, 1, 0, 1)
    assert (await store.quantities("MUG+PLATE")).committed == 1
    # Short on one component: nothing taken from the other, one stock.rejected for the bundle line.
    short = await store.decrement("MUG+PLATE", 1, ref="amazon:2:1", source="amazon")
    assert (short.status, short.available) == ("insufficient", 0)
    assert (await store.get("MUG")).available == 2
    last = (await read_range(store.redis, store.keys, 0))[-1]
    assert (last.type, last.sku, last.delta, last.reason) == ("stock.rejected", "MUG+PLATE", -1, "insufficient")
    # The 2-pack still sells from the mugs left.
    assert (await store.decrement("MUG-2PACK", 1, ref="flipkart:3", source="flipkart")).available == 0
    assert (await store.get("MUG")).available == 0


async def test_every_change_of_a_component_emits_every_bundle_it_changes(store):
    await kitchen(store, mug=10, plate=5)
    start = len(await read_range(store.redis, store.keys, 0))
    await store.decrement("MUG", 1, ref="o1", source="amazon")  # 9: the 2-pack 5 -> 4, the gift set stays 5
    await store.adjust("PLATE", -3, ref="o2", source="count")  # 2: the gift set 5 -> 2
    await store.set("MUG", 1, ref="o3", source="warehouse")  # both change
    events = [(e.sku, e.available, e.op) for e in (await read_range(store.redis, store.keys, 0))[start:]]
    assert events == [("MUG", 9, ""), ("MUG-2PACK", 4, "bundle"),
                      ("PLATE", 2, ""), ("MUG+PLATE", 2, "bundle"),
                      ("MUG", 1, ""), ("MUG-2PACK", 0, "bundle"), ("MUG+PLATE", 1, "bundle")]


async def test_a_bundle_has_no_stock_of_its_own_and_refusals_change_nothing(store, sync_redis):
    b = await kitchen(store)
    await store.set("LID", 4, ref="i-lid")
    await store.set("TRAY", 0, ref="i-tray")
    before = snapshot(sync_redis, store.keys.prefix)
    for call, message in (
        (store.set("MUG-2PACK", 4, ref="x1"), "is a bundle: it has no stock of its own"),
        (store.adjust("MUG-2PACK", 1, ref="x2"), "is a bundle"),
        (store.count("MUG-2PACK", 3, ref="x3"), "is a bundle"),
        (b.set("SET2", {"MUG-2PACK": 1}), "bundles do not nest"),
        (b.set("LID", {"PLATE": 1}), "has stock of its own"),
        (b.set("TRAY", {"MUG-2PACK": 1, "LID": 1}), "bundles do not nest"),
        (b.set("X", {"NOPE": 1}), "does not exist"),
        (b.set("LID", {"LID": 1}), "cannot be a component of itself"),
    ):
        with pytest.raises(ValueError, match=message):  # InvalidArgument (the library) or Invalid (checked first)
            await call
    with pytest.raises(ValueError, match="between 1 and"):
        await b.set("SET3", {"MUG": 0})
    assert snapshot(sync_redis, store.keys.prefix) == before
    # A SKU at 0 becomes a bundle; a component cannot become one.
    assert (await b.set("TRAY", {"LID": 2})).available == 2
    with pytest.raises(InvalidArgument, match="is a component of a bundle"):
        await b.set("LID", {"PLATE": 1})


async def test_a_bundle_with_units_to_ship_is_not_redefined_or_deleted_until_shipped(store, sync_redis):
    b = await kitchen(store)
    await store.decrement("MUG-2PACK", 2, ref="o1", source="shopify")
    before = snapshot(sync_redis, store.keys.prefix)
    for call in (b.set("MUG-2PACK", {"MUG": 3}), b.delete("MUG-2PACK")):
        with pytest.raises(InvalidArgument, match="2 units committed to open orders"):
            await call
    assert snapshot(sync_redis, store.keys.prefix) == before
    shipped = await store.ship("MUG-2PACK", 2, ref="s1", source="warehouse")
    assert shipped.units == 2
    mug = await store.quantities("MUG")
    assert (mug.on_hand, mug.committed, mug.available) == (6, 0, 6)
    gone = await b.delete("MUG-2PACK")
    assert (gone.status, gone.available) == ("ok", 0)
    assert (await store.quantities("MUG")).bundles == ("MUG+PLATE",)
    assert (await store.quantities("MUG-2PACK")).components == {}  # a plain SKU at 0: channels list 0
    assert (await b.delete("MUG-2PACK")).status == "not_bundle"
    assert set(await b.list()) == {"MUG+PLATE"}


async def test_cancelling_a_bundle_line_gives_its_components_back(store):
    await kitchen(store, mug=4, plate=2)
    await store.decrement("MUG+PLATE", 2, ref="o1", source="amazon")
    back = await store.cancel("MUG+PLATE", 1, ref="c1", source="amazon")
    assert (back.units, back.available) == (1, 1)
    mug, plate = await store.quantities("MUG"), await store.quantities("PLATE")
    assert (mug.available, mug.committed, plate.available, plate.committed) == (3, 1, 1, 1)


async def test_an_order_with_bundle_lines_adds_up_what_each_component_needs(store):
    await kitchen(store, mug=4, plate=2)
    # 2 gift sets (2 mugs) + 1 two-pack (2 mugs) + 1 mug = 5 mugs: short, nothing taken.
    o = await store.order({"MUG+PLATE": 2, "MUG-2PACK": 1, "MUG": 1}, ref="o1", source="api")
    assert o.status == "insufficient"
    assert (await store.get("MUG")).available == 4
    o = await store.order({"MUG+PLATE": 2, "MUG-2PACK": 1}, ref="o2", source="api")
    assert o.status == "ok" and [line.available for line in o.lines] == [0, 0]
    mug = await store.quantities("MUG")
    assert (mug.available, mug.committed) == (0, 4)


def test_a_bundle_across_partitions_is_refused_with_the_way_out():
    keys = Keys("p", 8)
    a, b = "GIFT", next(s for s in map(str, range(1000)) if keys.partition(s) != keys.partition("GIFT"))
    with pytest.raises(InvalidArgument, match=r"must share a partition.*\{group\}"):
        library.bundle_set(keys, a, {b: 1}, "t", "r")
    # Pinned with a common {group}, they share one whatever P is.
    assert library.bundle_set(keys, "GIFT{k}", {f"{b}{{k}}": 1}, "t", "r").command[3].startswith(keys.tag(keys.partition("k")))


@given(st.text(min_size=1, max_size=40), st.integers(1, 16384))
def test_the_pin_never_moves_a_sku_without_braces(sku, partitions):
    if "{" not in sku:
        assert partition_of(sku, partitions) == crc16(sku.encode()) % partitions
    else:  # Redis Cluster's hash tag rule: the first {...} with something inside
        start = sku.index("{")
        end = sku.find("}", start + 1)
        pin = sku[start + 1 : end] if end > start + 1 else sku
        assert partition_of(sku, partitions) == crc16(pin.encode()) % partitions


# Storms ----------------------------------------------------------------------------------------------


def check_books(events, initial: dict[str, int]) -> dict[str, int]:
    """Per SKU: versions without gaps, each event's quantity following from the last by its delta, never
    below 0 (G1, G3); answers the final available."""
    per_sku = defaultdict(list)
    for e in events:
        if e.type == "stock.changed":
            per_sku[e.sku].append(e)
    final = {}
    for sku, seq in per_sku.items():
        assert [e.version for e in seq] == list(range(seq[0].version, seq[0].version + len(seq))), sku
        running = seq[0].available
        for e in seq[1:]:
            running += e.delta
            assert e.available == running >= 0, (sku, e)
        final[sku] = running
    return final


async def test_500_buyers_across_a_mug_its_2_pack_and_a_gift_set(store, fresh):
    """No component below 0; what was taken is exactly what left available and sits in committed; once
    traffic stops every channel lists each bundle's derived quantity (under its rules)."""
    await kitchen(store, mug=120, plate=40)
    rules = {"shopify": Rules(buffer=1), "amazon": Rules(), "flipkart": Rules(max_listed=20)}
    skus = ["MUG", "PLATE", "MUG-2PACK", "MUG+PLATE"]
    rng = random.Random(11)
    plan = [(rng.choice(skus), rng.choice((1, 1, 1, 2)), rng.choice(CHANNELS)) for _ in range(500)]
    async with Running(store, fresh, CHANNELS, opts(), rules, amazon={"rate_limit": 500, "burst": 50}) as run:
        outcomes = await asyncio.gather(*(store.decrement(sku, qty, ref=f"buyer-{i}", source=source)
                                          for i, (sku, qty, source) in enumerate(plan)))
        taken = defaultdict(int)
        for (sku, qty, _), o in zip(plan, outcomes, strict=True):
            if o.ok:
                for c, units in (KITCHEN.get(sku) or {sku: 1}).items():
                    taken[c] += units * qty
        final = {s: await store.quantities(s) for s in skus}
        for c, initial in (("MUG", 120), ("PLATE", 40)):
            assert final[c].available == initial - taken[c] >= 0
            assert (final[c].committed, final[c].on_hand) == (taken[c], initial)
        available = {c: final[c].available for c in ("MUG", "PLATE")}
        for b, parts in KITCHEN.items():
            assert final[b].available == derived(parts, available)
        assert sum(o.ok for o in outcomes) > 50 and sum(o.status == "insufficient" for o in outcomes) > 50
        check_books(await read_range(store.redis, store.keys, 0), {})
        try:
            await wait_for(lambda: run.converged(skus), 30, "every channel to list every SKU and bundle")
        except AssertionError:
            print(run.diff)
            raise
        await wait_for(lambda: all_acknowledged(store, CHANNELS), 10, "every entry acknowledged")


@pytest.mark.cluster
async def test_a_pinned_group_storm_on_the_cluster(cluster):
    """Bundles across a 3-primary cluster: the group pinned with {k} lives in one partition (one slot),
    its bundles sell all or nothing under concurrency, the books add up."""
    settings = Settings(redis_url=cluster.url, cluster=True, prefix=f"c{uuid.uuid4().hex[:10]}", partitions=12)
    store = await StockStore.connect(settings)
    try:
        names = {"MUG": "MUG{k}", "PLATE": "PLATE{k}", "MUG-2PACK": "MUG-2PACK{k}", "MUG+PLATE": "MUG+PLATE{k}"}
        assert len({store.keys.partition(s) for s in names.values()}) == 1
        await store.set(names["MUG"], 60, ref="i1")
        await store.set(names["PLATE"], 20, ref="i2")
        b = Bundles(store)
        await b.set(names["MUG-2PACK"], {names["MUG"]: 2})
        await b.set(names["MUG+PLATE"], {names["MUG"]: 1, names["PLATE"]: 1})
        with pytest.raises(InvalidArgument, match="must share a partition"):
            await b.set("LONE-SET", {names["MUG"]: 1})  # unpinned: another partition
        rng = random.Random(3)
        plan = [rng.choice(list(names.values())) for _ in range(300)]
        outcomes = await asyncio.gather(*(store.decrement(sku, 1, ref=f"b{i}", source="amazon")
                                          for i, sku in enumerate(plan)))
        mugs = sum(o.ok * {names["MUG"]: 1, names["MUG-2PACK"]: 2, names["MUG+PLATE"]: 1}.get(s, 0)
                   for s, o in zip(plan, outcomes, strict=True))
        plates = sum(o.ok * (s in (names["PLATE"], names["MUG+PLATE"])) for s, o in zip(plan, outcomes, strict=True))
        mug, plate = await store.quantities(names["MUG"]), await store.quantities(names["PLATE"])
        assert (mug.available, mug.committed) == (60 - mugs, mugs) and mug.available >= 0
        assert (plate.available, plate.committed) == (20 - plates, plates) and plate.available >= 0
        assert (await store.get(names["MUG+PLATE"])).available == min(mug.available, plate.available)
        p = store.keys.partition(names["MUG"])
        check_books(await read_range(store.redis, store.keys, p), {})
    finally:
        await store.close()


async def test_the_same_bundle_sale_fifty_times_at_once_applies_once(store):
    await kitchen(store, mug=10, plate=5)
    outcomes = await asyncio.gather(*(store.decrement("MUG+PLATE", 2, ref="shopify:9:1", source="shopify")
                                      for _ in range(50)))
    assert sum(not o.replayed for o in outcomes) == 1
    assert {(o.status, o.available, o.version) for o in outcomes} == {("ok", 3, 2)}
    mug, plate = await store.quantities("MUG"), await store.quantities("PLATE")
    assert (mug.available, mug.committed, plate.available, plate.committed) == (8, 2, 3, 2)
