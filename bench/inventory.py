"""Inventory benchmark (issue 15): `python -m bench.inventory [--quick] [--rounds N]`.

What a bundle take and a reservation cost against a plain decrement, on a private server:

1. redis-benchmark -c 50 (-P 1 and -P 16), every call with a fresh reference, on one hot SKU: FCALL
   stocksync_decrement of a plain SKU with library 0.5.0 (git, LIBRARY_0_5) and 0.6; of a SKU that is a
   component of two bundles (three events: the SKU's and each bundle's); of a 2-pack (one component, the
   two bundles re-emitted); of a gift set (two components); stocksync_reserve of one line (a hold that
   stays: its SKU's hold set grows through the run, as under a checkout's load). Calls/s, commandstats
   usec_per_call, and the server's CPU per call (its threads' schedstat: unlike commandstats it does not
   count time the core spent elsewhere).
2. One connection, pipelines of 500 calls: server CPU per call of a plain decrement, stocksync_reserve,
   stocksync_commit and stocksync_release of reservations made for it, stocksync_ship and stocksync_count.

Every measured thing runs once per round, rounds interleaved (rotated order); the tables give medians.
Writes bench/results/inventory.json (or --out NAME).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import subprocess
import time

import redis

from stocksync.embedded import EmbeddedRedis
from stocksync.functions import library_source, library_version
from stocksync.keys import Keys

from .common import fmt, log, machine, median, rotated, table, today, tool_version, write_json
from .decrement import children_cpu_s, server_cpu_ns
from .memory import ROOT

KEYS = Keys("b", 1)
STOCK = 2_000_000_000
LIBRARY_0_5 = os.environ.get("STOCKSYNC_LIBRARY_0_5_REV", "2ee7a36")
RAND = "__rand_int____rand_int____rand_int__"
TTL_MS = 600_000

# name -> (library, function, sku or reservation key, whether the SKU is in the kitchen's bundles)
CASES = {
    "decrement 0.5.0": ("0.5", "stocksync_decrement", "HOT"),
    "decrement": ("new", "stocksync_decrement", "HOT"),
    "decrement, in 2 bundles": ("new", "stocksync_decrement", "MUG"),
    "2-pack take": ("new", "stocksync_decrement", "MUG-2PACK"),
    "gift set take (2 components)": ("new", "stocksync_decrement", "GIFT"),
    "reserve (1 line)": ("new", "stocksync_reserve", "HOT"),
}


def old_source() -> str | None:
    if not shutil.which("git"):
        return None
    run = subprocess.run(["git", "-C", str(ROOT), "show", f"{LIBRARY_0_5}:lua/stocksync.lua"],
                         capture_output=True, text=True)
    return run.stdout if run.returncode == 0 and "local VERSION = '0.5.0'" in run.stdout else None


class Server:
    def __init__(self) -> None:
        self.srv = EmbeddedRedis()
        self.sources = {"new": library_source(172800), "0.5": old_source()}
        self.loaded = None

    def __enter__(self) -> Server:
        self.srv.start()
        self.r = redis.Redis(port=self.srv.port, decode_responses=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.r.close()
        self.srv.stop()

    def reset(self, library: str) -> None:
        self.r.flushall()
        if self.loaded != library:
            self.r.function_load(self.sources[library], replace=True)
            self.loaded = library
        for sku in ("HOT", "MUG", "PLATE"):
            self.r.fcall("stocksync_set", 3, KEYS.sku(sku), KEYS.events(0), KEYS.idem(0, f"i-{sku}"), STOCK, "bench",
                         f"i-{sku}")
        if library == "new":
            for bundle, parts in (("MUG-2PACK", {"MUG": 2}), ("GIFT", {"MUG": 1, "PLATE": 1})):
                ks = [KEYS.events(0), KEYS.sku(bundle), *(KEYS.sku(c) for c in parts)]
                self.r.fcall("stocksync_bundle_set", len(ks), *ks, "bench", f"b-{bundle}", *parts.values())
        self.r.delete(KEYS.events(0))
        self.r.config_resetstat()

    def argv(self, function: str, sku: str, pipeline: int, requests: int) -> list[str]:
        base = ["redis-benchmark", "-p", str(self.srv.port), "-c", "50", "-n", str(requests), "-P", str(pipeline),
                "-r", "1000000000", "--csv", "FCALL", function]
        if function == "stocksync_reserve":
            return base + ["3", KEYS.events(0), KEYS.reservation(0, RAND), KEYS.sku(sku), "bench", str(TTL_MS), "1"]
        return base + ["3", KEYS.sku(sku), KEYS.events(0), KEYS.idem(0, RAND), "1", "bench", RAND]

    def benchmark(self, case: str, pipeline: int, requests: int) -> dict:
        library, function, sku = CASES[case]
        self.reset(library)
        cpu_before, client_before = server_cpu_ns(self.srv.proc.pid), children_cpu_s()
        proc = subprocess.run(self.argv(function, sku, pipeline, requests), capture_output=True, text=True, timeout=600)
        cpu_ns = server_cpu_ns(self.srv.proc.pid) - cpu_before
        if proc.returncode != 0:
            raise RuntimeError(f"redis-benchmark failed: {proc.stderr[-500:]}")
        rps = float(list(csv.reader(io.StringIO(proc.stdout)))[-1][1])
        stats = self.r.info("commandstats")["cmdstat_fcall"]
        return {"case": case, "pipeline": pipeline, "requests": requests, "rps": rps,
                "usec_per_call": stats["usec_per_call"], "cpu_us_per_call": cpu_ns / 1000 / requests,
                "client_cpu_us_per_call": (children_cpu_s() - client_before) * 1e6 / requests,
                "events_per_call": self.r.xlen(KEYS.events(0)) / requests}


# Pipelined calls on one connection: reserve, commit, release, ship, count beside a decrement --------------


def pipelined(server: Server, calls: int) -> dict[str, float]:
    """Server CPU per call (us) of each operation, `calls` of each in pipelines of 500."""
    r, out = server.r, {}
    server.reset("new")

    def timed(name, build):
        before = server_cpu_ns(server.srv.proc.pid)
        for start in range(0, calls, 500):
            pipe = r.pipeline(transaction=False)
            for i in range(start, min(calls, start + 500)):
                pipe.execute_command(*build(i))
            pipe.execute()
        out[name] = (server_cpu_ns(server.srv.proc.pid) - before) / 1000 / calls

    def sku_call(fn, qty):
        return lambda i: ("FCALL", fn, 3, KEYS.sku("HOT"), KEYS.events(0), KEYS.idem(0, f"{fn}-{i}"), qty, "bench",
                          f"{fn}-{i}")

    def res_call(fn, prefix):
        return lambda i: ("FCALL", fn, 2, KEYS.events(0), KEYS.reservation(0, f"{prefix}{i}"), "bench")

    timed("decrement", sku_call("stocksync_decrement", 1))
    timed("ship", sku_call("stocksync_ship", 1))
    timed("count", sku_call("stocksync_count", STOCK))
    for prefix in ("c", "r"):
        timed(f"reserve ({prefix})", lambda i, p=prefix: ("FCALL", "stocksync_reserve", 3, KEYS.events(0),
                                                           KEYS.reservation(0, f"{p}{i}"), KEYS.sku("HOT"), "bench",
                                                           TTL_MS, 1))
    timed("commit", res_call("stocksync_commit", "c"))
    timed("release", res_call("stocksync_release", "r"))
    out["reserve"] = (out.pop("reserve (c)") + out.pop("reserve (r)")) / 2
    return out


def run(rounds: int, requests: dict[int, int], calls: int) -> dict:
    runs, piped = [], []
    with Server() as server:
        cases = [c for c in CASES if CASES[c][0] == "new" or server.sources["0.5"]]
        jobs = [(case, p) for p in requests for case in cases]
        for round_no in range(rounds):
            for case, pipeline in rotated(jobs, round_no * 3):
                res = server.benchmark(case, pipeline, requests[pipeline])
                res["round"] = round_no
                runs.append(res)
                log(f"round {round_no} -P {pipeline} {case}: {res['rps']:,.0f}/s, {res['usec_per_call']} us/call, "
                    f"server CPU {res['cpu_us_per_call']:.2f} us/call, {res['events_per_call']:.2f} events/call")
            piped.append(pipelined(server, calls))
            log(f"round {round_no} pipelined: " + ", ".join(f"{k} {v:.2f}" for k, v in piped[-1].items()))
        info = server.r.info("server")
    return {"benchmark": "inventory", "date": today(), "machine": machine(), "library": library_version(),
            "server": f"Valkey {info['valkey_version']}" if info.get("valkey_version") else f"Redis {info['redis_version']}",
            "redis_benchmark": tool_version("redis-benchmark", "--version"), "runs": runs, "pipelined": piped,
            "summary": summarize(runs, piped)}


def summarize(runs: list[dict], piped: list[dict]) -> dict:
    out: dict = {"redis_benchmark": {}, "pipelined": {}}
    for pipeline in sorted({r["pipeline"] for r in runs}):
        base = median(r["cpu_us_per_call"] for r in runs if r["pipeline"] == pipeline and r["case"] == "decrement")
        for case in CASES:
            rows = [r for r in runs if r["pipeline"] == pipeline and r["case"] == case]
            if not rows:
                continue
            cpu = median(r["cpu_us_per_call"] for r in rows)
            out["redis_benchmark"][f"-P {pipeline} {case}"] = {
                "rps": median(r["rps"] for r in rows), "usec_per_call": median(r["usec_per_call"] for r in rows),
                "cpu_us_per_call": cpu, "vs_decrement": cpu / base if base else None,
                "events_per_call": rows[0]["events_per_call"]}
    for name in piped[0]:
        cpu = median(p[name] for p in piped)
        out["pipelined"][name] = {"cpu_us_per_call": cpu, "vs_decrement": cpu / median(p["decrement"] for p in piped)}
    return out


def render(result: dict, markdown: bool = False) -> str:
    s = result["summary"]
    rows = [[name, fmt(v["rps"]), fmt(v["usec_per_call"], 2), fmt(v["cpu_us_per_call"], 2),
             fmt(v["vs_decrement"], 2), fmt(v["events_per_call"], 1)] for name, v in s["redis_benchmark"].items()]
    part1 = table(["case (redis-benchmark -c 50)", "calls/s", "usec_per_call", "server CPU us/call",
                   "x decrement", "events/call"], rows, markdown)
    rows = [[name, fmt(v["cpu_us_per_call"], 2), fmt(v["vs_decrement"], 2)] for name, v in s["pipelined"].items()]
    part2 = table(["call (pipelines of 500, one connection)", "server CPU us/call", "x decrement"], rows, markdown)
    return part1 + "\n\n" + part2


def markdown(result: dict) -> str:
    return (f"{result['server']}, library {result['library']}, {result['date']}, {result['machine']['cpu']} "
            f"({result['machine']['cores']} cores, load at start {result['machine']['load_avg_at_start']}); "
            f"medians of {max(r['round'] for r in result['runs']) + 1} rounds\n\n" + render(result, markdown=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--out", default="inventory")
    args = parser.parse_args()
    if not shutil.which("redis-benchmark"):
        raise SystemExit("bench.inventory needs redis-benchmark on PATH")
    quick = args.quick
    rounds = args.rounds or (1 if quick else 3)
    requests = {1: 20_000, 16: 60_000} if quick else {1: 100_000, 16: 300_000}
    result = run(rounds, requests, 5_000 if quick else 30_000)
    path = write_json(args.out, result)
    print(f"{result['server']}, library {result['library']} (rounds: {rounds})\n")
    print(render(result))
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    t0 = time.monotonic()
    main()
    log(f"done in {time.monotonic() - t0:.0f} s")
