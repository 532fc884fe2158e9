"""Worker partition leases with real worker processes on a Redis Cluster (consumers/partitions.py): two
workers of every channel share the 12 partitions, each reading only its own; one is SIGKILLed and the
other takes its partitions over once their leases expire; every channel converges. And the option that
restricts a process's partitions, with its errors."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

import pytest

from consumers.options import WorkerOptions
from consumers.partitions import allowed
from stocksync.devtools.testing import config, toml_channel, wait_for
from stocksync.settings import Settings, SettingsError
from stocksync.store import StockStore

from .test_worker_processes import CHANNELS, ROOT, Worker, converged, sims  # noqa: F401 - sims: a fixture

pytestmark = pytest.mark.cluster
PARTITIONS = 12
LEASE_MS = 900


@pytest.fixture
async def cstore(cluster):
    settings = Settings(redis_url=cluster.url, cluster=True, prefix=f"w{uuid.uuid4().hex[:10]}", partitions=PARTITIONS)
    store = await StockStore.connect(settings)
    yield store
    await store.close()


@pytest.fixture
def cfg(tmp_path, cstore, sims):  # noqa: F811
    for sim, _ in sims.values():
        sim.reset()
    text = [f'redis_url = "{cstore.settings.redis_url}"', "cluster = true", f'prefix = "{cstore.keys.prefix}"',
            f"partitions = {PARTITIONS}", "", "[worker]", "block_ms = 100", "reclaim_idle_ms = 600",
            "lease_ms = 1500", "heartbeat_ms = 100", "backoff_base_ms = 20", "backoff_cap_ms = 200",
            "trim_interval_ms = 0", f"partition_lease_ms = {LEASE_MS}", ""]
    for name, (_, url) in sims.items():
        extra = {"rate_limit": 1000, "burst": 100} if name == "amazon" else {}
        text.append(toml_channel(config(name, url, **extra)))
    path = tmp_path / "stocksync.toml"
    path.write_text("\n".join(text))
    return path


async def holders(store: StockStore, channel: str) -> dict[int, str | None]:
    return {p: await store.redis.get(f"{store.keys.tag(p)}:reader:{channel}") for p in range(PARTITIONS)}


async def shared_by(store: StockStore, names: set[str]) -> bool:
    """Every channel's partitions all leased, by exactly `names`, balanced (6 each for two)."""
    for channel in CHANNELS:
        held = list((await holders(store, channel)).values())
        if None in held or set(held) != names or max(held.count(n) for n in names) > -(-PARTITIONS // len(names)):
            return False
    return True


async def readers_of(store: StockStore, channel: str, p: int, since_ms: float) -> set[str]:
    """The consumers that read partition p's stream for the channel in the last since_ms (XINFO CONSUMERS:
    idle is the time since a consumer's last read or claim)."""
    return {c["name"] for c in await store.redis.xinfo_consumers(store.keys.events(p), channel)
            if c["idle"] < since_ms}


async def test_two_workers_share_the_partitions_and_one_takes_over_the_others(cstore, sims, cfg):  # noqa: F811
    skus = [f"P-{i}" for i in range(36)]
    assert len({cstore.keys.partition(s) for s in skus}) == PARTITIONS
    a, b = Worker(cfg, "worker-a"), Worker(cfg, "worker-b")
    try:
        await wait_for(lambda: shared_by(cstore, {"worker-a", "worker-b"}), 20, "the partitions shared by a and b")
        # (a and b may each have read every partition at first, before they balanced: not since)
        shared_at = time.monotonic()
        for i, sku in enumerate(skus):
            await cstore.set(sku, 20 + i, ref=f"s-{sku}")
        await wait_for(lambda: converged(cstore, sims, skus), 20, "every channel listing the first quantities")
        for channel in CHANNELS:  # each worker read only the partitions it leases
            for p, holder in (await holders(cstore, channel)).items():
                since_ms = (time.monotonic() - shared_at) * 1000
                assert await readers_of(cstore, channel, p, since_ms) == {holder}, (channel, p, holder)
        a.kill()
        for i, sku in enumerate(skus):
            await cstore.decrement(sku, 1 + i % 3, ref=f"d-{sku}", source=CHANNELS[i % 3])
        await wait_for(lambda: shared_by(cstore, {"worker-b"}), 10, "b holding every partition of every channel")
        await wait_for(lambda: converged(cstore, sims, skus), 20, "every channel after the takeover")
        for sku in skus[:3]:
            assert (await cstore.get(sku)).available < 20 + skus.index(sku)
    finally:
        a.stop()
        assert b.stop() == 0, b.output()[-2000:]
    # b stopped cleanly: it gave its leases back at once
    for channel in CHANNELS:
        assert set((await holders(cstore, channel)).values()) == {None}, channel


async def test_a_worker_given_partitions_reads_only_those(cstore, sims, cfg):  # noqa: F811
    w = Worker(cfg, "worker-p", "--partitions", "0,2,5-6")
    try:
        await wait_for(lambda: _held(cstore, "worker-p", {0, 2, 5, 6}), 15, "worker-p holding 0, 2, 5 and 6")
    finally:
        assert w.stop() == 0, w.output()[-2000:]


async def _held(store: StockStore, name: str, expected: set[int]) -> bool:
    for channel in CHANNELS:
        if {p for p, h in (await holders(store, channel)).items() if h == name} != expected:
            return False
    return True


async def test_partitions_out_of_range_or_malformed_are_refused(cfg):
    with pytest.raises(SettingsError, match="12 beyond this deployment's 12 partitions"):
        allowed("3,12", PARTITIONS)
    assert allowed("", 4) == [0, 1, 2, 3] and allowed("1-2,0", 4) == [0, 1, 2]
    for bad in ("x", "3-1", "-1"):
        with pytest.raises(SettingsError):
            WorkerOptions(partitions=bad)
    code, err = await worker_exits(cfg, "0,40")
    assert code == 2 and "40 beyond this deployment's 12 partitions" in err, err[-500:]
    code, err = await worker_exits(cfg, "a")
    assert code == 2 and "'a' is not a partition number" in err, err[-500:]


async def worker_exits(cfg, partitions: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "consumers", "--config", str(cfg), "worker",
                                                "--partitions", partitions, cwd=ROOT, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, err.decode()
