"""Reconciliation benchmark: `python -m bench.reconcile [--orders N] [--only shopify amazon flipkart]`.

One pass of `stocksync reconcile orders <channel>` over N orders (default 100,000) per marketplace, none
of which stocksync has seen (their webhooks never came): the simulator's order book is filled with
`POST /_sim/orders/bulk`, then the command reads every order back through the marketplace's order API
and applies it. Per marketplace: wall time, orders/s, the API calls made, and the CPU of the stocksync
process (the command, Python start included) per order, beside the CPU of Redis and of the simulator.
Afterwards every SKU's stock is checked: start less what the book sold, each line applied once.

Measured with the order APIs' rate limits lifted (in the simulators, `POST /_sim/market`, and in the
poller, `options.order_api_limits`): at the real limits the run would be the limits' time, not ours,
so the table states a projection from the calls the run made instead:
- Shopify: the orders query's actual cost, restored at 100 points/s (the standard plan's GraphQL Admin
  bucket; Advanced 200, Plus 1,000): a page of 16 orders of one or two lines costs about 70 points.
- Amazon: getOrders 0.0167 requests/s after a burst of 20, getOrderItems 0.5/s after a burst of 30, one
  getOrderItems call per order: 100,000 orders take about 55 hours, and the pass could not keep up with
  more than 1,800 new orders an hour. A real deployment does not read a backlog that way: it requests
  Amazon's order report for the period (Reports API, createReport of
  GET_FLAT_FILE_ALL_ORDERS_DATA_BY_LAST_UPDATE_GENERAL, then getReport until DONE and getReportDocument:
  one row per order item with its order id, item id, SKU, quantity and order status, every order of the
  period in one document within minutes), applies it under the same references, and keeps the poller
  for the orders the notifications lose day to day. Not implemented here.
- Flipkart publishes no limit for the shipment search: the projection is its page count at an assumed
  100 ms a call.

Every part runs in its own process: an embedded Redis, one simulator per marketplace (aiohttp server),
and the command. Run it alone on the machine (`flock /tmp/stocksync-bench.lock python -m bench.reconcile`).
Writes bench/results/reconcile.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson

from bench.common import fmt, log, machine, python_versions, redis_server_version, table, today, write_json
from bench.propagation import cpu_s, sim_state, start_sim
from stocksync.devtools.testing import SIMULATOR_ENV
from stocksync.embedded import EmbeddedRedis
from stocksync.settings import Settings
from stocksync.store import StockStore

MARKETS = ("shopify", "amazon", "flipkart")
SKUS = 1000
ROOT = Path(__file__).resolve().parent.parent
SHOPIFY_RESTORE = 100.0  # points/s, the standard plan
AMAZON = {"getOrders": (0.0167, 20), "getOrderItems": (0.5, 30)}
FLIPKART_CALL_S = 0.1
LIFTED = {"getOrders": [100_000, 100_000], "getOrderItems": [100_000, 100_000]}


def http(url: str, body: dict | None = None, timeout: float = 600) -> dict:
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return orjson.loads(r.read())


def fill(url: str, orders: int, name: str) -> dict[str, int]:
    """The book filled with `orders` orders of one or two lines over SKUS SKUs of this marketplace's own
    (each marketplace's run starts from stock of its own); answers units sold per SKU."""
    rng = random.Random(name)
    book = [[(f"{name}-{rng.randrange(SKUS)}", rng.randint(1, 3)) for _ in range(rng.choice((1, 1, 2)))]
            for _ in range(orders)]
    sold: dict[str, int] = {}
    for lines in book:
        for sku, qty in lines:
            sold[sku] = sold.get(sku, 0) + qty
    http(url + "/_sim/seed", {sku: n for sku, n in sold.items()})  # the listing covers every order
    for i in range(0, orders, 5_000):  # (bodies under the simulator's server's size limit)
        part = [{"lines": [{"sku": s, "qty": q} for s, q in lines]} for lines in book[i:i + 5_000]]
        reply = http(url + "/_sim/orders/bulk", {"orders": part})
        assert reply["refused"] == 0, reply
    return sold


def config_file(directory: Path, urls: dict[str, str]) -> Path:
    tables = {
        "shopify": f'kind = "shopify"\nurl = "{urls["shopify"]}"\ncredentials = {{ token = "TEST_SHOPIFY_TOKEN" }}\n'
                   'options = { location_id = "gid://shopify/Location/1" }\n',
        "amazon": f'kind = "amazon"\nurl = "{urls["amazon"]}"\ncredentials = {{ access_token = "TEST_AMAZON_TOKEN" }}\n'
                  'options = { seller_id = "A2SIMSELLER000", order_api_limits = { getOrders = [100000, 100000], '
                  'getOrderItems = [100000, 100000] } }\n',
        "flipkart": f'kind = "flipkart"\nurl = "{urls["flipkart"]}"\n'
                    'credentials = { access_token = "TEST_FLIPKART_TOKEN" }\n'
                    'options = { location_id = "LOC0123456789abcdef0123456789abcdef" }\n',
    }
    path = directory / "stocksync.toml"
    path.write_text("".join(f"[channels.{name}]\n{body}\n" for name, body in tables.items() if name in urls))
    return path


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def seed_stock(settings: Settings, sold: dict[str, int], start: int) -> None:
    async with await StockStore.connect(settings) as store:
        items = [(sku, start, None) for sku in sold]
        for i in range(0, len(items), 1000):
            await store.set_many(items[i:i + 1000], ref_of=lambda sku: f"bench-seed-{sku}", source="bench")


async def check_stock(settings: Settings, sold: dict[str, int], start: int) -> tuple[int, int]:
    """(SKUs whose stock is start - sold, SKUs checked); and every take reference once."""
    async with await StockStore.connect(settings) as store:
        right = 0
        for sku, n in sold.items():
            right += (await store.get(sku)).available == start - n
        return right, len(sold)


def projection(name: str, calls: dict[str, int], cost: float, measured_s: float) -> float:
    """Seconds the same pass would take at the marketplace's real limits (see the module's docstring)."""
    if name == "shopify":
        return max(measured_s, cost / SHOPIFY_RESTORE)
    if name == "amazon":
        return max(max(calls.get(op, 0) - burst, 0) / rate for op, (rate, burst) in AMAZON.items())
    return calls.get("searchShipments", 0) * FLIPKART_CALL_S


def api_calls(url: str) -> tuple[dict[str, int], float]:
    """The order-API calls the simulator answered (by operation) and their actual cost (Shopify's points)."""
    calls: dict[str, int] = {}
    cost, since = 0.0, 0
    while True:
        page = http(f"{url}/_sim/calls?since={since}")
        records = page["calls"] if isinstance(page, dict) else page
        if not records:
            return calls, cost
        for c in records:
            op = c.get("op") or ("orders" if c.get("path", "").endswith("graphql.json") else "other")
            op = "searchShipments" if c.get("path", "").startswith("/sellers/v3/shipments/filter") else op
            calls[op] = calls.get(op, 0) + 1
            cost += float(c.get("cost") or 0)
            since = max(since, c["seq"])


def run_one(name: str, url: str, settings: Settings, cfg: Path, orders: int, env: dict, pids: dict) -> dict:
    http(url + "/_sim/reset", {})
    if name == "amazon":
        http(url + "/_sim/market", {"limits": {"getOrders": None, "getOrder": None, "getOrderItems": None}})
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    log(f"{name}: filling the book with {orders:,} orders")
    sold = fill(url, orders, name)
    start = max(sold.values()) + 1
    asyncio.run(seed_stock(settings, sold, start))
    while time.time() % 1 > 0.05:  # the pass reads orders updated before the current second
        time.sleep(0.01)
    time.sleep(1.0)
    log(f"{name}: reconcile orders")
    before = {"stocksync": children_cpu_s(), **{k: cpu_s(pid) for k, pid in pids.items()}}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "stocksync", "--config", str(cfg), "reconcile", "orders", name,
                          "--since", since], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = {"stocksync": children_cpu_s(), **{k: cpu_s(pid) for k, pid in pids.items()}}
    if out.returncode != 0:
        raise SystemExit(f"{name}: reconcile failed ({out.returncode}): {out.stderr[-2000:]}")
    right, checked = asyncio.run(check_stock(settings, sold, start))
    calls, cost = api_calls(url)
    cpu = {k: None if before[k] is None or after[k] is None else round(after[k] - before[k], 2) for k in before}
    return {"orders": orders, "wall_s": round(wall, 2), "orders_per_s": round(orders / wall),
            "cpu_s": cpu, "cpu_us_per_order": round(cpu["stocksync"] / orders * 1e6),
            "calls": calls, "actual_cost": cost, "summary": out.stdout.strip(),
            "stock_right": f"{right}/{checked}", "projected_real_limits_s": round(projection(name, calls, cost, wall))}


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def markdown(result: dict) -> str:
    v = result["versions"]
    return (f"{v['server']}, Python {v['python']}, redis-py {v['redis']}, aiohttp {v['aiohttp']}; {result['date']}, "
            f"{result['machine']['cpu']} ({result['machine']['cores']} cores, load at start "
            f"{result['machine']['load_avg_at_start']}); {result['orders']:,} orders a marketplace, one run\n\n"
            + render(result, markdown=True))


