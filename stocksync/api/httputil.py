"""What the webhook and admin endpoints share: JSON replies, errors, bounded body reading (field checks:
stocksync.validate).

Every error reply has one shape, `{"error": <code>, "message": <reason>}` plus `field` when one field of
the request is at fault (422), so a client can tell what to fix without reading logs.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from stocksync.validate import parse_json


class HTTPError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra
        self.headers = headers

    def response(self) -> Response:
        return json_response({"error": self.code, "message": self.message, **self.extra}, self.status, self.headers)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


_JSON_TYPE = (b"content-type", b"application/json")


async def send_json(send, data: Any, status: int = 200) -> None:
    """A JSON reply sent straight through ASGI `send` (what json_response does, minus the Response object)."""
    body = orjson.dumps(data)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), _JSON_TYPE]})
    await send({"type": "http.response.body", "body": body})


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it is known to exceed `limit` (never read whole)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPError(400, "bad_request", "Content-Length is not a number") from None
        if size > limit:
            raise HTTPError(413, "too_large", f"the body is {size} bytes; the limit is {limit}")
    # Straight from ASGI receive (Request.stream() adds an async generator and its bookkeeping per request).
    chunks, total, receive = [], 0, request.receive
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise HTTPError(400, "bad_request", "the client went away before the body was complete")
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise HTTPError(413, "too_large", f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    request._body = body  # request.body() and request.json() still work afterwards
    return body


async def read_json(request: Request, limit: int) -> Any:
    return parse_json(await read_body(request, limit))
