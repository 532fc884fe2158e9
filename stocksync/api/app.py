"""The Starlette app: marketplace webhooks in, the admin API, health, readiness, metrics, OpenAPI.

    create_app(settings)          the app (uvicorn: `stocksync.api.app:create_app` with factory=True)

Settings of the API (the [api] table of the config file):

    [api]
    max_body_bytes = 1048576      # larger bodies get 413 before they are read whole
    webhook_seen_ttl_s = 604800   # how long a webhook id / NotificationId is remembered
    line_ttl_days = 120           # how long a taken order line is remembered for its restock
    sse_keepalive_s = 15
    [api.tokens.<name>]           # see stocksync.api.admin

Routes: POST /webhooks/{channel} (the channel's kind picks Shopify, Amazon or Flipkart handling), /v1/...
(stocksync.api.admin), GET /healthz, /readyz, /metrics, /openapi.json.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stocksync import functions, library
from stocksync.channels import ChannelConfig, load_channels
from stocksync.errors import InvalidArgument
from stocksync.settings import Settings
from stocksync.store import StockStore

from . import admin, openapi
from .httputil import HTTPError, json_response, read_body, send_json
from .intake import Intake, IntakeSettings
from .metrics import Metrics, MetricsMiddleware
from .webhooks import Unverified, Webhook, build

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What every endpoint needs, built once at startup."""

    settings: Settings
    store: StockStore
    metrics: Metrics
    auth: admin.Auth
    intake: Intake
    channels: dict[str, ChannelConfig]
    hooks: dict[str, Webhook]
    disabled: dict[str, str] = field(default_factory=dict)
    max_body: int = 1 << 20
    sse_keepalive_s: float = 15.0


async def build_context(settings: Settings, metrics: Metrics) -> Context:
    api = settings.section("api")
    store = await StockStore.connect(settings)
    channels = load_channels(settings)
    hooks, disabled = build(channels)
    for name, reason in disabled.items():
        log.warning("webhook of channel %s disabled: %s", name, reason)
    return Context(
        settings=settings, store=store, metrics=metrics, auth=admin.Auth(api.get("tokens", {})),
        intake=Intake(store, metrics, IntakeSettings.from_section(api)), channels=channels, hooks=hooks,
        disabled=disabled, max_body=int(api.get("max_body_bytes", 1 << 20)),
        sse_keepalive_s=float(api.get("sse_keepalive_s", 15)),
    )


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
        await send_json(send, await ctx.intake.apply(hook, delivery))


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
        return json_response({"status": "unavailable", "redis": f"error: {type(e).__name__}",
                              "library_expected": expected}, 503)
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


async def _invalid_argument(request: Request, exc: InvalidArgument) -> Response:
    return json_response({"error": "invalid", "message": str(exc)}, 422)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    status, message = (503, "Redis is unavailable") if isinstance(exc, RedisError) else (500, "internal error")
    return json_response({"error": "unavailable" if status == 503 else "internal", "message": message}, status)


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
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics.endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
    ]
    templates = {r.endpoint: template(r.path) for r in routes}
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(MetricsMiddleware, metrics=metrics, routes=templates)],
        exception_handlers={HTTPError: _http_error, HTTPException: _starlette_error,
                            InvalidArgument: _invalid_argument, Exception: _server_error},
    )
