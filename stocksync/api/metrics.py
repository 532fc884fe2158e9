"""The HTTP side of the metrics: the ASGI middleware that counts requests, and GET /metrics (this process's
registry, and the channels' numbers read from Redis: stocksync.api.channel_metrics)."""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from stocksync.metrics import Metrics
from stocksync.orders.pollers import stats as poll_stats

from . import channel_metrics

log = logging.getLogger(__name__)


def endpoint(metrics: Metrics):
    async def serve_metrics(request: Request) -> Response:
        ctx = request.app.state.ctx
        channels = await channel_metrics.exposition(ctx)  # (from Redis: every channel)
        try:  # the order pollers' counter lives in Redis (every process that polls adds to it)
            polled = await poll_stats.exposition(ctx.store.redis, ctx.store.keys, ctx.channels.values())
        except RedisError as e:
            log.warning("stocksync_orders_found_by_polling left out of /metrics: %s", e)
            polled = b""
        return Response(metrics.exposition() + channels + polled, media_type=CONTENT_TYPE_LATEST)

    return serve_metrics


class MetricsMiddleware:
    """Counts every request by its route template (never the raw path: SKUs would explode the labels)."""

    def __init__(self, app: Any, metrics: Metrics, routes: dict[Any, str]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes
        self._counted: dict[tuple, tuple[Any, Any]] = {}  # (endpoint, method, status) -> the two children

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            key = (scope.get("endpoint"), scope["method"], status[0])
            children = self._counted.get(key)
            if children is None:
                route = self.routes.get(key[0], "unmatched")
                m = self.metrics
                children = self._counted[key] = (m.requests.labels(route, key[1], str(key[2])),
                                                 m.latency.labels(route))
            children[0].inc()
            children[1].observe(time.perf_counter() - start)
