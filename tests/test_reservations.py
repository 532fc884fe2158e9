"""Reservations (library 0.6), against real servers: all lines or none, commit and release exactly once,
expiry that needs nothing running and never gives units back twice, and races of holds, commits,
releases, sales, shipments and expiries checked by the books after every run."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import defaultdict

import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from stocksync.bundles import Bundles
from stocksync.devtools.testing import wait_for
from stocksync.events import read_range
from stocksync.reservations import Reservations, expire_due
from stocksync.settings import Settings
from stocksync.store import StockStore

from .helpers import snapshot
from .helpers import worker_options as opts
from .test_bundles import check_books
from .test_worker import Running


async def test_hold_then_commit_once_or_release_once(store):
    await store.set("MUG", 10, ref="i")
    res = Reservations(store)
    held = await res.reserve({"MUG": 3}, ttl_ms=60_000, source="checkout")
    assert (held.status, held.ms_left, held.lines[0].available) == ("ok", 60_000, 7)
    q = await store.quantities("MUG")
    assert (q.available, q.reserved, q.committed, q.on_hand) == (7, 3, 0, 10)
    done = await res.commit(held.reservation_id, source="checkout")
    assert (done.status, done.replayed) == ("ok", False)
    again = await res.commit(held.reservation_id, source="checkout")
    assert (again.status, again.replayed) == ("ok", True)
    assert (await res.release(held.reservation_id, source="checkout")).status == "committed"
    q = await store.quantities("MUG")
    assert (q.available, q.reserved, q.committed) == (7, 0, 3)
    other = await res.reserve({"MUG": 2}, ttl_ms=60_000, source="checkout")
    assert (await res.release(other.reservation_id, source="checkout")).status == "ok"
    assert (await res.release(other.reservation_id, source="checkout")).replayed
    assert (await res.commit(other.reservation_id, source="checkout")).status == "released"
    assert (await store.get("MUG")).available == 7
    assert (await res.get(other.reservation_id)).state == "released"
    assert (await res.commit("0-nope", source="x")).status == "unknown"
    assert (await res.commit("not an id", source="x")).status == "unknown"


async def test_all_lines_or_none_and_an_id_names_one_reservation(store, sync_redis):
    await store.set("MUG", 5, ref="i1")
    await store.set("PLATE", 1, ref="i2")
    res = Reservations(store)
    short = await res.reserve({"MUG": 1, "PLATE": 2}, ttl_ms=60_000, source="checkout", token="t1")
    assert short.status == "insufficient" and [line.sku for line in short.short_lines] == ["PLATE"]
    assert (await store.get("MUG")).available == 5
    again = await res.reserve({"MUG": 1, "PLATE": 2}, ttl_ms=60_000, source="checkout", token="t1")
    assert (again.status, again.replayed) == ("insufficient", True)
    before = snapshot(sync_redis, store.keys.prefix)
    with pytest.raises(ValueError, match="first made with other lines"):
        await res.reserve({"MUG": 1}, ttl_ms=60_000, source="checkout", token="t1")
    assert (await res.reserve({"NOPE": 1}, ttl_ms=1000, source="checkout")).status == "unknown_sku"
    assert snapshot(sync_redis, store.keys.prefix) == before  # (unknown SKUs keep nothing)


async def test_an_expired_hold_is_never_read_and_comes_back_once_with_nothing_running(store, sync_redis):
    await store.set("MUG", 10, ref="i")
    res = Reservations(store)
    held = await res.reserve({"MUG": 4}, ttl_ms=50, source="checkout")
    # Nothing runs at its expiry: the hash still counts it, every read through the library does not.
    await wait_for(lambda: _available(store, "MUG", 10), 5, "the expired hold to read as available")
    assert sync_redis.hget(store.keys.sku("MUG"), "reserved") == "4"
    assert (await res.get(held.reservation_id)).state == "expired"
    # The next write on the SKU gives it back (its own change, op expire), then sells.
    sale = await store.decrement("MUG", 1, ref="o1", source="amazon")
    assert (sale.available, sale.version) == (9, 4)  # 1 set, 2 hold, 3 expire, 4 sale
    events = await read_range(store.redis, store.keys, 0)
    assert [(e.op, e.delta) for e in events[-2:]] == [("expire", 4), ("", -1)]
    # Ending it (the sale's sweep step did; the sweep, a commit, a release would) finds its hold gone:
    # nothing comes back twice.
    assert sync_redis.hget(store.keys.reservation(0, held.reservation_id), "state") == "expired"
    assert await expire_due(store.redis, store.keys) == 0
    assert (await res.commit(held.reservation_id, source="checkout")).status == "expired"
    assert (await res.release(held.reservation_id, source="checkout")).status == "expired"
    q = await store.quantities("MUG")
    assert (q.available, q.reserved, q.committed, q.on_hand) == (9, 0, 1, 10)
    assert len(await read_range(store.redis, store.keys, 0)) == len(events)


async def _available(store, sku, want):
    return (await store.get(sku)).available == want


async def test_the_sweep_ends_due_reservations_with_no_call_on_their_skus(store, sync_redis):
    await store.set("MUG", 10, ref="i1")
    await store.set("CUP", 10, ref="i2")
    res = Reservations(store)
    held = [await res.reserve({"MUG": 1, "CUP": 2}, ttl_ms=30, source="checkout") for _ in range(3)]
    await wait_for(lambda: _available(store, "MUG", 10), 5, "the holds to expire")
    assert await expire_due(store.redis, store.keys) == 3
    for h in held:
        assert (await res.get(h.reservation_id)).state == "expired"
    assert [sync_redis.hget(store.keys.sku(s), "reserved") for s in ("MUG", "CUP")] == ["0", "0"]
    assert not sync_redis.exists(store.keys.expiries(0)) and not sync_redis.exists(store.keys.hold(0, "MUG"))
    assert await expire_due(store.redis, store.keys) == 0


async def test_a_write_in_the_partition_ends_due_reservations_of_other_skus(store, sync_redis):
    await store.set("MUG", 10, ref="i1")
    await store.set("CUP", 10, ref="i2")
    held = await Reservations(store).reserve({"MUG": 2}, ttl_ms=30, source="checkout")
    await wait_for(lambda: _available(store, "MUG", 10), 5, "the hold to expire")
    await store.decrement("CUP", 1, ref="o1", source="shopify")  # (the sweep's step in a writing call)
    assert sync_redis.hget(store.keys.reservation(0, held.reservation_id), "state") == "expired"
    assert sync_redis.hget(store.keys.sku("MUG"), "reserved") == "0"


async def test_a_bundle_holds_its_components_and_commits_as_a_bundle_sale(store):
    await store.set("MUG", 4, ref="i1")
    await store.set("PLATE", 2, ref="i2")
    await Bundles(store).set("MUG+PLATE", {"MUG": 1, "PLATE": 1})
    res = Reservations(store)
    held = await res.reserve({"MUG+PLATE": 2, "MUG": 1}, ttl_ms=60_000, source="checkout")
    assert held.ok and [line.available for line in held.lines] == [0, 1]
    mug = await store.quantities("MUG")
    assert (mug.available, mug.reserved) == (1, 3)
    assert (await res.commit(held.reservation_id, source="checkout")).status == "ok"
    mug, bundle = await store.quantities("MUG"), await store.quantities("MUG+PLATE")
    assert (mug.available, mug.reserved, mug.committed, bundle.committed) == (1, 0, 3, 2)
    shipped = await store.ship("MUG+PLATE", 2, ref="s1", source="warehouse")
    assert shipped.units == 2
    mug, plate = await store.quantities("MUG"), await store.quantities("PLATE")
    assert (mug.on_hand, mug.committed, plate.on_hand, plate.committed) == (2, 1, 0, 0)


async def test_a_warehouse_count_while_orders_are_open_leaves_committed_alone(store):
    await store.set("MUG", 50, ref="i")
    sales = [store.decrement("MUG", 1, ref=f"o{i}", source="shopify") for i in range(30)]
    held = Reservations(store).reserve({"MUG": 5}, ttl_ms=60_000, source="checkout")
    results = await asyncio.gather(*sales[:15], store.count("MUG", 45, ref="count-1", source="warehouse"),
                                   held, *sales[15:])
    count, hold = results[15], results[16]
    sold = sum(o.ok for o in results[:15] + results[17:])
    assert count.ok and hold.ok and sold == 30
    q = await store.quantities("MUG")
    assert (q.on_hand, q.committed, q.reserved, q.available) == (45, 30, 5, 10)
    # Counting fewer units than are promised is refused; nothing changes but a rejection event.
    low = await store.count("MUG", 34, ref="count-2", source="warehouse")
    assert (low.status, low.available) == ("insufficient", 10)
    last = (await read_range(store.redis, store.keys, 0))[-1]
    assert (last.type, last.reason, last.op, last.delta) == ("stock.rejected", "below_committed", "count", -11)
    assert (await store.quantities("MUG")).on_hand == 45
    # Shipping takes units out of on_hand and committed; a count after it sees the rest.
    assert (await store.ship("MUG", 10, ref="s1", source="warehouse")).units == 10
    q = await store.quantities("MUG")
    assert (q.on_hand, q.committed, q.available) == (35, 20, 10)


# Races -----------------------------------------------------------------------------------------------

SKUS = ["A", "B"]
BUNDLE = {"AB": {"A": 1, "B": 1}}
line = st.sampled_from(["A", "B", "AB"])
op = st.one_of(
    st.tuples(st.just("reserve"), st.lists(line, min_size=1, max_size=2, unique=True), st.integers(1, 3),
              st.sampled_from([1, 3, 10, 60_000])),
    st.tuples(st.just("commit"), st.integers(0, 5), st.just(0), st.just(0)),
    st.tuples(st.just("release"), st.integers(0, 5), st.just(0), st.just(0)),
    st.tuples(st.just("sell"), line, st.integers(1, 3), st.integers(0, 3)),
    st.tuples(st.just("ship"), st.sampled_from(SKUS), st.integers(1, 3), st.integers(0, 3)),
    st.tuples(st.just("cancel"), st.sampled_from(SKUS), st.integers(1, 2), st.integers(0, 3)),
    st.tuples(st.just("expire"), st.just(0), st.just(0), st.just(0)),
)
program = st.lists(op, min_size=1, max_size=8)


class Books:
    """What the outcomes say each SKU's quantities must be."""

    def __init__(self, initial: int) -> None:
        self.on_hand = defaultdict(lambda: initial)
        self.committed = defaultdict(int)
        self.holds: dict[str, dict[str, int]] = {}  # reservation id -> units held per component

    @staticmethod
    def need(lines: dict[str, int]) -> dict[str, int]:
        out = defaultdict(int)
        for sku, qty in lines.items():
            for c, n in BUNDLE.get(sku, {sku: 1}).items():
                out[c] += qty * n
        return out


