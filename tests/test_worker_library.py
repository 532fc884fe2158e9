"""The consumer-side functions of the library, called directly (as any language's client would)."""

from __future__ import annotations

import pytest
from redis.exceptions import ResponseError

from stocksync import library


@pytest.fixture
async def stream(store):
    k = store.keys
    await store.redis.xgroup_create(k.events(0), "shop", id="0", mkstream=True)
    return k


async def test_push_done_records_versions_monotonically_acks_and_releases(store, stream):
    k, r = stream, store.redis
    await store.set("A", 5)
    await store.set("A", 4)
    (entries,) = [e for _, e in await r.xreadgroup("shop", "c1", {k.events(0): ">"})]
    ids = [i for i, _ in entries]
    (c,) = await library.push_claim(k, 0, "shop", "c1", ["A"], 5000).run(r)
    assert (c.leased, c.available, c.version, c.pushed) == (True, 4, 2, 0)
    (other,) = await library.push_claim(k, 0, "shop", "c2", ["A"], 5000).run(r)
    assert not other.leased and other.version == 2  # never two pushes of one SKU at once
    assert await library.push_done(k, 0, "shop", "c1", {"A": 2}, ids, ["A"]).run(r) == (1, 2, 1)
    assert await library.push_done(k, 0, "shop", "c1", {"A": 1}, [], []).run(r) == (0, 0, 0)  # never backwards
    assert await r.hget(k.pushed(0, "shop"), "A") == "2"
    assert (await r.xpending(k.events(0), "shop"))["pending"] == 0
    (c2,) = await library.push_claim(k, 0, "shop", "c2", ["A"], 5000).run(r)
    assert c2.leased and c2.pushed == 2
    # a consumer only releases its own lease
    assert (await library.push_done(k, 0, "shop", "c1", {}, [], ["A"]).run(r))[2] == 0
    assert await r.get(k.lease(0, "shop", "A")) == "c2"
    (missing,) = await library.push_claim(k, 0, "shop", "c2", ["nope"], 5000).run(r)
    assert missing.version is None and missing.available is None


async def test_dead_letter_moves_atomically_with_the_ack(store, stream):
    k, r = stream, store.redis
    await store.set("B", 3)
    (entries,) = [e for _, e in await r.xreadgroup("shop", "c1", {k.events(0): ">"})]
    ids = [i for i, _ in entries]
    dlq_id = await library.dead_letter(k, 0, "shop", "B", 1, "permanent", 1, "NON_MUTABLE", ids).run(r)
    assert dlq_id
    (entry,) = await r.xrange(k.dlq(0, "shop"))
    assert entry[1]["sku"] == "B" and entry[1]["reason"] == "permanent" and entry[1]["ids"] == ids[0]
    assert entry[1]["error"] == "NON_MUTABLE" and entry[1]["attempts"] == "1"
    assert (await r.xpending(k.events(0), "shop"))["pending"] == 0
    # settled elsewhere already: nothing added
    assert await library.dead_letter(k, 0, "shop", "B", 1, "permanent", 1, "x", ids).run(r) is None
    assert await r.xlen(k.dlq(0, "shop")) == 1
    assert await library.dlq_resolve(k, 0, "shop", "B", 1, [dlq_id]).run(r) == 1
    assert await r.xlen(k.dlq(0, "shop")) == 0 and await r.hget(k.pushed(0, "shop"), "B") == "1"


async def test_trim_stops_at_the_oldest_entry_a_group_still_needs(store, stream):
    k, r = stream, store.redis
    await r.xgroup_create(k.events(0), "slow", id="0")
    for i in range(10):
        await store.set(f"S{i}", i)
    ids = [i for i, _ in await r.xrange(k.events(0))]
    # shop: read and acked everything; slow: read 4, acked the first 2, never read the rest
    await r.xreadgroup("shop", "c", {k.events(0): ">"})
    await r.xack(k.events(0), "shop", *ids)
    await r.xreadgroup("slow", "c", {k.events(0): ">"}, count=4)
    await r.xack(k.events(0), "slow", *ids[:2])
    trimmed, minid = await library.trim(k, 0, 0).run(r)
    assert trimmed == 2 and minid == ids[2]
    await r.xack(k.events(0), "slow", *ids[2:4])
    trimmed, _ = await library.trim(k, 0, 0).run(r)
    assert trimmed == 2  # up to the first undelivered entry, not past it
    assert [i for i, _ in await r.xrange(k.events(0))] == ids[4:]
    # a retention keeps recent history even when every group is done
    await r.xreadgroup("slow", "c", {k.events(0): ">"})
    await r.xack(k.events(0), "slow", *ids[4:])
    assert (await library.trim(k, 0, 3_600_000).run(r))[0] == 0
    assert (await library.trim(k, 0, 0).run(r))[0] == 6


