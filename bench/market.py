"""Market benchmark: `python -m bench.market [--seconds 60] [--rate 20] [--skus 10000] [--buffer auto|0]
[--no-flash] [--seed 1] [--out PATH]`.

Oversells measured where they happen, in a closed loop against the real processes (bench/market_system.py:
an embedded Redis, the three marketplace simulators under their real rate limits, the API, one worker per
channel). Buyers arrive at each marketplace (stocksync/devtools/market_model.py: Poisson per channel, Zipf
popularity, many SKUs at low stock, a flash sale of 2,000 buyers for 50 units of one SKU within 5 s,
warehouse receipts and counts sent through the admin API). A marketplace sells only what it lists
(`POST /_sim/orders`), then delivers the order webhook (`--webhook-s` late) and stocksync takes the stock.
An order a marketplace accepted that stocksync cannot cover (the intake answers `insufficient`: a
stock.rejected event of that channel) is an oversell. A buyer a marketplace turned away while the warehouse
had the units is a lost sale (the price of buffers and of listings that trail receipts).

The same buyers and warehouse writes also go through the 15-minute polling model in simulated time (last
sync 60 s before the run, as in the demo). For stocksync, per channel: the episodes in which the channel
listed more than the canonical quantity (`overlisted_ms`, from the simulators' call records, the sales and
the stream), and the workers' predicted oversells (their heartbeats' oversell_risk_units, sampled every
0.25 s, integrated over time and divided by the channel's time to land a push: each held SKU's risk counts
once per holding) beside the observed ones. Prints a table; writes bench/results/market.json (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict
from importlib.util import find_spec
from pathlib import Path

import aiohttp
import orjson

from bench.common import RESULTS, fmt, log, machine, python_versions, redis_server_version, table, today
from bench.market_system import CHANNELS, MarketSystem, get_json
from stocksync.devtools.market_model import (
    FLASH_SKU,
    Demand,
    Listing,
    Scenario,
    StockOp,
    Tally,
    Truth,
    overlisted_ms,
    percentile,
    scenario,
    simulate_polling,
)
from stocksync.embedded import EmbeddedRedis

WEBHOOK_S = {"shopify": 0.3, "amazon": 1.0, "flipkart": 0.5}  # a marketplace's order -> its webhook at the API
APPLIED = ("applied", "SUCCESS")  # a simulator's result for an item it listed
SAMPLE_S = 0.25


class Run:
    """One closed-loop run: what the buyers met, what the warehouse did, what the workers predicted."""

    def __init__(self, system: MarketSystem, sc: Scenario, http: aiohttp.ClientSession) -> None:
        self.system, self.sc, self.http = system, sc, http
        self.truth = Truth(sc.stock)
        self.tally = {ch: Tally() for ch in CHANNELS}
        self.sales = {ch: {} for ch in CHANNELS}  # channel -> sku -> Listing (its own sales; pushes added later)
        self.risk = {ch: {"predicted_units": 0.0, "peak_units": 0.0, "land_s": None} for ch in CHANNELS}
        self.late_ms = 0.0  # the most a buyer was sent after its time (the load generator falling behind)
        self.errors = 0
        self.auth = {"Authorization": f"Bearer {system.token}"}

    async def buyers(self, start: float) -> None:
        sem, tasks = asyncio.Semaphore(64), []
        for b in self.sc.buyers:
            delay = start + b.t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.late_ms = max(self.late_ms, -delay * 1000)
            await sem.acquire()
            tasks.append(asyncio.create_task(self.buy(b, sem)))
        await asyncio.gather(*tasks)

    async def buy(self, b, sem: asyncio.Semaphore) -> None:
        url = self.system.sims[b.channel]["url"] + "/_sim/orders"
        try:
            async with self.http.post(url, json={"lines": [{"sku": b.sku, "qty": b.qty}], "webhook": "late"}) as r:
                reply = await r.json()
        except (aiohttp.ClientError, TimeoutError):
            self.errors += 1
            return
        finally:
            sem.release()
        accepted = bool(reply.get("accepted"))
        self.truth.tally(self.tally[b.channel], b.sku, b.qty, accepted)
        if accepted:
            self.sales[b.channel].setdefault(b.sku, Listing()).changes.append((reply["created_ms"], "sale", b.qty))

    async def warehouse(self, start: float) -> None:
        for op in self.sc.ops:
            await asyncio.sleep(max(0.0, start + op.t - time.monotonic()))
            try:
                await self.stock_op(op)
            except (aiohttp.ClientError, TimeoutError, KeyError):
                self.errors += 1

    async def stock_op(self, op: StockOp) -> None:
        """A receipt (adjust) or a count (on_hand set, never below what is committed) through the admin API."""
        api, headers = self.system.api_url, {**self.auth, "Idempotency-Key": uuid.uuid4().hex}
        if op.kind == "receipt":
            async with self.http.post(f"{api}/v1/skus/{op.sku}/adjust", json={"delta": op.units}, headers=headers) as r:
                r.raise_for_status()
            self.truth.apply(op)
            return
        async with self.http.get(f"{api}/v1/skus/{op.sku}", headers=self.auth) as r:
            q = await r.json()
        on_hand = max(q["on_hand"] + op.units, q["on_hand"] - q["available"])
        async with self.http.post(f"{api}/v1/skus/{op.sku}/count", json={"on_hand": on_hand}, headers=headers) as r:
            if r.status == 200:
                self.truth.apply(StockOp(op.t, op.kind, op.sku, on_hand - q["on_hand"]))

    async def sample_risk(self, stop: asyncio.Event) -> None:
        """Integrate each channel's heartbeat risk over time (see the module's doc)."""
        redis, keys = self.system.store.redis, self.system.store.keys
        while not stop.is_set():
            for ch in CHANNELS:
                beats = [orjson.loads(v) for v in (await redis.hgetall(keys.channel_status(ch))).values()]
                risk = sum(float(b.get("oversell_risk_units", 0)) for b in beats)
                # (a SKU at risk is held about the risk-weighted time to land, not the backlog's)
                land_s = max((float(b.get("land_risky_s", b.get("land_s", 1.0))) for b in beats), default=1.0)
                r = self.risk[ch]
                r["predicted_units"] += risk * SAMPLE_S / max(land_s, SAMPLE_S)
                r["peak_units"], r["land_s"] = max(r["peak_units"], risk), land_s
            await asyncio.sleep(SAMPLE_S)

    async def progress(self, start: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(5)
            sold = sum(t.units_sold for t in self.tally.values())
            refused = sum(t.refused for t in self.tally.values())
            risk = ", ".join(f"{ch} {self.risk[ch]['peak_units']:.2f}" for ch in CHANNELS)
            log(f"  t={time.monotonic() - start:5.1f} s  units sold {sold:,}  buyers turned away {refused:,}  "
                f"peak risk so far: {risk}")


async def settle(run: Run, seconds: float) -> bool:
    """Wait for the webhooks to be taken (the stream stops growing) and the groups to drain."""
    redis, keys = run.system.store.redis, run.system.store.keys
    deadline, last, still = time.monotonic() + seconds, -1, 0
    while time.monotonic() < deadline:
        n = sum([await redis.xlen(keys.events(p)) for p in range(keys.partitions)])
        still = still + 1 if n == last else 0
        last = n
        drained = True
        for p in range(keys.partitions):
            drained = drained and all(not g["pending"] and not g["lag"] for g in await redis.xinfo_groups(keys.events(p)))
        if drained and still >= 10 and time.monotonic() > deadline - seconds + max(WEBHOOK_S.values()) + 1:
            return True
        await asyncio.sleep(0.2)
    return False


async def stream(run: Run, since_id: str) -> tuple[dict, dict]:
    """(sku -> [(ms, available)], channel -> sku -> oversold units) from the events after since_id."""
    redis, keys = run.system.store.redis, run.system.store.keys
    canonical: dict[str, list[tuple[int, int]]] = {}
    oversold: dict[str, Counter] = {ch: Counter() for ch in CHANNELS}
    for p in range(keys.partitions):
        start = f"({since_id}"
        while entries := await redis.xrange(keys.events(p), min=start, count=10_000):
            for entry_id, f in entries:
                if f.get("type") == "stock.changed":
                    canonical.setdefault(f["sku"], []).append((int(entry_id.split("-")[0]), int(f["available"])))
                elif f.get("reason") == "insufficient" and f.get("source") in oversold:
                    oversold[f["source"]][f["sku"]] += -int(f["delta"])
            start = f"({entries[-1][0]}"
    return canonical, oversold


def listings(run: Run, ch: str) -> dict[str, Listing]:
    """The channel's pushes (from the simulator's call record) and own sales, by SKU."""
    out = {sku: Listing(list(lst.changes)) for sku, lst in run.sales[ch].items()}
    for call in get_json(run.system.sims[ch]["url"] + "/_sim/calls"):
        for item in call["items"]:
            if item.get("result") in APPLIED and "quantity" in item:
                out.setdefault(item["sku"], Listing()).changes.append((call["wall_ms"], "push", item["quantity"]))
    return out


async def measure(run: Run, since_id: str, end_ms: int) -> dict:
    canonical, oversold = await stream(run, since_id)
    out = {}
    for ch in CHANNELS:
        spans = overlisted_ms(canonical, await asyncio.to_thread(listings, run, ch), run.sc.stock, end_ms)
        t = run.tally[ch]
        out[ch] = {**t.as_dict(), "oversold_units": oversold[ch].total(), "oversold_units_truth": t.oversold_units,
                   "oversold_flash_units": oversold[ch][FLASH_SKU], "oversold_skus": len(oversold[ch]),
                   "overlisted_episodes": len(spans), "overlisted_ms_p50": percentile(spans, 0.5),
                   "overlisted_ms_p99": percentile(spans, 0.99), "overlisted_ms_max": max(spans, default=None),
                   "predicted_oversold_units": round(run.risk[ch]["predicted_units"], 3),
                   "peak_risk_units": round(run.risk[ch]["peak_units"], 3), "land_s": run.risk[ch]["land_s"]}
    return out


async def closed_loop(args, redis_url: str, sc: Scenario) -> dict:
    system = MarketSystem(redis_url, args.buffer, args.webhook_s, args.loop, args.oversell_target)
    ok = False
    try:
        log(f"starting the simulators, the API and the workers; seeding {len(sc.stock):,} SKUs (logs in {system.dir})")
        await system.start(sc.stock)
        since_id = (await system.store.redis.xinfo_stream(system.store.keys.events(0)))["last-generated-id"]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                         connector=aiohttp.TCPConnector(limit=128)) as http:
            run = Run(system, sc, http)
            log(f"{len(sc.buyers):,} buyers and {len(sc.ops)} warehouse writes over {args.seconds:g} s; buffer {args.buffer}")
            start, stop = time.monotonic(), asyncio.Event()
            side = [asyncio.create_task(run.sample_risk(stop)), asyncio.create_task(run.progress(start, stop))]
            await asyncio.gather(run.buyers(start), run.warehouse(start))
            log("buyers done; waiting for the webhooks and the pushes to settle")
            drained = await settle(run, args.settle)
            stop.set()
            await asyncio.gather(*side)
            end_ms = int(time.time() * 1000)
            run.truth.settle_lost(run.tally)
            channels = await measure(run, since_id, end_ms)
        info = await system.store.redis.info("server")
        ok = True
        return {"channels": channels, "drained": drained, "late_ms_max": round(run.late_ms, 1), "errors": run.errors,
                "redis": redis_server_version(info)}
    finally:
        await system.stop(keep_logs=not ok)


def totals(channels: dict) -> dict:
    keys = ("orders", "units_sold", "oversold_units", "oversold_flash_units", "lost_sales_units", "refused")
    return {k: sum(c[k] for c in channels.values()) for k in keys}


def render(result: dict, markdown: bool = False) -> str:
    rows = []
    for name in ("stocksync", "polling"):
        for ch, c in {**result["systems"][name], "all": result["totals"][name]}.items():
            lost_pct = f"{100 * c['lost_sales_units'] / c['units_sold']:.2f}%" if c["units_sold"] else "-"
            rows.append([name, ch, c["orders"], c["units_sold"], c["oversold_units"], c.get("oversold_flash_units"),
                         c["lost_sales_units"], lost_pct,
                         c.get("overlisted_ms_p50"), c.get("overlisted_ms_p99"), c.get("overlisted_ms_max"),
                         fmt(c.get("predicted_oversold_units"), 2), fmt(c.get("peak_risk_units"), 2)])
    return table(["system", "channel", "orders", "units sold", "oversold units", "of which flash sale",
                  "lost sales units", "lost/sold",
                  "overlisted p50 ms", "overlisted p99 ms", "overlisted max ms", "predicted oversold", "peak risk"],
                 rows, markdown)


def summary(runs: dict[str, dict], markdown: bool = False) -> str:
    """One row a run: oversold units of both systems (the flash sale's apart), lost sales, the slowest
    channel's overlisted p99, and the workers' predicted oversells against the observed ones."""
    rows = []
    for label, r in runs.items():
        s, p = r["totals"]["stocksync"], r["totals"]["polling"]
        chans = r["systems"]["stocksync"].values()
        predicted = sum(c["predicted_oversold_units"] for c in chans)
        steady = s["oversold_units"] - s["oversold_flash_units"]
        p99 = max((c["overlisted_ms_p99"] or 0, ch) for ch, c in r["systems"]["stocksync"].items())
        ratio = f"{p['oversold_units'] / s['oversold_units']:.1f}x" if s["oversold_units"] else "all"
        rows.append([label, s["units_sold"], s["oversold_units"], s["oversold_flash_units"], p["oversold_units"],
                     p["oversold_flash_units"], ratio, f"{100 * s['lost_sales_units'] / max(s['units_sold'], 1):.2f}%",
                     f"{100 * p['lost_sales_units'] / max(p['units_sold'], 1):.2f}%", f"{p99[0]:,} ({p99[1]})",
                     fmt(predicted, 2), steady])
    return table(["run", "stocksync units sold", "stocksync oversold", "of which flash", "polling oversold",
                  "of which flash", "polling/stocksync", "stocksync lost/sold", "polling lost/sold",
                  "overlisted p99 ms, worst channel", "predicted oversold (workers)", "observed outside the flash sale"],
                 rows, markdown)


def markdown(result: dict) -> str:
    """The generated part of BENCHMARKS.md's Market section (bench/report.py): a summary row a run, then
    each run's table."""
    runs = result.get("runs") or {"default": result}
    parts = [summary(runs, markdown=True)]
    for label, r in runs.items():
        m, v, a = r["machine"], r["versions"], r["args"]
        parts.append(f"**{label}**: `{r['command']}`; run {r['date']}; {m['cpu']}, {m['cores']} cores, load "
                     f"{m['load_avg_at_start']}; Python {v['python']}, {r['redis']}, redis-py {v['redis']}, aiohttp "
                     f"{v['aiohttp']}; {a['rate']:g} buyers/s for {a['seconds']:g} s over {a['skus']:,} SKUs, flash "
                     f"sale {'on' if a['flash'] else 'off'}, buffer {a['buffer']}"
                     + (f" (oversell_target {a.get('oversell_target', 1.0):g})" if a["buffer"] == "auto" else "")
                     + ", webhooks late by "
                     + ", ".join(f"{k} {w:g} s" for k, w in r["webhook_s"].items())
                     + f"; every channel drained by the end: {r['drained']}.\n\n" + render(r, markdown=True))
    return "\n\n".join(parts)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.market", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=20.0, help="buyers a second over the three channels")
    parser.add_argument("--skus", type=int, default=10_000)
    parser.add_argument("--buffer", choices=["auto", "0"], default="auto", help="every channel's buffer rule")
    parser.add_argument("--oversell-target", type=float, default=1.0,
                        help="with --buffer auto: expected oversold units per 10,000 orders (the channels' rule)")
    parser.add_argument("--no-flash", dest="flash", action="store_false", help="no flash sale")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--webhook-s", type=float, help="every marketplace's webhook this late (default: "
                        + ", ".join(f"{k} {v:g}" for k, v in WEBHOOK_S.items()) + " s)")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds to let webhooks and pushes land at the end")
    parser.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto")
    parser.add_argument("--out", default=str(RESULTS / "market.json"), help="results file (JSON)")
    parser.add_argument("--label", help="store the run under this label in --out's `runs` (several mixes, one file)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 15 s, 2,000 SKUs")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.skus = 15.0, 2_000
    if args.loop == "auto":
        args.loop = "uvloop" if find_spec("uvloop") else "asyncio"
    args.webhook_s = dict.fromkeys(CHANNELS, args.webhook_s) if args.webhook_s is not None else dict(WEBHOOK_S)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    demand = Demand(seconds=args.seconds, rate=args.rate, skus=args.skus, seed=args.seed,
                    flash_buyers=2_000 if args.flash else 0)
    sc = scenario(demand)
    result = {"date": today(), "machine": machine(), "versions": python_versions("redis", "aiohttp", "hiredis", "uvloop"),
              "command": shlex.join(["python", "-m", "bench.market", *(sys.argv[1:] if argv is None else argv)]),
              "args": {k: v for k, v in vars(args).items() if k != "webhook_s"}, "webhook_s": args.webhook_s,
              "demand": asdict(demand)}
    with EmbeddedRedis() as server:
        real = asyncio.run(closed_loop(args, server.url, sc))
    polling = {ch: t.as_dict() for ch, t in simulate_polling(sc, CHANNELS).items()}
    flash = Scenario(sc.stock, [b for b in sc.buyers if b.sku == FLASH_SKU], [])  # (SKUs are independent there)
    for ch, t in simulate_polling(flash, CHANNELS).items():
        polling[ch]["oversold_flash_units"] = t.oversold_units
    result.update(redis=real.pop("redis"), systems={"stocksync": real.pop("channels"), "polling": polling}, **real)
    result["totals"] = {name: totals(s) for name, s in result["systems"].items()}
    print(render(result))
    write(Path(args.out), result, args.label)
    return 0


def write(path: Path, result: dict, label: str | None) -> None:
    """The run's JSON at path; with a label, kept beside the other labelled runs of that file."""
    doc = result
    if label:
        doc = orjson.loads(path.read_bytes()) if path.exists() else {}
        doc.setdefault("runs", {})[label] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    log(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
