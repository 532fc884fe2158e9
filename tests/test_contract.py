"""The function library's contract, through raw FCALL as other services call it (no Python wrapper)."""

from __future__ import annotations

import pytest
import redis

from stocksync import functions
from stocksync.keys import Keys

from .helpers import fcall, sku_call_keys, snapshot


@pytest.fixture
def r(sync_redis, settings):
    sync_redis.function_load(functions.library_source(settings.idem_ttl_s), replace=True)
    return sync_redis


@pytest.fixture
def keys(prefix):
    return Keys(prefix, 1)


def call(r, keys, fn, sku, ref, *args):
    return fcall(r, fn, sku_call_keys(keys, sku, ref), *args)


def test_set_then_decrement_then_replay(r, keys):
    assert call(r, keys, "stocksync_set", "A", "s1", 10, "admin", "s1") == ["ok", 10, 1, 0]
    assert call(r, keys, "stocksync_decrement", "A", "d1", 3, "amazon", "d1") == ["ok", 7, 2, 0]
    assert call(r, keys, "stocksync_decrement", "A", "d1", 3, "amazon", "d1") == ["ok", 7, 2, 1]
    available, reserved, version, updated_ms, source = r.fcall_ro("stocksync_get", 1, keys.sku("A"))
    assert (available, reserved, version, source) == (7, 0, 2, "amazon")
    events = r.xrange(keys.events(0))
    assert [e[1]["version"] for e in events] == ["1", "2"]
    assert events[1][1] == {"type": "stock.changed", "sku": "A", "available": "7", "delta": "-3",
                            "version": "2", "source": "amazon", "ref": "d1"}
    assert updated_ms == int(events[1][0].split("-")[0])  # the entry ID's time is the commit time


def test_insufficient_changes_nothing_but_is_flagged_and_remembered(r, keys):
    call(r, keys, "stocksync_set", "A", "s1", 2, "admin", "s1")
    assert call(r, keys, "stocksync_decrement", "A", "d1", 3, "shopify", "d1") == ["insufficient", 2, 1, 0]
    assert r.hget(keys.sku("A"), "available") == "2"
    last = r.xrevrange(keys.events(0), count=1)[0][1]
    assert last["type"] == "stock.rejected" and last["reason"] == "insufficient" and last["delta"] == "-3"
    # Restocking does not turn the remembered rejection into a sale: the first outcome stands.
    call(r, keys, "stocksync_adjust", "A", "a1", 5, "admin", "a1")
    assert call(r, keys, "stocksync_decrement", "A", "d1", 3, "shopify", "d1") == ["insufficient", 2, 1, 1]
    assert r.hget(keys.sku("A"), "available") == "7"


def test_unknown_sku_is_not_remembered(r, keys):
    assert call(r, keys, "stocksync_decrement", "NOPE", "d1", 1, "amazon", "d1") == ["unknown_sku", 0, 0, 0]
    assert not r.exists(keys.idem(0, "d1")) and not r.exists(keys.events(0))
    call(r, keys, "stocksync_set", "NOPE", "s1", 4, "admin", "s1")
    assert call(r, keys, "stocksync_decrement", "NOPE", "d1", 1, "amazon", "d1") == ["ok", 3, 2, 0]


def test_adjust_both_ways(r, keys):
    call(r, keys, "stocksync_set", "A", "s1", 5, "admin", "s1")
    assert call(r, keys, "stocksync_adjust", "A", "a1", 3, "returns", "a1") == ["ok", 8, 2, 0]
    assert call(r, keys, "stocksync_adjust", "A", "a2", -8, "count", "a2") == ["ok", 0, 3, 0]
    assert call(r, keys, "stocksync_adjust", "A", "a3", -1, "count", "a3") == ["insufficient", 0, 3, 0]
    assert call(r, keys, "stocksync_adjust", "B", "a4", 1, "count", "a4") == ["unknown_sku", 0, 0, 0]


def test_set_with_expected_version(r, keys):
    assert call(r, keys, "stocksync_set", "A", "s1", 5, "admin", "s1", 0) == ["ok", 5, 1, 0]
    assert call(r, keys, "stocksync_set", "A", "s2", 9, "admin", "s2", 0) == ["conflict", 5, 1, 0]
    assert call(r, keys, "stocksync_set", "A", "s3", 9, "admin", "s3", 1) == ["ok", 9, 2, 0]
    assert call(r, keys, "stocksync_set", "A", "s2", 9, "admin", "s2", 2) == ["conflict", 5, 1, 1]
    assert [e[1]["type"] for e in r.xrange(keys.events(0))] == ["stock.changed", "stock.changed"]


