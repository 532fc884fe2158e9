"""`stocksync serve`: the API under uvicorn, with JSON logs and a graceful shutdown.

    stocksync serve [--host 127.0.0.1] [--port 8000] [--workers 1] [--access-log] [--graceful-timeout 10]
                    [--loop auto|asyncio|uvloop] [--http auto|h11|httptools] [--log-level info]

--loop and --http are uvicorn's: `auto` (the default) takes uvloop and httptools when they are installed
(`pip install 'uvicorn[standard]'`), else asyncio and h11.

Before uvicorn starts, the start-up checks (stocksync.preflight) run: Redis answers (one that is
unreachable or loading is waited for, up to STOCKSYNC_WAIT_S, a log line per attempt; then exit 1), its
maxmemory-policy cannot evict stocksync's keys (else exit 2), the [api] table is valid and every webhook
credential the config file names is set (else exit 2), each failure in one line.

A request must arrive whole (head and body) within [api] read_timeout_s (10 s): a client that sends part
of a request and stops is disconnected then (stocksync.api.protocols), so slow clients cannot hold the
server's connections. No proxy is needed in front for that; put one there for TLS.

SIGTERM or SIGINT: uvicorn stops accepting, lets requests in flight finish (server-sent event streams are
cut after --graceful-timeout seconds), then the app closes its Redis connections. Logs are JSON lines on
stderr (stocksync.logs); --access-log logs every request with its duration and request id
(stocksync.api.access). They never carry a token, a webhook secret or a Redis password (settings are
logged through their redacting repr, requests by method, path and status only).

With --workers N > 1 every worker loads the settings itself (from STOCKSYNC_CONFIG and the environment,
which --config sets for them). Set PROMETHEUS_MULTIPROC_DIR to sum their metrics on each scrape; without
it each scrape sees the counters of whichever process answers (a warning says so at start).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import uvicorn

from stocksync import commandline, logs, preflight
from stocksync.channels import load_channels
from stocksync.orders.webhooks import unset_credentials
from stocksync.settings import Settings, SettingsError

from . import protocols
from .app import create_app
from .context import ApiSettings

log = logging.getLogger(__name__)
DEFAULT_PORT = 8000
DESCRIPTION = ("Run the HTTP API (webhooks, the admin API, /metrics) under uvicorn until SIGTERM or SIGINT. First "
               "the start-up checks: Redis answers (waited for up to STOCKSYNC_WAIT_S, 300 s, then exit 1); its maxmemory-policy cannot evict keys (else "
               "exit 2; STOCKSYNC_ALLOW_EVICTION=1 starts anyway); every webhook credential the config file "
               "names is set (else exit 2).")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def run(settings: Settings, host: str = "127.0.0.1", port: int = DEFAULT_PORT, workers: int = 1, *,
        access_log: bool = False, graceful_timeout: float = 10.0, log_level: str = "info",
        loop: str = "auto", http: str = "auto") -> None:
    # A request must arrive whole within [api] read_timeout_s (stocksync.api.protocols); the environment
    # carries the setting to uvicorn's worker processes.
    os.environ[protocols.ENV] = str(ApiSettings.from_settings(settings).read_timeout_s)
    log_config = logs.config(log_level, access_log)
    common = dict(host=host, port=port, log_config=log_config, access_log=False,
                  timeout_graceful_shutdown=graceful_timeout, proxy_headers=True, server_header=False,
                  lifespan="on", loop=loop, http=protocols.protocol(http))
    logs.setup(log_level, access_log)
    log.info("starting: %s on %s:%d, %d worker(s)", settings, host, port, workers)
    if workers > 1:
        if not os.environ.get(MULTIPROC_ENV):
            log.warning("%d server processes without %s: each scrape of /metrics answers the counters of "
                        "whichever process takes it (they go up and down); set it to an empty directory to "
                        "sum them", workers, MULTIPROC_ENV)
        uvicorn.run("stocksync.api.app:create_app", factory=True, workers=workers, **common)
        return
    uvicorn.run(create_app(settings), **common)


async def check(settings: Settings) -> None:
    """The API's start-up checks: its settings, then Redis (stocksync.preflight)."""
    ApiSettings.from_settings(settings)
    unset = unset_credentials(load_channels(settings))
    if unset:
        raise SettingsError("; ".join(unset))
    await preflight.check(settings)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=os.environ.get("STOCKSYNC_HOST", "127.0.0.1"),
                        help="address to bind, 0.0.0.0 for every interface (default: $STOCKSYNC_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("STOCKSYNC_PORT", DEFAULT_PORT)),
                        help=f"port to listen on (default: $STOCKSYNC_PORT or {DEFAULT_PORT})")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes (several: set PROMETHEUS_MULTIPROC_DIR to sum their metrics)")
    parser.add_argument("--access-log", action="store_true",
                        help="log every request: method, path, status, duration_ms, request_id")
    parser.add_argument("--graceful-timeout", type=float, default=10.0,
                        help="seconds to let requests in flight finish on shutdown")
    parser.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"],
                        help="event loop (auto: uvloop when installed)")
    parser.add_argument("--http", default="auto", choices=["auto", "h11", "httptools"],
                        help="HTTP parser (auto: httptools when installed)")


def _serve(args) -> int:
    if args.workers < 1:
        return commandline.fail(args, "--workers must be at least 1", commandline.BAD_INPUT)
    if getattr(args, "config", None):  # the workers of a multi-process server load it themselves
        os.environ["STOCKSYNC_CONFIG"] = os.path.abspath(args.config)
    asyncio.run(check(args.settings))
    run(args.settings, args.host, args.port, args.workers, access_log=args.access_log,
        graceful_timeout=args.graceful_timeout, log_level=args.log_level or args.log_default, loop=args.loop,
        http=args.http)
    return 0


def register(subparsers) -> None:
    """Add `serve` to the stocksync command line (stocksync.cli calls this)."""
    parser = subparsers.add_parser("serve", help="run the HTTP API (webhooks, admin, metrics) under uvicorn",
                                   description=DESCRIPTION)
    _add_arguments(parser)
    parser.set_defaults(run=_serve, sync=True, log_default="info")


def main(argv: list[str] | None = None) -> int:
    """`python -m stocksync.api.serve`: the same as `stocksync serve`."""
    parser = argparse.ArgumentParser(prog="stocksync serve")
    _add_arguments(parser)
    parser.set_defaults(run=_serve, sync=True, log_default="info")
    return commandline.main(commandline.finish(parser), argv)


if __name__ == "__main__":
    sys.exit(main())
