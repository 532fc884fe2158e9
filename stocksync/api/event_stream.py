"""GET /v1/events: every partition's events stream as server-sent events; the id: field resumes it
(Last-Event-ID: one entry ID, or one per partition joined by commas). As with `stocksync tail --from`, an
ID may be a time in ms alone (`<ms>` is `<ms>-0`), so `Last-Event-ID: 0` (or `?since=0`) starts from the
oldest event kept."""

from __future__ import annotations

import asyncio
import logging
import re

import orjson
from redis.exceptions import ResponseError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from stocksync.events import follow
from stocksync.validate import invalid

from .context import context
from .httputil import HTTPError

log = logging.getLogger(__name__)
_ENTRY_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")


def _parse_cursor(text: str, partitions: int) -> list[str] | None:
    """A Last-Event-ID: one entry ID for every partition, or one per partition joined by commas."""
    parts = [p.strip() for p in text.split(",")]
    if not all(_ENTRY_ID.match(p) for p in parts) or len(parts) not in (1, partitions):
        raise HTTPError(400, "bad_event_id", "Last-Event-ID must be an entry ID (or one per partition, "
                        "comma-separated) as sent in the id: field, or a time in ms (0: from the beginning)")
    parts = [p if "-" in p else f"{p}-0" for p in parts]
    return parts * partitions if len(parts) == 1 else parts


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def _start(request: Request, store) -> list[str]:
    """Where each partition's stream starts: the Last-Event-ID (or ?since=), else now (the current last ID
    of each partition, so that the first id: sent resumes exactly)."""
    text = request.headers.get("last-event-id") or request.query_params.get("since") or ""
    if text:
        return _parse_cursor(text, store.keys.partitions)
    cursor = []
    for p in range(store.keys.partitions):
        try:
            cursor.append((await store.redis.xinfo_stream(store.keys.events(p)))["last-generated-id"])
        except ResponseError:
            cursor.append("0-0")
    return cursor


def _frame(event, cursor: list[str]) -> bytes:
    data = orjson.dumps({"id": event.id, "partition": event.partition, "type": event.type, "sku": event.sku,
                         "available": event.available, "delta": event.delta, "version": event.version,
                         "source": event.source, "ref": event.ref, "reason": event.reason, "ts_ms": event.ts_ms})
    event_id = cursor[0] if len(cursor) == 1 else ",".join(cursor)
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id.encode(), event.type.encode(), data)


async def _frames(store, cursor: list[str], keepalive_s: float, limit: int):
    """The SSE frames: events after the cursor (which they move on), a comment when idle, `limit` at most."""
    queue: asyncio.Queue = asyncio.Queue(maxsize=1000)

    async def pump() -> None:
        try:
            async for event in follow(store.redis, store.keys, since=min(cursor, key=_id_tuple)):
                await queue.put(event)
        except Exception as e:  # noqa: BLE001 - handed to the stream, which ends
            await queue.put(e)

    task, sent = asyncio.create_task(pump()), 0
    try:
        yield b"retry: 2000\n\n"
        while not limit or sent < limit:
            try:
                event = await asyncio.wait_for(queue.get(), timeout=keepalive_s)
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            if isinstance(event, Exception):
                log.warning("events stream ended: %s", event)
                return
            if _id_tuple(event.id) <= _id_tuple(cursor[event.partition]):
                continue  # read again because another partition's cursor is older
            cursor[event.partition] = event.id
            yield _frame(event, cursor)
            sent += 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def events(request: Request) -> Response:
    """Every event of every partition as server-sent events; the id: field resumes (Last-Event-ID)."""
    ctx = context(request)
    ctx.auth.require(request, "events:read")
    limit = request.query_params.get("limit", "")
    if limit and not limit.isdigit():
        raise invalid("limit", "must be a whole number")
    cursor = await _start(request, ctx.store)
    return StreamingResponse(_frames(ctx.store, cursor, ctx.sse_keepalive_s, int(limit or 0)),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def routes() -> list[Route]:
    return [Route("/v1/events", events, methods=["GET"])]
