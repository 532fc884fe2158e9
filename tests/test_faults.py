"""Redis faults heal by themselves (issue 13, item 0), with real processes and a real Redis killed with
SIGKILL and started again on the same port and files: the API answers no error once Redis answers again,
a worker started while Redis is down comes up once it starts, an outage writes a bounded number of log
lines, and `status` reads the right lag after an AOF rewrite and a restart."""

from __future__ import annotations

import asyncio
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from consumers.status import channel_status
from consumers.worker import ChannelWorker
from stocksync.devtools.simulators import SIMULATORS, serve
from stocksync.devtools.testing import config, toml_channel, use_simulator_credentials, wait_for
from stocksync.embedded import EmbeddedRedis, free_port
from stocksync.keys import Keys

from .apihelp import ENV, SERVE_CONFIG, auth, post_shopify, shopify_order
from .helpers import fcall, sku_call_keys, stop_process, worker_options
from .helpers import wait_for as wait_until

ROOT = Path(__file__).resolve().parent.parent
AOF = ["--appendonly", "yes", "--appendfsync", "always"]


class Server:
    """A Redis on fixed files and port, killed and started again as a crash and a restart would."""

    def __init__(self, extra=AOF) -> None:
        self.directory = tempfile.mkdtemp(prefix="stocksync-faults-")
        self.extra = list(extra)
        self.redis = EmbeddedRedis(extra=self.extra, directory=self.directory)

    @property
    def url(self) -> str:
        return self.redis.url

    def start(self) -> Server:
        self.redis = EmbeddedRedis(port=self.redis.port, extra=self.extra, directory=self.directory).start()
        return self

    def close(self) -> None:
        self.redis.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def spawn(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stocksync", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=log.open("wb"), env={**os.environ, **env}, start_new_session=True)


def records(log: Path) -> list[dict]:
    """The process's log records; every line is one JSON record (never a bare traceback line)."""
    return [orjson.loads(line) for line in log.read_text().splitlines() if line.strip()]


async def ready(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/readyz")).status_code == 200
    except httpx.TransportError:
        return False


async def adjusts(client: httpx.AsyncClient, n: int) -> list[int]:
    async def one() -> int:
        r = await client.post("/v1/skus/A/adjust", json={"delta": 1}, headers=auth())
        return r.status_code

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def orders(client: httpx.AsyncClient, first: int, n: int) -> list[int]:
    """n Shopify orders of 1 unit of B (ids first..), as signed webhooks, concurrently: their statuses."""
    async def one(order_id: int) -> int:
        return (await post_shopify(client, shopify_order(order_id, [(1, "B", 1)]))).status_code

    return list(await asyncio.gather(*(one(first + i) for i in range(n))))


async def test_the_api_answers_no_error_once_a_restarted_redis_answers(tmp_path, server):
    server.redis.start()
    cfg = tmp_path / "stocksync.toml"
    cfg.write_text(SERVE_CONFIG)
    port, log = free_port(), tmp_path / "api.log"
    api = spawn(["--config", str(cfg), "serve", "--port", str(port)], log,
                {**ENV, "REDIS_URL": server.url, "STOCKSYNC_PREFIX": "faults"})
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            await wait_for(lambda: ready(client), 20, "the API to be ready")
            assert (await client.put("/v1/skus/A", json={"available": 0}, headers=auth())).status_code == 200
            assert (await client.put("/v1/skus/B", json={"available": 1000}, headers=auth())).status_code == 200
            assert await adjusts(client, 40) == [200] * 40  # every pooled connection used
            assert await orders(client, 1, 40) == [200] * 40  # and the intake's (webhooks)
            acked = 40
            lines_at_kill = len(records(log))
            server.redis.kill()
            killed = time.monotonic()
            during = await adjusts(client, 40)  # (each waits through the connection's retries, then 503)
            assert set(during) <= {200, 503}
            acked += during.count(200)
            # an outage of about 7 s in all: longer than the connection's retries (about 5 s)
            await wait_for(lambda: time.monotonic() - killed > 7, 10, "the outage to last", interval=0.2)
            lines_in_outage = len(records(log)) - lines_at_kill
            server.start()
            await wait_for(lambda: ready(client), 20, "/readyz after the restart")
            for i in range(3):  # every request after /readyz said ok, on any pooled connection: no error
                assert await adjusts(client, 40) == [200] * 40
                assert await orders(client, 1000 + 100 * i, 40) == [200] * 40
                acked += 40
            check = redis.Redis.from_url(server.url)
            available = int(check.hget(Keys("faults", 1).sku("A"), "available"))
            assert acked <= available <= acked + during.count(503)  # (a 503 may have been applied: G2 on retry)
            assert int(check.hget(Keys("faults", 1).sku("B"), "available")) == 1000 - 160  # each order taken once
    finally:
        stop_process(api, 15)
    outage = [r for r in records(log) if r.get("outage")]
    assert [r["outage"] for r in outage][:1] == ["started"] and outage[-1]["outage"] == "ended", outage
    # 40 failed requests and failed readiness probes, but a bounded log: start, summaries, end
    assert len(outage) <= 3 and lines_in_outage <= 2, records(log)
    assert not any("exc" in r for r in records(log)), "a traceback was logged"


def test_serve_started_while_redis_is_down_waits_then_serves(tmp_path):
    port, log, cfg = free_port(), tmp_path / "api.log", tmp_path / "stocksync.toml"
    cfg.write_text(SERVE_CONFIG)
    api_port = free_port()
    api = spawn(["--config", str(cfg), "serve", "--port", str(api_port)], log,
                {**ENV, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "STOCKSYNC_PREFIX": "faults"})
    server = EmbeddedRedis(port=port)
    try:
        wait_until(lambda: sum("is not ready" in r["msg"] for r in records(log)) >= 2, 15, what="two attempts logged")
        assert api.poll() is None  # waiting, not exited
        server.start()
        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as client:
            def up() -> bool:
                try:
                    return client.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(up, 20, what="the API to serve once Redis started")
    finally:
        stop_process(api, 15)
        server.stop()
    waits = [r for r in records(log) if "is not ready" in r["msg"]]
    assert all(r["level"] == "warning" and "ConnectionError" in r["msg"] for r in waits)
    assert any("answers (attempt" in r["msg"] for r in records(log))


@pytest.fixture(scope="module")
def amazon():
    use_simulator_credentials()
    sim = SIMULATORS["amazon"]()
    with serve(sim) as url:
        yield sim, url


def worker_config(tmp_path: Path, url: str, prefix: str, sim_url: str) -> Path:
    text = [f'redis_url = "{url}"', f'prefix = "{prefix}"', "", "[worker]", "block_ms = 100",
            "heartbeat_ms = 200", "backoff_base_ms = 20", "backoff_cap_ms = 200", "trim_interval_ms = 0", "",
            toml_channel(config("amazon", sim_url, rate_limit=1000, burst=100))]
    path = tmp_path / "stocksync.toml"
    path.write_text("\n".join(text))
    return path


def beating(url: str, prefix: str, since_ms: int) -> bool:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        beats = client.hgetall(Keys(prefix, 1).channel_status("amazon"))
    except redis.ConnectionError:
        return False
    finally:
        client.close()
    return any(orjson.loads(b)["ts_ms"] > since_ms for b in beats.values())


def test_a_worker_started_while_redis_is_down_comes_up_once_it_starts(tmp_path, amazon):
    port = free_port()
    url, log = f"redis://127.0.0.1:{port}/0", tmp_path / "worker.log"
    worker = spawn(["--config", str(worker_config(tmp_path, url, "wk", amazon[1])), "worker"], log, {})
    server = EmbeddedRedis(port=port)
    try:
        wait_until(lambda: sum("is not ready" in r["msg"] for r in records(log)) >= 2, 15, what="two attempts logged")
        assert worker.poll() is None
        server.start()
        wait_until(lambda: beating(url, "wk", 0), 20, what="the worker's heartbeat")
    finally:
        stop_process(worker, 15)
        server.stop()
    assert not any("exc" in r for r in records(log)), "a traceback was logged"


def test_a_worker_heals_after_a_redis_restart_with_a_bounded_log(tmp_path, server, amazon):
    sim, sim_url = amazon
    sim.reset()
    server.redis.start()
    url, log = server.url, tmp_path / "worker.log"
    client = redis.Redis.from_url(url, decode_responses=True)
    keys = Keys("wh", 1)
    worker = spawn(["--config", str(worker_config(tmp_path, url, "wh", sim_url)), "worker"], log, {})
    try:
        wait_until(lambda: beating(url, "wh", 0), 20, what="the worker's heartbeat")
        for i in range(200):  # a flow of changes of 50 SKUs, pushed while Redis dies
            sku = f"S{i % 50}"
            fcall(client, "stocksync_set", sku_call_keys(keys, sku, f"r{i}"), i, "w", f"r{i}")
        client.close()
        server.redis.kill()
        killed_ms = int(time.time() * 1000)
        wait_until(lambda: time.time() * 1000 - killed_ms > 6000, 10, interval=0.2, what="a 6 s outage")
        server.start()
        wait_until(lambda: beating(url, "wh", killed_ms + 6000), 20, what="the worker's heartbeat after the restart")
        client = redis.Redis.from_url(url, decode_responses=True)
        current = {f"S{i}": int(client.hget(keys.sku(f"S{i}"), "available")) for i in range(50)}
        wait_until(lambda: all(sim.quantities.get(s) == q for s, q in current.items()), 20, what="amazon to converge")
        client.close()
    finally:
        stop_process(worker, 15)
    logged = records(log)
    during = [r for r in logged if int(killed_ms) <= _ms(r["ts"]) and r.get("outage") != "ended"
              and "stopped" not in r["msg"]]
    assert any(r.get("outage") == "started" for r in during) and any(r.get("outage") == "ended" for r in logged)
    assert len(during) <= 8, during  # (was: a traceback per held SKU per second)
    assert not any("exc" in r for r in logged), "a traceback was logged"


def _ms(ts: str) -> int:
    return int(datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


async def test_status_lag_is_right_after_an_aof_rewrite_and_a_restart(server):
    """The server's own `lag` (entries-added - entries-read) is wrong after this sequence; status is not."""
    server.redis.start()
    keys = Keys("lag", 1)
    stream = keys.events(0)
    client = redis.Redis.from_url(server.url, decode_responses=True)
    for i in range(5):
        client.xadd(stream, {"n": i})
    client.xgroup_create(stream, "amazon", id="0")
    client.xreadgroup("amazon", "c", {stream: ">"})
    client.bgrewriteaof()
    await wait_for(lambda: client.info("persistence")["aof_rewrite_in_progress"] == 0, 10, "the rewrite")
    for i in range(3):
        client.xadd(stream, {"n": 5 + i})
    client.xreadgroup("amazon", "c", {stream: ">"})
    client.close()
    server.redis.kill()
    server.start()
    r = AsyncRedis.from_url(server.url, decode_responses=True)
    try:
        status = await channel_status(r, keys, ["amazon"])
        assert status["amazon"]["lag"] == 0 and status["amazon"]["pending"] == 8
        await r.xadd(stream, {"n": 9})
        assert (await channel_status(r, keys, ["amazon"]))["amazon"]["lag"] == 1
    finally:
        await r.aclose()


async def test_heartbeats_of_workers_gone_for_good_are_hidden_then_removed(store, amazon):
    key = store.keys.channel_status("amazon")
    now = int(time.time() * 1000)
    beat = {"heartbeat_ms": 200, "circuit": "closed", "last_push_ms": now - 130_000}
    await store.redis.hset(key, mapping={"gone": orjson.dumps({**beat, "ts_ms": now - 120_000}),  # killed 2 min ago
                                         "late": orjson.dumps({**beat, "ts_ms": now - 5_000})})  # 5 s ago
    status = (await channel_status(store.redis, store.keys, ["amazon"]))["amazon"]
    assert [(w["consumer"], w["alive"]) for w in status["workers"]] == [("late", False)]
    assert status["circuit"] == "no worker" and status["last_push_ms"] == now - 130_000
    worker = ChannelWorker(store.redis, store.keys, config("amazon", amazon[1]), worker_options())
    await worker.heartbeat()  # first seen: not yet known to be unrenewed
    assert "gone" in await store.redis.hkeys(key)
    # A live worker of the channel removes what is gone for good, never its own, once it has seen the
    # heartbeat go unrenewed (3 of its beats) by its own clock. "skewed" is a live worker on a host whose
    # clock is 2 minutes behind: its timestamp looks gone for good, but it renews its heartbeat: kept.
    skewed = {**beat, "heartbeat_ms": 100}
    deadline = time.monotonic() + 10
    while "gone" in await store.redis.hkeys(key) and time.monotonic() < deadline:
        skewed["ts_ms"] = int(time.time() * 1000) - 120_000
        await store.redis.hset(key, "skewed", orjson.dumps(skewed))
        await worker.heartbeat()
        await asyncio.sleep(0.05)  # (the pace of the skewed worker's beats, not a synchronisation)
    assert sorted(await store.redis.hkeys(key)) == sorted(["late", "skewed", worker.state.consumer])


async def test_last_push_moves_only_when_the_channel_accepts_a_call(store, amazon):
    sim, url = amazon
    sim.reset()
    await store.set("LP", 5)
    worker = ChannelWorker(store.redis, store.keys, config("amazon", url, rate_limit=1000, burst=100),
                           worker_options(breaker_threshold=100))
    sim.outage(True)
    task = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: sum(c.outcome == "outage" for c in sim.calls) >= 3, 10, "failed calls")
        assert worker.state.last_push_ms == 0  # (was: moved with every call, failed or not)
        sim.outage(False)
        await wait_for(lambda: sim.quantities.get("LP") == 5, 10, "the push once the channel answers")
        # (the simulator lists it before the worker has read the reply: wait for the worker too)
        await wait_for(lambda: worker.state.last_push_ms > 0, 10, "last push to move with the accepted call")
    finally:
        worker.stop()
        await task

