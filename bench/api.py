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

Both servers get the same --loop and --http (uvicorn's; `auto` takes uvloop and httptools when they are
installed, as `pip install 'uvicorn[standard]'` does); the results name what was used.

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
from importlib.util import find_spec
from pathlib import Path

import orjson
import redis

from stocksync.embedded import EmbeddedRedis
from stocksync.orders.webhooks import shopify_signature

from .common import (
    fmt,
    log,
    machine,
    median,
    python_versions,
    ratio,
    redis_server_version,
    table,
    today,
    tool_version,
    write_json,
)

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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def render(results: dict, markdown: bool = False, part: str | None = None) -> str:
    """The result tables: throughput beside the bare endpoint, and latency at the fixed rate."""
    out = []
    t = results.get("throughput")
    if t and part in (None, "throughput"):
        rows = [[label, t[key]["median_rps"], ", ".join(fmt(x) for x in t[key]["rounds"]),
                 "1.00" if key == "bare" else fmt(results["ratio"], 2), fmt(t[key]["median_cpu_us_per_request"])]
                for key, label in (("bare", "bare Starlette 200"), ("stocksync", "stocksync /webhooks/shopify"))]
        out.append(table(["endpoint", "req/s (median)", "rounds", "ratio to bare", "server CPU us/request"], rows,
                         markdown))
        if markdown:
            out.append(f"Median of per-round ratios {fmt(results['ratio_median_of_rounds'], 2)}; CPU per request "
                       f"bare/stocksync {fmt(results['cpu_ratio'], 2)}; target >= 0.5.")
    lat = results.get("latency")
    if lat and part in (None, "latency"):
        rate = results["params"]["rate"]
        out.append(table([f"at {rate} req/s", "p50 ms", "p99 ms", "max ms", "errors"],
                         [[k, fmt(v["p50_ms"], 2), fmt(v["p99_ms"], 2), fmt(v["max_ms"], 1), v["errors"]]
                          for k, v in lat.items()], markdown))
    return "\n\n".join(out)


