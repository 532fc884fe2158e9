"""Guarantees under concurrency (G1-G3), against a real server."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from stocksync.events import read_range
from stocksync.settings import Settings
from stocksync.store import StockStore


async def test_storm_of_500_buyers_for_50_units(store):
    await store.set("HOT", 50, source="warehouse", ref="import")
    outcomes = await asyncio.gather(*(
        store.decrement("HOT", 1, ref=f"buyer-{i}", source=("amazon", "shopify", "flipkart")[i % 3])
        for i in range(500)
    ))
    statuses = [o.status for o in outcomes]
    assert statuses.count("ok") == 50 and statuses.count("insufficient") == 450
    stock = await store.get("HOT")
    # Version 1 is the set that created the SKU; the 50 sales are versions 2..51.
    assert (stock.available, stock.version) == (0, 51)
    events = await read_range(store.redis, store.keys, store.keys.partition("HOT"))
    sales = [e for e in events if e.type == "stock.changed" and e.source != "warehouse"]
    assert [e.version for e in sales] == list(range(2, 52))
    assert [e.available for e in sales] == list(range(49, -1, -1))
    assert sum(e.type == "stock.rejected" for e in events) == 450
    # Each sale's reply carries the version its event carries.
    assert sorted(o.version for o in outcomes if o.ok) == list(range(2, 52))


async def test_the_same_reference_fifty_times_at_once_applies_once(store):
    await store.set("SKU", 10, source="warehouse", ref="import")
    outcomes = await asyncio.gather(*(store.decrement("SKU", 3, ref="order-1:line-1", source="shopify")
                                      for _ in range(50)))
    assert sum(not o.replayed for o in outcomes) == 1
    assert {(o.status, o.available, o.version) for o in outcomes} == {("ok", 7, 2)}
    assert (await store.get("SKU")).available == 7
    events = await read_range(store.redis, store.keys, 0)
    assert [e.ref for e in events] == ["import", "order-1:line-1"]


async def test_the_same_order_fifty_times_at_once_applies_once(store):
    await store.set("A", 5, source="w", ref="i1")
    await store.set("B", 5, source="w", ref="i2")
    outcomes = await asyncio.gather(*(store.order({"A": 1, "B": 2}, ref="o-1", source="shopify") for _ in range(50)))
    assert sum(not o.replayed for o in outcomes) == 1
    assert {tuple((line.available, line.version) for line in o.lines) for o in outcomes} == {((4, 2), (3, 2))}


# Random interleavings ---------------------------------------------------------------------------------

SKUS = ["A", "B", "C"]
op = st.one_of(
    st.tuples(st.just("decrement"), st.sampled_from(SKUS), st.integers(1, 4)),
    st.tuples(st.just("adjust"), st.sampled_from(SKUS), st.integers(-4, 4).filter(bool)),
    st.tuples(st.just("set"), st.sampled_from(SKUS), st.integers(0, 8)),
    st.tuples(st.just("order"), st.lists(st.sampled_from(SKUS), min_size=1, max_size=3, unique=True),
              st.integers(1, 3)),
)
# A small pool of references, so that retries and concurrent duplicates happen.
program = st.lists(st.tuples(op, st.integers(0, 11)), min_size=1, max_size=8)


async def _run(url: str, tasks: list[list]) -> None:
    store = await StockStore.connect(Settings(redis_url=url, prefix=f"h{uuid.uuid4().hex[:12]}"))
    try:
        for sku in SKUS:
            await store.set(sku, 5, source="init", ref=f"init-{sku}")
        results: list[tuple[str, object]] = []

        async def worker(ops):
            for (kind, target, amount), ref_no in ops:
                ref = f"{kind}-{target}-{amount}-{ref_no}"  # one reference, one operation: retries
                if kind == "order":
                    out = await store.order({s: amount for s in target}, ref=ref, source="t")
                else:
                    fn = getattr(store, kind)
                    out = await fn(target, amount, ref=ref, source="t")
                results.append((ref, out))

        await asyncio.gather(*(worker(ops) for ops in tasks))
        await _check(store, results)
    finally:
        keys = [k async for k in store.redis.scan_iter(match=f"\\{{{store.keys.prefix}:*")] + [store.keys.meta]
        await store.redis.delete(*keys)
        await store.close()


async def _check(store: StockStore, results) -> None:
    events = await read_range(store.redis, store.keys, 0)
    changed = [e for e in events if e.type == "stock.changed"]
    # G3: one event per applied change; an order applies one change per line.
    applied = sum(len(o.lines) if hasattr(o, "lines") else 1 for _, o in results if o.ok and not o.replayed)
    assert len(changed) == applied + len(SKUS)
    # G2: every reference's replays carry its first outcome.
    first: dict[str, object] = {}
    for ref, out in results:
        if not out.replayed:
            assert ref not in first or out.status == "unknown_sku", f"{ref} applied twice"
            first.setdefault(ref, out)
    for ref, out in results:
        if out.replayed:
            assert (out.status, _state(out)) == (first[ref].status, _state(first[ref]))
    # G1 and G3 per SKU: versions gap-free, each event's quantity follows from the last, never below 0.
    per_sku = defaultdict(list)
    for e in changed:
        per_sku[e.sku].append(e)
    for sku in SKUS:
        stock = await store.get(sku)
        seq = per_sku[sku]
        assert [e.version for e in seq] == list(range(1, len(seq) + 1))
        running = 0
        for e in seq:
            running += e.delta
            assert e.available == running >= 0
        assert (stock.available, stock.version) == (running, len(seq))


def _state(out):
    return tuple((line.available, line.version) for line in out.lines) if hasattr(out, "lines") else (
        out.available, out.version)


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tasks=st.lists(program, min_size=2, max_size=6))
def test_random_interleavings_keep_the_books_straight(redis_url, tasks):
    asyncio.run(_run(redis_url, tasks))
