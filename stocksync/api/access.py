"""The access log and request ids: an ASGI middleware around the whole app.

Every HTTP request gets a request id: the client's `X-Request-ID` when it sends a sane one (1-64 letters,
digits, '-', '_', '.', ':'), else a new one. It is bound to the logging context for the request
(stocksync.logs: every record logged while serving it carries `request_id`) and sent back in the
`X-Request-ID` response header. When the request ends, one record `request` is logged under
`stocksync.access` with method, path (never the query string: nothing a client puts there reaches the
logs), status, duration_ms, client and request_id; `stocksync serve --access-log` shows them (the
logger is at WARNING otherwise).
"""

from __future__ import annotations

import itertools
import logging
import re
import time
import uuid
from typing import Any

from stocksync import logs

log = logging.getLogger("stocksync.access")
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
HEADER = b"x-request-id"


# A new id is this process's random prefix and a counter: unique across processes and restarts, and a
# fraction of uuid4's cost (it reads the OS's random source on every call).
_PREFIX = uuid.uuid4().hex[:8].encode()
_COUNTER = itertools.count(1)


def request_id(scope) -> bytes:
    for name, value in scope.get("headers", ()):
        if name == HEADER and _REQUEST_ID.match(value):
            return value
    return b"%s-%x" % (_PREFIX, next(_COUNTER))


class AccessLogMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = request_id(scope)
        status = [500]

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", ()), (HEADER, rid)]
            await send(message)

        token = logs.bind(request_id=rid.decode())
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                log.info("request", extra={
                    "method": scope["method"], "path": scope["path"], "status": status[0],
                    "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                    "client": f"{client[0]}:{client[1]}" if client else None})
            logs.reset(token)
