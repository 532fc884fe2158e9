"""Propagation benchmark: `python -m bench.propagation [--seconds N] [--rate R] [--skus N]`.

Commit-to-acceptance lag: from a change's commit (its entry ID's time) to the moment each channel
accepted that version or a newer one, per change, p50/p99/max per channel.

1. "no limits": 3 simulated channels (Shopify, Amazon, Flipkart), each answering after 20 ms, no rate
   limit; `--rate` decrements/s (default 1,000) over `--skus` SKUs (default 10,000) for `--seconds`
   (default 10; the issue's run is 60). Target: p99 under 100 ms.
2. "real limits": the same load against the simulators' realistic faults (Shopify 100 cost points/s,
   Amazon 5 requests/s burst 10, 20 +- 10 ms) and the adapters' default limits: calls per change, the
   longest time any change stayed unaccepted (changes still unaccepted when the run ends count up to
   the end), and the lag of the urgent changes (low stock, sharp drops) that the worker pushes first,
   and of the drops to 0 among them, pushed first of all (these two count accepted changes only): one
   SKU in 20 is seeded at 9 units, so about 5% of the SKUs reach the low-stock mark and then 0 during a
   run (decrements past 0 are rejected and change nothing).

Every part runs in its own process: an embedded Redis, one simulator per channel, one worker per
channel (`python -m consumers worker`), and this process as the load generator. Writes
bench/results/propagation.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib.util import find_spec
from pathlib import Path

import orjson

from bench.common import fmt, log, machine, python_versions, table, today, write_json
from consumers.groups import ensure_groups
from consumers.ranks import NORMAL, ZERO
from stocksync.devtools.testing import SIMULATOR_ENV, config, toml_channel
from stocksync.embedded import EmbeddedRedis
from stocksync.settings import Settings
from stocksync.store import StockStore

CHANNELS = ("shopify", "amazon", "flipkart")
LOW_SEED = 9  # 1 SKU in 20 starts here: its listed quantity falls to the low-stock mark (5), then to 0
ROOT = Path(__file__).resolve().parent.parent


def start_sim(name: str, faults: dict, realistic: bool, server: str, loop: str) -> tuple[subprocess.Popen, str]:
    argv = [sys.executable, "-m", "stocksync.devtools.simulators", name, "--port", "0", "--json", "--server", server,
            "--loop", loop, "--faults", orjson.dumps(faults).decode()]
    if realistic:
        argv.append("--realistic")
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = proc.stdout.readline()
    return proc, orjson.loads(line)[name]["url"]


def set_feeds(url: str, delay_s: float) -> None:
    """The Amazon simulator's feed processing delay (its Feeds API limits stay the real ones)."""
    request = urllib.request.Request(url + "/_sim/feeds", data=orjson.dumps({"delay_s": delay_s}), method="POST")
    with urllib.request.urlopen(request, timeout=30) as r:
        r.read()


def feed_summary(url: str, lags: list, measured: list, end_ms: int, args) -> dict:
    """Amazon's feed lane in a run: feeds processed, the longest time a change of normal rank took to land
    (those never accepted count up to the end), against two feed cycles (a cycle: the createFeed pace of
    60 s, or the processing delay plus a poll if longer)."""
    with urllib.request.urlopen(url + "/_sim/feeds", timeout=30) as r:
        feeds = orjson.loads(r.read())["feeds"]
    cycle_s = max(60.0, args.feed_delay + args.feed_poll)
    normal = sorted(a - c for c, a, rank in lags if rank == NORMAL)
    covered = {c for c, _, _ in lags}
    stale = [end_ms - ms for ms, _ in measured if ms not in covered]
    worst = max(normal[-1:] + stale, default=None)
    return {"feeds": len(feeds), "feeds_done": sum(f["status"] == "DONE" for f in feeds),
            "feed_messages_applied": sum(len(f["applied"]) for f in feeds), "normal_max_ms": normal[-1] if normal else None,
            "cycle_s": cycle_s, "worst_change_ms": worst,
            "within_two_cycles": worst is not None and worst <= 2 * cycle_s * 1000}


