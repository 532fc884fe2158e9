"""The whole system on one machine, for `stocksync demo`: Redis, the marketplace simulators, the API, workers.

    with Sandbox(settings, say) as box:      # everything up and ready, or an exception
        box.api_url, box.token, box.sims["amazon"], box.pids, ...
    # everything stopped: child processes ended, simulator threads joined, the embedded Redis removed

Redis is the embedded one (stocksync.embedded) unless REDIS_URL is set; with cluster=True an embedded Redis
Cluster of CLUSTER_PRIMARIES primaries with a replica each (CLUSTER_PARTITIONS partitions); the simulators run in this
process (threads, so their recorded calls can be read directly); the API (`stocksync serve`) and one
`stocksync worker -c <channel>` per channel are child processes in their own sessions, configured through
a TOML file and environment variables in a temporary folder, their logs in that folder. Children are
stopped with SIGTERM (SIGKILL after a grace period) in reverse order of start.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import redis
import redis.sentinel

from stocksync.channels import KINDS
from stocksync.embedded import EmbeddedCluster, EmbeddedRedis, EmbeddedSentinel, free_port
from stocksync.keys import Keys
from stocksync.sentinel import is_sentinel_url
from stocksync.sentinel import parse as parse_sentinel_url
from stocksync.settings import Settings

from .simulators import SIMULATORS, Simulator, serve

CHANNELS = tuple(k.name for k in KINDS.values() if k.orders_in)  # the marketplaces: they sell
STOP_GRACE_S = 10.0
CLUSTER_PRIMARIES, CLUSTER_PARTITIONS = 3, 12  # 4 partitions a primary, as the README advises


def sync_client(settings: Settings) -> redis.Redis | redis.RedisCluster:
    """A blocking client for the sandbox's own reads (readiness, clean-up), cluster- and Sentinel-aware."""
    if is_sentinel_url(settings.redis_url):
        hosts, service, db, _ = parse_sentinel_url(settings.redis_url)
        return redis.sentinel.Sentinel(hosts).master_for(service, db=db, decode_responses=True)
    if settings.cluster:
        return redis.RedisCluster.from_url(settings.redis_url, decode_responses=True)
    return redis.Redis.from_url(settings.redis_url, decode_responses=True)


class SandboxError(RuntimeError):
    pass


