"""The admin API under /v1: stock per SKU, multi-line orders, the events stream, SKU maps, rejections.

Bearer tokens come from the config file, never the token itself, only where to find it:

    [api.tokens.warehouse]
    env = "STOCKSYNC_TOKEN_WAREHOUSE"      # the environment variable holding the token, or
    # sha256 = "<hex digest of the token>"
    scopes = ["stock:read", "stock:write", "orders:write"]

Scopes: stock:read, stock:write, orders:write, events:read, channels:read, channels:write, or "*".
No token: 401. A token without the endpoint's scope: 403. The token's name is the `source` of its
changes. Every write needs an Idempotency-Key header. On the stock writes (set, adjust, batch, order) it
becomes the library reference (`api:<key>` for an order, `api:<key>:<sku>` per SKU), so a retried request
changes nothing and answers the first outcome again, with `Idempotent-Replayed: true` (the other writes
only require it: repeating them is harmless). The key names one request: the first valid request of a key
that changes stock (set, adjust, batch, order) stores a digest of its method, path and JSON body under
`<prefix>:api:idem:<key>` for as long as references are remembered (Stripe's rule, and the IETF
Idempotency-Key draft's), and the same key sent with another request is refused (422
idempotency_key_reused) and changes nothing, instead of answering an outcome that is not its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
from redis.exceptions import ResponseError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from stocksync.events import follow
from stocksync.library import Outcome
from stocksync.limits import MAX_BATCH_ITEMS, MAX_ORDER_LINES, MAX_QTY, MAX_VERSION
from stocksync.settings import SettingsError

from .httputil import (
    HTTPError,
    check_keys,
    invalid,
    json_response,
    read_json,
    want_int,
    want_list,
    want_object,
    want_sku,
    want_str,
)
from .intake import _bounded

if TYPE_CHECKING:
    from .app import Context

log = logging.getLogger(__name__)
SCOPES = ("stock:read", "stock:write", "orders:write", "events:read", "channels:read", "channels:write")
_KEY_RE = re.compile(r"^[\x21-\x7e]{1,200}$")
_ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


# Tokens ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return "*" in self.scopes or scope in self.scopes


class Auth:
    def __init__(self, tokens: Mapping[str, Mapping], env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.by_digest: dict[bytes, Token] = {}
        for name, table in tokens.items():
            if not isinstance(table, Mapping):
                raise SettingsError(f"api.tokens.{name} must be a table")
            scopes = table.get("scopes", [])
            unknown = set(scopes) - set(SCOPES) - {"*"}
            if not isinstance(scopes, list) or unknown:
                raise SettingsError(f"api.tokens.{name}.scopes: unknown scope(s) {sorted(unknown)}; known: {SCOPES}")
            if "sha256" in table:
                digest = bytes.fromhex(str(table["sha256"]))
            elif env.get(str(table.get("env", ""))):
                digest = hashlib.sha256(env[table["env"]].encode()).digest()
            else:
                log.warning("api.tokens.%s: environment variable %s is not set; token disabled", name, table.get("env"))
                continue
            self.by_digest[digest] = Token(name, frozenset(scopes))
        if not self.by_digest:
            log.warning("no API token configured: every /v1 request will be refused (401)")

    def require(self, request: Request, scope: str) -> Token:
        header = request.headers.get("authorization", "")
        kind, _, value = header.partition(" ")
        if kind.lower() != "bearer" or not value.strip():
            raise HTTPError(401, "unauthorized", "an Authorization: Bearer <token> header is required",
                            headers={"WWW-Authenticate": "Bearer"})
        # A lookup by digest: its timing says nothing about the token itself.
        token = self.by_digest.get(hashlib.sha256(value.strip().encode()).digest())
        if token is None:
            raise HTTPError(401, "unauthorized", "the token is not valid", headers={"WWW-Authenticate": "Bearer"})
        if not token.allows(scope):
            raise HTTPError(403, "forbidden", f"the token {token.name!r} lacks the scope {scope}")
        return token


def _ctx(request: Request) -> Context:
    return request.app.state.ctx


def _idempotency_key(request: Request) -> str:
    key = request.headers.get("idempotency-key", "")
    if not key:
        raise HTTPError(400, "idempotency_key_required", "every write needs an Idempotency-Key header")
    if not _KEY_RE.match(key):
        raise HTTPError(400, "bad_idempotency_key", "Idempotency-Key must be 1-200 printable ASCII characters")
    return key


async def _bind_key(request: Request, ctx: Context, key: str, doc: dict) -> None:
    """Bind the Idempotency-Key to this request (call it once the body is checked, before the change): the
    first request with the key stores the digest of its method, path and body, kept as long as the library
    remembers a reference; a request with the same key and another digest gets 422. The body counts as the
    JSON document it holds (keys sorted), so a retry that serializes it otherwise is still the same request."""
    what = b"%s %s\n%s" % (request.method.encode(), request.scope["path"].encode(),
                           orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))
    digest = hashlib.sha256(what).hexdigest()
    store = ctx.store
    first = await store.redis.set(store.keys.api_idem(key), digest, nx=True, get=True,
                                  ex=store.settings.idem_ttl_s)
    if first is not None and first != digest:
        raise HTTPError(422, "idempotency_key_reused",
                        f"Idempotency-Key reused with a different request body (or method, or path): {key!r} "
                        "names the request it was first sent with; nothing was changed. Send a new key for a "
                        "new request")


def _ref(key: str, sku: str | None = None) -> str:
    return _bounded(f"api:{key}" + (f":{sku}" if sku else ""), 256, "api")


def _sku_param(request: Request) -> str:
    return want_sku(request.path_params["sku"], "sku")


def _outcome_doc(o: Outcome) -> dict:
    return {"sku": o.sku, "status": o.status, "available": o.available, "version": o.version, "replayed": o.replayed}


def _outcome_response(o: Outcome, op: str, ctx: Context) -> Response:
    ctx.metrics.outcome(op, o.status, o.replayed)
    headers = {"Idempotent-Replayed": "true"} if o.replayed else None
    if o.status == "unknown_sku":
        return json_response({"error": "unknown_sku", "message": f"SKU {o.sku!r} does not exist"}, 404, headers)
    if o.status in ("insufficient", "conflict"):
        message = ("fewer units are available than the change needs" if o.status == "insufficient"
                   else "the SKU's version is not the expected one")
        return json_response({"error": o.status, "message": message, **_outcome_doc(o)}, 409, headers)
    return json_response(_outcome_doc(o), 200, headers)


# Stock -------------------------------------------------------------------------------------------------


async def get_sku(request: Request) -> Response:
    ctx = _ctx(request)
    ctx.auth.require(request, "stock:read")
    stock = await ctx.store.get(_sku_param(request))
    if stock is None:
        raise HTTPError(404, "unknown_sku", f"SKU {request.path_params['sku']!r} does not exist")
    return json_response({"sku": stock.sku, "available": stock.available, "reserved": stock.reserved,
                          "version": stock.version, "updated_ms": stock.updated_ms, "source": stock.source})


async def put_sku(request: Request) -> Response:
    ctx = _ctx(request)
    token = ctx.auth.require(request, "stock:write")
    sku, key = _sku_param(request), _idempotency_key(request)
    doc = want_object(await read_json(request, ctx.max_body), "body")
    check_keys(doc, {"available", "expected_version"})
    available = want_int(doc.get("available"), "available", 0)
    expected = doc.get("expected_version")
    if expected is not None:
        expected = want_int(expected, "expected_version", 0, MAX_VERSION)
    await _bind_key(request, ctx, key, doc)
    o = await ctx.store.set(sku, available, ref=_ref(key, sku), source=token.name, expected_version=expected)
    return _outcome_response(o, "set", ctx)


async def adjust_sku(request: Request) -> Response:
    ctx = _ctx(request)
    token = ctx.auth.require(request, "stock:write")
    sku, key = _sku_param(request), _idempotency_key(request)
    doc = want_object(await read_json(request, ctx.max_body), "body")
    check_keys(doc, {"delta"})
    delta = want_int(doc.get("delta"), "delta", -MAX_QTY)
    if delta == 0:
        raise invalid("delta", "must not be 0")
    await _bind_key(request, ctx, key, doc)
    o = await ctx.store.adjust(sku, delta, ref=_ref(key, sku), source=token.name)
    return _outcome_response(o, "adjust", ctx)


async def batch_set(request: Request) -> Response:
    """Set many SKUs' absolute quantities (the initial import): one pipeline, one outcome per item."""
    ctx = _ctx(request)
    token = ctx.auth.require(request, "stock:write")
    key = _idempotency_key(request)
    doc = want_object(await read_json(request, ctx.max_body), "body")
    check_keys(doc, {"items"})
    items, seen = [], set()
    for i, item in enumerate(want_list(doc.get("items"), "items", MAX_BATCH_ITEMS)):
        item = want_object(item, f"items[{i}]")
        check_keys(item, {"sku", "available", "expected_version"}, f"items[{i}].")
        sku = want_sku(item.get("sku"), f"items[{i}].sku")
        if sku in seen:
            raise invalid(f"items[{i}].sku", f"{sku!r} appears twice")
        seen.add(sku)
        expected = item.get("expected_version")
        if expected is not None:
            expected = want_int(expected, f"items[{i}].expected_version", 0, MAX_VERSION)
        items.append((sku, want_int(item.get("available"), f"items[{i}].available", 0), expected))
    await _bind_key(request, ctx, key, doc)
    outcomes = await ctx.store.set_many(items, ref_of=lambda sku: _ref(key, sku), source=token.name)
    results = []
    for (sku, _, _), o in zip(items, outcomes, strict=True):
        if isinstance(o, Exception):  # refused by the library: that item only
            results.append({"sku": sku, "status": "invalid", "message": str(o)})
            continue
        ctx.metrics.outcome("set", o.status, o.replayed)
        results.append(_outcome_doc(o))
    return json_response({"results": results})


