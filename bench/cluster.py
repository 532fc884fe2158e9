"""Redis Cluster: calls/s and server CPU per call with 1, 2 and 3 primaries, and the failover window.

    python -m bench.cluster [--requests N] [--rounds R] [--failovers F]

1. For P = 1, 2, 3 primaries (an embedded cluster each, no replicas, 12 partitions): one redis-benchmark
   per primary at once (48 connections in all, -P 16 and -P 1), each sending FCALL stocksync_decrement to a
   partition that primary serves, over 10,000 SKUs prefilled there, each call its own reference. Measured:
   calls/s (all primaries together), server CPU per call (each server's threads' CPU time from
   /proc/<pid>/task/*/schedstat over the run, summed, over the calls) and INFO commandstats usec_per_call of
   FCALL (wall clock, so it grows when a server waits for a core). On two shared cores the servers and the
   load generators take turns on the same cores: calls/s cannot grow with primaries here; the CPU per call
   says what each primary costs, and so what dedicated cores would carry.
2. The failover window: 3 primaries + 3 replicas (cluster-node-timeout 1 s and 3 s), a client (redis-py,
   the product's connection) decrementing a SKU of one primary in a loop; SIGKILL that primary; the time
   from the kill to the first acknowledged write sent after it.
Writes bench/results/cluster.json.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import subprocess
import time

import redis
import redis.asyncio
from redis._parsers import AsyncCommandsParser

from stocksync import functions
from stocksync.embedded import EmbeddedCluster, find_server, server_version
from stocksync.keys import Keys
from stocksync.settings import Settings
from stocksync.store import StockStore

from .common import log, machine, median, python_versions, table, today, tool_version, write_json
from .decrement import RAND_REF, server_cpu_ns

PREFIX, PARTITIONS, N_SKUS, CONNECTIONS = "bc", 12, 10_000, 48
KEYS = Keys(PREFIX, PARTITIONS)


def partition_on(cluster: redis.RedisCluster, port: int) -> int:
    """A partition whose slot the primary on `port` serves."""
    return next(p for p in range(PARTITIONS) if cluster.get_node_from_key(KEYS.events(p)).port == port)


def prefill(client: redis.Redis, p: int) -> None:
    """N_SKUS SKUs named as redis-benchmark's __rand_int__ makes them, in partition p's tag."""
    pipe = client.pipeline(transaction=False)
    for i in range(N_SKUS):
        sku = f"{i:012d}"
        pipe.execute_command("FCALL", "stocksync_set", 3, f"{KEYS.tag(p)}:sku:{sku}", KEYS.events(p),
                             KEYS.idem(p, f"init-{sku}"), 1_000_000_000, "bench", f"init-{sku}")
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()


def load(port: int, p: int, connections: int, requests: int, pipeline: int) -> subprocess.Popen:
    argv = ["redis-benchmark", "-p", str(port), "-c", str(connections), "-n", str(requests), "-P", str(pipeline),
            "-r", str(N_SKUS), "--csv", "FCALL", "stocksync_decrement", "3", f"{KEYS.tag(p)}:sku:__rand_int__",
            KEYS.events(p), KEYS.idem(p, RAND_REF), "1", "bench", RAND_REF]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_once(cluster: EmbeddedCluster, targets: list[tuple[int, int]], requests: int, pipeline: int) -> dict:
    clients = {port: redis.Redis(port=port, decode_responses=True) for port, _ in targets}
    pids = {n.port: n.proc.pid for n in cluster.nodes}
    for c in clients.values():
        c.config_resetstat()
    cpu0 = {port: server_cpu_ns(pids[port]) for port, _ in targets}
    started = time.perf_counter()
    procs = [load(port, p, CONNECTIONS // len(targets), requests // len(targets), pipeline) for port, p in targets]
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        if proc.returncode:
            raise RuntimeError(f"redis-benchmark failed: {err[-500:]}")
        list(csv.reader(io.StringIO(out)))  # (read to the end; the aggregate is computed below)
    seconds = time.perf_counter() - started
    calls = cpu_ns = usec = 0
    for port, c in clients.items():
        stat = c.info("commandstats")["cmdstat_fcall"]
        calls += stat["calls"]
        usec += stat["usec"]
        cpu_ns += server_cpu_ns(pids[port]) - cpu0[port]
        c.close()
    return {"calls": calls, "seconds": seconds, "calls_per_s": calls / seconds, "cpu_us_per_call": cpu_ns / 1000 / calls,
            "usec_per_call": usec / calls}


def scaling(primaries: int, requests: int, rounds: int) -> dict:
    with EmbeddedCluster(primaries) as cluster:
        asyncio.run(_load_library(cluster.url))
        with redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port, decode_responses=True) as rc:
            targets = [(n.port, partition_on(rc, n.port)) for n in cluster.nodes]
        for port, p in targets:
            with redis.Redis(port=port) as c:
                prefill(c, p)
        out = {}
        for pipeline in (16, 1):
            n = requests if pipeline == 16 else requests // 4
            runs = [run_once(cluster, targets, n, pipeline) for _ in range(rounds)]
            out[f"P{pipeline}"] = {k: median(r[k] for r in runs) for k in runs[0]} | {"runs": runs}
            log(f"{primaries} primaries -P {pipeline}: {out[f'P{pipeline}']['calls_per_s']:,.0f} calls/s, "
                f"{out[f'P{pipeline}']['cpu_us_per_call']:.2f} us CPU/call")
        return out


async def _load_library(url: str) -> None:
    client = redis.asyncio.RedisCluster.from_url(url)
    try:
        await client.initialize()  # (the primaries are known only once initialized)
        await functions.ensure_loaded(client, 172800)
    finally:
        await client.aclose()


async def failover_window(node_timeout_ms: int) -> dict:
    """Kill the primary of a SKU under a loop of decrements: seconds from the kill to the first write sent
    after it and acknowledged, and how many calls failed meanwhile."""
    with EmbeddedCluster(3, replicas=1, node_timeout_ms=node_timeout_ms) as cluster:
        settings = Settings(redis_url=cluster.url, cluster=True, prefix="bf", partitions=PARTITIONS)
        store = await StockStore.connect(settings)
        try:
            await store.set("W-1", 1_000_000, ref="init")
            for i in range(200):  # (warm: every connection the loop needs is open)
                await store.decrement("W-1", 1, ref=f"warm-{i}", source="bench")
            victim = cluster.node_of(store.keys.sku("W-1"))
            killed = time.monotonic()
            victim.kill()
            failed, i = 0, 0
            while time.monotonic() - killed < 60:
                i += 1
                try:
                    await asyncio.wait_for(store.decrement("W-1", 1, ref=f"after-{i}", source="bench"), 1)
                    return {"node_timeout_ms": node_timeout_ms, "window_s": time.monotonic() - killed,
                            "failed_calls": failed}
                except (redis.RedisError, redis.exceptions.RedisClusterException, OSError, TimeoutError):
                    failed += 1
                    await asyncio.sleep(0.01)  # (a client's retry pace: one call every ~10 ms)
            return {"node_timeout_ms": node_timeout_ms, "window_s": None, "failed_calls": failed}
        finally:
            await store.close()


async def python_client(routing: bool, calls: int = 20_000, tasks: int = 64) -> dict:
    """StockStore.decrement from one Python process (64 tasks) on 3 primaries: with stocksync.routing's key
    reading (the product's connection) and with redis-py's own (a COMMAND GETKEYS to one node before each
    FCALL). Answers calls/s and the GETKEYS calls the servers saw per FCALL."""
    with EmbeddedCluster(3) as cluster:
        settings = Settings(redis_url=cluster.url, cluster=True, prefix="bp", partitions=PARTITIONS)
        store = await StockStore.connect(settings)
        try:
            if not routing:
                store.redis.commands_parser = AsyncCommandsParser()
                await store.redis.commands_parser.initialize(store.redis.get_default_node())
            skus = [f"S-{i}" for i in range(120)]
            for sku in skus:
                await store.set(sku, 10**9, ref=f"init-{sku}")
            for n in cluster.nodes:
                with redis.Redis(port=n.port) as c:
                    c.config_resetstat()
            per = calls // tasks

            async def worker(k: int) -> None:
                for i in range(per):
                    await store.decrement(skus[(k * per + i) % len(skus)], 1, ref=f"{k}-{i}", source="bench")

            started = time.perf_counter()
            await asyncio.gather(*(worker(k) for k in range(tasks)))
            seconds = time.perf_counter() - started
            getkeys = 0
            for n in cluster.nodes:
                with redis.Redis(port=n.port, decode_responses=True) as c:
                    getkeys += c.info("commandstats").get("cmdstat_command|getkeys", {}).get("calls", 0)
            return {"routing": "stocksync" if routing else "redis-py", "calls_per_s": per * tasks / seconds,
                    "getkeys_per_fcall": getkeys / (per * tasks)}
        finally:
            await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400_000, help="calls per run at -P 16 (a quarter at -P 1)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per configuration (the median is reported)")
    parser.add_argument("--failovers", type=int, default=3, help="failovers per cluster-node-timeout")
    args = parser.parse_args()
    binary = find_server()
    result = {"date": today(), "machine": machine(), "server": f"{os.path.basename(binary)} {server_version(binary)}",
              "versions": python_versions("redis", "hiredis") | {"redis-benchmark": tool_version("redis-benchmark", "--version")},
              "setup": {"partitions": PARTITIONS, "skus_per_partition": N_SKUS, "connections": CONNECTIONS},
              "scaling": {}, "failover": []}
    for primaries in (1, 2, 3):
        result["scaling"][primaries] = scaling(primaries, args.requests, args.rounds)
    result["python_client"] = [asyncio.run(python_client(routing)) for routing in (True, False, True, False)]
    log("python client", result["python_client"])
    for timeout_ms in (1000, 3000):
        for _ in range(args.failovers):
            result["failover"].append(asyncio.run(failover_window(timeout_ms)))
            log("failover", result["failover"][-1])
    path = write_json("cluster", result)
    print(report(result))
    print(report(result, markdown=True))
    log("wrote", path)


def report(result: dict, markdown: bool = False) -> str:
    rows = []
    for primaries, by in result["scaling"].items():
        for pipeline, r in by.items():
            rows.append([str(primaries), f"-P {pipeline[1:]}", r["calls_per_s"], f"{r['cpu_us_per_call']:.2f}",
                         f"{r['usec_per_call']:.2f}", round(1e6 / r["cpu_us_per_call"])])
    out = ["FCALL stocksync_decrement, one redis-benchmark per primary, 48 connections in all\n",
           table(["primaries", "pipeline", "calls/s", "server CPU us/call", "commandstats us/call",
                  "calls/s per core (1e6 / CPU us)"], rows, markdown)]
    frows = []
    for timeout_ms in sorted({f["node_timeout_ms"] for f in result["failover"]}):
        runs = [f for f in result["failover"] if f["node_timeout_ms"] == timeout_ms]
        windows = [f["window_s"] for f in runs if f["window_s"] is not None]
        frows.append([f"{timeout_ms} ms", len(runs)] + [f"{f(windows):.2f}" if windows else "-" for f in (median, min, max)]
                     + [str(median(r["failed_calls"] for r in runs))])
    prow = []
    for name in ("stocksync", "redis-py"):
        runs = [r for r in result.get("python_client", []) if r["routing"] == name]
        if runs:
            prow.append([name, median(r["calls_per_s"] for r in runs), f"{median(r['getkeys_per_fcall'] for r in runs):.2f}"])
    out += ["\nOne Python process, 64 tasks, StockStore.decrement on 3 primaries: who finds an FCALL's keys\n",
            table(["keys read by", "calls/s", "COMMAND GETKEYS per FCALL"], prow, markdown)]
    out += ["\nFailover: SIGKILL of a primary -> first acknowledged write sent after it (s)\n",
            table(["cluster-node-timeout", "runs", "median", "min", "max", "failed calls (median)"], frows, markdown)]
    return "\n".join(out)


if __name__ == "__main__":
    main()
