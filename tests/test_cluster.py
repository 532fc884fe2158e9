"""A 3-primary Redis Cluster started by the suite."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis

from stocksync.events import read_range
from stocksync.settings import Settings
from stocksync.store import StockStore

pytestmark = pytest.mark.cluster


@pytest.fixture
async def cstore(cluster):
    settings = Settings(redis_url=cluster.url, cluster=True, prefix=f"c{uuid.uuid4().hex[:10]}", partitions=12)
    store = await StockStore.connect(settings)
    yield store
    await store.close()


async def test_library_is_on_every_primary(cstore, cluster):
    for node in cluster.nodes:
        client = redis.Redis(port=node.port, decode_responses=True)
        assert client.fcall("stocksync_version", 0)
        client.close()


async def test_partitions_spread_over_primaries(cstore, cluster):
    owners = set()
    for p in range(cstore.keys.partitions):
        slot = cstore.redis.keyslot(cstore.keys.events(p))
        owners.add(cstore.redis.nodes_manager.get_node_from_slot(slot).port)
        # Every key of a partition hashes to the same slot as its events stream.
        assert cstore.redis.keyslot(cstore.keys.idem(p, "x")) == slot
    assert len(owners) >= 2
    skus = [f"SKU-{i}" for i in range(40)]
    await asyncio.gather(*(cstore.set(s, 1, source="w", ref=f"i-{s}") for s in skus))
    homes = {cstore.redis.nodes_manager.get_node_from_slot(cstore.redis.keyslot(cstore.keys.sku(s))).port
             for s in skus}
    assert len(homes) >= 2


async def test_storm_through_redis_cluster(cstore):
    await cstore.set("HOT", 50, source="w", ref="import")
    outcomes = await asyncio.gather(*(cstore.decrement("HOT", 1, ref=f"b{i}", source="amazon") for i in range(500)))
    assert [o.status for o in outcomes].count("ok") == 50
    stock = await cstore.get("HOT")
    assert (stock.available, stock.version) == (0, 51)
    events = await read_range(cstore.redis, cstore.keys, cstore.keys.partition("HOT"))
    assert [e.version for e in events if e.type == "stock.changed"] == list(range(1, 52))


async def test_a_partition_count_is_fixed_once(cstore, cluster):
    other = await StockStore.connect(Settings(redis_url=cluster.url, cluster=True, prefix=cstore.keys.prefix,
                                              partitions=3))
    assert other.keys.partitions == 12
    await other.close()