async def post_order(request: Request) -> Response:
    """Take every line or none; 409 with the short lines when stock is insufficient."""
    ctx = _ctx(request)
    token = ctx.auth.require(request, "orders:write")
    key = _idempotency_key(request)
    doc = want_object(await read_json(request, ctx.max_body), "body")
    check_keys(doc, {"lines"})
    lines, seen = [], set()
    for i, line in enumerate(want_list(doc.get("lines"), "lines", MAX_ORDER_LINES)):
        line = want_object(line, f"lines[{i}]")
        check_keys(line, {"sku", "qty"}, f"lines[{i}].")
        sku = want_sku(line.get("sku"), f"lines[{i}].sku")
        if sku in seen:
            raise invalid(f"lines[{i}].sku", f"{sku!r} appears twice; merge the lines")
        seen.add(sku)
        lines.append((sku, want_int(line.get("qty"), f"lines[{i}].qty", 1)))
    if len({ctx.store.keys.partition(sku) for sku, _ in lines}) > 1:
        raise invalid("lines", "an all-or-nothing order must keep its SKUs in one partition")
    await _bind_key(request, ctx, key, doc)
    o = await ctx.store.order(lines, ref=_ref(key), source=token.name)
    ctx.metrics.outcome("order", o.status, o.replayed)
    headers = {"Idempotent-Replayed": "true"} if o.replayed else None
    states = [{"sku": s.sku, "qty": s.qty, "available": s.available, "version": s.version} for s in o.lines]
    if o.status == "insufficient":
        short = [{"sku": s.sku, "qty": s.qty, "available": s.available} for s in o.short_lines]
        return json_response({"error": "insufficient", "message": "the order was not taken: some lines are short",
                              "short_lines": short, "lines": states, "replayed": o.replayed}, 409, headers)
    if o.status == "unknown_sku":
        unknown = [s.sku for s in o.lines if s.available is None]
        return json_response({"error": "unknown_sku", "message": f"unknown SKU(s): {', '.join(unknown)}",
                              "unknown_skus": unknown}, 404, headers)
    return json_response({"status": o.status, "lines": states, "replayed": o.replayed}, 200, headers)


