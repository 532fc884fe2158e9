"""`stocksync worker` as an operator runs it: a real process against a real Redis and the Amazon simulator,
read through what it gives an operator: its JSON logs (start, circuit open and closed, throttling start and
end, dead letters, stop), its /metrics and its /healthz."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stocksync.devtools.simulators import SIMULATORS, serve
from stocksync.devtools.testing import (
    SIMULATOR_ENV,
    config,
    toml_channel,
    use_simulator_credentials,
    wait_for,
)
from stocksync.embedded import EmbeddedRedis
from stocksync.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
WORKER_TABLE = ("[worker]\nblock_ms = 100\nheartbeat_ms = 100\nbackoff_base_ms = 20\nbackoff_cap_ms = 100\n"
                "breaker_threshold = 2\nbreaker_open_ms = 200\nbreaker_max_open_ms = 400\ntrim_interval_ms = 0\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Logs:
    """A process's stderr, a JSON record a line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[dict]:
        text = self.path.read_text(errors="replace")
        lines = [line for line in text.splitlines() if line.strip()]
        return [orjson.loads(line) for line in lines[:-1] if line] + self._last(lines)

    @staticmethod
    def _last(lines: list[str]) -> list[dict]:
        try:  # (the last line may be half written)
            return [orjson.loads(lines[-1])] if lines else []
        except orjson.JSONDecodeError:
            return []

    def find(self, text: str, **fields) -> dict | None:
        for r in self.records():
            if text in r["msg"] and all(r.get(k) == v for k, v in fields.items()):
                return r
        return None


class WorkerProcess:
    def __init__(self, cfg: Path, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.logs = Logs(cfg.parent / f"worker-{self.port}.log")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stocksync", "worker", "--config", str(cfg), "--metrics-port", str(self.port),
             "--consumer", "ops-1", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=self.logs.path.open("wb"), env={**os.environ, **(env or {})})
        self.base = f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> httpx.Response | None:
        try:
            return httpx.get(self.base + path, timeout=5)
        except httpx.TransportError:
            return None

    def healthy(self) -> bool:
        assert self.proc.poll() is None, self.logs.path.read_text()
        r = self.get("/healthz")
        return r is not None and r.status_code == 200

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """{(sample name, sorted labels): value} of /metrics."""
        text = httpx.get(self.base + "/metrics", timeout=5).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def amazon():
    use_simulator_credentials()
    sim = SIMULATORS["amazon"]()
    with serve(sim) as url:
        yield sim, url


def write_config(tmp_path: Path, settings: Settings, url: str) -> Path:
    cfg = tmp_path / "stocksync.toml"
    cfg.write_text(f'redis_url = "{settings.redis_url}"\nprefix = "{settings.prefix}"\n\n{WORKER_TABLE}\n'
                   + toml_channel(config("amazon", url, rate_limit=1000, burst=100)))
    return cfg


def value(metrics: dict, name: str, **labels) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


async def listed(sim, sku: str, quantity: int) -> bool:
    return sim.quantities.get(sku) == quantity


