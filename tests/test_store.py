"""The Python API: typed results, exceptions on request, the loader, partitions."""

from __future__ import annotations

import pytest

from stocksync import functions
from stocksync.errors import InsufficientStock, InvalidArgument, UnknownSku, VersionConflict
from stocksync.keys import Keys, partition_of
from stocksync.settings import Settings
from stocksync.store import StockStore


async def test_outcomes_and_exceptions(store):
    created = await store.set("A", 3, source="w")
    assert (created.status, created.available, created.version, created.replayed) == ("ok", 3, 1, False)
    assert (await store.decrement("A", 2, ref="r1", source="amazon")).raise_for_status().available == 1
    with pytest.raises(InsufficientStock) as e:
        (await store.decrement("A", 2, ref="r2", source="amazon")).raise_for_status()
    assert e.value.outcome.available == 1
    with pytest.raises(UnknownSku):
        (await store.decrement("B", 1, ref="r3", source="amazon")).raise_for_status()
    with pytest.raises(VersionConflict):
        (await store.set("A", 9, expected_version=1)).raise_for_status()
    stock = await store.get("A")
    assert (stock.available, stock.version, stock.source) == (1, 2, "amazon")
    assert await store.get("B") is None


@pytest.mark.parametrize("bad_call", [
    lambda s: s.decrement("A", 0, ref="r", source="x"),
    lambda s: s.decrement("A", -1, ref="r", source="x"),
    lambda s: s.decrement("A", 2**31, ref="r", source="x"),
    lambda s: s.decrement("A", True, ref="r", source="x"),
    lambda s: s.decrement("A", "1", ref="r", source="x"),
    lambda s: s.decrement("A", 1, ref="", source="x"),
    lambda s: s.decrement("", 1, ref="r", source="x"),
    lambda s: s.decrement(5, 1, ref="r", source="x"),
    lambda s: s.adjust("A", 0),
    lambda s: s.set("A", -5),
    lambda s: s.order({}, ref="o", source="x"),
])
async def test_bad_input_raises_invalid_argument_and_changes_nothing(store, bad_call):
    await store.set("A", 5, source="w", ref="init")
    with pytest.raises(InvalidArgument):
        await bad_call(store)
    stock = await store.get("A")
    assert (stock.available, stock.version) == (5, 1)


async def test_order_outcome_names_short_lines(store):
    await store.set("A", 5, source="w")
    await store.set("B", 1, source="w")
    out = await store.order([("A", 2), ("B", 3)], ref="o1", source="shopify")
    assert out.status == "insufficient" and [line.sku for line in out.short_lines] == ["B"]
    out = await store.order([("A", 2), ("B", 1)], ref="o2", source="shopify")
    assert out.ok and [(line.sku, line.available, line.version) for line in out.lines] == [("A", 3, 2), ("B", 0, 2)]


async def test_an_order_across_partitions_is_refused_before_redis(settings):
    store = await StockStore.connect(settings.with_(partitions=8))
    try:
        other = next(s for s in map(str, range(100)) if store.keys.partition(s) != store.keys.partition("A"))
        with pytest.raises(InvalidArgument, match="span partitions"):
            await store.order({"A": 1, other: 1}, ref="o", source="x")
    finally:
        await store.close()


async def test_decrement_many_pipelines(store):
    await store.set("A", 3, source="w")
    outs = await store.decrement_many([("A", 1, f"m{i}") for i in range(5)], source="pos")
    assert [o.status for o in outs] == ["ok", "ok", "ok", "insufficient", "insufficient"]
    assert [o.available for o in outs] == [2, 1, 0, 0, 0]


async def test_skus_lists_every_sku(store):
    for sku in ("A", "B", "C"):
        await store.set(sku, 1, source="w")
    assert sorted([s async for s in store.skus()]) == ["A", "B", "C"]


async def test_loader_replaces_an_older_library_and_keeps_a_current_one(store):
    redis = store.redis
    old = functions.library_source(store.settings.idem_ttl_s).replace(
        f"local VERSION = '{functions.library_version()}'", "local VERSION = '0.0.1'")
    await redis.execute_command("FUNCTION", "LOAD", "REPLACE", old)
    assert await redis.fcall("stocksync_version", 0) == "0.0.1"
    [result] = await functions.ensure_loaded(redis, store.settings.idem_ttl_s)
    assert result.action == "replaced" and await redis.fcall("stocksync_version", 0) == functions.library_version()
    [result] = await functions.ensure_loaded(redis, store.settings.idem_ttl_s)
    assert result.action == "current"
    # A different reference TTL is a different deployment setting: reload with it.
    [result] = await functions.ensure_loaded(redis, 3600)
    assert result.action == "replaced" and await redis.fcall("stocksync_idem_ttl", 0) == 3600
    await functions.ensure_loaded(redis, store.settings.idem_ttl_s)


async def test_loader_loads_a_missing_library(store):
    await store.redis.execute_command("FUNCTION", "DELETE", "stocksync")
    [result] = await functions.ensure_loaded(store.redis, store.settings.idem_ttl_s)
    assert result.action == "loaded"
    assert (await store.set("A", 1, source="w")).ok


def test_partition_is_redis_cluster_crc16(sync_redis):
    for sku in ("A", "SKU-123", "ünïcode", "x" * 200):
        assert partition_of(sku, 16384) == sync_redis.execute_command("CLUSTER", "KEYSLOT", sku) \
            if _cluster_enabled(sync_redis) else _keyslot(sku)


def _cluster_enabled(client) -> bool:
    return client.info("cluster").get("cluster_enabled") == 1


def _keyslot(sku: str) -> int:
    from redis.crc import key_slot

    # No braces in these SKUs, so redis-py's key_slot hashes the whole string as Redis does.
    return key_slot(sku.encode())


def test_keys_share_the_partition_tag():
    keys = Keys("stocksync", 4)
    p = keys.partition("ABC")
    assert keys.sku("ABC") == f"{{stocksync:{p}}}:sku:ABC"
    assert keys.events(p).startswith(f"{{stocksync:{p}}}") and keys.idem(p, "r").startswith(f"{{stocksync:{p}}}")


def test_settings_reject_bad_values():
    from stocksync.settings import SettingsError

    for env in ({"STOCKSYNC_PARTITIONS": "zero"}, {"STOCKSYNC_PREFIX": "a{b}"}, {"STOCKSYNC_IDEM_TTL": "5"},
                {"REDIS_URL": "http://x"}, {"STOCKSYNC_CLUSTER": "maybe"}):
        with pytest.raises(SettingsError):
            Settings.load(env=env)


def test_settings_from_toml_and_env(tmp_path):
    config = tmp_path / "stocksync.toml"
    config.write_text('prefix = "shop"\nidem_ttl_s = 3600\n[channels.shopify]\nurl = "http://x"\n')
    s = Settings.load(env={"STOCKSYNC_CONFIG": str(config), "STOCKSYNC_PARTITIONS": "4"})
    assert (s.prefix, s.idem_ttl_s, s.partitions) == ("shop", 3600, 4)
    assert s.section("channels")["shopify"]["url"] == "http://x"
    config.write_text("prefx = 1\n")
    with pytest.raises(Exception, match="unknown setting"):
        Settings.load(env={"STOCKSYNC_CONFIG": str(config)})


def test_secrets_never_show_in_settings():
    s = Settings(redis_url="redis://user:hunter2@127.0.0.1:6379/0")
    assert "hunter2" not in repr(s)