async def _apply(store, res, books: Books, ids: list[str], step, n: int) -> None:
    kind, a, b, c = step
    if kind == "reserve":
        lines = dict.fromkeys(a, b)
        held = await res.reserve(lines, ttl_ms=c, source="t")
        if held.ok:
            ids.append(held.reservation_id)
            books.holds[held.reservation_id] = books.need(lines)
    elif kind in ("commit", "release") and ids:
        rid = ids[a % len(ids)]
        o = await (res.commit if kind == "commit" else res.release)(rid, source="t")
        if kind == "commit" and o.status == "ok" and not o.replayed:
            for sku, units in books.holds[rid].items():
                books.committed[sku] += units
    elif kind == "sell":
        o = await store.decrement(a, b, ref=f"sell-{n}-{c}", source="t")
        if o.ok and not o.replayed:
            for sku, units in books.need({a: b}).items():
                books.committed[sku] += units
    elif kind in ("ship", "cancel"):
        o = await (store.ship if kind == "ship" else store.cancel)(a, b, ref=f"{kind}-{a}-{n}-{c}", source="t")
        if not o.replayed:
            books.committed[a] -= o.units
            books.on_hand[a] += -o.units if kind == "ship" else b - o.units
    elif kind == "expire":
        await expire_due(store.redis, store.keys)


