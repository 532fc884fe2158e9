"""A 3-primary Redis Cluster started by the suite."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis

from consumers.groups import ensure_groups
from consumers.resync import resync
from stocksync.devtools.simulators import WebhookSim, serve
from stocksync.devtools.testing import config, use_simulator_credentials
from stocksync.events import read_range
from stocksync.settings import Settings
from stocksync.store import StockStore, scan_skus

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


async def test_a_channel_added_late_on_a_cluster_gets_every_sku(cstore):
    """The initial sync scans each partition on the primary that holds it, and pushes every SKU once."""
    skus = [f"SKU-{i}" for i in range(40)]
    await asyncio.gather(*(cstore.set(s, 1 + i, source="w", ref=f"i-{s}") for i, s in enumerate(skus)))
    by_partition = {p: sorted(s for s in skus if cstore.keys.partition(s) == p) for p in range(cstore.keys.partitions)}
    for p, expected in by_partition.items():
        assert sorted({s async for s in scan_skus(cstore.redis, cstore.keys, p)}) == expected
    for p in range(cstore.keys.partitions):
        await cstore.redis.xtrim(cstore.keys.events(p), maxlen=0, approximate=False)
    unsynced = await ensure_groups(cstore.redis, cstore.keys, "webhook")
    assert unsynced == [p for p, expected in by_partition.items() if expected]
    use_simulator_credentials()
    sim = WebhookSim()
    with serve(sim) as url:
        report = await resync(cstore.redis, cstore.keys, config("webhook", url), partitions=unsynced, force=False)
    assert report.ok and report.pushed == len(skus)
    assert sim.quantities == {s: 1 + i for i, s in enumerate(skus)}
