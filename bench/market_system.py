"""The system the market benchmark runs against, each part a real process: an embedded Redis (started by the
caller), the three marketplace simulators with their real limits (`--realistic`: Shopify 100 cost points/s
and 250 SKUs a call, Amazon 5 patch calls/s burst 10, Flipkart 10 SKUs a call, 20 +- 10 ms a call), the
API (`stocksync serve`, receiving the simulators' signed order webhooks) and one worker per channel.

Seeding: every SKU is set through stocksync_set, the simulators are seeded with the same quantities
(`POST /_sim/seed`), each channel's pushed versions are recorded as a resync would, and the groups start
at "$": the run starts with every channel listing the canonical quantity, as after a finished initial
sync (pushing 10,000 SKUs to Amazon one a call would take half an hour).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson

from consumers.groups import ensure_groups
from stocksync.embedded import free_port
from stocksync.settings import Settings
from stocksync.store import StockStore

CHANNELS = ("shopify", "amazon", "flipkart")
ROOT = Path(__file__).resolve().parent.parent
SEED_BATCH = 2_000


def post_json(url: str, body: dict, headers: dict | None = None) -> dict:
    req = urllib.request.Request(url, data=orjson.dumps(body), method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=60) as r:
        return orjson.loads(r.read())


def get_json(url: str) -> dict | list:
    with urllib.request.urlopen(url, timeout=120) as r:
        return orjson.loads(r.read())


class MarketSystem:
    """Start with `start(stock)`, stop with `stop()` (safe to call twice, and after a failed start)."""

    def __init__(self, redis_url: str, buffer: str, webhook_s: dict[str, float], loop: str,
                 oversell_target: float = 1.0) -> None:
        self.redis_url, self.buffer, self.webhook_s, self.loop = redis_url, buffer, webhook_s, loop
        self.oversell_target = oversell_target
        self.prefix = f"market{int(time.time())}"
        self.dir = Path(tempfile.mkdtemp(prefix="stocksync-market-"))
        self.token = "bench-" + secrets.token_hex(8)
        self.env = {**os.environ, "REDIS_URL": redis_url, "STOCKSYNC_PREFIX": self.prefix,
                    "STOCKSYNC_CONFIG": str(self.dir / "stocksync.toml"), "STOCKSYNC_LOOP": loop,
                    "BENCH_API_TOKEN": self.token, "BENCH_SHOPIFY_TOKEN": "shpat_stocksync_simulator",
                    "BENCH_AMAZON_TOKEN": "Atza|stocksync-simulator", "BENCH_FLIPKART_TOKEN": "flipkart-stocksync-simulator",
                    "BENCH_SHOPIFY_SECRET": secrets.token_hex(12), "BENCH_AMAZON_SECRET": secrets.token_hex(12),
                    "BENCH_FLIPKART_APP_ID": "bench-app", "BENCH_FLIPKART_SECRET": secrets.token_hex(12)}
        self.sims: dict[str, dict] = {}  # name -> the simulator's description (url, ids)
        self.procs: dict[str, subprocess.Popen] = {}
        self.api_url = ""
        self.store: StockStore | None = None

    @property
    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.procs.items()}

    async def start(self, stock: dict[str, int]) -> None:
        for name in CHANNELS:
            self._start_sim(name)
        self.api_url = f"http://127.0.0.1:{free_port()}"
        (self.dir / "stocksync.toml").write_text(self._toml())
        self.store = await StockStore.connect(Settings(redis_url=self.redis_url, prefix=self.prefix))
        await self.store.redis.execute_command("CONFIG", "SET", "save", "")
        await self._seed(stock)
        self.procs["api"] = self._spawn("api", "serve", "--host", "127.0.0.1", "--port", self.api_url.rsplit(":", 1)[1])
        for name in CHANNELS:
            self.procs[f"worker-{name}"] = self._spawn(f"worker-{name}", "worker", "--channel", name)
        await self._wait_ready(time.monotonic() + 60)
        self._hook_webhooks()

    def _start_sim(self, name: str) -> None:
        argv = [sys.executable, "-m", "stocksync.devtools.simulators", name, "--port", "0", "--json", "--realistic",
                "--server", "aiohttp", "--loop", self.loop]
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=(self.dir / f"sim-{name}.log").open("wb"))
        self.procs[f"sim-{name}"] = proc
        self.sims[name] = orjson.loads(proc.stdout.readline())[name]

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.dir / f"{name}.log").open("wb")
        return subprocess.Popen([sys.executable, "-m", "stocksync", "--log-level", "warning", *args], cwd=ROOT,
                                env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def _toml(self) -> str:
        s, a, f = self.sims["shopify"], self.sims["amazon"], self.sims["flipkart"]
        buffer = f'"auto"\noversell_target = {self.oversell_target}' if self.buffer == "auto" else self.buffer
        return f"""# Written by bench/market.py
