"""The group commit of push claims and dones (consumers/ledger.py), against a real Redis."""

from __future__ import annotations

import asyncio

import pytest

from consumers.ledger import LedgerBatcher
from stocksync.errors import InvalidArgument

CHANNEL = "shop"


@pytest.fixture
async def entries(store):
    """Six SKUs of partition 0 at version 1, their entries read by the channel's group: {sku: entry ID}."""
    keys, r = store.keys, store.redis
    await r.xgroup_create(keys.events(0), CHANNEL, id="0", mkstream=True)
    for i in range(6):
        await store.set(f"S{i}", 10 + i, source="test")
    ((_, read),) = await r.xreadgroup(CHANNEL, "me", {keys.events(0): ">"})
    return {fields["sku"]: entry_id for entry_id, fields in read}


def batcher(store, owner: str = "me", lease_ms: int = 5000) -> LedgerBatcher:
    return LedgerBatcher(store.redis, store.keys, CHANNEL, owner, lease_ms)


async def test_concurrent_claims_of_one_partition_are_one_call_and_each_caller_gets_its_rows(store, entries):
    ledger = batcher(store)
    asks = [["S0", "S1"], ["S2"], ["S3", "S4", "S5"]]
    answers = await asyncio.gather(*(ledger.claim(0, skus) for skus in asks))
    assert ledger.calls == 1
    for skus, claims in zip(asks, answers, strict=True):
        assert [c.sku for c in claims] == skus
        assert all(c.leased and c.version == 1 and c.pushed == 0 for c in claims)
        assert [c.available for c in claims] == [10 + int(s[1:]) for s in skus]
    # leased under this owner: another owner's claim finds them taken
    (other,) = await batcher(store, owner="someone-else").claim(0, ["S2"])
    assert not other.leased
    # the next claim, alone, goes out at once as a call of its own
    (again,) = await ledger.claim(0, ["S0"])
    assert again.leased and ledger.calls == 2


async def test_concurrent_dones_of_one_partition_are_one_call(store, entries):
    ledger = batcher(store)
    await ledger.claim(0, list(entries))
    r, keys = store.redis, store.keys
    await asyncio.gather(
        ledger.done(0, {"S0": 1, "S1": 1}, [entries["S0"], entries["S1"]], ["S0", "S1"]),
        ledger.done(0, {"S2": 1}, [entries["S2"]], ["S2"]),
        ledger.done(0, {}, [], ["S3"]),  # (nothing accepted: only its lease released)
    )
    assert ledger.calls == 2  # the claim, then the three dones merged
    assert await r.hgetall(keys.pushed(0, CHANNEL)) == {"S0": "1", "S1": "1", "S2": "1"}
    pending = {p["message_id"] for p in await r.xpending_range(keys.events(0), CHANNEL, "-", "+", 10)}
    assert pending == {entries[s] for s in ("S3", "S4", "S5")}
    leased = [s for s in entries if await r.exists(keys.lease(0, CHANNEL, s))]
    assert leased == ["S4", "S5"]


async def test_a_merged_done_keeps_the_highest_version_of_a_sku(store, entries):
    ledger = batcher(store)
    await ledger.claim(0, ["S0"])
    await store.set("S0", 3, source="test")
    await store.set("S0", 2, source="test")  # S0 at version 3
    await asyncio.gather(ledger.done(0, {"S0": 3}, [], []), ledger.done(0, {"S0": 2}, [], ["S0"]))
    assert await store.redis.hget(store.keys.pushed(0, CHANNEL), "S0") == "3"


async def test_a_failing_merged_claim_fails_every_caller(store, entries):
    ledger = batcher(store, lease_ms=0)  # the library refuses a lease of 0 ms
    answers = await asyncio.gather(ledger.claim(0, ["S0"]), ledger.claim(0, ["S1", "S2"]), return_exceptions=True)
    assert ledger.calls == 1
    assert all(isinstance(a, InvalidArgument) and "lease" in str(a) for a in answers), answers
    assert not await store.redis.exists(*(store.keys.lease(0, CHANNEL, s) for s in entries))


async def test_a_failing_merged_done_fails_every_caller_and_the_next_call_goes_on(store, entries):
    ledger = batcher(store)
    await ledger.claim(0, ["S0", "S1"])
    good = ledger.done(0, {"S0": 1}, [entries["S0"]], ["S0"])
    bad = ledger.done(0, {"S1": 1}, ["not-an-id"], ["S1"])  # one caller's bad entry ID poisons the call
    answers = await asyncio.gather(good, bad, return_exceptions=True)
    assert all(isinstance(a, InvalidArgument) for a in answers), answers
    assert not await store.redis.hexists(store.keys.pushed(0, CHANNEL), "S0")  # the call changed nothing
    await ledger.done(0, {"S0": 1}, [entries["S0"]], ["S0"])  # the batcher is not stuck
    assert await store.redis.hget(store.keys.pushed(0, CHANNEL), "S0") == "1"


async def test_a_large_queue_is_split_into_calls_of_bounded_size(store, entries):
    ledger = batcher(store)
    ledger.MAX_SKUS = 2
    answers = await asyncio.gather(*(ledger.claim(0, [s]) for s in entries))
    assert [a[0].sku for a in answers] == list(entries)
    assert 3 <= ledger.calls <= 4  # the first alone (or with the rest of its turn), then by 2
