"""What the webhook and admin endpoints share: JSON replies, errors, bounded body reading, field checks.

Every error reply has one shape, `{"error": <code>, "message": <reason>}` plus `field` when one field of
the request is at fault (422), so a client can tell what to fix without reading logs.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from stocksync.limits import MAX_QTY, MAX_SKU_BYTES


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


def invalid(field: str, message: str) -> HTTPError:
    return HTTPError(422, "invalid", f"{field}: {message}", field=field)


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


def parse_json(body: bytes) -> Any:
    if not body:
        raise HTTPError(400, "invalid_json", "the body is empty; a JSON document is expected")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise HTTPError(400, "invalid_json", f"the body is not valid JSON: {e}") from None


async def read_json(request: Request, limit: int) -> Any:
    return parse_json(await read_body(request, limit))


# Field checks: each names the field it refuses --------------------------------------------------------


def want_object(value: Any, field: str) -> dict:
    if not isinstance(value, dict):
        raise invalid(field, "must be a JSON object")
    return value


def want_list(value: Any, field: str, max_items: int, min_items: int = 1) -> list:
    if not isinstance(value, list):
        raise invalid(field, "must be a JSON array")
    if not min_items <= len(value) <= max_items:
        raise invalid(field, f"must have {min_items} to {max_items} items, has {len(value)}")
    return value


def want_int(value: Any, field: str, low: int, high: int = MAX_QTY) -> int:
    # bool is an int in Python and 2.0 is a float in JSON: neither is a quantity.
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(field, f"must be an integer, got {_kind(value)}")
    if not low <= value <= high:
        raise invalid(field, f"must be between {low} and {high}, got {value}")
    return value


def want_str(value: Any, field: str, max_bytes: int = 255) -> str:
    if not isinstance(value, str) or not value:
        raise invalid(field, "must be a non-empty string")
    if len(value.encode()) > max_bytes:
        raise invalid(field, f"must be at most {max_bytes} bytes")
    return value


def want_sku(value: Any, field: str = "sku") -> str:
    sku = want_str(value, field, MAX_SKU_BYTES)
    if any(ord(c) < 32 for c in sku):
        raise invalid(field, "must not contain control characters")
    return sku


def check_keys(doc: dict, allowed: set[str], where: str = "") -> None:
    extra = sorted(set(doc) - allowed)
    if extra:
        raise invalid(f"{where}{extra[0]}", "unknown field")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", float: "a number with a fraction", str: "a string", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)
