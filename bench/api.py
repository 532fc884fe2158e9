"""Signed Shopify order webhooks per second through uvicorn, beside a bare Starlette endpoint (`python -m bench.api`).

Two uvicorn servers run side by side, each one process with the same uvicorn settings: the stocksync app
(`stocksync serve`) and a bare Starlette app whose one endpoint answers 200 without doing anything. A
private Redis holds 1,000 SKUs with stock that never runs out, so every webhook is a real take.

1. Throughput: wrk (a native load generator) posts distinct signed orders/create webhooks (one line each,
   a new order and webhook id every request: no request is a replay) for --seconds to each server, in
   alternating rounds; the table shows the median requests/s and the ratio to the bare endpoint.
2. Latency at a fixed load: an open-loop generator (asyncio, aiohttp) sends --rate requests/s for
   --seconds to each server and measures each request from the time it was due (so a stall counts for
   every request it delays); p50/p99/max.

Needs wrk on PATH for part 1 (`apt-get install wrk`); without it part 1 is skipped. Results go to
bench/results/api.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import redis

from stocksync.embedded import EmbeddedRedis
from stocksync.webhooks import shopify_signature

from .common import fmt, log, machine, median, python_versions, ratio, table, today, tool_version, write_json

SECRET = "bench-shopify-secret"
SKUS = [f"SKU-{i:04d}" for i in range(1000)]
PREFIX = "stocksync"

CONFIG = """
[channels.shopify]
kind = "shopify"
url = "http://127.0.0.1:9/shopify"
credentials = { webhook_secret = "BENCH_SHOPIFY_SECRET" }
"""


def bare_app():
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def ok(request):
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(routes=[Route("/webhooks/shopify", ok, methods=["POST"])])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


def order_request(n: int, rng: random.Random) -> tuple[bytes, dict[str, str]]:
    order_id = 10_000_000 + n
    body = orjson.dumps({"id": order_id, "name": f"#{order_id}", "line_items": [
        {"id": order_id * 10 + 1, "sku": rng.choice(SKUS), "quantity": 1, "gift_card": False}]})
    headers = {"X-Shopify-Hmac-Sha256": shopify_signature(body, SECRET), "X-Shopify-Topic": "orders/create",
               "X-Shopify-Webhook-Id": f"bench-{order_id}", "Content-Type": "application/json"}
    return body, headers


def wrk_script(path: Path, start: int, count: int, rng: random.Random) -> None:
    """A wrk script that sends `count` distinct signed requests in order, read from a data file beside it
    (a Lua table literal of that size exceeds LuaJIT's 65,536 constants and wrk would fall back to GET /)."""
    data = path.with_suffix(".tsv")
    with data.open("w") as f:
        for n in range(start, start + count):
            body, h = order_request(n, rng)
            f.write(f"{h['X-Shopify-Hmac-Sha256']}\t{h['X-Shopify-Webhook-Id']}\t{body.decode()}\n")
    path.write_text("""
-- wrk runs with -t1 (one thread): the requests are taken in order, each one once.
local reqs = {}
local i = 0
function init(args)
  for line in io.lines("@DATA@") do
    local sig, id, body = line:match("^([^\t]+)\t([^\t]+)\t(.*)$")
    reqs[#reqs + 1] = {body, sig, id}
  end
end
function request()
  local r = reqs[(i % #reqs) + 1]
  i = i + 1
  return wrk.format("POST", "/webhooks/shopify", {
    ["Content-Type"] = "application/json", ["X-Shopify-Topic"] = "orders/create",
    ["X-Shopify-Hmac-Sha256"] = r[2], ["X-Shopify-Webhook-Id"] = r[3]}, r[1])
end
""".replace("@DATA@", str(data)))


def run_wrk(port: int, script: Path | None, seconds: int, connections: int) -> dict:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script:
        argv += ["-s", str(script)]
    done = subprocess.run(argv + [f"http://127.0.0.1:{port}/webhooks/shopify"], capture_output=True, text=True)
    out = done.stdout
    if done.returncode or done.stderr.strip():  # a script error makes wrk send plain GETs: not a result
        raise RuntimeError(f"wrk failed: {done.stderr.strip()[:500]}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "non_2xx": int(non2xx.group(1)) if non2xx else 0}


async def fixed_rate(port: int, rate: int, seconds: float, start: int, rng: random.Random) -> dict:
    import aiohttp

    total = int(rate * seconds)
    requests = [order_request(start + n, rng) for n in range(total)]
    latencies: list[float] = []
    errors = 0
    url = f"http://127.0.0.1:{port}/webhooks/shopify"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
        t0 = time.perf_counter() + 0.1

        async def one(n: int) -> None:
            nonlocal errors
            due = t0 + n / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            body, headers = requests[n]
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - due)

        await asyncio.gather(*(one(n) for n in range(total)))
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {"p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": latencies[-1] * 1000, "errors": errors,
            "sent": total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8, help="per throughput round and per latency run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=int, default=500, help="requests/s of the fixed-load latency run")
    parser.add_argument("--quick", action="store_true", help="2 s rounds, 1 round (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 2, 1
    rng = random.Random(7)
    procs: list[subprocess.Popen] = []
    results: dict = {"date": today(), "machine": machine(),
                     "versions": {**python_versions("starlette", "uvicorn", "redis", "orjson"),
                                  "wrk": tool_version("wrk", "--version")},
                     "params": vars(args)}
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as tmp:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        config = Path(tmp) / "stocksync.toml"
        config.write_text(CONFIG)
        env = {**os.environ, "REDIS_URL": server.url, "STOCKSYNC_CONFIG": str(config), "STOCKSYNC_PREFIX": PREFIX,
               "BENCH_SHOPIFY_SECRET": SECRET}
        api_port, bare_port = _free_port(), _free_port()
        try:
            procs.append(subprocess.Popen([sys.executable, "-m", "stocksync.serve", "--port", str(api_port),
                                           "--log-level", "warning"], env=env))
            procs.append(subprocess.Popen([sys.executable, "-m", "uvicorn", "bench.api:bare_app", "--factory",
                                           "--port", str(bare_port), "--log-level", "warning", "--no-access-log"],
                                          env=env))
            for port, proc in zip((api_port, bare_port), procs, strict=True):
                _wait_up(port, proc)
            from stocksync.functions import library_version

            log("stocksync library", library_version(), "; seeding", len(SKUS), "SKUs")
            pipe = client.pipeline(transaction=False)
            for sku in SKUS:  # through the library, as any caller would
                pipe.fcall("stocksync_set", 3, f"{{{PREFIX}:0}}:sku:{sku}", f"{{{PREFIX}:0}}:events",
                           f"{{{PREFIX}:0}}:idem:seed-{sku}", 1_000_000_000, "bench", f"seed-{sku}")
            pipe.execute()

            targets = {"bare": bare_port, "stocksync": api_port}
            next_order = 0
            if tool_version("wrk", "--version") is not None or os.path.exists("/usr/bin/wrk"):
                per_round = 40_000 * max(1, args.seconds // 2)
                throughput: dict[str, list[float]] = {k: [] for k in targets}
                for r in range(args.rounds):
                    for name in (list(targets) if r % 2 == 0 else list(reversed(targets))):
                        script = Path(tmp) / f"wrk-{name}-{r}.lua"
                        wrk_script(script, next_order, per_round, rng)
                        next_order += per_round
                        before = client.xlen(f"{{{PREFIX}:0}}:events")
                        res = run_wrk(targets[name], script, args.seconds, args.connections)
                        applied = client.xlen(f"{{{PREFIX}:0}}:events") - before
                        log(f"round {r + 1} {name}: {res['rps']:,.0f} req/s, non-2xx {res['non_2xx']}"
                            + (f", events {applied:,}" if name == "stocksync" else ""))
                        throughput[name].append(res["rps"])
                        if res["non_2xx"]:
                            raise RuntimeError(f"{res['non_2xx']} responses were not 200: not a valid result")
                        if name == "stocksync" and applied < 0.95 * res["rps"] * args.seconds:
                            raise RuntimeError(f"{applied} events for {res['rps'] * args.seconds:.0f} requests")
                results["throughput"] = {k: {"rounds": v, "median_rps": median(v)} for k, v in throughput.items()}
                bare_rps, api_rps = median(throughput["bare"]), median(throughput["stocksync"])
                results["ratio"] = ratio(api_rps, bare_rps)
                print(table(["endpoint", "req/s (median)", "rounds", "ratio to bare"],
                            [["bare Starlette 200", bare_rps, ", ".join(fmt(x) for x in throughput["bare"]), "1.00"],
                             ["stocksync /webhooks/shopify", api_rps,
                              ", ".join(fmt(x) for x in throughput["stocksync"]), fmt(results["ratio"], 2)]]))
            else:
                log("wrk not found: throughput part skipped")

            latency = {}
            for name, port in targets.items():
                latency[name] = asyncio.run(fixed_rate(port, args.rate, args.seconds, next_order, rng))
                next_order += args.rate * args.seconds + 1
                log(f"latency {name} at {args.rate}/s: {latency[name]}")
            results["latency"] = latency
            print()
            print(table([f"at {args.rate} req/s", "p50 ms", "p99 ms", "max ms", "errors"],
                        [[k, fmt(v["p50_ms"], 2), fmt(v["p99_ms"], 2), fmt(v["max_ms"], 1), v["errors"]]
                         for k, v in latency.items()]))
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            client.close()
    path = write_json("api", results)
    log("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