# Events (server-sent) ----------------------------------------------------------------------------------


def _parse_cursor(text: str, partitions: int) -> list[str] | None:
    """A Last-Event-ID: one entry ID for every partition, or one per partition joined by commas."""
    parts = text.split(",")
    if not all(_ENTRY_ID.match(p) for p in parts) or len(parts) not in (1, partitions):
        raise HTTPError(400, "bad_event_id", "Last-Event-ID must be an entry ID (or one per partition, "
                        "comma-separated) as sent in the id: field")
    return parts * partitions if len(parts) == 1 else parts


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def events(request: Request) -> Response:
    """Every event of every partition as server-sent events; the id: field resumes (Last-Event-ID)."""
    ctx = _ctx(request)
    ctx.auth.require(request, "events:read")
    store = ctx.store
    partitions = store.keys.partitions
    text = request.headers.get("last-event-id") or request.query_params.get("since") or ""
    limit = request.query_params.get("limit", "")
    if limit and not limit.isdigit():
        raise invalid("limit", "must be a whole number")
    limit_n = int(limit or 0)
    if text:
        cursor = _parse_cursor(text, partitions)
    else:  # from now: the current last ID of each partition, so the first id: sent resumes exactly
        cursor = []
        for p in range(partitions):
            try:
                cursor.append((await store.redis.xinfo_stream(store.keys.events(p)))["last-generated-id"])
            except ResponseError:
                cursor.append("0-0")
    queue: asyncio.Queue = asyncio.Queue(maxsize=1000)

    async def pump() -> None:
        try:
            async for event in follow(store.redis, store.keys, since=min(cursor, key=_id_tuple)):
                await queue.put(event)
        except Exception as e:  # noqa: BLE001 - handed to the stream, which ends
            await queue.put(e)

    async def stream():
        task = asyncio.create_task(pump())
        sent = 0
        try:
            yield b"retry: 2000\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=ctx.sse_keepalive_s)
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                if isinstance(event, Exception):
                    log.warning("events stream ended: %s", event)
                    return
                if _id_tuple(event.id) <= _id_tuple(cursor[event.partition]):
                    continue  # read again because another partition's cursor is older
                cursor[event.partition] = event.id
                data = orjson.dumps({"id": event.id, "partition": event.partition, "type": event.type,
                                     "sku": event.sku, "available": event.available, "delta": event.delta,
                                     "version": event.version, "source": event.source, "ref": event.ref,
                                     "reason": event.reason, "ts_ms": event.ts_ms})
                event_id = cursor[0] if partitions == 1 else ",".join(cursor)
                yield b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id.encode(), event.type.encode(), data)
                sent += 1
                if limit_n and sent >= limit_n:
                    return
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# Rejections and SKU maps -------------------------------------------------------------------------------


