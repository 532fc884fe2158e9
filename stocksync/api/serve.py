"""`stocksync serve`: the API under uvicorn, with JSON logs and a graceful shutdown.

    stocksync serve [--host 127.0.0.1] [--port 8080] [--workers 1] [--access-log] [--graceful-timeout 10]
                    [--loop auto|asyncio|uvloop] [--http auto|h11|httptools]

--loop and --http are uvicorn's: `auto` (the default) takes uvloop and httptools when they are installed
(`pip install 'uvicorn[standard]'`), else asyncio and h11.

A request must arrive whole (head and body) within [api] read_timeout_s (10 s): a client that sends part
of a request and stops is disconnected then (stocksync.api.protocols), so slow clients cannot hold the
server's connections. No proxy is needed in front for that; put one there for TLS.

SIGTERM or SIGINT: uvicorn stops accepting, lets requests in flight finish (server-sent event streams are
cut after --graceful-timeout seconds), then the app closes its Redis connections. Logs are one JSON object
a line on stderr; they never carry a token, a webhook secret or a Redis password (settings are logged
through their redacting repr, requests by method, path and status only).

With --workers N > 1 every worker loads the settings itself (from STOCKSYNC_CONFIG and the environment,
which --config sets for them). Set PROMETHEUS_MULTIPROC_DIR to sum their metrics on each scrape.
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import sys
import time

import orjson
import uvicorn

from stocksync.settings import Settings

from . import protocols
from .app import create_app
from .context import ApiSettings

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name}
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, version, status = record.args
            # The path without its query string: nothing a client puts there ends up in the logs.
            doc.update(msg="request", client=client, method=method, path=str(path).split("?", 1)[0],
                       status=status)
        else:
            doc["msg"] = record.getMessage()
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in doc:
                doc[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def log_config(level: str = "info") -> dict:
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "stocksync.api.serve.JsonFormatter"}},
        "handlers": {"stderr": handler},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {name: {"handlers": [], "level": level.upper(), "propagate": True}
                    for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
    }


def run(settings: Settings, host: str = "127.0.0.1", port: int = 8080, workers: int = 1, *,
        access_log: bool = False, graceful_timeout: float = 10.0, log_level: str = "info",
        loop: str = "auto", http: str = "auto") -> None:
    # A request must arrive whole within [api] read_timeout_s (stocksync.api.protocols); the environment
    # carries the setting to uvicorn's worker processes.
    os.environ[protocols.ENV] = str(ApiSettings.from_settings(settings).read_timeout_s)
    common = dict(host=host, port=port, log_config=log_config(log_level), access_log=access_log,
                  timeout_graceful_shutdown=graceful_timeout, proxy_headers=True, server_header=False,
                  lifespan="on", loop=loop, http=protocols.protocol(http))
    logging.config.dictConfig(common["log_config"])
    logging.getLogger(__name__).info("starting: %s on %s:%d, %d worker(s)", settings, host, port, workers)
    if workers > 1:
        uvicorn.run("stocksync.api.app:create_app", factory=True, workers=workers, **common)
        return
    uvicorn.run(create_app(settings), **common)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=os.environ.get("STOCKSYNC_HOST", "127.0.0.1"),
                        help="address to bind (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("STOCKSYNC_PORT", "8080")))
    parser.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--access-log", action="store_true", help="log every request (method, path, status)")
    parser.add_argument("--graceful-timeout", type=float, default=10.0,
                        help="seconds to let requests in flight finish on shutdown (default 10)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"],
                        help="event loop (default auto: uvloop when installed)")
    parser.add_argument("--http", default="auto", choices=["auto", "h11", "httptools"],
                        help="HTTP parser (default auto: httptools when installed)")


def _serve(args) -> int:
    if args.workers < 1:
        print("stocksync: --workers must be at least 1", file=sys.stderr)
        return 2
    if getattr(args, "config", None):  # the workers of a multi-process server load it themselves
        os.environ["STOCKSYNC_CONFIG"] = os.path.abspath(args.config)
    run(args.settings, args.host, args.port, args.workers, access_log=args.access_log,
        graceful_timeout=args.graceful_timeout, log_level=args.log_level, loop=args.loop, http=args.http)
    return 0


def register(subparsers) -> None:
    """Add `serve` to the stocksync command line (stocksync.cli calls this)."""
    parser = subparsers.add_parser("serve", help="run the HTTP API (webhooks, admin, metrics) under uvicorn")
    _add_arguments(parser)
    parser.set_defaults(run=_serve, sync=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stocksync serve")
    parser.add_argument("--config", help="TOML settings file (also STOCKSYNC_CONFIG)")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    args.settings = Settings.load(args.config)
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