async def test_reap_removes_only_idle_consumers_with_nothing_pending(store, stream):
    k, r = stream, store.redis
    await store.set("C", 1)
    await r.xreadgroup("shop", "holder", {k.events(0): ">"})
    await r.xgroup_createconsumer(k.events(0), "shop", "idle")
    await r.xgroup_createconsumer(k.events(0), "shop", "me")
    removed = await library.reap_consumers(k, 0, "shop", 0, "me").run(r)
    assert removed == ["idle"]
    names = {c["name"] for c in await r.xinfo_consumers(k.events(0), "shop")}
    assert names == {"holder", "me"}


@pytest.mark.parametrize("call, message", [
    (["stocksync_push_claim", 1, "{x:0}:pushed:shop", "shop", "c", 100], "expected a pushed key"),
    (["stocksync_push_claim", 3, "{x:0}:pushed:shop", "{x:0}:sku:A", "{x:1}:lease:shop:A", "shop", "c", 100],
     "lease key"),
    (["stocksync_push_claim", 3, "{x:0}:pushed:shop", "{x:0}:sku:A", "{x:0}:lease:shop:A", "shop", "c", 0],
     "lease TTL"),
    (["stocksync_push_done", 2, "{x:0}:pushed:shop", "{x:1}:events", "shop", "c", 0], "events key"),
    (["stocksync_push_done", 2, "{x:0}:pushed:shop", "{x:0}:events", "shop", "c", 0, "nope"], "entry ID"),
    (["stocksync_dead_letter", 2, "{x:0}:events", "{x:0}:dlq:other", "shop", "A", 1, "r", 1, "e", "1-0"],
     "is not for"),
    (["stocksync_dead_letter", 2, "{x:0}:events", "{x:0}:dlq:shop", "shop", "A", 1, "r", 1, "e"], "at least one"),
    (["stocksync_trim", 1, "{x:0}:sku:A", 0], "not an events key"),
    (["stocksync_trim", 1, "{x:0}:events", -1], "retention"),
    (["stocksync_recheck", 1, "{x:0}:recheck:other", "shop", "due", 1, "A"], "is not for"),
    (["stocksync_recheck", 1, "{x:0}:recheck:shop", "shop", "owe", 1, "A"], "operation must be"),
    (["stocksync_recheck", 1, "{x:0}:recheck:shop", "shop", "due", "soon", "A"], "time"),
    (["stocksync_recheck", 1, "{x:0}:recheck:shop", "shop", "due", 1], "at least one SKU"),
    (["stocksync_recheck", 1, "{x:0}:recheck:shop", "shop", "due", 1, "A", ""], "sku"),
])
async def test_bad_arguments_get_a_clear_error_and_change_nothing(store, call, message):
    with pytest.raises(ResponseError, match=f"^stocksync: .*{message}"):
        await store.redis.execute_command("FCALL", *call)
    assert not await store.redis.exists("{x:0}:lease:shop:A", "{x:0}:dlq:shop", "{x:0}:pushed:shop",
                                        "{x:0}:recheck:shop")


async def test_a_recheck_is_settled_only_by_a_push_started_after_it_was_owed(store, stream):
    k, r = stream, store.redis
    key = k.recheck(0, "shop")
    assert await library.recheck(k, 0, "shop", "due", 1_795_000_000_000, ["A", "B"]).run(r) == 2
    assert await library.recheck(k, 0, "shop", "due", 1_794_000_000_000, ["A"]).run(r) == 0  # the later time is kept
    assert await r.zscore(key, "A") == 1_795_000_000_000
    assert await library.owed(r, k, 0, "shop", 1_795_000_000_000) == [("A", 1_795_000_000_000), ("B", 1_795_000_000_000)]
    assert await library.owed(r, k, 0, "shop", 1_794_999_999_999) == []
    assert await library.recheck(k, 0, "shop", "due", 1_796_000_000_000, ["B"]).run(r) == 1  # owed again, later
    assert await library.recheck(k, 0, "shop", "done", 1_795_500_000_000, ["A", "B"]).run(r) == 1  # A settled, B not
    assert await r.zrange(key, 0, -1) == ["B"]