class Sandbox:
    def __init__(self, settings: Settings, say: Callable[[str], None], *, private_prefix: bool | None = None,
                 cluster: bool = False, node_timeout_ms: int = 3000, sentinel: bool = False) -> None:
        self.sentinel = sentinel  # one primary, one replica and a Sentinel (down after node_timeout_ms)
        self.node_timeout_ms = node_timeout_ms  # (a cluster's: how soon a dead primary's replica takes over)
        external = bool(os.environ.get("REDIS_URL")) and not cluster and not sentinel
        if cluster:
            settings = settings.with_(cluster=True, partitions=CLUSTER_PARTITIONS)
        if private_prefix is None:  # never write into a real deployment's keys
            private_prefix = external
        if private_prefix:
            settings = settings.with_(prefix=f"demo-{secrets.token_hex(4)}")
        self.settings = settings.with_(sections={})
        self.external = external
        self.say = say
        self.keys = Keys(self.settings.prefix, self.settings.partitions)
        self.dir = Path(tempfile.mkdtemp(prefix="stocksync-demo-"))
        self.token = "demo-" + secrets.token_urlsafe(12)
        self.env = {
            "STOCKSYNC_DEMO_TOKEN": self.token,
            "DEMO_SHOPIFY_TOKEN": "shpat_stocksync_simulator",
            "DEMO_SHOPIFY_WEBHOOK_SECRET": "shpss_" + secrets.token_hex(8),
            "DEMO_AMAZON_TOKEN": "Atza|stocksync-simulator",
            "DEMO_AMAZON_WEBHOOK_TOKEN": secrets.token_hex(12),
            "DEMO_FLIPKART_TOKEN": "flipkart-stocksync-simulator",
            "DEMO_FLIPKART_APP_ID": "demo-app",
            "DEMO_FLIPKART_APP_SECRET": secrets.token_hex(12),
        }
        self.sims: dict[str, Simulator] = {}
        self.sim_urls: dict[str, str] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.redis_server: EmbeddedRedis | EmbeddedCluster | EmbeddedSentinel | None = None
        self.api_url = ""
        self._stack = contextlib.ExitStack()

    # ----- what the demo reads ---------------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        return self.settings.redis_url

    @property
    def config_path(self) -> Path:
        return self.dir / "stocksync.toml"

    @property
    def env_path(self) -> Path:
        """The settings and credentials the children run with, for a shell: `set -a; . <this>; set +a`."""
        return self.dir / "demo.env"

    @property
    def pids(self) -> dict[str, int]:
        out = {}
        if isinstance(self.redis_server, EmbeddedCluster | EmbeddedSentinel):
            out = {f"redis-{n.port}": n.proc.pid for n in self.redis_server.nodes if n.proc}
        elif self.redis_server and self.redis_server.proc:
            out = {"redis": self.redis_server.proc.pid}
        out.update({name: p.pid for name, p in self.procs.items()})
        return out

    @property
    def webhook_secrets(self) -> dict[str, str]:
        e = self.env
        return {"shopify": e["DEMO_SHOPIFY_WEBHOOK_SECRET"], "amazon": e["DEMO_AMAZON_WEBHOOK_TOKEN"],
                "flipkart_app_id": e["DEMO_FLIPKART_APP_ID"], "flipkart_app_secret": e["DEMO_FLIPKART_APP_SECRET"]}

    # ----- start and stop --------------------------------------------------------------------------

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Sandbox:
        """Start everything and wait until the API answers /readyz and every worker has written its
        heartbeat; on any failure, stop what was started and raise."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        started = time.monotonic()
        self._start_redis()

        for name in CHANNELS:
            cls = SIMULATORS[name]
            sim = cls(cls.realistic_faults())
            self.sims[name] = sim
            self.sim_urls[name] = self._stack.enter_context(serve(sim))
        limits = "20-30 ms per call; Amazon 5 requests/s, Shopify 100 cost points/s"
        self.say("  simulators  " + ", ".join(f"{n} {u}" for n, u in self.sim_urls.items()) + f"\n              ({limits})")

        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        self.config_path.write_text(self._toml())
        settings_env = {k: v for k, v in self.child_env().items() if k in self.env or k.startswith(("REDIS_URL", "STOCKSYNC_"))}
        self.env_path.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(settings_env.items())))
        self.procs["api"] = self._spawn("api", "serve", "--host", "127.0.0.1", "--port", str(port))
        for name in CHANNELS:
            self.procs[f"worker-{name}"] = self._spawn(f"worker-{name}", "worker", "--channel", name)
        self._wait_ready(deadline=time.monotonic() + 30)
        self.say(f"  API         stocksync serve on {self.api_url} (pid {self.procs['api'].pid})")
        self.say("  workers     " + ", ".join(f"stocksync worker -c {n} (pid {self.procs['worker-' + n].pid})"
                                            for n in CHANNELS))
        self.say(f"  child pids: {' '.join(str(p) for p in self.pids.values())}")
        self.say(f"  ready in {time.monotonic() - started:.1f} s (logs in {self.dir})")

    def _start_redis(self) -> None:
        (self.dir / "redis").mkdir()
        if self.external:
            self.say(f"  Redis       {self.redis_url} (REDIS_URL), key prefix {self.settings.prefix}")
        elif self.sentinel:
            self.redis_server = EmbeddedSentinel(replicas=1, down_after_ms=self.node_timeout_ms)
            self.redis_server.start()
            self.settings = self.settings.with_(redis_url=self.redis_server.url)
            self.say(f"  Redis       a primary and a replica behind a Sentinel: {self.redis_url} (embedded)")
        elif self.settings.cluster:
            self.redis_server = EmbeddedCluster(CLUSTER_PRIMARIES, replicas=1, directory=str(self.dir / "redis"),
                                                node_timeout_ms=self.node_timeout_ms)
            self.redis_server.start()
            self.settings = self.settings.with_(redis_url=self.redis_server.url)
            name = os.path.basename(self.redis_server.nodes[0].binary)
            ports = ", ".join(str(n.port) for n in self.redis_server.nodes)
            self.say(f"  Redis       {name} Cluster: {CLUSTER_PRIMARIES} primaries + {CLUSTER_PRIMARIES} replicas on "
                     f"127.0.0.1 ports {ports} (embedded), {self.settings.partitions} partitions")
        else:
            self.redis_server = EmbeddedRedis(directory=str(self.dir / "redis"))
            self.redis_server.start()
            self.settings = self.settings.with_(redis_url=self.redis_server.url)
            name = os.path.basename(self.redis_server.binary)
            self.say(f"  Redis       {name} on {self.redis_url} (embedded, pid {self.redis_server.proc.pid})")
        with sync_client(self.settings) as r:
            r.ping()

    def child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSYNC_")}
        env.update(self.env, REDIS_URL=self.redis_url, STOCKSYNC_PREFIX=self.settings.prefix,
                   STOCKSYNC_PARTITIONS=str(self.settings.partitions), STOCKSYNC_CONFIG=str(self.config_path))
        if self.settings.cluster:
            env["STOCKSYNC_CLUSTER"] = "1"
        if self.settings.durability != "local":  # (the children acknowledge as the sandbox's settings say)
            env.update(STOCKSYNC_DURABILITY=self.settings.durability, STOCKSYNC_MIN_REPLICAS=str(self.settings.min_replicas),
                       STOCKSYNC_DURABILITY_TIMEOUT_MS=str(self.settings.durability_timeout_ms))
        return env

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 - closed once the process is stopped
        self._stack.callback(log.close)
        return subprocess.Popen([sys.executable, "-m", "stocksync", *args], env=self.child_env(),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # Ctrl-C reaches us only; we stop them in order

    def _wait_ready(self, deadline: float) -> None:
        api_ready = False
        with sync_client(self.settings) as r:
            while True:
                for name, proc in self.procs.items():
                    if proc.poll() is not None:
                        raise SandboxError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
                if not api_ready:
                    with contextlib.suppress(OSError, urllib.error.URLError):
                        with urllib.request.urlopen(self.api_url + "/readyz", timeout=1) as reply:
                            api_ready = reply.status == 200
                beating = all(r.hlen(self.keys.channel_status(n)) for n in CHANNELS)
                if api_ready and beating:
                    return
                if time.monotonic() > deadline:
                    raise SandboxError("the API or a worker did not become ready in 30 s; logs in " + str(self.dir))
                time.sleep(0.05)

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Stop everything; safe to call twice. Children first (newest first), then simulators, then Redis."""
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(list(self.procs.values())):
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        self._stack.close()
        if self.external:
            with contextlib.suppress(redis.RedisError):
                self._delete_keys()
        if self.redis_server is not None:
            self.redis_server.stop()
            self.redis_server = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def _delete_keys(self) -> None:
        prefix = self.settings.prefix
        with sync_client(self.settings) as r:
            keys = [k for pattern in (f"\\{{{prefix}:*", f"{prefix}:*") for k in r.scan_iter(match=pattern, count=1000)]
            for key in keys:  # (one by one: a cluster refuses a DEL of keys in several slots)
                r.delete(key)

    # ----- the configuration file ------------------------------------------------------------------

    def _toml(self) -> str:
        s, a, f = self.sim_urls["shopify"], self.sim_urls["amazon"], self.sim_urls["flipkart"]
        shop, amazon, flipkart = self.sims["shopify"], self.sims["amazon"], self.sims["flipkart"]
        return f"""# Written by `stocksync demo`: the simulators stand in for the marketplaces.
[api.tokens.demo]
env = "STOCKSYNC_DEMO_TOKEN"
scopes = ["*"]

[worker]
block_ms = 500
heartbeat_ms = 500

[channels.shopify]
kind = "shopify"
url = "{s}"
credentials = {{ token = "DEMO_SHOPIFY_TOKEN", webhook_secret = "DEMO_SHOPIFY_WEBHOOK_SECRET" }}
# Shopify's orders read back every second (a deployment: every minute or so), a lost webhook's order
# found within about a second; settle_s short for the demo's pace.
poll_s = 1
options = {{ location_id = "{shop.location_id}", settle_s = 0.3, poll_overlap_s = 5 }}

[channels.amazon]
kind = "amazon"
url = "{a}"
credentials = {{ access_token = "DEMO_AMAZON_TOKEN", webhook_token = "DEMO_AMAZON_WEBHOOK_TOKEN" }}
options = {{ seller_id = "{amazon.seller_id}", marketplace_id = "{amazon.marketplace_id}" }}

[channels.flipkart]
kind = "flipkart"
url = "{f}"
credentials = {{ access_token = "DEMO_FLIPKART_TOKEN", app_id = "DEMO_FLIPKART_APP_ID", app_secret = "DEMO_FLIPKART_APP_SECRET" }}
options = {{ location_id = "{flipkart.location_id}", product_id_format = "{{sha}}", notification_url = "{self.api_url}/webhooks/flipkart" }}
"""
