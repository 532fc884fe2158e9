"""Compatibility only: users unit-test their own code against fakeredis, so the library must load and
answer there. The guarantees themselves are tested on real servers, never here."""

from __future__ import annotations

import fakeredis

from stocksync import functions
from stocksync.keys import Keys
from stocksync.settings import Settings
from stocksync.store import StockStore

from .helpers import fcall, sku_call_keys


async def test_store_works_on_fakeredis():
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    store = await StockStore.connect(Settings(), redis=redis)
    assert (await store.set("A", 2, source="w")).ok
    assert (await store.decrement("A", 1, ref="r", source="x")).available == 1
    assert (await store.decrement("A", 1, ref="r", source="x")).replayed
    assert (await store.decrement("A", 5, ref="r2", source="x")).status == "insufficient"
    assert (await store.get("A")).version == 2
    assert isinstance(store.keys, Keys)


def test_the_reference_record_answers_on_fakeredis():
    """The reference record (buckets, since library 0.5.0) and stocksync_ref work there too."""
    r = fakeredis.FakeRedis(decode_responses=True)
    r.function_load(functions.library_source(172800), replace=True)
    keys = Keys("fake", 1)

    def call(fn, sku, ref, *args):
        return fcall(r, fn, sku_call_keys(keys, sku, ref), *args)

    assert call("stocksync_set", "A", "s1", 3, "w", "s1") == ["ok", 3, 1, 0]
    assert call("stocksync_decrement", "A", "d1", 1, "x", "d1") == ["ok", 2, 2, 0]
    assert call("stocksync_decrement", "A", "d1", 1, "x", "d1") == ["ok", 2, 2, 1]
    assert r.fcall_ro("stocksync_ref", 1, keys.idem(0, "d1")) == "ok"
    assert r.fcall_ro("stocksync_ref", 1, keys.idem(0, "d2")) is None
