"""Workers as real processes (`python -m consumers worker`): sharing a channel, and a SIGKILL mid-batch."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from consumers.status import channel_status
from stocksync.devtools.simulators import SIMULATORS, serve
from stocksync.devtools.testing import (
    config,
    in_version_order,
    toml_channel,
    use_simulator_credentials,
    wait_for,
)

CHANNELS = ("shopify", "amazon", "flipkart")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sims():
    use_simulator_credentials()
    sims = {name: SIMULATORS[name]() for name in CHANNELS}
    with serve(sims["shopify"]) as s, serve(sims["amazon"]) as a, serve(sims["flipkart"]) as f:
        yield {"shopify": (sims["shopify"], s), "amazon": (sims["amazon"], a), "flipkart": (sims["flipkart"], f)}


@pytest.fixture
def cfg_file(tmp_path, settings, sims):
    for sim, _ in sims.values():
        sim.reset()
    text = [f'redis_url = "{settings.redis_url}"', f'prefix = "{settings.prefix}"', "",
            "[worker]", "block_ms = 100", "reclaim_idle_ms = 600", "lease_ms = 1500", "heartbeat_ms = 100",
            "backoff_base_ms = 20", "backoff_cap_ms = 200", "trim_interval_ms = 0", ""]
    for name, (_, url) in sims.items():
        extra = {"rate_limit": 1000, "burst": 100} if name == "amazon" else {}
        text.append(toml_channel(config(name, url, **extra)))
    path = tmp_path / "stocksync.toml"
    path.write_text("\n".join(text))
    return path


class Worker:
    def __init__(self, cfg_file: Path, consumer: str, *extra: str) -> None:
        self.consumer = consumer
        self.log = cfg_file.parent / f"{consumer}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "consumers", "--config", str(cfg_file), "worker", "--consumer", consumer, *extra],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log.open("wb"), env={**os.environ},
        )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


async def converged(store, sims, skus) -> bool:
    for sim, _ in sims.values():
        listed = sim.quantities
        for sku in skus:
            if listed.get(sku) != (await store.get(sku)).available:
                return False
    return True


async def pending_of(store, consumer) -> dict[str, int]:
    out = {}
    for name in CHANNELS:
        consumers = await store.redis.xinfo_consumers(store.keys.events(0), name)
        out[name] = next((c["pending"] for c in consumers if c["name"] == consumer), 0)
    return out


async def test_a_worker_killed_mid_batch_is_reclaimed_by_another_and_every_channel_converges(store, sims, cfg_file):
    skus = [f"K-{i}" for i in range(12)]
    for sku in skus:
        await store.set(sku, 50)
    for sim, _ in sims.values():
        sim.set_faults(latency_ms=400)  # every push is in flight long enough to be killed in the middle
    a, b = Worker(cfg_file, "worker-a"), None
    try:
        await wait_for(lambda: converged(store, sims, skus), 20, "worker a's first pushes")
        for i, sku in enumerate(skus):
            await store.decrement(sku, 1 + i % 4, ref=f"kill-{i}", source=CHANNELS[i % 3])
        await wait_for(lambda: _all_positive(pending_of(store, "worker-a")), 10, "worker a holding entries of every channel")
        a.kill()
        held = await pending_of(store, "worker-a")
        for sim, _ in sims.values():
            sim.set_faults(latency_ms=0)
        b = Worker(cfg_file, "worker-b")
        await wait_for(lambda: converged(store, sims, skus), 20, "every channel after the reclaim")
        await wait_for(lambda: _all_zero(pending_of(store, "worker-a")), 10, "worker a's entries settled")
        for name in CHANNELS:
            info = {g["name"]: g for g in await store.redis.xinfo_groups(store.keys.events(0))}[name]
            await wait_for(lambda name=name: _group_done(store, name), 10, f"{name} fully acknowledged")
            assert await store.redis.xlen(store.keys.dlq(0, name)) == 0
            sim = sims[name][0]
            for sku in skus:
                seq = [int(f["available"]) for _, f in await store.redis.xrange(store.keys.events(0))
                       if f["sku"] == sku and f["type"] == "stock.changed"]
                assert in_version_order(sim.history(sku), seq), (name, sku, sim.history(sku), seq)
        assert sum(held.values()) > 0 and info
        # `status` sees b alive and a gone (its heartbeat stopped)
        async def only_b():
            status = await channel_status(store.redis, store.keys, CHANNELS)
            return all([w["consumer"] for w in s["workers"] if w["alive"]] == ["worker-b"] for s in status.values())

        await wait_for(only_b, 10, "worker a's heartbeat to go stale")
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "consumers", "--config", str(cfg_file), "status", "--json", cwd=ROOT,
            stdout=asyncio.subprocess.PIPE)
        out, _ = await cli.communicate()
        assert cli.returncode == 0
        status = orjson.loads(out)
        for name in CHANNELS:
            assert status[name]["pending"] == 0 and status[name]["dead_letters"] == 0
            assert status[name]["circuit"] == "closed" and status[name]["last_push_ms"]
            assert [w["consumer"] for w in status[name]["workers"] if w["alive"]] == ["worker-b"]
    finally:
        a.stop()
        if b is not None:
            assert b.stop() == 0, b.output()


async def test_two_processes_of_each_channel_share_the_work_without_going_backwards(store, sims, cfg_file):
    skus = [f"S-{i}" for i in range(8)]
    for sku in skus:
        await store.set(sku, 200)
    for sim, _ in sims.values():
        sim.set_faults(latency_ms=5, jitter_ms=15)  # replies overtake each other
    workers = [Worker(cfg_file, "w1"), Worker(cfg_file, "w2")]
    try:
        async def both_reading():
            status = await channel_status(store.redis, store.keys, CHANNELS)
            return all({w["consumer"] for w in s["workers"] if w["alive"]} == {"w1", "w2"} for s in status.values())

        await wait_for(both_reading, 15, "both workers reading every channel")
        async def sell(channel, n, seed):
            for i in range(n):
                await store.decrement(skus[(i * seed) % len(skus)], 1, ref=f"{channel}-{i}", source=channel)
                if i % 10 == 0:
                    await asyncio.sleep(0.005)

        await asyncio.gather(*(sell(c, 80, k + 3) for k, c in enumerate(CHANNELS)))
        await wait_for(lambda: converged(store, sims, skus), 20, "every channel")
        for name in CHANNELS:
            await wait_for(lambda name=name: _group_done(store, name), 10, f"{name} fully acknowledged")
            sim = sims[name][0]
            for sku in skus:
                seq = [int(f["available"]) for _, f in await store.redis.xrange(store.keys.events(0))
                       if f["sku"] == sku and f["type"] == "stock.changed"]
                assert in_version_order(sim.history(sku), seq), (name, sku, sim.history(sku), seq)
        # both took a share: each pushed or settled something (from their heartbeats)
        status = await channel_status(store.redis, store.keys, CHANNELS)
        work = {w["consumer"]: 0 for w in status["shopify"]["workers"]}
        for s in status.values():
            for w in s["workers"]:
                work[w["consumer"]] += w.get("accepted", 0) + w.get("skipped", 0)
        assert work["w1"] > 0 and work["w2"] > 0, work
    finally:
        for w in workers:
            assert w.stop() == 0, w.output()


async def _all_positive(coro) -> bool:
    return all(v > 0 for v in (await coro).values())


async def _all_zero(coro) -> bool:
    return all(v == 0 for v in (await coro).values())


async def _group_done(store, name) -> bool:
    info = {g["name"]: g for g in await store.redis.xinfo_groups(store.keys.events(0))}[name]
    return info["pending"] == 0 and info["lag"] == 0


async def test_a_recheck_owed_by_a_killed_worker_is_pushed_by_the_next(store, sims, tmp_path, settings):
    """A push that got no answer may land after a newer one; the worker owes the channel the current
    quantity again. Killed before paying it, another worker pays it (the debt is kept in Redis)."""
    sim, url = sims["amazon"]
    sim.reset()
    path = tmp_path / "amazon.toml"
    path.write_text("\n".join([
        f'redis_url = "{settings.redis_url}"', f'prefix = "{settings.prefix}"', "",
        "[worker]", "block_ms = 100", "reclaim_idle_ms = 600", "lease_ms = 1500", "heartbeat_ms = 100",
        "backoff_base_ms = 20", "backoff_cap_ms = 100", "trim_interval_ms = 0", "recheck_ms = 4000", "",
        toml_channel(config("amazon", url, timeout_s=0.3, rate_limit=1000, burst=100))]))
    await store.set("L", 10)
    a, b = Worker(path, "owes"), None
    try:
        await wait_for(lambda: sim.quantities.get("L") == 10, 10, "the first push")
        sim.set_faults(latency_ms=1500)
        arrived = sim.arrivals
        await store.decrement("L", 1, ref="o-1", source="amazon")  # v2: 9, its push gets no answer
        await wait_for(lambda: sim.arrivals > arrived, 10, "the push of 9 to reach the API")
        sim.set_faults(latency_ms=0)
        await store.decrement("L", 1, ref="o-2", source="amazon")  # v3: 8, accepted
        await wait_for(lambda: 8 in sim.history("L"), 10, "the push of 8")
        owed = store.keys.recheck(0, "amazon")
        assert await store.redis.zscore(owed, "L"), "the recheck is recorded in Redis"
        a.kill()  # before its recheck is due
        await wait_for(lambda: sim.history("L")[-1:] == [9], 10, "the abandoned 9 landing after the 8")
        b = Worker(path, "pays")
        await wait_for(lambda: sim.history("L")[-1:] == [8], 15, "the owed recheck pushed by the next worker")
        await wait_for(lambda: _not_owed(store, owed), 5, "the debt settled")
    finally:
        a.stop()
        if b is not None:
            assert b.stop() == 0, b.output()


async def _not_owed(store, key) -> bool:
    return await store.redis.zscore(key, "L") is None
