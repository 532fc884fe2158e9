"""Compatibility only: users unit-test their own code against fakeredis, so the library must load and
answer there. The guarantees themselves are tested on real servers, never here."""

from __future__ import annotations

import fakeredis

from stocksync.keys import Keys
from stocksync.settings import Settings
from stocksync.store import StockStore


async def test_store_works_on_fakeredis():
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    store = await StockStore.connect(Settings(), redis=redis)
    assert (await store.set("A", 2, source="w")).ok
    assert (await store.decrement("A", 1, ref="r", source="x")).available == 1
    assert (await store.decrement("A", 1, ref="r", source="x")).replayed
    assert (await store.decrement("A", 5, ref="r2", source="x")).status == "insufficient"
    assert (await store.get("A")).version == 2
    assert isinstance(store.keys, Keys)