async def _race(url: str, tasks: list[list]) -> None:
    store = await StockStore.connect(Settings(redis_url=url, prefix=f"h{uuid.uuid4().hex[:12]}"))
    try:
        for sku in SKUS:
            await store.set(sku, 12, source="init", ref=f"init-{sku}")
        await Bundles(store).set("AB", BUNDLE["AB"])
        res, books, ids = Reservations(store), Books(12), []

        async def worker(i, steps):
            for n, step in enumerate(steps):
                await _apply(store, res, books, ids, step, i * 100 + n)

        await asyncio.gather(*(worker(i, steps) for i, steps in enumerate(tasks)))
        await _check(store, res, books, ids)
    finally:
        keys = [k async for k in store.redis.scan_iter(match=f"\\{{{store.keys.prefix}:*")] + [store.keys.meta]
        await store.redis.delete(*keys)
        await store.close()


async def _check(store, res, books: Books, ids: list[str]) -> None:
    """Conservation after the run: on_hand = available + committed + reserved for every SKU, with on_hand
    and committed as the outcomes say, reserved exactly the live holds; once every hold has ended, nothing
    is reserved and every unit is back once."""
    async def short_holds_ended():  # (so that what is held stays held while the books are read)
        return all(r.state != "held" or r.ms_left > 10_000 for r in [await res.get(rid) for rid in ids])

    await wait_for(short_holds_ended, 5, "the short holds to pass their expiry")
    live = defaultdict(int)
    for rid in ids:
        r = await res.get(rid)
        if r.state == "held":
            for sku, units in books.holds[rid].items():
                live[sku] += units
    for sku in SKUS:
        q = await store.quantities(sku)
        assert (q.on_hand, q.committed, q.reserved) == (books.on_hand[sku], books.committed[sku], live[sku]), sku
        assert q.on_hand == q.available + q.committed + q.reserved and q.available >= 0
    check_books(await read_range(store.redis, store.keys, 0), {})
    # End every hold: then reserved is 0 and available is what is neither committed nor shipped.
    for rid in ids:
        await res.release(rid, source="t")
    for sku in SKUS:
        q = await store.quantities(sku)
        assert (q.reserved, q.available) == (0, books.on_hand[sku] - books.committed[sku]), sku
        stored = await store.redis.hmget(store.keys.sku(sku), "available", "reserved")
        assert (int(stored[0]), int(stored[1] or 0)) == (q.available, 0), sku  # applied, not just read


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tasks=st.lists(program, min_size=2, max_size=5))
def test_holds_commits_releases_sales_and_expiries_racing_keep_the_books(redis_url, tasks):
    asyncio.run(_race(redis_url, tasks))


