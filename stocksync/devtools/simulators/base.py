"""Shared machinery of the local marketplace API simulators.

Each simulator (shopify.py, amazon.py, flipkart.py, webhook.py) is a Starlette app that speaks one
marketplace's request/response shapes and keeps the listed quantity per SKU. What they share lives
here, so that each of them is only its API's parsing, validation and reply shapes:

* ``Faults``: latency (+ jitter), a token-bucket rate limit, a random 5xx rate drawn from a seeded
  RNG, outages, and SKUs that the API rejects permanently. Changeable at runtime from Python
  (``sim.set_faults(...)``, ``sim.outage(...)``) and over HTTP (``POST /_sim/faults``).
* The pipeline every API call goes through, in this order (the order real gateways use):
  latency, outage (503), auth (401), rate limit (429 + Retry-After, or the API's own throttle
  shape), injected 5xx, malformed request (400), and only then the simulator's handler. Parsing,
  the gate and the handler run under one lock, so a call is atomic against the Python API. An
  operation may have a rate limiter of its own instead of the faults' (``endpoint(op=, limit=)``:
  SP-API limits each operation apart); its calls are recorded under its ``op``.
* The record: every API call becomes a ``Call`` (monotonic time, wall ms, method, path, status,
  outcome, items with SKU and quantity, headers with secrets redacted), and each SKU keeps the
  history of the quantities the API accepted, in order. ``max_rate()`` gives the most calls (or
  cost) ever let through the rate limiter in any window.
* Control endpoints, outside the faults: ``GET /_sim/state``, ``GET /_sim/calls?since=N``,
  ``GET|POST /_sim/faults``, ``POST /_sim/seed`` ({sku: qty}), ``POST /_sim/reset``,
  ``GET /_sim/health``, and a subclass's ``control_routes()`` (the order book's, see ``market``).
* ``serve()`` / ``aserve()``: run any ASGI app (or a simulator) with uvicorn on a free loopback
  port in a background thread, wait until it answers, and stop it cleanly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import math
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import anyio.to_thread
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

# Header values replaced by "<redacted>" in the call record: tests can see that a credential was
# sent without the record (printed by /_sim/calls) leaking it.
SECRET_HEADERS = frozenset(
    {"authorization", "x-shopify-access-token", "x-amz-access-token", "x-amz-security-token", "cookie"}
)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, headers=headers, media_type="application/json")


def is_int(value: Any) -> bool:
    """A JSON integer (bool is an int subclass in Python, and never a valid quantity)."""
    return isinstance(value, int) and not isinstance(value, bool)


class _ApiFirst:
    """The simulator's ASGI app: its API operations straight to their endpoint (``Simulator.endpoint``'s
    pipeline, the same Request, parser, handler and response), skipping Starlette's two middlewares and
    its router, which cost about a tenth of a simulator's CPU a call; every other request (control
    endpoints, unknown paths or methods, lifespan) goes through the Starlette app, unchanged. A route is
    taken here only where Starlette's router would take it (the control routes' paths, under /_sim/,
    match no API route); an endpoint that raises answers what Starlette's ServerErrorMiddleware answers
    (500 "Internal Server Error") and the exception propagates to the server, as there."""

    def __init__(self, app: Starlette, routes: list[Route]) -> None:
        self.app = app
        self._routes = [(r.path_regex, r.methods, r.param_convertors, r.endpoint) for r in routes]

    def __getattr__(self, name: str) -> Any:  # routes, state, ...: the Starlette app's
        return getattr(self.app, name)

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            path, method = scope["path"], scope["method"]
            for regex, methods, convertors, endpoint in self._routes:
                m = regex.match(path)
                if m is None or (methods and method not in methods):
                    continue
                params = dict(scope.get("path_params", {}))
                params.update((k, convertors[k].convert(v)) for k, v in m.groupdict().items())
                scope = {**scope, "app": self.app, "endpoint": endpoint, "path_params": params}
                request = Request(scope, receive, send)
                try:
                    response = await endpoint(request)
                except Exception:
                    await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, send)
                    raise
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Reject(Exception):
    """Raised by a simulator's parser: answer ``response`` instead of calling the handler."""

    def __init__(self, response: Response, outcome: str = "bad_request") -> None:
        super().__init__(outcome)
        self.response = response
        self.outcome = outcome


