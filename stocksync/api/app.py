"""The Starlette app: marketplace webhooks in, the admin API, health, readiness, metrics, OpenAPI.

    create_app(settings)          the app (uvicorn: `stocksync.api.app:create_app` with factory=True)

Settings of the API: the [api] table (stocksync.api.context).

Routes: POST /webhooks/{channel} (the channel's kind picks Shopify, Amazon or Flipkart handling), /v1/...
(stocksync.api.admin, skus, event_stream, channel_admin; the on_hand model's count, ship and cancel:
.quantities; .bundles; .reservations; per-SKU rules: .sku_rules), GET /healthz, /readyz, /metrics,
/openapi.json, and the web console: /console, /docs (stocksync.api.console).
Every request gets a request id and an access log record (stocksync.api.access).
"""

from __future__ import annotations

import contextlib
import logging

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stocksync import functions, library
from stocksync.connection import TornDown, torn_down
from stocksync.durability import NotDurable
from stocksync.errors import InvalidArgument
from stocksync.metrics import Metrics
from stocksync.orders.webhooks import Unverified
from stocksync.outage import Outage
from stocksync.settings import Settings
from stocksync.validate import Invalid

from . import (
    admin,
    bundles,
    channel_admin,
    console,
    event_stream,
    openapi,
    quantities,
    reservations,
    sku_rules,
    skus,
)
from . import metrics as http_metrics
from .access import AccessLogMiddleware
from .context import Context, build_context
from .httputil import HTTPError, json_response, read_body, send_json

log = logging.getLogger(__name__)


# Webhooks ----------------------------------------------------------------------------------------------


class WebhookEndpoint:
    """POST /webhooks/{channel}, as a plain ASGI endpoint (the hottest route: every order arrives here).

    Starlette's function endpoints wrap each request in a Request, an exception-handling layer of their own
    and a Response object; this route needs none of it, so it reads the body and sends its JSON reply
    itself. Errors still raise HTTPError, which the app's exception handlers turn into the usual replies.
    """

    async def __call__(self, scope, receive, send) -> None:
        ctx: Context = scope["app"].state.ctx
        name = scope["path_params"]["channel"]
        hook = ctx.hooks.get(name)
        if hook is None:
            if name in ctx.disabled:  # a retry will succeed once the secret is configured
                raise HTTPError(503, "not_configured", f"the webhook of channel {name!r} is not configured")
            raise HTTPError(404, "unknown_channel", f"no Shopify, Amazon or Flipkart channel named {name!r}")
        request = Request(scope, receive)
        body = await read_body(request, ctx.max_body)  # 413 as soon as it is known to be too large
        try:
            hook.verify(request, body)  # before anything is parsed
        except Unverified as e:
            ctx.metrics.child(ctx.metrics.verification_failures, name).inc()
            raise HTTPError(401, "unverified", str(e)) from None
        delivery = hook.parse(request, body)
        reply = await ctx.intake.apply(hook.channel, delivery)
        state = scope["app"].state
        state.outage.ok()  # (each a cheap check unless an outage or a shortfall was logged)
        state.short.ok()
        await send_json(send, reply)


webhook = WebhookEndpoint()


# Operations --------------------------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    expected = functions.library_version()
    try:
        await ctx.store.redis.ping()
        loaded = await library.version().run(ctx.store.redis)
    except RedisError as e:
        request.app.state.outage.failed(e, "readyz")
        return json_response({"status": "unavailable", "redis": f"error: {type(e).__name__}",
                              "library_expected": expected}, 503)
    request.app.state.outage.ok()
    status = 200 if str(loaded) == expected else 503
    return json_response({"status": "ready" if status == 200 else "wrong_library", "redis": "ok",
                          "library": str(loaded), "library_expected": expected}, status)


async def openapi_json(request: Request) -> Response:
    return Response(openapi.document_bytes(), media_type="application/json")


# Errors ------------------------------------------------------------------------------------------------


async def _http_error(request: Request, exc: HTTPError) -> Response:
    return exc.response()


async def _starlette_error(request: Request, exc: HTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
    return json_response({"error": code, "message": str(exc.detail)}, exc.status_code, exc.headers)


async def _invalid_input(request: Request, exc: Invalid) -> Response:
    field = {"field": exc.field} if exc.field else {}
    return json_response({"error": exc.code, "message": str(exc), **field}, 400 if exc.code == "invalid_json" else 422)


async def _invalid_argument(request: Request, exc: InvalidArgument) -> Response:
    return json_response({"error": "invalid", "message": str(exc)}, 422)


async def _not_durable(request: Request, exc: NotDurable) -> Response:
    """Applied on the primary, not yet as durable as configured: 503 with the reason, so that the
    marketplace delivers the webhook again (its references make the retry a replay; stocksync.durability)."""
    request.app.state.short.failed(exc, f"{request.method} {request.url.path}")
    return json_response({"error": "not_durable", "message": str(exc)}, 503, {"Retry-After": "1"})


async def _redis_error(request: Request, exc: RedisError) -> Response:
    """Redis unreachable (after the connection's retries, stocksync.connection): 503, and a bounded log of
    the outage (stocksync.outage), not a traceback a request. (A handler of its own: Starlette's handler
    of Exception re-raises to the server, which logs a traceback each time.)"""
    request.app.state.outage.failed(exc, f"{request.method} {request.url.path}")
    return json_response({"error": "unavailable", "message": "Redis is unavailable"}, 503, {"Retry-After": "1"})


async def _attribute_error(request: Request, exc: AttributeError) -> Response:
    """redis-py's connection torn down mid-command (a failover), on a path that does not convert it (the
    store and the intake do, stocksync.connection.torn_down): Redis unavailable for this request, a 503.
    Any other AttributeError is a bug: re-raised, a 500 with its traceback."""
    if torn_down(exc):
        return await _redis_error(request, TornDown(str(exc)))
    raise exc


async def _server_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, RedisError):  # (raised past the handlers, e.g. by a middleware)
        return await _redis_error(request, exc)

    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return json_response({"error": "internal", "message": "internal error"}, 500)


def template(path: str) -> str:
    """A route's path as the OpenAPI document and the metrics name it: without Starlette's converters."""
    return path.replace(":path}", "}")


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.load()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        app.state.ctx = await build_context(settings, metrics)
        log.info("stocksync API ready: prefix=%s partitions=%d channels=%s", settings.prefix,
                 app.state.ctx.store.keys.partitions, ",".join(sorted(app.state.ctx.hooks)) or "-")
        try:
            yield
        finally:
            await app.state.ctx.store.close()

    routes = [
        Route("/webhooks/{channel}", webhook, methods=["POST"]),
        *admin.routes(),
        *skus.routes(),
        *quantities.routes(),
        *bundles.routes(),
        *reservations.routes(),
        *event_stream.routes(),
        *channel_admin.routes(),
        *sku_rules.routes(),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", http_metrics.endpoint(metrics), methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        *console.routes(),
    ]
    templates = {r.endpoint: template(r.path) for r in routes}
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(AccessLogMiddleware),
                    Middleware(http_metrics.MetricsMiddleware, metrics=metrics, routes=templates)],
        exception_handlers={HTTPError: _http_error, HTTPException: _starlette_error,
                            Invalid: _invalid_input, InvalidArgument: _invalid_argument, NotDurable: _not_durable,
                            RedisError: _redis_error, AttributeError: _attribute_error,
                            Exception: _server_error},
    )
    app.state.outage = Outage(log, "Redis")
    app.state.short = Outage(log, f"durability {settings.durability} (replicas or fsync)")
    return app
