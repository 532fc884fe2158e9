"""Serve the marketplace simulators by hand or for the demo.

    python -m stocksync.devtools.simulators amazon --port 8602
    python -m stocksync.devtools.simulators all --port 8601 --realistic
    python -m stocksync.devtools.simulators shopify --faults '{"latency_ms": 50, "error_rate": 0.1}' --json

``all`` serves the four on consecutive ports from ``--port`` (shopify, amazon, flipkart, webhook;
``--port 0`` picks free ports; ``--server aiohttp`` serves the same apps with aiohttp's
HTTP server instead of uvicorn's, see ``fastserve``). Prints each simulator's URL, API endpoint and credentials (one JSON
line with ``--json``), then serves until interrupted. Faults can be changed while it runs with
``POST <url>/_sim/faults``; ``GET <url>/_sim/state`` shows the listed quantities. The marketplaces sell
through ``POST <url>/_sim/orders`` (webhooks to the receiver set with ``POST <url>/_sim/webhooks``) and
serve their order-list APIs (``orders`` in the description; see ``market``).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from typing import Any

import orjson

from . import SIMULATORS, AmazonSim, FlipkartSim, ShopifySim, Simulator, WebhookSim, serve
from .amazon_orders import ORDERS_PATH
from .fastserve import serve_aiohttp
from .flipkart import INVENTORY_PATH
from .flipkart_orders import FILTER_PATH, SHIPMENTS_PATH


def describe(sim: Simulator, url: str) -> dict[str, Any]:
    """What a client needs to talk to ``sim``."""
    if isinstance(sim, ShopifySim):
        endpoint = f"POST {sim.graphql_path}"
        extra = {"location_id": sim.location_id, "orders": f"POST {sim.graphql_path} (query orders)"}
    elif isinstance(sim, AmazonSim):
        endpoint = "PATCH " + sim.listing_path("SKU").replace("/SKU?", "/{sku}?")
        extra = {"seller_id": sim.seller_id, "marketplace_id": sim.marketplace_id,
                 "orders": f"GET {ORDERS_PATH}, GET {ORDERS_PATH}/{{id}}/orderItems"}
    elif isinstance(sim, FlipkartSim):
        endpoint = f"POST {INVENTORY_PATH}"
        extra = {"location_id": sim.location_id, "orders": f"POST {FILTER_PATH}, GET {SHIPMENTS_PATH}"}
    else:
        assert isinstance(sim, WebhookSim)
        endpoint = f"POST {sim.path}"
        extra = {"secret": sim.secret, "signature": "X-Stocksync-Signature: sha256=<hex hmac of body>"}
    headers = {k: v for k, v in sim.auth_headers().items() if k.lower() != "x-stocksync-signature"}
    return {"url": url, "endpoint": endpoint, "headers": headers, **extra}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stocksync.devtools.simulators", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("which", choices=[*SIMULATORS, "all"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8601, help="port of the first simulator (0: free ports)")
    parser.add_argument("--realistic", action="store_true", help="the APIs' latency and rate limits")
    parser.add_argument("--faults", default="{}", help="JSON of Faults fields, applied after --realistic")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    parser.add_argument(
        "--server",
        choices=["uvicorn", "aiohttp"],
        default="uvicorn",
        help="HTTP server: uvicorn (default) or aiohttp (same app and shapes, cheaper HTTP; for benchmarks)",
    )
    parser.add_argument(
        "--loop",
        choices=["auto", "uvloop", "asyncio"],
        default=None,
        help="event loop of the aiohttp server (default $STOCKSYNC_LOOP, else auto: uvloop when installed)",
    )
    args = parser.parse_args(argv)

    names = list(SIMULATORS) if args.which == "all" else [args.which]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.ExitStack() as stack:
        described = {}
        for i, name in enumerate(names):
            cls = SIMULATORS[name]
            sim = cls(cls.realistic_faults() if args.realistic else None)
            sim.set_faults(**orjson.loads(args.faults))
            port = args.port + i if args.port else 0
            if args.server == "aiohttp":
                url = stack.enter_context(serve_aiohttp(sim, host=args.host, port=port, loop=args.loop))
            else:
                url = stack.enter_context(serve(sim, host=args.host, port=port))
            described[name] = describe(sim, url)
        if args.json:
            print(orjson.dumps(described).decode(), flush=True)
        else:
            for name, d in described.items():
                extra = ", ".join(f"{k}={v}" for k, v in d.items() if k not in ("url", "endpoint", "headers"))
                headers = ", ".join(f"{k}: {v}" for k, v in d["headers"].items())
                print(
                    f"{name:9} {d['url']}  {d['endpoint']}\n{'':9} {headers}"
                    + (f"\n{'':9} {extra}" if extra else "")
                )
            print(
                "control: GET <url>/_sim/state, GET <url>/_sim/calls, POST <url>/_sim/faults; marketplaces: POST"
                " <url>/_sim/orders, POST <url>/_sim/webhooks (stocksync.devtools.simulators.market); Ctrl-C stops",
                flush=True,
            )
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