def test_set_to_the_same_quantity_still_bumps_the_version(r, keys):
    call(r, keys, "stocksync_set", "A", "s1", 5, "admin", "s1")
    assert call(r, keys, "stocksync_set", "A", "s2", 5, "admin", "s2") == ["ok", 5, 2, 0]
    assert r.xrange(keys.events(0))[-1][1]["delta"] == "0"


def order(r, keys, ref, lines, source="shopify"):
    ks = [keys.events(0), keys.idem(0, ref)] + [keys.sku(s) for s, _ in lines]
    return fcall(r, "stocksync_order", ks, source, ref, *[q for _, q in lines])


def test_order_all_or_nothing(r, keys):
    call(r, keys, "stocksync_set", "A", "s1", 5, "admin", "s1")
    call(r, keys, "stocksync_set", "B", "s2", 1, "admin", "s2")
    before = snapshot(r, keys.prefix)
    assert order(r, keys, "o1", [("A", 2), ("B", 2)]) == ["insufficient", [["A", 5, 1], ["B", 1, 1]], 0]
    after = snapshot(r, keys.prefix)
    events = r.xrange(keys.events(0))
    assert [(e[1]["type"], e[1]["sku"]) for e in events[-1:]] == [("stock.rejected", "B")]  # one per short line
    def stock(snap):
        return {k: v for k, v in snap.items() if ":sku:" in k}

    assert stock(after) == stock(before)
    assert order(r, keys, "o2", [("A", 2), ("B", 1)]) == ["ok", [["A", 3, 2], ["B", 0, 2]], 0]
    assert order(r, keys, "o2", [("A", 2), ("B", 1)]) == ["ok", [["A", 3, 2], ["B", 0, 2]], 1]
    assert [e[1]["ref"] for e in r.xrange(keys.events(0))[-2:]] == ["o2", "o2"]


def test_order_with_an_unknown_sku(r, keys):
    call(r, keys, "stocksync_set", "A", "s1", 5, "admin", "s1")
    assert order(r, keys, "o1", [("A", 1), ("Z", 1)]) == ["unknown_sku", [["A", 5, 1], ["Z", None, None]], 0]
    assert r.hget(keys.sku("A"), "available") == "5" and not r.exists(keys.idem(0, "o1"))


def test_get_unknown_and_version(r, keys):
    assert r.fcall_ro("stocksync_get", 1, keys.sku("nothing")) == []
    assert r.fcall("stocksync_version", 0) == functions.library_version()


BAD_SINGLE = [
    # (function, keys builder, args, message fragment)
    ("stocksync_decrement", "ok", [], "must not be empty"),
    ("stocksync_decrement", "ok", ["x", "amazon", "r"], "qty must be an integer"),
    ("stocksync_decrement", "ok", ["1.5", "amazon", "r"], "qty must be an integer"),
    ("stocksync_decrement", "ok", ["0", "amazon", "r"], "qty must be between"),
    ("stocksync_decrement", "ok", ["-2", "amazon", "r"], "qty must be between"),
    ("stocksync_decrement", "ok", [str(2**31 + 1), "amazon", "r"], "qty must be between"),
    ("stocksync_decrement", "ok", ["1", "", "r"], "source must not be empty"),
    ("stocksync_decrement", "ok", ["1", "amazon", ""], "ref must not be empty"),
    ("stocksync_decrement", "ok", ["1", "amazon"], "ref must not be empty"),
    ("stocksync_decrement", "empty_sku", ["1", "amazon", "r"], "not a SKU key"),
    ("stocksync_decrement", "other_events", ["1", "amazon", "r"], "events key"),
    ("stocksync_decrement", "other_idem", ["1", "amazon", "r"], "reference key"),
    ("stocksync_decrement", "two_keys", ["1", "amazon", "r"], "expected 3 keys"),
    ("stocksync_adjust", "ok", ["0", "amazon", "r"], "delta must not be 0"),
    ("stocksync_adjust", "ok", ["ten", "amazon", "r"], "delta must be an integer"),
    ("stocksync_adjust", "ok", ["1", "admin", "r"], "available would exceed"),
    ("stocksync_set", "ok", ["-1", "admin", "r"], "available must be between"),
    ("stocksync_set", "ok", ["5", "admin", "r", "v1"], "expected_version must be an integer"),
    ("stocksync_set", "ok", ["5", "admin", "r", "1", "extra"], "at most 4 arguments"),
]