@dataclass
class Parsed:
    """What a parser makes of a request: its data for the handler, the items it carries (recorded
    even when the call is refused at the gate) and its cost for the rate limiter."""

    data: Any
    items: list[dict[str, Any]] = field(default_factory=list)
    cost: float = 1.0


@dataclass
class Faults:
    latency_ms: float = 0.0  # added before the call is decided, so concurrent calls can reorder
    jitter_ms: float = 0.0  # uniform in [0, jitter_ms], from the seeded latency RNG
    rate_limit: float | None = None  # token refill per second (Shopify: cost points); None = no limit
    burst: float = 1.0  # bucket capacity; starts full, so any 1 s window admits <= burst + rate_limit
    error_rate: float = 0.0  # probability that a call past the rate limiter answers error_status
    error_status: int = 500
    reject_skus: set[str] = field(default_factory=set)  # rejected permanently, in the API's own way
    seed: int = 0  # seeds the error and latency RNGs, so a test run is repeatable

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["reject_skus"] = sorted(self.reject_skus)
        return out


@dataclass
class Call:
    seq: int
    t: float  # time.monotonic() when the call was decided (after the simulated latency)
    wall_ms: int
    method: str
    path: str
    query: str
    headers: dict[str, str]
    items: list[dict[str, Any]]  # {"sku", "quantity", ...; "result" once the handler ran}
    status: int = 0
    # ok | outage | unauthorized | throttled | server_error | bad_request
    outcome: str = "ok"
    accepted: bool = False  # let through by the rate limiter (counts towards max_rate)
    cost: float = 0.0
    op: str = ""  # "" for the listing API; an order API's operation name (it has its own limit, see endpoint)