def render(result: dict, markdown: bool = False) -> str:
    rows = []
    for name, r in result["markets"].items():
        calls = ", ".join(f"{op} {n:,}" for op, n in sorted(r["calls"].items()))
        rows.append([name, fmt(r["orders"]), f"{r['wall_s']:.1f}", fmt(r["orders_per_s"]), fmt(r["cpu_us_per_order"]),
                     fmt(r["cpu_s"]["redis"], 1), fmt(r["cpu_s"][f"sim_{name}"], 1), r["stock_right"],
                     hours(r["projected_real_limits_s"]), calls])
    return table(["marketplace", "orders", "wall s", "orders/s", "stocksync CPU us/order", "redis CPU s", "sim CPU s",
                  "stock right", "at real limits", "API calls"], rows, markdown=markdown)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reconcile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--only", nargs="+", choices=MARKETS, default=list(MARKETS))
    parser.add_argument("--out", default="reconcile", help="results file name (bench/results/NAME.json)")
    args = parser.parse_args()
    env = {**os.environ, **SIMULATOR_ENV}
    os.environ.update(SIMULATOR_ENV)
    result = {"date": today(), "machine": machine(), "versions": python_versions("redis", "aiohttp", "hiredis"),
              "orders": args.orders, "markets": {}}
    sims = {}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis() as server:
        try:
            for name in args.only:
                sims[name] = start_sim(name, {}, False, "aiohttp", "asyncio")
            urls = {name: url for name, (_, url) in sims.items()}
            settings = Settings(redis_url=server.url, prefix="bench-reconcile")
            env.update(REDIS_URL=server.url, STOCKSYNC_PREFIX="bench-reconcile")
            info = asyncio.run(_info(settings))
            result["versions"]["server"] = redis_server_version(info)
            cfg = config_file(Path(tmp), urls)
            for name, url in urls.items():
                pids = {"redis": server.proc.pid, f"sim_{name}": sims[name][0].pid}
                result["markets"][name] = run_one(name, url, settings, cfg, args.orders, env, pids)
                log(result["markets"][name]["summary"])
                sim_state(url)  # (the simulator still answers)
        finally:
            for proc, _ in sims.values():
                proc.terminate()
                proc.wait(10)
    print(f"{args.orders:,} orders a marketplace, none seen by webhook; {result['date']}, {result['machine']['cpu']}, "
          f"{result['machine']['cores']} cores, {result['versions']}")
    print(render(result))
    print(f"written to {write_json(args.out, result)}")
    return 0


async def _info(settings: Settings) -> dict:
    async with await StockStore.connect(settings) as store:
        return await store.redis.info("server")


if __name__ == "__main__":
    sys.exit(main())