def _bad_keys(keys: Keys, kind: str) -> list[str]:
    good = sku_call_keys(keys, "A", "r")
    other = Keys(keys.prefix + "x", 1)
    return {
        "ok": good,
        "empty_sku": [f"{keys.tag(0)}:sku:", good[1], good[2]],
        "other_events": [good[0], other.events(0), good[2]],
        "other_idem": [good[0], good[1], other.idem(0, "r")],
        "two_keys": good[:2],
    }[kind]


@pytest.mark.parametrize("fn,kind,args,message", BAD_SINGLE)
def test_bad_arguments_are_refused_and_change_nothing(r, keys, fn, kind, args, message):
    call(r, keys, "stocksync_set", "A", "s0", 2**31 - 1 if "exceed" in message else 5, "admin", "s0")
    before = snapshot(r, keys.prefix)
    with pytest.raises(redis.ResponseError) as e:
        fcall(r, fn, _bad_keys(keys, kind), *args)
    assert str(e.value).startswith("stocksync: ") and message in str(e.value), str(e.value)
    assert snapshot(r, keys.prefix) == before


@pytest.mark.parametrize("lines,args,message", [
    ([("A", 1), ("A", 1)], None, "appears twice"),
    ([("A", 1)], ["shopify", "o"], "expected 1 quantities"),
    ([("A", 0)], None, "qty of line 1 must be between"),
    ([], None, "an order needs 1 to"),
])
def test_bad_orders_are_refused_and_change_nothing(r, keys, lines, args, message):
    call(r, keys, "stocksync_set", "A", "s0", 5, "admin", "s0")
    before = snapshot(r, keys.prefix)
    ks = [keys.events(0), keys.idem(0, "o")] + [keys.sku(s) for s, _ in lines]
    with pytest.raises(redis.ResponseError) as e:
        fcall(r, "stocksync_order", ks, *(args or ["shopify", "o", *[q for _, q in lines]]))
    assert message in str(e.value), str(e.value)
    assert snapshot(r, keys.prefix) == before


def test_an_order_across_partitions_is_refused(r, prefix):
    keys = Keys(prefix, 4)
    a, b = "A", next(s for s in map(str, range(100)) if keys.partition(s) != keys.partition("A"))
    p = keys.partition(a)
    with pytest.raises(redis.ResponseError, match="partition"):
        fcall(r, "stocksync_order", [keys.events(p), keys.idem(p, "o"), keys.sku(a), keys.sku(b)], "s", "o", 1, 1)


def test_reference_ttl_is_the_deployments(r, keys, settings):
    """The library remembers a reference for the deployment's TTL (since 0.5.0 in a bucket, not in a key
    with a TTL of its own: tests/test_references.py holds the window to the second)."""
    call(r, keys, "stocksync_set", "A", "s1", 5, "admin", "s1")
    assert r.fcall("stocksync_idem_ttl", 0) == settings.idem_ttl_s
    assert r.fcall_ro("stocksync_ref", 1, keys.idem(0, "s1")) == "ok"


def test_a_reference_reused_for_another_operation_is_refused(r, keys):
    call(r, keys, "stocksync_set", "A", "s1", 5, "admin", "s1")
    call(r, keys, "stocksync_set", "B", "s2", 5, "admin", "s2")
    order(r, keys, "o1", [("A", 1), ("B", 1)])
    before = snapshot(r, keys.prefix)
    with pytest.raises(redis.ResponseError, match="was first used for a different operation"):
        call(r, keys, "stocksync_decrement", "A", "o1", 1, "shopify", "o1")
    with pytest.raises(redis.ResponseError, match="was first used for a different operation"):
        order(r, keys, "o1", [("A", 1)])
    with pytest.raises(redis.ResponseError, match="was first used for a different operation"):
        order(r, keys, "s1", [("A", 1), ("B", 1)])
    assert snapshot(r, keys.prefix) == before