async def list_rejections(request: Request) -> Response:
    ctx = _ctx(request)
    ctx.auth.require(request, "stock:read")
    limit = request.query_params.get("limit", "100")
    if not limit.isdigit() or not 1 <= int(limit) <= 1000:
        raise invalid("limit", "must be a whole number from 1 to 1000")
    channel = request.query_params.get("channel") or None
    return json_response({"rejections": await ctx.intake.rejections(int(limit), channel)})


async def resolve_rejection(request: Request) -> Response:
    ctx = _ctx(request)
    ctx.auth.require(request, "orders:write")
    _idempotency_key(request)
    channel, order_id = request.path_params["channel"], request.path_params["order_id"]
    if not await ctx.intake.resolve(channel, order_id):
        raise HTTPError(404, "not_found", f"no rejection recorded for order {order_id!r} of {channel!r}")
    return Response(status_code=204)


def _channel(request: Request, ctx: Context):
    name = request.path_params["channel"]
    channel = ctx.channels.get(name)
    if channel is None:
        raise HTTPError(404, "unknown_channel", f"no channel {name!r} is configured")
    return channel


async def get_sku_map(request: Request) -> Response:
    ctx = _ctx(request)
    ctx.auth.require(request, "channels:read")
    channel = _channel(request, ctx)
    stored = await ctx.store.redis.hgetall(ctx.store.keys.sku_map(channel.name))
    # The Redis hash wins over the config file: it is what the admin endpoint edits.
    return json_response({"channel": channel.name, "map": {**channel.sku_map, **stored},
                          "config": dict(channel.sku_map), "edited": stored})


async def put_sku_map(request: Request) -> Response:
    ctx = _ctx(request)
    ctx.auth.require(request, "channels:write")
    _idempotency_key(request)
    channel = _channel(request, ctx)
    channel_sku = want_sku(request.path_params["channel_sku"], "channel_sku")
    doc = want_object(await read_json(request, ctx.max_body), "body")
    check_keys(doc, {"sku"})
    sku = want_sku(doc.get("sku"), "sku")
    await ctx.store.redis.hset(ctx.store.keys.sku_map(channel.name), channel_sku, sku)
    return json_response({"channel": channel.name, "channel_sku": channel_sku, "sku": sku})