def sim_state(url: str) -> dict:
    with urllib.request.urlopen(url + "/_sim/state", timeout=30) as r:
        return orjson.loads(r.read())


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_used(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, float | None]:
    return {k: None if before[k] is None or after.get(k) is None else round(after[k] - before[k], 2) for k in before}


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def load(store: StockStore, rate: int, seconds: float, skus: int, seed: int) -> tuple[int, float, float]:
    """rate decrements per second in ticks of 10 ms, each tick one pipelined round trip."""
    rng = random.Random(seed)
    tick, done, n = 0.01, 0, 0
    start = time.monotonic()
    while (now := time.monotonic()) - start < seconds:
        due = int((now - start) * rate) - done
        if due > 0:
            items = [(f"B{rng.randrange(skus)}", 1, f"b{seed}-{n + i}") for i in range(due)]
            source = CHANNELS[n % 3]
            await store.decrement_many(items, source=source)
            done += due
            n += due
        await asyncio.sleep(max(tick - (time.monotonic() - now), 0))
    return done, start, time.monotonic()


def start_workers(workdir: Path, env: dict, channels: list[str], profile: list[str]) -> dict[str, subprocess.Popen]:
    def argv(ch: str) -> list[str]:
        prof = ["-m", "cProfile", "-o", str(workdir / f"{ch}.prof")] if ch in profile else []
        return [sys.executable, *prof, "-m", "consumers", "--config", str(workdir / "stocksync.toml"),
                "--log-level", "WARNING", "worker", "--channel", ch, "--lag-file", str(workdir / f"{ch}.json")]

    return {ch: subprocess.Popen(argv(ch), cwd=ROOT, env=env, stderr=(workdir / f"{ch}.log").open("wb"))
            for ch in channels}


async def wait_until(condition, seconds: float, interval: float = 0.1) -> bool:
    for _ in range(int(seconds / interval) + 1):
        if await condition():
            return True
        await asyncio.sleep(interval)
    return False


async def drained(store: StockStore) -> bool:
    for p in range(store.keys.partitions):
        for g in await store.redis.xinfo_groups(store.keys.events(p)):
            if g["pending"] or g["lag"]:
                return False
    return True


async def scenario(name: str, redis_url: str, args, realistic: bool) -> dict:
    """One scenario; its simulator processes are stopped however it ends (an interrupted run too)."""
    faults = {} if realistic else {"latency_ms": 20, "jitter_ms": 0, "rate_limit": None}
    sims: dict[str, tuple[subprocess.Popen, str]] = {}
    try:
        for ch in args.channels or list(CHANNELS):
            sims[ch] = start_sim(ch, faults, realistic, args.sim_server, args.loop)
        return await _scenario(name, redis_url, args, realistic, sims)
    finally:
        for proc, _ in sims.values():
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in sims.values():
            proc.wait(timeout=30)


