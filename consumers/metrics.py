"""A worker process's own metrics, and the endpoint that serves them (`stocksync worker --metrics-port`).

Why an endpoint per worker process rather than counters sent through Redis: Prometheus pulls from each
process, so each keeps its counters and histograms as they are (a restart is a counter reset Prometheus
understands, instead of a sum across workers that drops when one goes away), `up` tells a dead worker
from a live one, and the same endpoint answers the container's health check. What all workers of a
channel share is in Redis (lag, pending entries, dead letters, the heartbeats' circuit states): the API's
/metrics exports it once (consumers/status.py, `metric_families`), so it is never counted twice.

Exported by every process that runs channel workers (on the default registry; Prometheus's conventions:
base units, `_total` counters, `_seconds`):

    stocksync_push_calls_total{channel}             marketplace calls made
    stocksync_push_failed_calls_total{channel}      of which failed for now (5xx, timeout; 429s apart)
    stocksync_push_throttled_total{channel}         of which answered 429 (the channel's pace)
    stocksync_pushed_skus_total{channel,outcome}    SKUs by outcome: accepted, current (no call needed),
                                                    unanswered (sent, no answer: pushed again later)
    stocksync_dead_letters_total{channel}           SKUs this worker moved to the dead-letter stream
    stocksync_reclaimed_entries_total{channel}      entries claimed from dead consumers
    stocksync_circuit_opened_total{channel}         times the circuit opened
    stocksync_worker_circuit_state{channel,state}   1 for the worker's state (closed, throttled, half_open, open)
    stocksync_worker_held_skus{channel}             SKUs held for pushing
    stocksync_worker_pushes_in_flight{channel}      pushes under way
    stocksync_worker_last_push_timestamp_seconds{channel}   the last call the channel accepted
    stocksync_push_duration_seconds{channel}        histogram: one marketplace call, as the worker waited for it
    stocksync_propagation_lag_seconds{channel,rank} histogram: from a change's commit to its channel's
                                                    acceptance, by push rank (zero, urgent, normal)
    stocksync_build_info{version,library_version,python}   (stocksync.metrics)

GET /healthz answers 200 while every channel worker of the process has started and wrote its heartbeat
to Redis within three beats and a second, else 503 (with what is wrong): a worker that cannot reach Redis
is unhealthy, one whose marketplace is down is not (restarting it would not help; its circuit says so).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from stocksync import metrics as core_metrics
from stocksync.settings import SettingsError

from .ranks import NORMAL, URGENT, ZERO

log = logging.getLogger(__name__)
DEFAULT_METRICS_HOST = "127.0.0.1"
RANK_NAMES = {ZERO: "zero", URGENT: "urgent", NORMAL: "normal"}
CIRCUIT_STATES = ("closed", "throttled", "half_open", "open")

PUSH_SECONDS = Histogram("stocksync_push_duration_seconds", "One marketplace call of a push, as the worker waited "
                         "for it (seconds)", ["channel"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
PROPAGATION_SECONDS = Histogram("stocksync_propagation_lag_seconds", "From a stock change's commit to its "
                                "acceptance by the channel (seconds), by push rank", ["channel", "rank"],
                                buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                                         300.0, 900.0))

# stats counters of the workers' heartbeat -> (metric, help, outcome label or None)
COUNTERS = (
    ("calls", "stocksync_push_calls", "Marketplace calls made by the channel's workers", None),
    ("failed_calls", "stocksync_push_failed_calls", "Marketplace calls that failed for now (5xx, timeouts, "
     "no answer; 429s are counted apart)", None),
    ("throttled", "stocksync_push_throttled", "Marketplace calls answered 429 (the channel's pace)", None),
    ("accepted", "stocksync_pushed_skus", "SKUs pushed, by outcome", "accepted"),
    ("skipped", "stocksync_pushed_skus", "SKUs pushed, by outcome", "current"),
    ("unanswered", "stocksync_pushed_skus", "SKUs pushed, by outcome", "unanswered"),
    ("dead_letters", "stocksync_dead_letters", "SKUs moved to the dead-letter stream by this process", None),
    ("reclaimed", "stocksync_reclaimed_entries", "Entries claimed from dead consumers", None),
)


class WorkerCollector:
    """The counters and gauges of the channel workers running in this process, read at scrape time from
    their state (the numbers the heartbeat carries); several workers of one channel are summed."""

    def __init__(self) -> None:
        self.workers: weakref.WeakSet = weakref.WeakSet()

    def collect(self):
        states = [w.state for w in list(self.workers)]
        families: dict[str, CounterMetricFamily] = {}
        for _, name, text, outcome in COUNTERS:
            if name not in families:
                families[name] = CounterMetricFamily(name, text, labels=["channel", "outcome"] if outcome
                                                     else ["channel"])
        families["stocksync_circuit_opened"] = CounterMetricFamily(
            "stocksync_circuit_opened", "Times the channel's circuit opened", labels=["channel"])
        sums: dict[tuple[str, str, str], float] = collections.defaultdict(float)
        for s in states:
            for key, name, _, outcome in COUNTERS:
                sums[(name, s.channel, outcome or "")] += s.stats[key]
            sums[("stocksync_circuit_opened", s.channel, "")] += s.breaker.opened_total
        for (name, channel, outcome), value in sorted(sums.items()):
            families[name].add_metric([channel, outcome] if outcome else [channel], value)
        yield from families.values()
        yield from self._gauges(states)

    @staticmethod
    def _gauges(states: list) -> list[GaugeMetricFamily]:
        circuit = GaugeMetricFamily("stocksync_worker_circuit_state", "1 for the circuit state of the "
                                    "channel's worker in this process", labels=["channel", "state"])
        held = GaugeMetricFamily("stocksync_worker_held_skus", "SKUs held for pushing", labels=["channel"])
        flying = GaugeMetricFamily("stocksync_worker_pushes_in_flight", "Pushes under way", labels=["channel"])
        last = GaugeMetricFamily("stocksync_worker_last_push_timestamp_seconds", "When the channel last "
                                 "accepted a call of this process (Unix time)", labels=["channel"])
        by_channel: dict[str, list] = collections.defaultdict(list)
        for s in states:
            by_channel[s.channel].append(s)
        for channel, group in sorted(by_channel.items()):
            worst = max((s.circuit() for s in group), key=CIRCUIT_STATES.index)
            for state in CIRCUIT_STATES:
                circuit.add_metric([channel, state], 1.0 if state == worst else 0.0)
            held.add_metric([channel], sum(len(s.coalescer) for s in group))
            flying.add_metric([channel], sum(s.in_flight for s in group))
            last.add_metric([channel], max(s.last_push_ms for s in group) / 1000)
        return [circuit, held, flying, last]


COLLECTOR = WorkerCollector()
REGISTRY.register(COLLECTOR)


def watch(worker: Any) -> None:
    """Export a ChannelWorker's numbers (and judge its health) from now on."""
    COLLECTOR.workers.add(worker)


