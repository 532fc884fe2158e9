"""The admin API's channel side: orders that could not be covered (rejections), SKU maps, the workers'
status and dead letters."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from consumers import dlq
from consumers.options import WorkerOptions
from consumers.status import channel_status
from stocksync.settings import SettingsError
from stocksync.validate import check_keys, invalid, want_list, want_object, want_sku, want_str

from .context import Context, context
from .httputil import HTTPError, json_response, read_json
from .idempotency import idempotency_key


async def list_rejections(request: Request) -> Response:
    ctx = context(request)
    ctx.auth.require(request, "stock:read")
    limit = request.query_params.get("limit", "100")
    if not limit.isdigit() or not 1 <= int(limit) <= 1000:
        raise invalid("limit", "must be a whole number from 1 to 1000")
    channel = request.query_params.get("channel") or None
    if channel is not None:
        ctx.channel(channel)
    return json_response({"rejections": await ctx.intake.rejections.list(int(limit), channel)})


async def resolve_rejection(request: Request) -> Response:
    ctx = context(request)
    ctx.auth.require(request, "orders:write")
    idempotency_key(request)
    channel, order_id = request.path_params["channel"], request.path_params["order_id"]
    if not await ctx.intake.rejections.resolve(channel, order_id):
        raise HTTPError(404, "not_found", f"no rejection recorded for order {order_id!r} of {channel!r}")
    return Response(status_code=204)


async def apply_rejection(request: Request) -> Response:
    """Take again the lines of a listed order that wait for a fixed SKU map (action fix_map)."""
    ctx = context(request)
    ctx.auth.require(request, "orders:write")
    idempotency_key(request)  # applying again is itself exactly once per line (the lines' references)
    channel = _channel(request, ctx)
    order_id = request.path_params["order_id"]
    lines = await ctx.intake.apply_rejected(channel, order_id)
    if lines is None:
        raise HTTPError(404, "not_found", f"no rejection recorded for order {order_id!r} of {channel.name!r}")
    remaining = await ctx.intake.rejections.lines(channel.name, order_id)
    return json_response({"channel": channel.name, "order_id": order_id, "lines": lines, "remaining": remaining})


def _channel(request: Request, ctx: Context):
    return ctx.channel(request.path_params["channel"])




async def get_sku_map(request: Request) -> Response:
    ctx = context(request)
    ctx.auth.require(request, "channels:read")
    channel = _channel(request, ctx)
    stored = await ctx.store.redis.hgetall(ctx.store.keys.sku_map(channel.name))
    # The Redis hash wins over the config file: it is what the admin endpoint edits.
    return json_response({"channel": channel.name, "map": {**channel.sku_map, **stored},
                          "config": dict(channel.sku_map), "edited": stored})


async def put_sku_map(request: Request) -> Response:
    ctx = context(request)
    ctx.auth.require(request, "channels:write")
    idempotency_key(request)
    channel = _channel(request, ctx)
    channel_sku = want_sku(request.path_params["channel_sku"], "channel_sku")
    doc = want_object(await read_json(request, ctx.max_body), "body")
    check_keys(doc, {"sku"})
    sku = want_sku(doc.get("sku"), "sku")
    await ctx.store.redis.hset(ctx.store.keys.sku_map(channel.name), channel_sku, sku)
    return json_response({"channel": channel.name, "channel_sku": channel_sku, "sku": sku})


async def delete_sku_map(request: Request) -> Response:
    ctx = context(request)
    ctx.auth.require(request, "channels:write")
    idempotency_key(request)
    channel = _channel(request, ctx)
    channel_sku = want_sku(request.path_params["channel_sku"], "channel_sku")
    if not await ctx.store.redis.hdel(ctx.store.keys.sku_map(channel.name), channel_sku):
        raise HTTPError(404, "not_found", f"{channel_sku!r} has no edited mapping on {channel.name!r}")
    return Response(status_code=204)


# The workers' status and dead letters -----------------------------------------------------------------


async def list_channels(request: Request) -> Response:
    ctx = context(request)
    ctx.auth.require(request, "channels:read")
    status = await channel_status(ctx.store.redis, ctx.store.keys, sorted(ctx.channels))
    return json_response({"channels": status})


async def list_dead_letters(request: Request) -> Response:
    ctx = context(request)
    ctx.auth.require(request, "channels:read")
    channel = _channel(request, ctx)
    limit = request.query_params.get("limit", "100")
    if not limit.isdigit() or not 1 <= int(limit) <= 1000:
        raise invalid("limit", "must be a whole number from 1 to 1000")
    letters = await dlq.list_dead_letters(ctx.store.redis, ctx.store.keys, channel.name, int(limit))
    return json_response({"channel": channel.name, "dead_letters": [
        {"id": d.id, "partition": d.partition, "sku": d.sku, "version": d.version, "reason": d.reason,
         "attempts": d.attempts, "error": d.error, "ts_ms": d.ts_ms} for d in letters]})


async def replay_dead_letters(request: Request) -> Response:
    """Push the current quantity of the dead-lettered SKUs (all, or those named) to the channel again."""
    ctx = context(request)
    ctx.auth.require(request, "channels:write")
    idempotency_key(request)  # a replay pushes current quantities: repeating it is harmless
    channel = _channel(request, ctx)
    doc = want_object(await read_json(request, ctx.max_body), "body")
    check_keys(doc, {"skus", "ids"})
    skus = {want_sku(x, f"skus[{i}]") for i, x in enumerate(want_list(doc["skus"], "skus", 1000))} if "skus" in doc else None
    ids = {want_str(x, f"ids[{i}]", 64) for i, x in enumerate(want_list(doc["ids"], "ids", 1000))} if "ids" in doc else None
    try:
        options = WorkerOptions.from_settings(ctx.settings)  # (the workers' recheck delay and lease)
        report = await dlq.replay(ctx.store.redis, ctx.store.keys, channel, skus=skus, ids=ids,
                                  lease_ms=options.lease_ms, recheck_ms=options.recheck_ms)
    except SettingsError as e:
        raise HTTPError(503, "not_configured", f"channel {channel.name!r} cannot push: {e}") from None
    return json_response({"channel": channel.name, "resolved": report.resolved, "failed": report.failed},
                         200 if report.ok else 502)


def routes() -> list[Route]:
    return [
        Route("/v1/rejections", list_rejections, methods=["GET"]),
        Route("/v1/rejections/{channel}/{order_id}:apply", apply_rejection, methods=["POST"]),
        Route("/v1/rejections/{channel}/{order_id}", resolve_rejection, methods=["DELETE"]),
        Route("/v1/channels", list_channels, methods=["GET"]),
        Route("/v1/channels/{channel}/dead-letters", list_dead_letters, methods=["GET"]),
        Route("/v1/channels/{channel}/dead-letters:replay", replay_dead_letters, methods=["POST"]),
        Route("/v1/channels/{channel}/sku-map", get_sku_map, methods=["GET"]),
        Route("/v1/channels/{channel}/sku-map/{channel_sku:path}", put_sku_map, methods=["PUT"]),
        Route("/v1/channels/{channel}/sku-map/{channel_sku:path}", delete_sku_map, methods=["DELETE"]),
    ]
