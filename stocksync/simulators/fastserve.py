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
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web


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


@contextmanager
def serve_aiohttp(app: Any, *, host: str = "127.0.0.1", port: int = 0, timeout: float = 10.0) -> Iterator[str]:
    """Like ``base.serve()`` (an ASGI app or a simulator, a background thread with its own event
    loop, a free port with port 0), with aiohttp.web as the HTTP server."""
    asgi = getattr(app, "app", app)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    bound_port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict[str, Any] = {}

    async def start() -> None:
        server = web.Server(_bridge(asgi), access_log=None)
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
