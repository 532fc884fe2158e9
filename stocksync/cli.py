"""The `stocksync` command line.

    stocksync functions load [--force]     load or upgrade the function library (every primary)
    stocksync sku get SKU
    stocksync sku set SKU AVAILABLE [--expected-version N] [--ref REF]
    stocksync sku adjust SKU DELTA [--ref REF]
    stocksync tail [--from ID]             one line per event, every partition
    stocksync reconcile orders CHANNEL [--since ISO-TIME]   one pass of the channel's order poller, now
    stocksync redis [--port N]             an embedded Redis in the foreground
    stocksync demo [--keep]                the whole system, two replays (--keep: stay up)
    stocksync rejections list|apply|resolve   orders that could not be covered (stocksync.orders.commands)
    stocksync serve, worker, dlq, resync, status   (stocksync.api.serve, consumers.cli)

Exit codes: 0 done, 1 the operation was refused (insufficient, conflict, unknown SKU), 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading

from redis.exceptions import ConnectionError as RedisConnectionError

from consumers import cli as consumers_cli

from . import __version__, functions
from .api import serve
from .embedded import EmbeddedRedis
from .errors import InvalidArgument
from .events import follow
from .orders import commands as order_commands
from .orders import reconcile
from .settings import Settings, SettingsError
from .store import StockStore


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stocksync", description="Multichannel inventory sync over Redis.")
    parser.add_argument("--version", action="version", version=f"stocksync {__version__}")
    parser.add_argument("--config", help="TOML settings file (also STOCKSYNC_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fn = sub.add_parser("functions", help="manage the Redis function library")
    fn_sub = fn.add_subparsers(dest="action", required=True)
    load = fn_sub.add_parser("load", help="load or upgrade the library where it is missing or older")
    load.add_argument("--force", action="store_true", help="replace it even if it is current")
    load.set_defaults(run=_functions_load)

    sku = sub.add_parser("sku", help="read or change one SKU")
    sku_sub = sku.add_subparsers(dest="action", required=True)
    get = sku_sub.add_parser("get", help="print a SKU's stock")
    get.add_argument("sku")
    get.set_defaults(run=_sku_get)
    put = sku_sub.add_parser("set", help="set the absolute quantity (creates the SKU)")
    put.add_argument("sku")
    put.add_argument("available", type=int)
    put.add_argument("--expected-version", type=int, help="refuse (conflict) unless the version is this")
    put.add_argument("--ref", help="idempotency key (default: a new one)")
    put.set_defaults(run=_sku_set)
    adj = sku_sub.add_parser("adjust", help="add (positive) or remove (negative) units")
    adj.add_argument("sku")
    adj.add_argument("delta", type=int)
    adj.add_argument("--ref", help="idempotency key (default: a new one)")
    adj.set_defaults(run=_sku_adjust)

    tail = sub.add_parser("tail", help="follow every partition's events stream")
    tail.add_argument("--from", dest="since", default="$", help="entry ID to start after (0 for all; default: new only)")
    tail.set_defaults(run=_tail)

    red = sub.add_parser("redis", help="run an embedded Redis in the foreground and print its URL")
    red.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    red.set_defaults(run=_redis, sync=True)

    demo = sub.add_parser("demo", help="the whole system on this machine, replaying the article's scenario and a flash sale")
    demo.add_argument("--keep", action="store_true", help="leave everything running afterwards, until Ctrl-C")
    demo.set_defaults(run=_demo, sync=True)

    # Subcommands that live with the parts they drive: the API server, the channel workers.
    serve.register(sub)
    consumers_cli.register(sub)
    order_commands.register(sub)
    reconcile.register(sub)
    return parser


async def _open(args) -> StockStore:
    return await StockStore.connect(args.settings)


async def _functions_load(args) -> int:
    store = await StockStore.connect(args.settings, load=False)
    async with store:
        for r in await functions.ensure_loaded(store.redis, args.settings.idem_ttl_s, force=args.force):
            print(f"{r.node}: {r.action} (library {r.version})")
    return 0


def _print_outcome(outcome) -> int:
    replay = " (replayed)" if outcome.replayed else ""
    print(f"{outcome.sku}: {outcome.status} available={outcome.available} version={outcome.version}{replay}")
    return 0 if outcome.ok else 1


async def _sku_get(args) -> int:
    async with await _open(args) as store:
        stock = await store.get(args.sku)
    if stock is None:
        print(f"{args.sku}: unknown SKU", file=sys.stderr)
        return 1
    print(f"{stock.sku}: available={stock.available} reserved={stock.reserved} version={stock.version} "
          f"updated_ms={stock.updated_ms} source={stock.source}")
    return 0


async def _sku_set(args) -> int:
    async with await _open(args) as store:
        return _print_outcome(await store.set(args.sku, args.available, ref=args.ref, source="cli",
                                              expected_version=args.expected_version))


async def _sku_adjust(args) -> int:
    async with await _open(args) as store:
        return _print_outcome(await store.adjust(args.sku, args.delta, ref=args.ref, source="cli"))


async def _tail(args) -> int:
    async with await _open(args) as store:
        async for event in follow(store.redis, store.keys, since=args.since):
            print(event.line(), flush=True)
    return 0


def _redis(args) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with EmbeddedRedis(port=args.port or None) as server:
        print(server.url, flush=True)
        print(f"(server {server.binary}; Ctrl-C stops it)", file=sys.stderr, flush=True)
        stop.wait()
    return 0


def _demo(args) -> int:
    # Imported here, when asked for: the product never loads the dev tools (simulators, sandbox), and
    # `stocksync demo` is the one command that runs them (tests/test_layout.py holds this).
    from .devtools.demo import main as demo_main

    return demo_main(args.settings, keep=args.keep)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        args.settings = Settings.load(args.config)
        if getattr(args, "sync", False):
            return args.run(args)
        return asyncio.run(args.run(args))
    except (SettingsError, InvalidArgument) as e:
        print(f"stocksync: {e}", file=sys.stderr)
        return 2
    except RedisConnectionError as e:  # redis-py's message names host and port, never the password
        print(f"stocksync: Redis connection failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