class TokenBucket:
    """Capacity ``burst``, refilled at ``rate`` per second, starting full: the calls it admits in
    any window of W seconds cost at most burst + rate * W."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.capacity = rate, burst
        self.tokens, self.stamp = burst, time.monotonic()

    def available(self, now: float) -> float:
        return min(self.capacity, self.tokens + (now - self.stamp) * self.rate)

    def take(self, cost: float, now: float) -> float:
        """Take ``cost`` tokens and return 0, or take nothing and return the seconds to wait."""
        self.tokens, self.stamp = self.available(now), now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate

    def give(self, tokens: float) -> None:
        """Put back tokens taken for more than was used (Shopify refunds requested minus actual cost)."""
        self.tokens = min(self.capacity, self.tokens + tokens)


class Simulator:
    """Base class: subclasses set ``name``, implement ``api_routes``, ``authorized`` and
    ``error_response``, and may override ``throttled_response`` and ``_reset_state``."""

    name: ClassVar[str] = "sim"
    auth_status: int = 401  # status answered to a missing or wrong credential

    def __init__(self, faults: Faults | None = None) -> None:
        self._lock = threading.RLock()
        self._initial_faults = dataclasses.replace(faults or Faults())
        self._app: _ApiFirst | None = None
        self._configure(dataclasses.replace(self._initial_faults))
        self._outage_until: float | None = None
        self._clear()

    # ----- what subclasses provide -------------------------------------------------------------

    @staticmethod
    def realistic_faults() -> Faults:
        """Faults close to the real API's (for the demo and the benchmarks): a loopback API that
        answers in about 20 ms (the figure of the design's measurements), plus the API's limits."""
        return Faults(latency_ms=20, jitter_ms=10)

    def api_routes(self) -> list[Route]:
        raise NotImplementedError

    def authorized(self, request: Request, body: bytes) -> bool:
        raise NotImplementedError

    def auth_headers(self, body: bytes = b"") -> dict[str, str]:
        """The headers a well-behaved client sends (for tests, the demo and the benchmarks)."""
        raise NotImplementedError

    def error_response(self, kind: str, status: int, message: str) -> Response:
        """An error in the API's own shape; kind is one of the Call outcomes."""
        return json_response({"error": kind, "message": message}, status)

    def throttled_response(self, wait_s: float, cost: float, bucket: TokenBucket) -> Response:
        """The reply to a call that ``bucket`` (the faults' limiter or an operation's own) refused."""
        response = self.error_response("throttled", 429, "rate limit exceeded")
        response.headers["Retry-After"] = str(max(1, math.ceil(wait_s)))  # HTTP wants whole seconds
        return response

    def _reset_state(self) -> None:
        """Clear simulator-specific state (called under the lock by reset())."""

    def control_routes(self) -> list[Route]:
        """Extra control endpoints under /_sim/ (the marketplaces' order book, see ``market``)."""
        return []

    # ----- state from Python -------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    @property
    def quantities(self) -> dict[str, int]:
        with self._lock:
            return dict(self._quantities)

    def history(self, sku: str) -> list[int]:
        """Quantities the API accepted for ``sku``, oldest first (seeding is not an update)."""
        with self._lock:
            return list(self._history.get(sku, ()))

    def seed(self, quantities: dict[str, int]) -> dict[str, str]:
        """Set listed quantities as if they had always been there (no history, no call). Answers
        the ids the API gave the SKUs (Shopify: inventory item gids; others: none)."""
        with self._lock:
            self._quantities.update(quantities)
            return {}

    def reset(self, faults: bool = True) -> None:
        """Forget calls, quantities and history; with ``faults``, also restore the constructor's
        faults and end any outage. The rate-limit bucket is refilled either way."""
        with self._lock:
            self._clear()
            if faults:
                self._configure(dataclasses.replace(self._initial_faults))
                self._outage_until = None
            else:
                self._configure(self.faults)

    @property
    def faults(self) -> Faults:
        with self._lock:
            return dataclasses.replace(self._faults, reject_skus=set(self._faults.reject_skus))

    def set_faults(self, **changes: Any) -> Faults:
        """Change some faults (keyword names of ``Faults``; also ``outage`` bool and ``outage_s``
        seconds). A new rate limit or burst starts with a full bucket; a new seed restarts the
        RNGs; other changes leave both alone. Invalid changes raise ValueError and change nothing."""
        outage = {k: changes.pop(k) for k in ("outage", "outage_s") if k in changes}
        unknown = set(changes) - {f.name for f in dataclasses.fields(Faults)}
        if unknown:
            raise ValueError(f"unknown fault(s): {sorted(unknown)}")
        with self._lock:
            new = self.faults
            for key, value in changes.items():
                if key == "reject_skus":
                    value = set(value)
                elif key == "rate_limit":
                    value = None if value is None else float(value)
                elif key in ("error_status", "seed"):
                    value = int(value)
                else:
                    value = float(value)
                setattr(new, key, value)
            if new.rate_limit is not None and (new.rate_limit <= 0 or new.burst < 1):
                raise ValueError("rate_limit must be > 0 and burst >= 1")
            self._configure(
                new, bucket=bool({"rate_limit", "burst"} & changes.keys()), reseed="seed" in changes
            )
            if "outage" in outage:
                self.outage(bool(outage["outage"]))
            if "outage_s" in outage:
                self.outage(seconds=float(outage["outage_s"]))
            return self.faults

    def outage(self, on: bool = True, *, seconds: float | None = None) -> None:
        """Answer 503 to every API call: from now on (``on``), for ``seconds``, or no more."""
        with self._lock:
            if seconds is not None:
                self._outage_until = time.monotonic() + seconds
            else:
                self._outage_until = math.inf if on else None

    def max_rate(self, window_s: float = 1.0, *, cost: bool = False, op: str = "") -> float:
        """The most calls (or, with ``cost``, cost points) of operation ``op`` (default: the listing
        API's) the rate limiter let through in any half-open window (t - window_s, t]."""
        accepted = [(c.t, c.cost if cost else 1.0) for c in self.calls if c.accepted and c.op == op]
        accepted.sort()
        best = total = 0.0
        lo = 0
        for t, weight in accepted:
            total += weight
            while accepted[lo][0] <= t - window_s:
                total -= accepted[lo][1]
                lo += 1
            best = max(best, total)
        return best

    def state(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            return {
                "name": self.name,
                "quantities": dict(self._quantities),
                "history": {sku: list(h) for sku, h in self._history.items()},
                "faults": self._faults.to_json(),
                "outage": self._outage_on(now),
                "calls": len(self._calls),
                "max_rate_1s": self.max_rate(),
            }

    # ----- for the handlers (called under the lock) --------------------------------------------

    def apply(self, sku: str, quantity: int) -> None:
        """The API accepted ``quantity`` for ``sku``: list it and add it to the history."""
        self._quantities[sku] = quantity
        self._history.setdefault(sku, []).append(quantity)

    def rejected(self, sku: str) -> bool:
        return sku in self._faults.reject_skus

    def load_json(self, body: bytes) -> Any:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Reject(self.error_response("bad_request", 400, f"malformed JSON: {exc}")) from None

    def bad_request(self, message: str) -> Reject:
        return Reject(self.error_response("bad_request", 400, message))

    def bucket_status(self) -> tuple[float, float, float] | None:
        """(capacity, available now, refill rate) of the rate limiter, None when there is none."""
        if self._bucket is None:
            return None
        b = self._bucket
        return b.capacity, b.available(time.monotonic()), b.rate

    # ----- the app and the pipeline ------------------------------------------------------------

    @property
    def app(self) -> Any:
        """The ASGI app (the Starlette app behind a shortcut for the API routes, see ``_ApiFirst``)."""
        if self._app is None:
            control = [
                Route("/_sim/health", self._ctl_health, methods=["GET"]),
                Route("/_sim/state", self._ctl_state, methods=["GET"]),
                Route("/_sim/calls", self._ctl_calls, methods=["GET"]),
                Route("/_sim/faults", self._ctl_faults, methods=["GET", "POST"]),
                Route("/_sim/seed", self._ctl_seed, methods=["POST"]),
                Route("/_sim/reset", self._ctl_reset, methods=["POST"]),
                *self.control_routes(),
            ]
            api = self.api_routes()
            self._app = _ApiFirst(Starlette(routes=control + api), api)
        return self._app

    def endpoint(
        self,
        parse: Callable[[Request, bytes], Parsed],
        handle: Callable[[Request, Parsed, Call], Response],
        *,
        op: str = "",
        limit: Callable[[], TokenBucket | None] | None = None,
    ) -> Callable[[Request], Any]:
        """Wrap an API operation (a parser and a handler, both synchronous) in the pipeline. ``op`` names
        it in the record; ``limit`` gives the operation's own rate limiter (None from it: no limit), for
        APIs whose operations are limited apart (SP-API); without it the faults' limiter applies."""

        async def run(request: Request) -> Response:
            body = await request.body()
            self.arrivals += 1
            delay = self._delay_s()
            if delay > 0:
                await asyncio.sleep(delay)
            with self._lock:
                call = Call(
                    seq=len(self._calls) + 1,
                    t=time.monotonic(),
                    wall_ms=int(time.time() * 1000),
                    method=request.method,
                    path=request.url.path,
                    query=request.url.query,
                    headers={
                        k: ("<redacted>" if k in SECRET_HEADERS else v) for k, v in request.headers.items()
                    },
                    items=[],
                    op=op,
                )
                parsed: Parsed | None = None
                rejection: Reject | None = None
                try:
                    parsed = parse(request, body)
                    call.items = parsed.items
                except Reject as exc:
                    rejection = exc
                response = self._gate(request, body, parsed, call, self._bucket if limit is None else limit())
                if response is None and rejection is not None:
                    response, call.outcome = rejection.response, rejection.outcome
                elif response is None:
                    assert parsed is not None
                    response = handle(request, parsed, call)
                call.status = response.status_code
                self._calls.append(call)
                return response

        return run

    def _gate(
        self, request: Request, body: bytes, parsed: Parsed | None, call: Call, bucket: TokenBucket | None
    ) -> Response | None:
        if self._outage_on(call.t):
            call.outcome = "outage"
            return self.error_response("outage", 503, "service unavailable (simulated outage)")
        if not self.authorized(request, body):
            call.outcome = "unauthorized"
            return self.error_response("unauthorized", self.auth_status, "missing or invalid credentials")
        cost = parsed.cost if parsed is not None else 1.0
        if bucket is not None:
            wait = bucket.take(cost, call.t)
            if wait > 0:
                call.outcome = "throttled"
                return self.throttled_response(wait, cost, bucket)
        call.accepted, call.cost = True, cost
        if self._faults.error_rate and self._error_rng.random() < self._faults.error_rate:
            call.outcome = "server_error"
            return self.error_response(
                "server_error", self._faults.error_status, "internal error (simulated)"
            )
        return None

    def _delay_s(self) -> float:
        with self._lock:
            f = self._faults
            jitter = self._latency_rng.uniform(0, f.jitter_ms) if f.jitter_ms else 0.0
            return (f.latency_ms + jitter) / 1000

    def _outage_on(self, now: float) -> bool:
        return self._outage_until is not None and now < self._outage_until

    def _configure(self, faults: Faults, *, bucket: bool = True, reseed: bool = True) -> None:
        self._faults = faults
        if bucket:
            rate = faults.rate_limit
            self._bucket = TokenBucket(rate, faults.burst) if rate is not None else None
        if reseed:
            # Two RNGs: turning latency on must not shift which calls get an injected 5xx.
            self._error_rng = random.Random(faults.seed)
            self._latency_rng = random.Random(faults.seed + 1)

    def _clear(self) -> None:
        # Requests whose body has arrived, answered or not yet (calls are recorded when answered): a test
        # waits on this to know a slow request has reached the API.
        self.arrivals = 0
        self._calls: list[Call] = []
        self._quantities: dict[str, int] = {}
        self._history: dict[str, list[int]] = {}
        self._reset_state()

    # ----- control endpoints -------------------------------------------------------------------

    async def _ctl_health(self, request: Request) -> Response:
        return json_response({"ok": True, "name": self.name})

    async def _ctl_state(self, request: Request) -> Response:
        return json_response(self.state())

    async def _ctl_calls(self, request: Request) -> Response:
        since = request.query_params.get("since", "0")
        if not since.isdigit():
            return _bad("since must be a call seq (a whole number)")
        return json_response([dataclasses.asdict(c) for c in self.calls if c.seq > int(since)])

    async def _ctl_faults(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                changes = orjson.loads(await request.body() or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("expected a JSON object of Faults fields")
                self.set_faults(**changes)
            except (ValueError, TypeError) as exc:  # orjson's JSONDecodeError is a ValueError
                return _bad(str(exc))
        return json_response({**self.faults.to_json(), "outage": self._outage_on(time.monotonic())})

    async def _ctl_seed(self, request: Request) -> Response:
        try:
            data = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError as exc:
            return _bad(f"malformed JSON: {exc}")
        if not isinstance(data, dict) or not all(is_int(v) and v >= 0 for v in data.values()):
            return _bad("expected {sku: quantity}, quantities whole numbers >= 0")
        return json_response({"seeded": len(data), "ids": self.seed(data)})

    async def _ctl_reset(self, request: Request) -> Response:
        try:
            data = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError as exc:
            return _bad(f"malformed JSON: {exc}")
        if not isinstance(data, dict) or not isinstance(data.get("faults", True), bool):
            return _bad('expected {"faults": true | false} or no body')
        self.reset(faults=data.get("faults", True))
        return json_response({"ok": True})


def _bad(message: str) -> Response:
    """A control endpoint's 400, in the shape of the order book's (``market``)."""
    return json_response({"error": "bad_request", "message": message}, 400)


# ----- the runner --------------------------------------------------------------------------------


@contextmanager
def serve(app: Any, *, host: str = "127.0.0.1", port: int = 0, timeout: float = 10.0) -> Iterator[str]:
    """Run ``app`` (an ASGI app, or anything with an ``.app``, like a simulator) with uvicorn in a
    background thread and yield its base URL, e.g. ``http://127.0.0.1:54321``.

    The socket is bound here (port 0 = a free port), so the port is known before uvicorn starts
    and nothing can take it in between. The server has its own thread and event loop: it keeps
    answering while the test blocks, and works whatever event loop (or none) the caller uses.
    """
    asgi = getattr(app, "app", app)
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on accepted sockets that say TCP,
    # and without it every keep-alive reply waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        asgi, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://{host}:{bound_port}"
    try:
        _wait_until_answering(server, thread, host, bound_port, timeout)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def _wait_until_answering(
    server: uvicorn.Server, thread: threading.Thread, host: str, port: int, timeout: float
) -> None:
    """Poll until the server has started and answers one HTTP request (any status will do)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError("the server thread exited during startup")
        if server.started:
            conn = http.client.HTTPConnection(host, port, timeout=max(0.1, deadline - time.monotonic()))
            try:
                conn.request("GET", "/_sim/health")
                conn.getresponse().read()
                return
            except OSError:
                pass
            finally:
                conn.close()
        time.sleep(0.005)
    raise TimeoutError(f"server on {host}:{port} did not answer within {timeout} s")


@asynccontextmanager
async def aserve(app: Any, **kwargs: Any) -> AsyncIterator[str]:
    """``serve()`` for async code, under any event loop anyio supports (asyncio, trio): the
    server still runs in its own thread; only starting and stopping are moved off the loop."""
    cm = serve(app, **kwargs)
    url = await anyio.to_thread.run_sync(cm.__enter__)
    try:
        yield url
    finally:
        await anyio.to_thread.run_sync(cm.__exit__, None, None, None)
