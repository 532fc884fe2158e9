"""The admin API's per-SKU rules (stocksync.inventory_rules): a channel's buffer, max_listed and end_when
overridden for one SKU, at run time.

    GET    /v1/channels/{channel}/rules          the channel's rules and every SKU's overrides
    GET    /v1/channels/{channel}/rules/{sku}    one SKU's override and the rules it makes
    PUT    /v1/channels/{channel}/rules/{sku}    {"buffer": 3, "max_listed": 10, "end_when": 1} (any of them;
                                                 buffer may be "auto"): replaces the SKU's override
    DELETE /v1/channels/{channel}/rules/{sku}    back to the channel's rules

The channel's workers pick a change up within worker.sku_map_refresh_ms and push the SKU again at once.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stocksync.inventory_rules import RuleStore, as_dict, effective, want_override
from stocksync.settings import SettingsError
from stocksync.validate import want_sku

from .context import context
from .httputil import HTTPError, json_response, read_json
from .idempotency import idempotency_key


def _channel(request: Request, ctx):
    return ctx.channel(request.path_params["channel"])


async def list_rules(request: Request) -> Response:
    ctx = context(request)
    ctx.auth.require(request, "channels:read")
    config = _channel(request, ctx)
    overrides = await RuleStore(ctx.store.redis, ctx.store.keys).get(config.name)
    return json_response({"channel": config.name, "rules": as_dict(config.rules), "overrides": overrides})


async def get_rules(request: Request) -> Response:
    ctx = context(request)
    ctx.auth.require(request, "channels:read")
    config = _channel(request, ctx)
    sku = want_sku(request.path_params["sku"], "sku")
    override = (await RuleStore(ctx.store.redis, ctx.store.keys).get(config.name)).get(sku, {})
    return json_response({"channel": config.name, "sku": sku, "override": override,
                          "rules": as_dict(effective(config.rules, override))})


async def put_rules(request: Request) -> Response:
    ctx = context(request)
    ctx.auth.require(request, "channels:write")
    idempotency_key(request)  # (a PUT: sending it again stores the same override)
    config = _channel(request, ctx)
    sku = want_sku(request.path_params["sku"], "sku")
    override = want_override(await read_json(request, ctx.max_body))
    try:
        rules = await RuleStore(ctx.store.redis, ctx.store.keys).set(config, sku, override)
    except SettingsError as e:
        raise HTTPError(422, "invalid", str(e)) from None
    return json_response({"channel": config.name, "sku": sku, "override": override, "rules": as_dict(rules)})


async def delete_rules(request: Request) -> Response:
    ctx = context(request)
    ctx.auth.require(request, "channels:write")
    idempotency_key(request)
    config = _channel(request, ctx)
    sku = want_sku(request.path_params["sku"], "sku")
    if not await RuleStore(ctx.store.redis, ctx.store.keys).delete(config.name, sku):
        raise HTTPError(404, "not_found", f"{sku!r} has no rules of its own on {config.name!r}")
    return Response(status_code=204)


def routes() -> list[Route]:
    return [
        Route("/v1/channels/{channel}/rules", list_rules, methods=["GET"]),
        Route("/v1/channels/{channel}/rules/{sku:path}", get_rules, methods=["GET"]),
        Route("/v1/channels/{channel}/rules/{sku:path}", put_rules, methods=["PUT"]),
        Route("/v1/channels/{channel}/rules/{sku:path}", delete_rules, methods=["DELETE"]),
    ]
