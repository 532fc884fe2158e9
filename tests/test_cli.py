"""The command line, run as a user runs it: a real process against a real server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
import redis

from stocksync.channels import parse_channel
from stocksync.metrics import Metrics
from stocksync.orders.intake import Intake
from stocksync.orders.webhooks import Delivery, Line
from stocksync.store import StockStore


def stocksync(settings, *args, env=None, timeout=30):
    environment = {**os.environ, "REDIS_URL": settings.redis_url, "STOCKSYNC_PREFIX": settings.prefix, **(env or {})}
    return subprocess.run([sys.executable, "-m", "stocksync", *args], capture_output=True, text=True,
                          env=environment, timeout=timeout)


def test_sku_set_get_adjust(settings):
    assert stocksync(settings, "sku", "set", "MUG", "10").returncode == 0
    out = stocksync(settings, "sku", "adjust", "MUG", "-3", "--ref", "count-1")
    assert out.returncode == 0 and "available=7 version=2" in out.stdout
    again = stocksync(settings, "sku", "adjust", "MUG", "-3", "--ref", "count-1")
    assert "available=7 version=2 (replayed)" in again.stdout
    got = stocksync(settings, "sku", "get", "MUG")
    assert got.returncode == 0 and "available=7" in got.stdout and "version=2" in got.stdout
    conflict = stocksync(settings, "sku", "set", "MUG", "1", "--expected-version", "1")
    assert conflict.returncode == 1 and "conflict" in conflict.stdout


@pytest.mark.parametrize("args,message", [
    (("sku", "set", "MUG", "-1"), "available must be between"),
    (("sku", "adjust", "MUG", "0"), "delta must not be 0"),
    (("sku", "set", "MUG", "ten"), "invalid int value"),
    (("sku", "get"), "the following arguments are required"),
])
def test_bad_input_exits_2_with_a_message(settings, args, message):
    out = stocksync(settings, *args)
    assert out.returncode == 2 and message in out.stderr
    assert "available=" not in stocksync(settings, "sku", "get", "MUG").stdout


def test_unknown_sku_and_bad_settings(settings):
    out = stocksync(settings, "sku", "get", "NOPE")
    assert out.returncode == 1 and "unknown SKU" in out.stderr
    bad = stocksync(settings, "sku", "get", "X", env={"STOCKSYNC_PARTITIONS": "lots"})
    assert bad.returncode == 2 and "partitions must be an integer" in bad.stderr


def test_unreachable_redis_does_not_leak_the_password(settings):
    url = "redis://user:s3cret-pw@127.0.0.1:1/0"
    out = stocksync(settings.with_(redis_url=url), "sku", "get", "X")
    assert out.returncode == 1 and "s3cret-pw" not in out.stderr + out.stdout
    assert out.stderr.strip() == out.stderr.strip().splitlines()[0]  # one line, no traceback
    assert "Redis at redis://user:***@127.0.0.1:1/0 is unreachable" in out.stderr


def test_functions_load_reports_per_node(settings):
    out = stocksync(settings, "functions", "load", "--force")
    assert out.returncode == 0 and "replaced" in out.stdout


def test_tail_prints_one_line_per_event(settings):
    stocksync(settings, "sku", "set", "MUG", "5", "--ref", "r1")
    stocksync(settings, "sku", "adjust", "MUG", "-2", "--ref", "r2")
    proc = subprocess.Popen([sys.executable, "-m", "stocksync", "tail", "--from", "0"], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "REDIS_URL": settings.redis_url,
                                            "STOCKSYNC_PREFIX": settings.prefix})
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert "MUG +5 -> 5 v1" in lines[0] and "MUG -2 -> 3 v2" in lines[1] and "ref=r2" in lines[1]


def test_redis_command_serves_until_stopped():
    proc = subprocess.Popen([sys.executable, "-m", "stocksync", "redis"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("redis://127.0.0.1:")
        client = redis.Redis.from_url(url)
        assert client.ping()
        client.close()
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0


def test_rejections_list_apply_and_resolve(settings, tmp_path, sync_redis):
    """An order line with an unknown SKU is listed with its action; once mapped, `apply` takes it."""
    config = tmp_path / "stocksync.toml"
    config.write_text('[channels.amazon]\nkind = "amazon"\nurl = "http://127.0.0.1:9/amazon"\n')
    channel = parse_channel("amazon", {"kind": "amazon", "url": "http://127.0.0.1:9/amazon"})

    async def deliver() -> None:
        async with await StockStore.connect(settings) as store:
            await store.set("MUG", 5, source="test")
            await Intake(store, Metrics()).apply(channel, Delivery(None, "test", takes=[
                Line("111-7:i1", "111-7", "i1", "AMZ-MUG", 2), Line("111-7:i2", "111-7", "i2", "MUG", 9)]))

    asyncio.run(deliver())
    listed = stocksync(settings, "--config", str(config), "rejections", "list")
    assert listed.returncode == 0
    assert "line i1: 2 x AMZ-MUG -> unknown_sku: fix_map" in listed.stdout
    assert "line i2: 9 x MUG -> insufficient: cancel" in listed.stdout
    assert stocksync(settings, "--config", str(config), "rejections", "apply", "amazon", "111-7").returncode == 1
    sync_redis.hset(f"{settings.prefix}:skumap:amazon", "AMZ-MUG", "MUG")
    applied = stocksync(settings, "--config", str(config), "rejections", "apply", "amazon", "111-7")
    assert applied.returncode == 0 and "line i1: ok" in applied.stdout
    assert "available=3" in stocksync(settings, "sku", "get", "MUG").stdout
    bad = stocksync(settings, "--config", str(config), "rejections", "apply", "ebay", "111-7")
    assert bad.returncode == 2 and "no channel named 'ebay' is configured (configured: amazon)" in bad.stderr
    resolved = stocksync(settings, "--config", str(config), "rejections", "resolve", "amazon", "111-7")
    assert resolved.returncode == 0 and "resolved" in resolved.stdout
    assert "0 order(s)" in stocksync(settings, "--config", str(config), "rejections", "list").stderr