async def _scenario(name: str, redis_url: str, args, realistic: bool, sims: dict) -> dict:
    prefix = f"bench{int(time.time())}{name[:4]}"
    settings = Settings(redis_url=redis_url, prefix=prefix)
    channels = list(sims)
    workdir = Path(tempfile.mkdtemp(prefix="stocksync-bench-"))
    log(f"[{name}] work directory {workdir}")
    lines = [f'redis_url = "{redis_url}"', f'prefix = "{prefix}"', "", "[worker]", "trim_interval_ms = 0", ""]
    for ch, (_, url) in sims.items():
        opts = {}
        if not realistic:
            opts = {"max_in_flight": 64} if ch == "amazon" else {"max_in_flight": 8}
            if ch == "amazon":
                opts["rate_limit"] = 0
        if ch == "amazon" and realistic and args.lane == "feeds":
            opts.update(lane="feeds", feed_poll_s=args.feed_poll)
            set_feeds(url, args.feed_delay)
        lines.append(toml_channel(config(ch, url, **opts)))
    (workdir / "stocksync.toml").write_text("\n".join(lines))
    env = {**os.environ, **SIMULATOR_ENV, "STOCKSYNC_LOOP": args.loop}
    store = await StockStore.connect(settings)
    await store.redis.execute_command("CONFIG", "SET", "save", "")
    log(f"[{name}] seeding {args.skus} SKUs")
    async with store.redis.pipeline(transaction=False) as pipe:
        for i in range(args.skus):  # every 20th SKU nearly sold out: its changes are the urgent ones
            qty = LOW_SEED if i % 20 == 0 else 1_000_000
            pipe.execute_command("FCALL", "stocksync_set", 3, store.keys.sku(f"B{i}"), store.keys.events(0),
                                 store.keys.idem(0, f"seed{i}"), qty, "seed", f"seed{i}")
        await pipe.execute()
    for ch in channels:  # the groups exist before the workers, so the seeding counts as backlog
        await ensure_groups(store.redis, store.keys, ch)
    workers = await asyncio.to_thread(start_workers, workdir, env, channels, args.profile or [])
    try:
        # the seeding warms the workers up (Shopify's item ids are looked up once); not measured
        seeded = await wait_until(lambda: drained(store), 120 if not realistic else 15)
        base_calls = {ch: sim_state(url)["calls"] for ch, (_, url) in sims.items()}
        pids = {**{f"worker:{ch}": w.pid for ch, w in workers.items()},
                **{f"sim:{ch}": proc.pid for ch, (proc, _) in sims.items()}}
        cpu0 = {k: cpu_s(pid) for k, pid in pids.items()}
        load0 = os.getloadavg()
        first_id = (await store.redis.xinfo_stream(store.keys.events(0)))["last-generated-id"]
        log(f"[{name}] seeded (drained: {seeded}); {args.rate}/s for {args.seconds} s")
        changes, t0, t1 = await load(store, args.rate, args.seconds, args.skus, 1)
        load1 = os.getloadavg()
        await wait_until(lambda: drained(store), 30 if not realistic else args.settle)
        end_ms = int(time.time() * 1000)
        cpu = cpu_used(cpu0, {k: cpu_s(pid) for k, pid in pids.items()})
        all_drained = await drained(store)
        calls = {ch: sim_state(url)["calls"] - base_calls[ch] for ch, (_, url) in sims.items()}
        max_rate = {ch: sim_state(url)["max_rate_1s"] for ch, (_, url) in sims.items()}
    finally:
        for w in workers.values():
            w.terminate()
        for w in workers.values():
            w.wait(timeout=60)
    first_ms = int(first_id.split("-")[0])
    entries = await store.redis.xrange(store.keys.events(0), min=f"({first_id}")
    measured = [(int(i.split("-")[0]), f) for i, f in entries if f["type"] == "stock.changed"]
    await store.redis.execute_command("FLUSHDB")
    await store.close()
    # CPU seconds each worker and simulator used from the start of the load to the end of the drain
    # (the same window as the calls), and the load average at the start and the end of the load
    out = {"changes": changes, "seconds": round(t1 - t0, 2), "drained": all_drained, "cpu_s": cpu,
           "load_avg": [round(load0[0], 2), round(load1[0], 2)], "channels": {}}
    for ch in channels:
        lags = orjson.loads((workdir / f"{ch}.json").read_bytes())[ch]
        lags = [(c, a, u) for c, a, u in lags if c > first_ms]
        accepted = len(lags)
        all_lag = sorted(a - c for c, a, _ in lags)
        urgent = sorted(a - c for c, a, rank in lags if rank != NORMAL)
        zero = sorted(a - c for c, a, rank in lags if rank == ZERO)
        unaccepted = max(len(measured) - accepted, 0)
        oldest_unaccepted = None
        if unaccepted:  # the changes no acceptance covered (still stale at the end): their age at the end
            covered = {c for c, _, _ in lags}
            stale_since = [ms for ms, _ in measured if ms not in covered]
            oldest_unaccepted = end_ms - min(stale_since) if stale_since else None
        out["channels"][ch] = {
            "accepted_changes": accepted, "unaccepted_changes": unaccepted,
            "p50_ms": percentile(all_lag, 0.50), "p99_ms": percentile(all_lag, 0.99),
            "max_ms": all_lag[-1] if all_lag else None,
            "urgent_changes": len(urgent), "urgent_p99_ms": percentile(urgent, 0.99),
            "urgent_max_ms": urgent[-1] if urgent else None,
            "zero_changes": len(zero), "zero_p99_ms": percentile(zero, 0.99),
            "longest_stale_ms": max(filter(None, [all_lag[-1] if all_lag else None, oldest_unaccepted]), default=None),
            "calls": calls[ch], "calls_per_change": round(calls[ch] / changes, 3) if changes else None,
            "sim_max_accepted_per_s": max_rate[ch],
            "worker_cpu_us_per_call": round(cpu[f"worker:{ch}"] / calls[ch] * 1e6) if cpu[f"worker:{ch}"] and calls[ch] else None,
            "sim_cpu_us_per_call": round(cpu[f"sim:{ch}"] / calls[ch] * 1e6) if cpu[f"sim:{ch}"] and calls[ch] else None,
        }
        if ch == "amazon" and realistic and args.lane == "feeds":
            out["channels"][ch]["lane"] = feed_summary(sims[ch][1], lags, measured, end_ms, args)
    return out


