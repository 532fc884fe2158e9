"""A lighter HTTP server for the simulators, for benchmarks: aiohttp.web in front of the same ASGI app.

``serve()`` runs a simulator under uvicorn. Without httptools (not a dependency), uvicorn parses and
writes HTTP with h11, in pure Python: under the propagation benchmark (about 1,000 Amazon calls/s
plus the batch channels) the HTTP layer alone was about half of a simulator's CPU, on a 2-core
machine shared with the workers being measured. ``serve_aiohttp()`` is a drop-in replacement that
accepts connections with aiohttp's server (C HTTP parser, already a dependency for the workers'
client) and hands each request to the simulator's unchanged Starlette app as ASGI. So the request and
response shapes, the latency, the faults, the rate limit and the call record are exactly those of
``serve()``; only the HTTP parsing and writing are cheaper.

    with serve_aiohttp(AmazonSim(Faults(latency_ms=20))) as url:
        ...

``python -m stocksync.simulators amazon --server aiohttp`` serves it by hand.

The Amazon simulator's listing operations (PATCH and GET on ``/listings/2021-08-01/items/...``, one SKU
a call, so about 1,000 calls/s in the benchmark) skip the ASGI bridge and Starlette's middleware and
routing: a plain aiohttp handler hands a small request view to the very same pipeline
(``Simulator.endpoint``: latency, outage, auth, rate limit, injected errors, parse, handler, call
record, all under the simulator's lock) and the same parser and handler, and writes the Starlette
response they return. Same shapes, same record; about 0.35 ms less CPU a call here. Every other
request (control endpoints, other paths and methods) goes through the bridge as before.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy


def _bridge(asgi: Any) -> Any:
    """An aiohttp handler that runs one HTTP request through an ASGI app."""

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        raw_path = request.raw_path.split("?", 1)[0]
        peer = request.transport.get_extra_info("peername") if request.transport else None
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": f"{request.version.major}.{request.version.minor}",
            "method": request.method,
            "scheme": "http",
            "path": request.path,
            "raw_path": raw_path.encode(),
            "query_string": request.query_string.encode(),
            "root_path": "",
            "headers": [(k.lower(), v) for k, v in request.raw_headers],
            "server": None,
            "client": tuple(peer[:2]) if peer else None,
        }
        sent_body = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # a disconnect is never reported: requests are read whole
            return {"type": "http.disconnect"}

        status, headers, chunks = 500, [], []

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status, headers = message["status"], message.get("headers", [])
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await asgi(scope, receive, send)
        response = web.Response(status=status, body=b"".join(chunks))
        for k, v in headers:
            name = k.decode("latin-1")
            if name.lower() != "content-length":
                response.headers.add(name, v.decode("latin-1"))
        return response

    return handle


class _URL:
    __slots__ = ("path", "query")

    def __init__(self, path: str, query: str) -> None:
        self.path, self.query = path, query


class _Headers(CIMultiDictProxy):
    """Starlette's Headers as the simulators use them: case-insensitive get, lower-case items()."""

    def items(self):  # type: ignore[override]
        return [(k.lower(), v) for k, v in super().items()]


class _Request:
    """What the simulators' parsers, handlers and pipeline read of a Starlette Request."""

    __slots__ = ("_request", "method", "url", "headers", "query_params", "path_params", "_body")

    def __init__(self, request: web.Request, path_params: dict[str, str]) -> None:
        self._request = request
        self.method = request.method
        self.url = _URL(request.path, request.query_string)
        self.headers = _Headers(CIMultiDict(request.headers))
        self.query_params = dict(request.query.items())  # the last of repeated keys, as Starlette
        self.path_params = path_params
        self._body: bytes | None = None

    async def body(self) -> bytes:
        if self._body is None:
            self._body = await self._request.read()
        return self._body


def _to_aiohttp(response: Any) -> web.Response:
    """A Starlette Response (status, body, raw headers) as an aiohttp one."""
    out = web.Response(status=response.status_code, body=response.body)
    for k, v in response.raw_headers:
        if k != b"content-length":
            out.headers.add(k.decode("latin-1"), v.decode("latin-1"))
    return out


def _amazon_fast(sim: Any, bridge: Any) -> Any:
    """The bridge, with the Amazon listing operations served straight from the simulator's pipeline."""
    from .amazon import API_PREFIX

    prefix = API_PREFIX + "/"
    patch = sim.endpoint(sim._parse_patch, sim._handle_patch)
    get = sim.endpoint(sim._parse_get, sim._handle_get)

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        method = request.method
        if path.startswith(prefix) and method in ("PATCH", "GET"):
            # Starlette's route API_PREFIX/{seller_id}/{sku:path}: a non-empty seller id, then any SKU
            seller_id, slash, sku = path[len(prefix):].partition("/")
            if seller_id and slash:
                run = patch if method == "PATCH" else get
                return _to_aiohttp(await run(_Request(request, {"seller_id": seller_id, "sku": sku})))
        return await bridge(request)

    return handle


@contextmanager
def serve_aiohttp(app: Any, *, host: str = "127.0.0.1", port: int = 0, timeout: float = 10.0) -> Iterator[str]:
    """Like ``base.serve()`` (an ASGI app or a simulator, a background thread with its own event
    loop, a free port with port 0), with aiohttp.web as the HTTP server."""
    asgi = getattr(app, "app", app)
    handler = _bridge(asgi)
    from .amazon import AmazonSim

    if isinstance(app, AmazonSim):
        handler = _amazon_fast(app, handler)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    bound_port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict[str, Any] = {}

    async def start() -> None:
        server = web.Server(handler, access_log=None)
        runner = web.ServerRunner(server, handle_signals=False)
        await runner.setup()
        site = web.SockSite(runner, sock)
        await site.start()
        state["runner"] = runner

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            state["error"] = exc
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(state["runner"].cleanup())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not started.wait(timeout) or "error" in state:
        raise RuntimeError(f"the aiohttp simulator server did not start: {state.get('error')}")
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        sock.close()