[api.tokens.bench]
env = "BENCH_API_TOKEN"
scopes = ["*"]

[worker]
heartbeat_ms = 250
trim_interval_ms = 0

[channels.shopify]
kind = "shopify"
url = "{s['url']}"
buffer = {buffer}
credentials = {{ token = "BENCH_SHOPIFY_TOKEN", webhook_secret = "BENCH_SHOPIFY_SECRET" }}
options = {{ location_id = "{s['location_id']}" }}

[channels.amazon]
kind = "amazon"
url = "{a['url']}"
buffer = {buffer}
credentials = {{ access_token = "BENCH_AMAZON_TOKEN", webhook_token = "BENCH_AMAZON_SECRET" }}
options = {{ seller_id = "{a['seller_id']}", marketplace_id = "{a['marketplace_id']}" }}

[channels.flipkart]
kind = "flipkart"
url = "{f['url']}"
buffer = {buffer}
credentials = {{ access_token = "BENCH_FLIPKART_TOKEN", app_id = "BENCH_FLIPKART_APP_ID", app_secret = "BENCH_FLIPKART_SECRET" }}
options = {{ location_id = "{f['location_id']}", product_id_format = "{{sha}}", notification_url = "{self.api_url}/webhooks/flipkart" }}
"""

    async def _seed(self, stock: dict[str, int]) -> None:
        """Canonical quantities, the simulators' listings and each channel's pushed versions, alike."""
        store, keys = self.store, self.store.keys
        items = list(stock.items())
        for i in range(0, len(items), SEED_BATCH):
            chunk = items[i : i + SEED_BATCH]
            async with store.redis.pipeline(transaction=False) as pipe:
                for sku, qty in chunk:
                    p = keys.partition(sku)
                    pipe.execute_command("FCALL", "stocksync_set", 3, keys.sku(sku), keys.events(p),
                                         keys.idem(p, f"seed-{sku}"), qty, "seed", f"seed-{sku}")
                replies = await pipe.execute()
            async with store.redis.pipeline(transaction=False) as pipe:
                for (sku, _), reply in zip(chunk, replies, strict=True):
                    for ch in CHANNELS:
                        pipe.hset(keys.pushed(keys.partition(sku), ch), sku, int(reply[2]))
                await pipe.execute()
            for sim in self.sims.values():
                await asyncio.to_thread(post_json, sim["url"] + "/_sim/seed", dict(chunk))
        for ch in CHANNELS:  # at "$": the seeding is history the channels already have (see above)
            await ensure_groups(store.redis, keys, ch, start_id="$")

    async def _wait_ready(self, deadline: float) -> None:
        keys = self.store.keys
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    tail = (self.dir / f"{name}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")
            try:
                api = get_json(self.api_url + "/readyz") is not None
            except OSError:
                api = False
            beating = all([await self.store.redis.hlen(keys.channel_status(ch)) for ch in CHANNELS])
            if api and beating:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API or a worker was not ready in time; logs in {self.dir}")
            await asyncio.sleep(0.1)

    def _hook_webhooks(self) -> None:
        """Each simulator sends its order webhooks to the API, signed as the marketplace signs, webhook_s late."""
        e = self.env
        options = {"shopify": {"secret": e["BENCH_SHOPIFY_SECRET"]}, "amazon": {"secret": e["BENCH_AMAZON_SECRET"]},
                   "flipkart": {"secret": e["BENCH_FLIPKART_SECRET"], "app_id": e["BENCH_FLIPKART_APP_ID"]}}
        for name, sim in self.sims.items():
            post_json(sim["url"] + "/_sim/webhooks", {"url": f"{self.api_url}/webhooks/{name}", **options[name]})
            post_json(sim["url"] + "/_sim/market", {"late_s": self.webhook_s[name]})

    async def stop(self, keep_logs: bool = False) -> None:
        """Stop every process; the work directory (config, logs) goes unless keep_logs (a failed run)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        if self.store is not None:
            await self.store.redis.execute_command("FLUSHDB")
            await self.store.close()
            self.store = None
        if not keep_logs:
            shutil.rmtree(self.dir, ignore_errors=True)