def render(result: dict, markdown: bool = False) -> str:
    rows = []
    for name, s in result["scenarios"].items():
        for ch, c in s["channels"].items():
            rows.append([name, ch, s["changes"], c["accepted_changes"], c["p50_ms"], c["p99_ms"], c["max_ms"],
                         c["urgent_changes"], c["urgent_p99_ms"], c.get("zero_changes"), c.get("zero_p99_ms"),
                         c["longest_stale_ms"], c["calls"],
                         fmt(c["calls_per_change"], 3), c.get("worker_cpu_us_per_call"), c.get("sim_cpu_us_per_call")])
    return table(["scenario", "channel", "changes", "accepted", "p50 ms", "p99 ms", "max ms",
                  "urgent changes (drops to 0 included)", "urgent p99 ms", "drops to 0", "drop to 0 p99 ms",
                  "longest stale ms", "calls", "calls/change", "worker CPU us/call", "sim CPU us/call"], rows, markdown)


def markdown(result: dict) -> str:
    """The generated part of BENCHMARKS.md's section (rewritten by bench/report.py after `make bench`)."""
    m, v = result["machine"], result["versions"]
    a = result.get("args") or next(iter(result.get("runs", {}).values()), {}).get("args", {})
    head = (f"Run: {result['date']}; {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, load "
            f"{m['load_avg_at_start']}; Python {v['python']}, redis-py {v['redis']} + hiredis {v['hiredis']}, "
            f"aiohttp {v['aiohttp']}; {a.get('rate', '?')} changes/s for {a.get('seconds', '?')} s over "
            f"{a.get('skus', '?')} SKUs; simulators on {a.get('sim_server', '?')}; workers' and simulators' event loop "
            f"{a.get('loop', 'asyncio')}" + (f" {v['uvloop']}" if a.get("loop") == "uvloop" and v.get("uvloop") else "") + ".")
    loads = [f"{name} {s['load_avg'][0]} -> {s['load_avg'][1]}" for name, s in result["scenarios"].items()
             if s.get("load_avg")]
    if loads:
        head += f" 1-minute load average from the start to the end of each load: {', '.join(loads)}."
    if result.get("note"):
        head += f" Note: {result['note']}."
    return head + "\n\n" + render(result, markdown=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.propagation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--skus", type=int, default=10_000)
    parser.add_argument("--settle", type=float, default=20.0, help="seconds to let the rate-limited run catch up")
    parser.add_argument("--only", choices=["nolimits", "limits"])
    parser.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto",
                        help="event loop of the workers and the simulators (auto: uvloop when installed)")
    parser.add_argument("--channels", nargs="+", choices=CHANNELS, help="run only these channels (default: all)")
    parser.add_argument("--profile", nargs="+", choices=CHANNELS, default=[],
                        help="run these channels' workers under cProfile (<workdir>/<channel>.prof; slows them down)")
    parser.add_argument("--out", default="propagation", help="results file name (bench/results/NAME.json)")
    parser.add_argument("--lane", choices=["patch", "feeds"], default="patch",
                        help="Amazon in the limits scenario: every change patched, or urgent ones patched and the "
                             "rest in JSON_LISTINGS_FEED feeds (docs/channels/amazon.md)")
    parser.add_argument("--feed-delay", type=float, default=30.0, help="--lane feeds: the simulator's processing delay (s)")
    parser.add_argument("--feed-poll", type=float, default=5.0, help="--lane feeds: the lane's getFeed interval (s)")
    parser.add_argument("--sim-server", choices=["aiohttp", "uvicorn"], default="aiohttp",
                        help="the simulators' HTTP server (same apps and shapes; see stocksync/devtools/simulators/fastserve.py)")
    args = parser.parse_args()
    if args.loop == "auto":  # record what auto means here
        args.loop = "uvloop" if find_spec("uvloop") else "asyncio"
    result = {"date": today(), "machine": machine(), "versions": python_versions("redis", "aiohttp", "hiredis", "uvloop"),
              "args": vars(args), "scenarios": {}}
    with EmbeddedRedis() as server:
        for name, realistic in (("nolimits", False), ("limits", True)):
            if args.only and args.only != name:
                continue
            result["scenarios"][name] = asyncio.run(scenario(name, server.url, args, realistic))
    print(render(result))
    for name, s in result["scenarios"].items():
        log(f"[{name}] CPU s (load start to drain): {s['cpu_s']}; load average at load start/end: {s['load_avg']}")
    path = write_json(args.out, result)
    log(f"wrote {path}")
    for ch in args.profile:
        log(f"profile of {ch}: {ch}.prof in the bench's work directory (see the [name] lines above)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