def forget(worker: Any) -> None:
    COLLECTOR.workers.discard(worker)


class Propagation:
    """on_accept of a worker (consumers/pusher.py): each entry's commit-to-acceptance time, by rank."""

    def __init__(self, channel: str) -> None:
        self.children = {rank: PROPAGATION_SECONDS.labels(channel, name) for rank, name in RANK_NAMES.items()}

    def __call__(self, accepted: Any) -> None:
        at = accepted.accepted_ms
        for ts_ms, rank in accepted.entries:
            self.children[rank].observe(max(at - ts_ms, 0) / 1000)


def push_seconds(channel: str) -> Any:
    """The push duration histogram of a channel (observe(seconds) after each call)."""
    return PUSH_SECONDS.labels(channel)


# The endpoint ----------------------------------------------------------------------------------------


def health() -> tuple[bool, dict[str, Any]]:
    """(healthy, what each worker looks like): started, and its heartbeat written lately."""
    now = time.monotonic()
    workers = list(COLLECTOR.workers)
    doc: dict[str, Any] = {}
    ok = bool(workers)
    for w in workers:
        s = w.state
        age = now - s.beat_at if s.beat_at else None
        fresh = age is not None and age <= 3 * s.options.heartbeat_ms / 1000 + 1
        ok = ok and w.started.is_set() and fresh
        doc[s.channel] = {"started": w.started.is_set(), "heartbeat_age_s": None if age is None else round(age, 3),
                          "circuit": s.circuit(), "consumer": s.consumer}
    return ok, doc


async def _metrics(request: web.Request) -> web.Response:
    # (the default registry: the process collectors, stocksync_build_info and this process's workers)
    return web.Response(body=core_metrics.process_exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    ok, doc = health()
    body = {"status": "ok" if ok else ("starting" if not doc else "unhealthy"), "workers": doc}
    return web.Response(body=orjson.dumps(body), status=200 if ok else 503, content_type="application/json")


@contextlib.asynccontextmanager
async def serving(host: str, port: int) -> AsyncIterator[None]:
    """Serve /metrics and /healthz on host:port while the block runs (port 0: nothing is served)."""
    if not port:
        yield
        return
    app = web.Application()
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as e:
            raise SettingsError(f"--metrics-port {port}: cannot listen on {host}:{port}: {e.strerror}") from None
        log.info("metrics on http://%s:%d/metrics, health on /healthz", host, port)
        yield
    finally:
        await runner.cleanup()
