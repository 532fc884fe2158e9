"""Prometheus metrics of a stocksync process (the API's, and the intake's wherever it runs).

Each app gets its own registry (so tests can build many apps); `/metrics` serves it together with the
default registry, which holds the process collectors and whatever channel workers running in the same
process register there. With several uvicorn workers, set PROMETHEUS_MULTIPROC_DIR to a fresh empty
directory before starting: each scrape then sums every worker (prometheus-client's multiprocess mode).

`stocksync_build_info{version, library_version, python} 1` (the package's version, the Lua library's it
ships, the interpreter's) is on the default registry of every stocksync process, and in the multiprocess
exposition too. The per-channel numbers come from consumers/status.py (the API, read from Redis) and
consumers/metrics.py (a worker process's own).
"""

from __future__ import annotations

import os
import platform
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.core import GaugeMetricFamily

from . import __version__, functions

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class BuildInfo:
    """stocksync_build_info: 1, labelled with the versions (a collector: no value kept in multiprocess files)."""

    def __init__(self) -> None:
        self.labels = [__version__, functions.library_version(), platform.python_version()]

    def collect(self):
        family = GaugeMetricFamily("stocksync_build_info", "stocksync's version, its function library's and "
                                   "Python's (always 1)", labels=["version", "library_version", "python"])
        family.add_metric(self.labels, 1.0)
        yield family


BUILD_INFO = BuildInfo()
REGISTRY.register(BUILD_INFO)


def process_exposition() -> bytes:
    """The default registry: process collectors, build info, and whatever this process registered there."""
    return generate_latest(REGISTRY)


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # In multiprocess mode values live in files and are collected at scrape time, not from here.
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("stocksync_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("stocksync_http_request_seconds", "HTTP request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.stock_changes = Counter("stocksync_stock_changes", "Stock function calls by operation and outcome "
                                     "(ok, insufficient, unknown_sku, conflict; replayed counted apart)",
                                     ["op", "outcome"], registry=r)
        self.verification_failures = Counter("stocksync_webhook_verification_failures",
                                             "Webhooks refused because their signature or token did not verify",
                                             ["channel"], registry=r)
        self.deliveries = Counter("stocksync_webhook_deliveries", "Webhook deliveries by channel and result "
                                  "(applied, duplicate, ignored)", ["channel", "result"], registry=r)
        self.rejections = Counter("stocksync_rejections", "Order lines that could not be covered, by reason",
                                  ["channel", "reason"], registry=r)

        self._children: dict[tuple, Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once: labels() validates and locks on every call, and the
        hot path (every webhook, every request) asks for the same few children again and again."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def outcome(self, op: str, status: str, replayed: bool) -> None:
        self.child(self.stock_changes, op, "replayed" if replayed else status).inc()

    def exposition(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            _multiprocess.MultiProcessCollector(registry)
            registry.register(BUILD_INFO)
            return generate_latest(registry)
        return generate_latest(self.registry) + generate_latest(REGISTRY)