async def delete_sku_map(request: Request) -> Response:
    ctx = _ctx(request)
    ctx.auth.require(request, "channels:write")
    _idempotency_key(request)
    channel = _channel(request, ctx)
    channel_sku = want_sku(request.path_params["channel_sku"], "channel_sku")
    if not await ctx.store.redis.hdel(ctx.store.keys.sku_map(channel.name), channel_sku):
        raise HTTPError(404, "not_found", f"{channel_sku!r} has no edited mapping on {channel.name!r}")
    return Response(status_code=204)


# Channels: the workers' status and dead letters (consumers.status, consumers.dlq) -----------------------


async def list_channels(request: Request) -> Response:
    from consumers.status import channel_status

    ctx = _ctx(request)
    ctx.auth.require(request, "channels:read")
    status = await channel_status(ctx.store.redis, ctx.store.keys, sorted(ctx.channels))
    return json_response({"channels": status})


async def list_dead_letters(request: Request) -> Response:
    from consumers.dlq import list_dead_letters as dead_letters

    ctx = _ctx(request)
    ctx.auth.require(request, "channels:read")
    channel = _channel(request, ctx)
    limit = request.query_params.get("limit", "100")
    if not limit.isdigit() or not 1 <= int(limit) <= 1000:
        raise invalid("limit", "must be a whole number from 1 to 1000")
    letters = await dead_letters(ctx.store.redis, ctx.store.keys, channel.name, int(limit))
    return json_response({"channel": channel.name, "dead_letters": [
        {"id": d.id, "partition": d.partition, "sku": d.sku, "version": d.version, "reason": d.reason,
         "attempts": d.attempts, "error": d.error, "ts_ms": d.ts_ms} for d in letters]})


async def replay_dead_letters(request: Request) -> Response:
    """Push the current quantity of the dead-lettered SKUs (all, or those named) to the channel again."""
    from consumers.dlq import replay

    ctx = _ctx(request)
    ctx.auth.require(request, "channels:write")
    _idempotency_key(request)  # a replay pushes current quantities: repeating it is harmless
    channel = _channel(request, ctx)
    doc = want_object(await read_json(request, ctx.max_body), "body")
    check_keys(doc, {"skus", "ids"})
    skus = {want_sku(x, f"skus[{i}]") for i, x in enumerate(want_list(doc["skus"], "skus", 1000))} if "skus" in doc else None
    ids = {want_str(x, f"ids[{i}]", 64) for i, x in enumerate(want_list(doc["ids"], "ids", 1000))} if "ids" in doc else None
    try:
        report = await replay(ctx.store.redis, ctx.store.keys, channel, skus=skus, ids=ids)
    except SettingsError as e:
        raise HTTPError(503, "not_configured", f"channel {channel.name!r} cannot push: {e}") from None
    return json_response({"channel": channel.name, "resolved": report.resolved, "failed": report.failed},
                         200 if report.ok else 502)


def routes() -> list[Route]:
    return [
        Route("/v1/skus:batch", batch_set, methods=["POST"]),
        # {sku:path}: a SKU may hold "/" (sent as is or as %2F, which the server decodes before routing)
        Route("/v1/skus/{sku:path}/adjust", adjust_sku, methods=["POST"]),
        Route("/v1/skus/{sku:path}", get_sku, methods=["GET"]),
        Route("/v1/skus/{sku:path}", put_sku, methods=["PUT"]),
        Route("/v1/orders", post_order, methods=["POST"]),
        Route("/v1/events", events, methods=["GET"]),
        Route("/v1/rejections", list_rejections, methods=["GET"]),
        Route("/v1/rejections/{channel}/{order_id}", resolve_rejection, methods=["DELETE"]),
        Route("/v1/channels", list_channels, methods=["GET"]),
        Route("/v1/channels/{channel}/dead-letters", list_dead_letters, methods=["GET"]),
        Route("/v1/channels/{channel}/dead-letters:replay", replay_dead_letters, methods=["POST"]),
        Route("/v1/channels/{channel}/sku-map", get_sku_map, methods=["GET"]),
        Route("/v1/channels/{channel}/sku-map/{channel_sku:path}", put_sku_map, methods=["PUT"]),
        Route("/v1/channels/{channel}/sku-map/{channel_sku:path}", delete_sku_map, methods=["DELETE"]),
    ]


