"""What the API gives an operator: /metrics with every channel's numbers read from Redis (and
stocksync_build_info, stocksync_redis_up), JSON logs with an access log (duration, request id), the
--workers warning; and the logging module itself (one formatter, context fields, passwords masked)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from consumers import groups
from stocksync import library, logs
from stocksync.embedded import EmbeddedRedis
from stocksync.settings import Settings

from .apihelp import ENV, SERVE_CONFIG, api_settings, auth, running
from .test_worker_operations import free_port

pytestmark = pytest.mark.usefixtures("api_env")


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_export_every_channels_numbers_from_redis(settings, store):
    for i in range(3):
        await store.set(f"M{i}", 5, source="t")
    await groups.ensure_groups(store.redis, store.keys, "amazon", "0")
    stream = store.keys.events(0)
    [(_, entries)] = await store.redis.xreadgroup("amazon", "c1", {stream: ">"}, count=2)
    await library.dead_letter(store.keys, 0, "amazon", "M0", 1, "permanent", 1, "refused",
                              [entries[0][0]]).run(store.redis)
    async with running(api_settings(settings)) as client:
        r = await client.get("/metrics")
    assert r.status_code == 200
    m = samples(r.text)
    amazon = (("channel", "amazon"),)
    assert m[("stocksync_channel_pending_entries", amazon)] == 1  # two delivered, one dead-lettered
    assert m[("stocksync_channel_lag_entries", amazon)] == 1
    assert m[("stocksync_channel_dead_letters", amazon)] == 1
    assert m[("stocksync_channel_oldest_pending_age_seconds", amazon)] >= 0
    assert m[("stocksync_channel_workers", amazon)] == 0
    assert m[("stocksync_channel_circuit_state", (("channel", "amazon"), ("state", "no_worker")))] == 1
    assert m[("stocksync_channel_circuit_state", (("channel", "amazon"), ("state", "closed")))] == 0
    assert ("stocksync_channel_pending_entries", (("channel", "shopify"),)) in m  # no group yet: 0, still there
    assert m[("stocksync_redis_up", ())] == 1
    [info] = [labels for name, labels in m if name == "stocksync_build_info"]
    assert dict(info)["version"] and dict(info)["library_version"] and dict(info)["python"]


async def test_metrics_answer_without_redis_and_say_so():
    with EmbeddedRedis() as server:
        async with running(api_settings(Settings(redis_url=server.url, prefix="obs"))) as client:
            server.stop()
            r = await client.get("/metrics")
    assert r.status_code == 200
    m = samples(r.text)
    assert m[("stocksync_redis_up", ())] == 0
    assert not [name for name, _ in m if name.startswith("stocksync_channel_")]


def start_serve(tmp_path, redis_url, prefix, *args, env=None) -> tuple[subprocess.Popen, str]:
    config = tmp_path / "stocksync.toml"
    config.write_text(SERVE_CONFIG)
    port = free_port()
    environment = {**os.environ, **ENV, "REDIS_URL": redis_url, "STOCKSYNC_PREFIX": prefix, **(env or {})}
    if "PROMETHEUS_MULTIPROC_DIR" not in (env or {}):
        environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "stocksync", "serve", "--config", str(config), "--port", str(port),
                             *args], env=environment, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "serve did not become ready"
        time.sleep(0.05)


def stop(proc: subprocess.Popen) -> list[dict]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    return [orjson.loads(line) for line in err.splitlines() if line.strip()]


def test_the_access_log_has_duration_and_request_id(tmp_path, redis_url, prefix):
    proc, base = start_serve(tmp_path, redis_url, prefix, "--access-log")
    try:
        mine = httpx.get(base + "/healthz", headers={"X-Request-ID": "req-42.a"})
        assert mine.headers["x-request-id"] == "req-42.a"
        theirs = httpx.get(base + "/v1/skus/NOPE?token=secret-in-query", headers=auth(key=False))
        made = theirs.headers["x-request-id"]
        assert theirs.status_code == 404 and made != mine.headers["x-request-id"]
        again = httpx.get(base + "/healthz").headers["x-request-id"]
        assert again != made and again.split("-")[0] == made.split("-")[0]  # (this process's prefix, a new count)
        bad = httpx.get(base + "/healthz", headers={"X-Request-ID": "no spaces {allowed}"})
        assert bad.headers["x-request-id"] != "no spaces {allowed}"
    finally:
        records = stop(proc)
    access = {r["request_id"]: r for r in records if r["logger"] == "stocksync.access"}
    assert access["req-42.a"]["path"] == "/healthz" and access["req-42.a"]["status"] == 200
    assert isinstance(access["req-42.a"]["duration_ms"], float) and access["req-42.a"]["method"] == "GET"
    other = access[theirs.headers["x-request-id"]]
    assert other["path"] == "/v1/skus/NOPE" and other["status"] == 404
    text = orjson.dumps(records).decode()
    assert "secret-in-query" not in text and ENV["T_TOKEN_ADMIN"] not in text
    assert any(r["msg"].startswith("starting: Settings(") for r in records)


def test_log_level_warning_keeps_the_info_records_out(tmp_path, redis_url, prefix):
    proc, base = start_serve(tmp_path, redis_url, prefix, "--access-log", "--log-level", "warning")
    httpx.get(base + "/healthz")
    records = stop(proc)
    assert not [r for r in records if r["level"] in ("debug", "info")], records  # (at info: starting, requests)


@pytest.mark.parametrize("multiproc", [False, True])
def test_two_processes_without_a_multiproc_dir_warn_once(tmp_path, redis_url, prefix, multiproc):
    env = {}
    if multiproc:
        (tmp_path / "metrics").mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    proc, _ = start_serve(tmp_path, redis_url, prefix, "--workers", "2", env=env)
    warned = [r for r in stop(proc) if "PROMETHEUS_MULTIPROC_DIR" in r["msg"]]
    assert len(warned) == (0 if multiproc else 1)
    if warned:
        assert warned[0]["level"] == "warning" and "2 server processes" in warned[0]["msg"]


# The logging module ------------------------------------------------------------------------------------


def record(msg: str, *args, exc_info=None, **extra) -> logging.LogRecord:
    r = logging.LogRecord("stocksync.test", logging.WARNING, __file__, 1, msg, args, exc_info)
    r.__dict__.update(extra)
    return r


def test_one_json_object_a_line_with_context_and_extras():
    formatter = logs.JsonFormatter()
    with logs.bound(channel="amazon", worker="w-1"):
        doc = orjson.loads(formatter.format(record("pushed %d SKUs", 3, sku_count=3, thing=object())))
    assert doc["level"] == "warning" and doc["logger"] == "stocksync.test" and doc["msg"] == "pushed 3 SKUs"
    assert doc["channel"] == "amazon" and doc["worker"] == "w-1" and doc["sku_count"] == 3
    assert doc["ts"].endswith("Z") and "T" in doc["ts"] and isinstance(doc["thing"], str)
    assert "channel" not in orjson.loads(formatter.format(record("after")))


def test_passwords_of_urls_are_masked_in_messages_and_tracebacks():
    formatter = logs.JsonFormatter()
    try:
        raise ConnectionError("cannot reach redis://admin:hunter2@db:6379/0 nor rediss://:pw2@x")
    except ConnectionError:
        doc = orjson.loads(formatter.format(record("failed: %s", "amqp://u:pw3@h/", exc_info=sys.exc_info())))
    text = orjson.dumps(doc).decode()
    for secret in ("hunter2", "pw2", "pw3"):
        assert secret not in text
    assert "redis://admin:***@db:6379/0" in doc["exc"] and doc["msg"] == "failed: amqp://u:***@h/"
    assert "\n" not in formatter.format(record("x", exc_info=(ValueError, ValueError("a\nb"), None)))


async def test_context_fields_follow_tasks_made_inside_and_stay_there():
    seen = {}

    async def child(name: str) -> None:
        seen[name] = orjson.loads(logs.JsonFormatter().format(record("x"))).get("channel")

    async def worker(channel: str) -> None:
        with logs.bound(channel=channel):
            await asyncio.create_task(child(channel))

    await asyncio.gather(worker("amazon"), worker("shopify"))
    assert seen == {"amazon": "amazon", "shopify": "shopify"}
    assert "channel" not in orjson.loads(logs.JsonFormatter().format(record("outside")))
