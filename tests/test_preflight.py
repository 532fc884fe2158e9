"""Start-up checks (stocksync.preflight): `serve` and `worker` refuse in one line, with the README's exit
codes, a Redis they cannot reach, a Redis that can evict their keys, and a credential that is not set;
all before they change anything. The eviction tests run on a private server (the session's is left alone)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from stocksync import preflight
from stocksync.embedded import EmbeddedRedis
from stocksync.settings import Settings

from .test_worker_operations import free_port

ROOT = Path(__file__).resolve().parent.parent
UNREACHABLE = "redis://admin:pw-s3cret@127.0.0.1:1/0"
CHANNELS = """
[channels.amazon]
kind = "amazon"
url = "http://127.0.0.1:9"
credentials = { access_token = "PF_AMAZON_TOKEN", webhook_token = "PF_AMAZON_WEBHOOK" }
options = { seller_id = "A1" }
"""


def run(*args: str, url: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    environment = {**os.environ, "REDIS_URL": url, "PF_AMAZON_TOKEN": "t", "PF_AMAZON_WEBHOOK": "w", **(env or {})}
    return subprocess.run([sys.executable, "-m", "stocksync", *args], capture_output=True, text=True,
                          env=environment, timeout=timeout, cwd=ROOT)


def one_line(out: subprocess.CompletedProcess) -> dict:
    """The process said why in one JSON log line, and nothing else."""
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    record = orjson.loads(lines[0])
    assert record["level"] == "error"
    return record


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "stocksync.toml"
    path.write_text(CHANNELS)
    return path


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["worker"]])
def test_unreachable_redis_is_exit_1_in_one_line_without_the_password(config, command):
    out = run("--config", str(config), *command, url=UNREACHABLE, env={"STOCKSYNC_WAIT_S": "0"})
    assert out.returncode == 1
    assert "Redis at redis://admin:***@127.0.0.1:1/0 is unreachable" in one_line(out)["msg"]
    assert "pw-s3cret" not in out.stderr + out.stdout


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["worker"]])
def test_unreachable_redis_is_waited_for_with_a_line_per_attempt_then_exit_1(config, command):
    out = run("--config", str(config), *command, url=UNREACHABLE, env={"STOCKSYNC_WAIT_S": "2"})
    assert out.returncode == 1
    records = [orjson.loads(line) for line in out.stderr.splitlines()]  # (JSON lines: no traceback)
    waits = [r for r in records if r["level"] == "warning"]
    assert len(waits) >= 2 and all("is not ready" in r["msg"] and "trying again in" in r["msg"] for r in waits)
    assert [r["level"] for r in records] == ["warning"] * len(waits) + ["error"], out.stderr
    assert "is unreachable" in records[-1]["msg"] and "pw-s3cret" not in out.stderr


def test_a_worker_without_its_credential_is_exit_2_naming_the_variable_before_it_connects(config):
    out = run("worker", "--config", str(config), url=UNREACHABLE, env={"PF_AMAZON_TOKEN": ""})
    assert out.returncode == 2  # (not 1: refused before it tried Redis)
    assert one_line(out)["msg"] == ("channel amazon: environment variable PF_AMAZON_TOKEN (credential "
                                    "'access_token') is not set")


def test_a_worker_whose_credential_is_not_named_says_where_to_name_it(tmp_path):
    config = tmp_path / "stocksync.toml"
    config.write_text(CHANNELS.replace('access_token = "PF_AMAZON_TOKEN", ', ""))
    out = run("worker", "--config", str(config), url=UNREACHABLE)
    assert out.returncode == 2 and "no credential 'access_token' configured" in one_line(out)["msg"]


def test_serve_with_a_webhook_secret_named_but_not_set_is_exit_2(config):
    out = run("serve", "--config", str(config), "--port", "0", url=UNREACHABLE, env={"PF_AMAZON_WEBHOOK": ""})
    assert out.returncode == 2
    assert one_line(out)["msg"] == ("channel amazon: environment variable PF_AMAZON_WEBHOOK (credential "
                                    "'webhook_token') is not set")


@pytest.fixture(scope="module")
def private_redis():
    """A server of this module's own: its maxmemory-policy is changed freely."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def policy(private_redis):
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)

    def set_policy(name: str) -> None:
        client.config_set("maxmemory-policy", name)

    yield set_policy
    client.config_set("maxmemory-policy", "noeviction")
    client.flushall()
    client.close()


@pytest.mark.parametrize("name", ["allkeys-lru", "volatile-ttl", "volatile-lfu", "allkeys-random"])
@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["worker"]])
def test_a_policy_that_can_evict_keys_is_refused_with_the_reason(config, private_redis, policy, name, command):
    policy(name)
    out = run("--config", str(config), *command, url=private_redis.url)
    assert out.returncode == 2
    msg = one_line(out)["msg"]
    assert f"maxmemory-policy can evict stocksync's keys (redis: {name})" in msg
    for reason in ("apply exactly once", "push leases", "noeviction", "STOCKSYNC_ALLOW_EVICTION=1"):
        assert reason in msg
    assert redis.Redis.from_url(private_redis.url).dbsize() == 0  # refused before anything was written


def test_serve_starts_on_an_evicting_policy_when_told_to_and_warns(config, private_redis, policy):
    policy("volatile-lru")
    port = free_port()
    env = {**os.environ, "REDIS_URL": private_redis.url, "PF_AMAZON_TOKEN": "t", "PF_AMAZON_WEBHOOK": "w",
           "STOCKSYNC_ALLOW_EVICTION": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "stocksync", "serve", "--config", str(config), "--port", str(port)],
                            env=env, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    warnings = [r for r in map(orjson.loads, err.splitlines()) if r["level"] == "warning"]
    assert any("volatile-lru" in r["msg"] and "starting anyway" in r["msg"] for r in warnings), err


async def test_check_eviction_reads_every_policy_and_accepts_noeviction(private_redis, policy):
    settings = Settings(redis_url=private_redis.url)
    assert await preflight.check(settings) == {"redis": "noeviction"}
    policy("allkeys-lfu")
    with pytest.raises(preflight.EvictionRefused):
        await preflight.check(settings)
    assert await preflight.check(settings.with_(allow_eviction=True)) == {"redis": "allkeys-lfu"}


async def test_a_server_that_hides_its_config_is_accepted_with_a_warning(caplog):
    with EmbeddedRedis(extra=["--rename-command", "CONFIG", ""]) as server:
        with caplog.at_level(logging.WARNING, logger="stocksync.preflight"):
            assert await preflight.check(Settings(redis_url=server.url)) == {}
    assert "could not read Redis's maxmemory-policy" in caplog.text


@pytest.mark.cluster
async def test_check_eviction_asks_every_primary_of_a_cluster(cluster):
    settings = Settings(redis_url=cluster.url, cluster=True)
    found = await preflight.check(settings)
    assert len(found) == 3 and set(found.values()) == {"noeviction"}
    node = redis.Redis(port=cluster.nodes[1].port, decode_responses=True)  # (restored below)
    try:
        node.config_set("maxmemory-policy", "volatile-lru")
        with pytest.raises(preflight.EvictionRefused, match=r"127\.0\.0\.1:\d+: volatile-lru"):
            await preflight.check(settings)
    finally:
        node.config_set("maxmemory-policy", "noeviction")
        node.close()