async def test_a_thousand_holds_racing_their_expiry_and_their_commits(store):
    """Holds of 1 ms to 5 s, committed or released around their expiry, the sweep running beside:
    every unit ends committed or available, none twice."""
    await store.set("HOT", 2000, ref="i")
    res, rng = Reservations(store), random.Random(5)
    committed = defaultdict(int)

    async def buyer(i):
        held = await res.reserve({"HOT": 2}, ttl_ms=rng.choice((1, 5, 20, 100, 500, 5000)), source="checkout")
        await asyncio.sleep(rng.random() * 0.05)  # (not synchronisation: the commit lands before or after expiry)
        o = await (res.commit if i % 2 else res.release)(held.reservation_id, source="checkout")
        if i % 2 and o.status == "ok":
            committed[held.reservation_id] += 2

    async def sweeper(stop):
        while not stop.is_set():
            await expire_due(store.redis, store.keys)
            await asyncio.sleep(0.002)

    stop = asyncio.Event()
    sweep = asyncio.create_task(sweeper(stop))
    await asyncio.gather(*(buyer(i) for i in range(1000)))
    stop.set()
    await sweep
    q = await store.quantities("HOT")
    total = sum(committed.values())
    assert 0 < total < 1000
    assert (q.on_hand, q.committed, q.reserved, q.available) == (2000, total, 0, 2000 - total)
    check_books(await read_range(store.redis, store.keys, 0), {})