def markdown(results: dict) -> str:
    """The generated part of BENCHMARKS.md's section (rewritten by bench/report.py after `make bench`)."""
    m, v, srv, prm = results["machine"], results["versions"], results["server"], results["params"]
    head = (f"Run: {results['date']}; {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, load "
            f"{m['load_avg_at_start']}; Python {v['python']}, uvicorn {v['uvicorn']} (--loop {srv['loop']} --http "
            f"{srv['http']}, both servers), starlette {v['starlette']}, redis-py {v['redis']} + hiredis {v['hiredis']}, "
            f"{v.get('redis_server')}, {v.get('wrk')}; --seconds {prm['seconds']} --rounds {prm['rounds']} "
            f"--rate {prm['rate']}.")
    return head + "\n\n" + render(results, markdown=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8, help="per throughput round and per latency run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=int, default=300, help="requests/s of the fixed-load latency run")
    parser.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"], help="uvicorn --loop, both servers")
    parser.add_argument("--http", default="auto", choices=["auto", "h11", "httptools"], help="uvicorn --http, both servers")
    parser.add_argument("--quick", action="store_true", help="2 s rounds, 1 round (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 2, 1
    rng = random.Random(7)
    procs: list[subprocess.Popen] = []
    wrk_version = tool_version("wrk", "--version")
    uvicorn_opts = {"loop": args.loop if args.loop != "auto" else ("uvloop" if find_spec("uvloop") else "asyncio"),
              "http": args.http if args.http != "auto" else ("httptools" if find_spec("httptools") else "h11")}
    results: dict = {"date": today(), "machine": machine(),
                     "versions": {**python_versions("starlette", "uvicorn", "redis", "hiredis", "orjson", "h11",
                                                    "httptools", "uvloop", "prometheus-client"),
                                  "wrk": wrk_version.splitlines()[0] if wrk_version else None},
                     "server": uvicorn_opts, "params": vars(args)}
    log(f"both servers: uvicorn --loop {uvicorn_opts['loop']} --http {uvicorn_opts['http']}, one process, no access log")
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as tmp:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        results["versions"]["redis_server"] = redis_server_version(client.info("server"))
        config = Path(tmp) / "stocksync.toml"
        config.write_text(CONFIG)
        env = {**os.environ, "REDIS_URL": server.url, "STOCKSYNC_CONFIG": str(config), "STOCKSYNC_PREFIX": PREFIX,
               "BENCH_SHOPIFY_SECRET": SECRET}
        api_port, bare_port = _free_port(), _free_port()
        try:
            same = ["--loop", uvicorn_opts["loop"], "--http", uvicorn_opts["http"], "--log-level", "warning"]
            procs.append(subprocess.Popen([sys.executable, "-m", "stocksync.api.serve", "--port", str(api_port), *same],
                                          env=env))
            procs.append(subprocess.Popen([sys.executable, "-m", "uvicorn", "bench.api:bare_app", "--factory",
                                           "--port", str(bare_port), "--no-access-log", *same], env=env))
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
                # Server CPU per request: on a shared 2-core machine, req/s moves with what else runs, while
                # the CPU time the server process spends on each request moves much less.
                cpu_us: dict[str, list[float]] = {k: [] for k in targets}
                pids = {"stocksync": procs[0].pid, "bare": procs[1].pid}
                for r in range(args.rounds):
                    for name in (list(targets) if r % 2 == 0 else list(reversed(targets))):
                        script = Path(tmp) / f"wrk-{name}-{r}.lua"
                        wrk_script(script, next_order, per_round, rng)
                        next_order += per_round
                        before, cpu0 = client.xlen(f"{{{PREFIX}:0}}:events"), cpu_seconds(pids[name])
                        res = run_wrk(targets[name], script, args.seconds, args.connections)
                        cpu = cpu_seconds(pids[name]) - cpu0
                        applied = client.xlen(f"{{{PREFIX}:0}}:events") - before
                        cpu_us[name].append(cpu / (res["rps"] * args.seconds) * 1e6)
                        log(f"round {r + 1} {name}: {res['rps']:,.0f} req/s, {cpu_us[name][-1]:,.0f} us CPU/request, "
                            f"non-2xx {res['non_2xx']}" + (f", events {applied:,}" if name == "stocksync" else ""))
                        throughput[name].append(res["rps"])
                        if res["non_2xx"]:
                            raise RuntimeError(f"{res['non_2xx']} responses were not 200: not a valid result")
                        if name == "stocksync" and applied < 0.95 * res["rps"] * args.seconds:
                            raise RuntimeError(f"{applied} events for {res['rps'] * args.seconds:.0f} requests")
                results["throughput"] = {k: {"rounds": v, "median_rps": median(v), "cpu_us_per_request": cpu_us[k],
                                             "median_cpu_us_per_request": median(cpu_us[k])}
                                         for k, v in throughput.items()}
                bare_rps, api_rps = median(throughput["bare"]), median(throughput["stocksync"])
                results["ratio"] = ratio(api_rps, bare_rps)
                # Each round runs both servers back to back, under much the same outside load.
                paired = [a / b for a, b in zip(throughput["stocksync"], throughput["bare"], strict=True)]
                results["ratio_median_of_rounds"] = median(paired)
                results["cpu_ratio"] = ratio(median(cpu_us["bare"]), median(cpu_us["stocksync"]))
                print(render(results, part="throughput"))
                log(f"ratio of medians {results['ratio']:.2f}; median of per-round ratios "
                    f"{results['ratio_median_of_rounds']:.2f}; CPU per request bare/stocksync {results['cpu_ratio']:.2f}")
            else:
                log("wrk not found: throughput part skipped")

            latency = {}
            for name, port in targets.items():
                latency[name] = asyncio.run(fixed_rate(port, args.rate, args.seconds, next_order, rng))
                next_order += args.rate * args.seconds + 1
                log(f"latency {name} at {args.rate}/s: {latency[name]}")
            results["latency"] = latency
            print()
            print(render(results, part="latency"))
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
