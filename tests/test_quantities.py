"""The on_hand / committed / available model (library 0.6) through raw FCALL, as other services call it:
sale, shipment, cancellation, count, the read of every quantity, data written before 0.6, the upgrade of
a real 0.5 library in place, and bad input refused with nothing changed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from stocksync import functions
from stocksync.keys import Keys

from .helpers import fcall, sku_call_keys, snapshot

ROOT = Path(__file__).resolve().parent.parent
LIBRARY_0_5 = "2ee7a36"  # the last commit with library 0.5.0


@pytest.fixture
def r(sync_redis, settings):
    sync_redis.function_load(functions.library_source(settings.idem_ttl_s), replace=True)
    return sync_redis


@pytest.fixture
def keys(prefix):
    return Keys(prefix, 1)


def call(r, keys, fn, sku, ref, *args):
    return fcall(r, fn, sku_call_keys(keys, sku, ref), *args)


def stock(r, keys, sku):
    return r.fcall_ro("stocksync_stock", 1, keys.sku(sku))


def test_sale_ship_cancel_count(r, keys):
    assert call(r, keys, "stocksync_set", "A", "s1", 10, "w", "s1") == ["ok", 10, 1, 0]
    assert call(r, keys, "stocksync_decrement", "A", "d1", 4, "amazon", "d1") == ["ok", 6, 2, 0]
    # {available, on_hand, committed, reserved, version, updated_ms, source, components, bundles}
    assert stock(r, keys, "A")[:5] == [6, 10, 4, 0, 2]
    assert call(r, keys, "stocksync_ship", "A", "sh1", 3, "warehouse", "sh1") == ["ok", 6, 3, 0, 3]
    assert call(r, keys, "stocksync_ship", "A", "sh1", 3, "warehouse", "sh1") == ["ok", 6, 3, 1, 3]
    assert stock(r, keys, "A")[:5] == [6, 7, 1, 0, 3]
    assert call(r, keys, "stocksync_cancel", "A", "c1", 1, "amazon", "c1") == ["ok", 7, 4, 0, 1]
    assert stock(r, keys, "A")[:5] == [7, 7, 0, 0, 4]
    # A count sets on_hand and leaves committed alone.
    call(r, keys, "stocksync_decrement", "A", "d2", 2, "shopify", "d2")
    assert call(r, keys, "stocksync_count", "A", "k1", 20, "warehouse", "k1") == ["ok", 18, 6, 0]
    assert stock(r, keys, "A")[:4] == [18, 20, 2, 0]
    assert call(r, keys, "stocksync_count", "A", "k2", 1, "warehouse", "k2") == ["insufficient", 18, 6, 0]
    assert call(r, keys, "stocksync_count", "A", "k3", 20, "warehouse", "k3", 5) == ["conflict", 18, 6, 0]
    assert call(r, keys, "stocksync_count", "NEW", "k4", 3, "warehouse", "k4", 0) == ["ok", 3, 1, 0]
    # The events of the 0.5 operations keep their fields; the others add op.
    events = [f for _, f in r.xrange(keys.events(0))]
    assert events[1] == {"type": "stock.changed", "sku": "A", "available": "6", "delta": "-4", "version": "2",
                         "source": "amazon", "ref": "d1"}
    assert [f.get("op") for f in events[2:]] == ["ship", "cancel", None, "count", "count", "count"]
    assert events[-2]["type"] == "stock.rejected" and events[-2]["reason"] == "below_committed"


def test_units_sold_before_0_6_ship_as_nothing_and_cancel_back_to_on_hand(r, keys):
    """A hash as 0.5 left it (available only) reads on_hand = available; its old sales were never in
    committed, so shipping them changes nothing and cancelling them restocks on_hand as 0.5 did."""
    r.hset(keys.sku("OLD"), mapping={"available": 7, "version": 3, "updated_ms": 1, "source": "amazon"})
    assert r.fcall_ro("stocksync_get", 1, keys.sku("OLD")) == [7, 0, 3, 1, "amazon"]
    assert stock(r, keys, "OLD")[:5] == [7, 7, 0, 0, 3]
    assert call(r, keys, "stocksync_ship", "OLD", "s", 2, "w", "s") == ["ok", 7, 3, 0, 0]
    assert r.xlen(keys.events(0)) == 0  # (nothing changed: no event)
    assert call(r, keys, "stocksync_cancel", "OLD", "c", 2, "w", "c") == ["ok", 9, 4, 0, 0]
    assert stock(r, keys, "OLD")[:4] == [9, 9, 0, 0]
    # The first sale writes committed; nothing else is added to the hash.
    call(r, keys, "stocksync_decrement", "OLD", "d", 1, "w", "d")
    assert set(r.hgetall(keys.sku("OLD"))) == {"available", "version", "updated_ms", "source", "committed"}


BAD = [
    ("stocksync_count", ["-1", "w", "r"], "on_hand must be between"),
    ("stocksync_count", ["1", "w", "r", "x"], "expected_version must be an integer"),
    ("stocksync_count", ["1", "w", "r", "1", "2"], "at most 4 arguments"),
    ("stocksync_ship", ["0", "w", "r"], "qty must be between"),
    ("stocksync_ship", ["1", "", "r"], "source must not be empty"),
    ("stocksync_cancel", ["1.5", "w", "r"], "qty must be an integer"),
    ("stocksync_cancel", ["1", "w", ""], "ref must not be empty"),
]


@pytest.mark.parametrize("fn,args,message", BAD)
def test_bad_arguments_are_refused_and_change_nothing(r, keys, fn, args, message):
    call(r, keys, "stocksync_set", "A", "s0", 5, "w", "s0")
    call(r, keys, "stocksync_decrement", "A", "d0", 1, "w", "d0")
    before = snapshot(r, keys.prefix)
    with pytest.raises(redis.ResponseError) as e:
        fcall(r, fn, sku_call_keys(keys, "A", "r"), *args)
    assert str(e.value).startswith("stocksync: ") and message in str(e.value), str(e.value)
    assert snapshot(r, keys.prefix) == before


def test_bad_bundle_and_line_ledger_calls_are_refused_and_change_nothing(r, keys):
    call(r, keys, "stocksync_set", "A", "s0", 5, "w", "s0")
    before = snapshot(r, keys.prefix)
    ev, line = keys.events(0), keys.webhook_line_restocks("shopify", "1:1")
    for fn, ks, args, message in (
        ("stocksync_bundle_set", [ev, keys.sku("B")], ["w", "r"], "needs 1 to"),
        ("stocksync_bundle_set", [ev, keys.sku("B"), keys.sku("A")], ["w", "r", "0"], "between 1 and"),
        ("stocksync_bundle_set", [ev, keys.sku("B"), keys.sku("A")], ["w", "r", "100000"], "between 1 and 99999"),
        ("stocksync_bundle_set", [ev, keys.sku("B"), keys.sku("Z")], ["w", "r", "1"], "does not exist"),
        ("stocksync_bundle_set", [ev, keys.sku("A"), keys.sku("A")], ["w", "r", "1"], "its own component"),
        ("stocksync_bundle_set", [ev, keys.sku("B"), "{x:0}:sku:A"], ["w", "r", "1"], "partition"),
        ("stocksync_bundle_set", [ev, keys.sku("B"), keys.sku("A")], ["w", "r"], "expected 1 quantities"),
        ("stocksync_bundle_delete", [ev], ["w", "r"], "expected 2 keys"),
        ("stocksync_bundle_delete", ["{x:0}:events", keys.sku("A")], ["w", "r"], "events key"),
        ("stocksync_stock", [], [], "expected 1 key"),
        ("stocksync_ship_claim", [line], ["s", "1", "1"], "4 arguments"),
        ("stocksync_ship_claim", [line], ["s", "0", "1", "60"], "units"),
        ("stocksync_restock_claim", [line], ["c", "1", "1", "60", "0", "both"], "kind must be"),
    ):
        with pytest.raises(redis.ResponseError, match=message) as e:
            r.fcall(fn, len(ks), *ks, *args)
        assert str(e.value).startswith("stocksync: ")
    assert snapshot(r, keys.prefix) == before


def test_the_line_ledger_splits_a_restock_by_what_shipped(r, keys):
    key = keys.webhook_line_restocks("shopify", "9:1")

    def restock(rid, units, kind):
        return r.fcall("stocksync_restock_claim", 1, key, rid, units, 5, 60, 0, kind)

    def ship(sid, units):
        return r.fcall("stocksync_ship_claim", 1, key, sid, units, 5, 60)

    assert ship("ship:f1", 2) == ["reserved", 2, 0]
    r.hset(key, "ship:f1", "s2")
    assert restock("r1", 4, "cancel") == ["reserved", 3, 0, 3]  # only the 3 not shipped come back
    r.hset(key, "r1", "d3c3")
    assert ship("ship:f2", 1) == ["none", 0, 0]  # nothing left to ship: 2 shipped, 3 cancelled
    assert restock("r2", 1, "return") == ["reserved", 1, 0, 0]  # a shipped unit returns (to on_hand)
    assert restock("r3", 5, "return") == ["reserved", 1, 0, 0]  # never beyond what was taken
    assert restock("r1", 4, "cancel") == ["done", 3, 1, 3]
    with pytest.raises(redis.ResponseError, match="is a restock of the line"):
        ship("r1", 1)


def _library_0_5() -> str | None:
    if not shutil.which("git"):
        return None
    run = subprocess.run(["git", "-C", str(ROOT), "show", f"{LIBRARY_0_5}:lua/stocksync.lua"],
                         capture_output=True, text=True)
    return run.stdout if run.returncode == 0 and "local VERSION = '0.5.0'" in run.stdout else None


async def test_the_loader_replaces_a_real_0_5_library_in_place_and_its_data_keeps_working(store, sync_redis):
    old = _library_0_5()
    if old is None:
        pytest.skip(f"library 0.5.0 not in this checkout's history ({LIBRARY_0_5})")
    r, keys = sync_redis, store.keys
    await store.redis.execute_command("FUNCTION", "LOAD", "REPLACE", old)
    await store.set("A", 10, source="w", ref="s1")
    taken = await store.decrement("A", 3, ref="amazon:1:1", source="amazon")  # 0.5: not committed
    [result] = await functions.ensure_loaded(store.redis, store.settings.idem_ttl_s)
    assert (result.action, result.version) == ("replaced", "0.6.0")
    before = snapshot(r, keys.prefix)
    again = await store.decrement("A", 3, ref="amazon:1:1", source="amazon")
    assert again.replayed and (again.available, again.version) == (taken.available, taken.version)
    assert snapshot(r, keys.prefix) == before
    q = await store.quantities("A")
    assert (q.available, q.on_hand, q.committed, q.reserved) == (7, 7, 0, 0)
    # Its 0.5 sale shipping changes nothing; a new sale goes to committed and ships out of it.
    assert (await store.ship("A", 3, ref="ship-old", source="w")).units == 0
    await store.decrement("A", 2, ref="amazon:2:1", source="amazon")
    assert (await store.ship("A", 2, ref="ship-new", source="w")).units == 2
    q = await store.quantities("A")
    assert (q.available, q.on_hand, q.committed) == (5, 5, 0)