@pytest.mark.cluster
async def test_reservations_on_the_cluster_with_a_pinned_group(cluster):
    settings = Settings(redis_url=cluster.url, cluster=True, prefix=f"c{uuid.uuid4().hex[:10]}", partitions=12)
    store = await StockStore.connect(settings)
    try:
        await store.set("MUG{k}", 40, ref="i1")
        await store.set("PLATE{k}", 40, ref="i2")
        await store.set("LONE", 40, ref="i3")
        await Bundles(store).set("SET{k}", {"MUG{k}": 1, "PLATE{k}": 1})
        res = Reservations(store)
        if store.keys.partition("LONE") != store.keys.partition("MUG{k}"):
            with pytest.raises(ValueError, match="span partitions"):
                await res.reserve({"MUG{k}": 1, "LONE": 1}, ttl_ms=1000, source="c")
        held = await asyncio.gather(*(res.reserve({"SET{k}": 1, "MUG{k}": 1}, ttl_ms=rng_ttl(i), source="c")
                                      for i in range(30)))
        done = await asyncio.gather(*(res.commit(h.reservation_id, source="c") for h in held if h.ok))
        await asyncio.sleep(0)
        for h in held:
            await res.release(h.reservation_id, source="c")
        taken = 2 * sum(o.status == "ok" for o in done)
        mug, plate = await store.quantities("MUG{k}"), await store.quantities("PLATE{k}")
        assert (mug.reserved, plate.reserved) == (0, 0)
        assert mug.committed == taken and mug.available == 40 - taken
        assert plate.committed == taken // 2 and plate.available == 40 - taken // 2
        assert (await store.get("SET{k}")).available == min(mug.available, plate.available)
    finally:
        await store.close()


def rng_ttl(i: int) -> int:
    return 5 if i % 3 == 0 else 60_000


def test_reservation_bad_input_is_refused_and_changes_nothing(sync_redis, prefix):
    from stocksync import functions
    from stocksync.keys import Keys

    r, keys = sync_redis, Keys(prefix, 1)
    r.function_load(functions.library_source(3600), replace=True)
    r.fcall("stocksync_set", 3, keys.sku("A"), keys.events(0), keys.idem(0, "i"), 5, "w", "i")
    before = snapshot(r, prefix)
    ev, res = keys.events(0), keys.reservation(0, "r1")
    for fn, ks, args, message in (
        ("stocksync_reserve", [ev, res, keys.sku("A")], ["c", "0", "1"], "time to live"),
        ("stocksync_reserve", [ev, res, keys.sku("A")], ["c", str(7 * 86400 * 1000 + 1), "1"], "time to live"),
        ("stocksync_reserve", [ev, res, keys.sku("A")], ["c", "100", "0"], "qty of line 1"),
        ("stocksync_reserve", [ev, res, keys.sku("A"), keys.sku("A")], ["c", "100", "1", "1"], "appears twice"),
        ("stocksync_reserve", [ev, "{x:0}:res:r1", keys.sku("A")], ["c", "100", "1"], "reservation key"),
        ("stocksync_reserve", [ev, res], ["c", "100"], "needs 1 to"),
        ("stocksync_reserve", [ev, res, keys.sku("A\nB")], ["c", "100", "1"], "newline"),
        ("stocksync_commit", [ev], ["c"], "expected 2 keys"),
        ("stocksync_commit", [ev, res], [""], "source must not be empty"),
        ("stocksync_release", [ev, "nope"], ["c"], "reservation key"),
        ("stocksync_expire", [ev], ["0"], "count must be between"),
        ("stocksync_expire", [ev], ["501"], "count must be between"),
        ("stocksync_reservation", [], [], "expected 1 key"),
    ):
        with pytest.raises(redis.ResponseError, match=message) as e:
            r.fcall(fn, len(ks), *ks, *args)
        assert str(e.value).startswith("stocksync: ")
    assert snapshot(r, prefix) == before


@pytest.fixture
def fresh(sims):
    for sim, _ in sims.values():
        sim.reset()
    return sims


async def test_channels_list_an_expired_holds_units_again_with_no_call_on_the_sku(store, fresh):
    """The workers' sweep ends the reservation (an event), so every channel is pushed the units back."""
    await store.set("MUG", 10, ref="i")
    async with Running(store, fresh, ["shopify", "flipkart"], opts()):
        held = await Reservations(store).reserve({"MUG": 4}, ttl_ms=300, source="checkout")
        assert held.ok
        sims = [fresh[name][0] for name in ("shopify", "flipkart")]
        await wait_for(lambda: all(s.quantities.get("MUG") == 6 for s in sims), 10, "the hold to be listed")
        await wait_for(lambda: all(s.quantities.get("MUG") == 10 for s in sims), 10,
                       "the expired hold's units listed again")
    assert (await Reservations(store).get(held.reservation_id)).state == "expired"
