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

``python -m stocksync.devtools.simulators amazon --server aiohttp`` serves it by hand.

The Amazon simulator (one SKU a call, so about 1,000 calls/s in the benchmark) gets a smaller server
still: a minimal HTTP/1.1 server on asyncio streams (keep-alive, Content-Length bodies; a chunked
request body answers 501) that hands its listing operations (PATCH and GET on
``/listings/2021-08-01/items/{sellerId}/{sku}``) to the very same pipeline (``Simulator.endpoint``:
latency, outage, auth, rate limit, injected errors, parse, handler, call record, all under the
simulator's lock) with the same parser and handler, skipping the ASGI bridge and Starlette's
middleware and routing, and every other request (control endpoints, other paths and methods) to the
Starlette app as ASGI. Same shapes, same record. Simulator CPU a call, isolated, 1,000 calls/s at 20
ms: 544 us through aiohttp and the bridge, 322 us this way (the pipeline itself is most of the rest).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from .amazon import API_PREFIX, AmazonSim


async def run_asgi(asgi: Any, scope: dict[str, Any], body: bytes) -> tuple[int, list, bytes]:
    """One request, its body already read whole, through an ASGI app: status, headers (less
    Content-Length, which the server sets), body."""
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
            status, headers = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await asgi(scope, receive, send)
    return status, [(k, v) for k, v in headers if k.lower() != b"content-length"], b"".join(chunks)


def _bridge(asgi: Any) -> Any:
    """An aiohttp handler that runs one HTTP request through an ASGI app."""

    async def handle(request: web.Request) -> web.StreamResponse:
        # (not request.read(): it refuses bodies past 1 MiB, and a feed document of 25,000 messages is ~4 MB)
        body = await request.content.read()
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
        status, headers, content = await run_asgi(asgi, scope, body)
        response = web.Response(status=status, body=content)
        for k, v in headers:
            response.headers.add(k.decode("latin-1"), v.decode("latin-1"))
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


class _PlainRequest:
    """What the simulators' parsers, handlers and pipeline read of a Starlette Request."""

    __slots__ = ("method", "url", "headers", "query_params", "path_params", "_body")

    def __init__(self, method: str, path: str, query: str, headers: CIMultiDict, body: bytes,
                 path_params: dict[str, str]) -> None:
        self.method = method
        self.url = _URL(path, query)
        self.headers = _Headers(headers)
        self.query_params = dict(parse_qsl(query, keep_blank_values=True))  # last of repeated keys wins
        self.path_params = path_params
        self._body = body

    async def body(self) -> bytes:
        return self._body


def _request_head(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    """Method, target, protocol and header pairs of a request head (ValueError when malformed)."""
    lines = head[:-4].decode("latin-1").split("\r\n")
    method, target, proto = lines[0].split(" ")
    return method, target, proto, [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]


def _response(status: int, headers: list, content: bytes, length: int, close: bool) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    parts = [f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")]
    parts += [k + b": " + v + b"\r\n" for k, v in headers]
    parts.append(b"content-length: %d\r\n" % length)
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    parts.append(content)
    return b"".join(parts)


def _plain_server(sim: Any) -> Any:
    """A minimal HTTP/1.1 server (asyncio streams: keep-alive, Content-Length bodies, requests answered in
    order) for the Amazon simulator: the listing PATCH/GET go straight into the simulator's pipeline, every
    other request through its ASGI app. aiohttp's server machinery (a task, a request and a response
    object, the writer) cost about as much as the simulator's own work per call; this costs a fraction."""
    asgi = sim.app
    prefix = API_PREFIX + "/"
    patch = sim.endpoint(sim._parse_patch, sim._handle_patch)
    get = sim.endpoint(sim._parse_get, sim._handle_get)

    async def via_asgi(method: str, target: str, path: str, query: str, version: str, raw: list, body: bytes,
                       peer: Any) -> tuple[int, list, bytes]:
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": version,
            "method": method, "scheme": "http", "path": path, "raw_path": target.split("?", 1)[0].encode("latin-1"),
            "query_string": query.encode("latin-1"), "root_path": "",
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in raw],
            "server": None, "client": tuple(peer[:2]) if peer else None,
        }
        return await run_asgi(asgi, scope, body)

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                try:
                    method, target, proto, raw = _request_head(head)
                except ValueError:
                    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                headers = CIMultiDict(raw)
                if "chunked" in headers.get("Transfer-Encoding", "").lower():
                    writer.write(b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                body = await reader.readexactly(int(headers.get("Content-Length") or 0))
                version = proto[5:] or "1.1"
                conn = headers.get("Connection", "").lower()
                close = conn == "close" or (version == "1.0" and conn != "keep-alive")
                raw_path, _, query = target.partition("?")
                path = unquote(raw_path)
                seller_id, slash, sku = path[len(prefix):].partition("/") if path.startswith(prefix) else ("", "", "")
                if method in ("PATCH", "GET") and seller_id and slash:
                    request = _PlainRequest(method, path, query, headers, body, {"seller_id": seller_id, "sku": sku})
                    response = await (patch if method == "PATCH" else get)(request)
                    status, out, content = response.status_code, response.raw_headers, response.body
                    out = [(k, v) for k, v in out if k != b"content-length"]
                else:
                    status, out, content = await via_asgi(method, target, path, query, version, raw, body, peer)
                writer.write(_response(status, out, content if method != "HEAD" else b"", len(content), close))
                if close:
                    return
        finally:
            writer.close()

    return connection


def new_event_loop(choice: str | None = None) -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's when importable and ``choice`` (default $STOCKSYNC_LOOP, else
    ``auto``) is not ``asyncio``; ``uvloop`` when it is not installed is an error. The simulator's
    server runs on it: at 1,000 Amazon calls/s the loop and its socket transports are a good part of
    the simulator's CPU, which uvloop does in C."""
    choice = (choice or os.environ.get("STOCKSYNC_LOOP") or "auto").lower()
    if choice not in ("auto", "uvloop", "asyncio"):
        raise ValueError(f"loop must be auto, uvloop or asyncio, not {choice!r}")
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _listening(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


def _shut_down(loop: asyncio.AbstractEventLoop, state: dict[str, Any]) -> None:
    """Close the server of a stopped loop, then the loop."""
    if "plain" in state:
        state["plain"].close()
        # Connections still open (keep-alive) are tasks parked in a read: end them while the loop runs,
        # or their coroutines are collected after loop.close() and fail closing their socket.
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    else:
        loop.run_until_complete(state["runner"].cleanup())
    loop.close()


@contextmanager
def serve_aiohttp(app: Any, *, host: str = "127.0.0.1", port: int = 0, timeout: float = 10.0,
                  loop: str | None = None) -> Iterator[str]:
    """Like ``base.serve()`` (an ASGI app or a simulator, a background thread with its own event
    loop, a free port with port 0), with aiohttp.web as the HTTP server. ``loop``: auto (uvloop when
    importable; the default, or $STOCKSYNC_LOOP), uvloop or asyncio."""
    asgi = getattr(app, "app", app)
    handler = _bridge(asgi)
    plain = _plain_server(app) if isinstance(app, AmazonSim) else None
    sock = _listening(host, port)
    bound_port = sock.getsockname()[1]
    loop = new_event_loop(loop)
    started = threading.Event()
    state: dict[str, Any] = {}

    async def start() -> None:
        if plain is not None:
            server = await asyncio.start_server(plain, sock=sock, limit=1 << 20)
            state["plain"] = server
            return
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
        _shut_down(loop, state)

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