async def test_an_operator_sees_start_outage_throttling_dead_letters_and_stop(tmp_path, settings, amazon, store):
    sim, url = amazon
    sim.reset()
    worker = WorkerProcess(write_config(tmp_path, settings, url), "--channel", "amazon")
    logs = worker.logs
    try:
        await wait_for(worker.healthy, 20, "the worker's /healthz")
        started = await wait_for(lambda: logs.find("started", channel="amazon", worker="ops-1"), 10, "'started'")
        assert started["level"] == "info" and started["logger"] == "consumers.worker"

        await store.set("A", 5, source="test")
        await wait_for(lambda: listed(sim, "A", 5), 10, "A listed")

        # An outage: the circuit opens (one warning with the error), then closes when Amazon answers again.
        sim.outage(True)
        await store.set("A", 4, source="test")
        opened = await wait_for(lambda: logs.find("circuit open", channel="amazon"), 15, "'circuit open'")
        assert opened["level"] == "warning" and "503" in opened["msg"] and opened["circuit"] == "open"
        sim.outage(False)
        closed = await wait_for(lambda: logs.find("circuit closed", channel="amazon"), 15, "'circuit closed'")
        assert closed["level"] == "info"
        await wait_for(lambda: listed(sim, "A", 4), 10, "A listed after the outage")

        # Throttling: Amazon answers 429 past 1 call a second; its start and its end are logged once each.
        sim.set_faults(rate_limit=1, burst=1)
        for i in range(6):
            await store.set(f"T{i}", 10 + i, source="test")
        throttled = await wait_for(lambda: logs.find("throttled (HTTP 429)", channel="amazon"), 15, "'throttled'")
        assert throttled["level"] == "warning"
        sim.set_faults(rate_limit=None)
        ended = await wait_for(lambda: logs.find("throttling ended", channel="amazon"), 15, "'throttling ended'")
        assert "answered 429" in ended["msg"]
        for i in range(6):
            await wait_for(lambda i=i: listed(sim, f"T{i}", 10 + i), 15, f"T{i} listed")

        # A SKU Amazon refuses for good is dead-lettered, and said so.
        sim.set_faults(reject_skus=["BAD"])
        await store.set("BAD", 1, source="test")
        dead = await wait_for(lambda: logs.find("SKU BAD dead-lettered", channel="amazon"), 15, "'dead-lettered'")
        assert dead["level"] == "warning" and "permanent" in dead["msg"]

        m = worker.metrics()
        assert value(m, "stocksync_push_calls_total", channel="amazon") >= 10
        assert value(m, "stocksync_push_throttled_total", channel="amazon") >= 1
        assert value(m, "stocksync_push_failed_calls_total", channel="amazon") >= 2
        assert value(m, "stocksync_dead_letters_total", channel="amazon") == 1
        assert value(m, "stocksync_circuit_opened_total", channel="amazon") >= 1
        assert value(m, "stocksync_pushed_skus_total", channel="amazon", outcome="accepted") >= 8
        assert value(m, "stocksync_worker_circuit_state", channel="amazon", state="closed") == 1
        assert value(m, "stocksync_push_duration_seconds_count", channel="amazon") >= 10
        lagged = sum(value(m, "stocksync_propagation_lag_seconds_count", channel="amazon", rank=rank)
                     for rank in ("zero", "urgent", "normal"))
        assert lagged >= 8  # every accepted change, timed from its commit
        assert any(name == "stocksync_build_info" and dict(labels)["version"] for name, labels in m)
        health = worker.get("/healthz").json()
        assert health["status"] == "ok" and health["workers"]["amazon"]["consumer"] == "ops-1"
    finally:
        sim.set_faults(rate_limit=None, reject_skus=[])
        sim.outage(False)
        code = worker.stop()
    assert code == 0, logs.path.read_text()[-3000:]
    assert logs.find("stopped", channel="amazon")
    text = logs.path.read_text()
    records = logs.records()
    assert len(records) == len([line for line in text.splitlines() if line.strip()])  # every line is JSON
    assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    for secret in SIMULATOR_ENV.values():
        assert secret not in text


async def test_healthz_turns_503_when_the_worker_loses_redis(tmp_path, amazon):
    sim, url = amazon
    server = EmbeddedRedis().start()
    worker = None
    try:
        settings = Settings(redis_url=server.url, prefix="ops")
        worker = WorkerProcess(write_config(tmp_path, settings, url), "--channel", "amazon")
        await wait_for(worker.healthy, 20, "the worker's /healthz")
        server.stop()

        def unhealthy() -> bool:
            r = worker.get("/healthz")
            return r is not None and r.status_code == 503

        await wait_for(unhealthy, 15, "/healthz to answer 503 without Redis")
        doc = worker.get("/healthz").json()
        assert doc["status"] == "unhealthy" and doc["workers"]["amazon"]["heartbeat_age_s"] > 0.3
    finally:
        if worker is not None:
            worker.stop()
        server.stop()


def test_a_metrics_port_in_use_is_refused_in_one_line(tmp_path, settings, amazon):
    _, url = amazon
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "stocksync", "worker", "--config",
                              str(write_config(tmp_path, settings, url)), "--metrics-port", str(port)],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2, out.stderr
    [line] = out.stderr.splitlines()
    assert f"--metrics-port {port}: cannot listen on 127.0.0.1:{port}" in orjson.loads(line)["msg"]
