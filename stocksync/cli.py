"""The `stocksync` command line.

    stocksync functions load [--force]     load or upgrade the function library (every primary)
    stocksync sku get SKU
    stocksync sku set SKU AVAILABLE [--expected-version N] [--ref REF]
    stocksync sku adjust SKU DELTA [--ref REF]
    stocksync tail [--from ID] [--count N] one line per event, every partition
    stocksync reconcile orders CHANNEL [--since ISO-TIME]   one pass of the channel's order poller, now
    stocksync sku count|ship|cancel ..., bundle, rules, reservation   (stocksync.inventory_commands)
    stocksync redis [--port N]             an embedded Redis in the foreground
    stocksync demo [--keep] [--cluster]    the whole system, the replays (--keep: stay up; --cluster: on an
                                           embedded Redis Cluster of 3 primaries + 3 replicas)
    stocksync rejections list|apply|resolve   orders that could not be covered (stocksync.orders.commands)
    stocksync serve, worker, dlq, resync, status   (stocksync.api.serve, consumers.cli)

--config FILE and --log-level LEVEL are taken anywhere on the line (stocksync.commandline).
Exit codes: 0 done, 1 the operation was refused (insufficient, conflict, unknown SKU) or Redis is
unreachable, 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading

from consumers import cli as consumers_cli

from . import __version__, commandline, functions, inventory, inventory_commands
from .api import serve
from .embedded import EmbeddedRedis
from .events import follow
from .orders import commands as order_commands
from .orders import reconcile
from .settings import SettingsError
from .store import StockStore

IMPORT_HELP = """Set SKUs' quantities from a CSV file whose first line names the columns: sku, available and
optionally expected_version (a row whose SKU is at another version is refused: conflict). The columns of
`stocksync sku export` are accepted (the others are ignored), so an export imports as it is.

Each row is applied exactly once, under a reference made of the file's content and the row's line:
importing the same file again changes nothing (within STOCKSYNC_IDEM_TTL, 48 hours by default). Rows
that cannot be read are refused with their line number; the others are imported. Every row imported is a
change pushed to every channel, even at the same quantity (--dry-run counts those).

Exit codes: 0 every row imported (or imported already), 1 some rows refused, 2 the file cannot be read."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stocksync", description="Multichannel inventory sync over Redis.")
    parser.add_argument("--version", action="version", version=f"stocksync {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fn = sub.add_parser("functions", help="manage the Redis function library")
    fn_sub = fn.add_subparsers(dest="action", required=True)
    load = fn_sub.add_parser("load", help="load or upgrade the library where it is missing or older")
    load.add_argument("--force", action="store_true", help="replace it even if it is current")
    load.set_defaults(run=_functions_load)

    sku_sub = _sku_commands(sub)

    tail = sub.add_parser("tail", help="follow every partition's events stream, one line per event")
    tail.add_argument("--from", dest="since", default="$",
                      help="entry ID (or ms) to start after: 0 for every event kept, $ for new events only")
    tail.add_argument("--count", type=int, default=0, help="stop after this many events (0: follow until Ctrl-C)")
    tail.set_defaults(run=_tail)

    red = sub.add_parser("redis", help="run an embedded Redis in the foreground and print its URL")
    red.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    red.set_defaults(run=_redis, sync=True)

    demo = sub.add_parser("demo", help="the whole system on this machine, replaying the article's scenario and a flash sale")
    demo.add_argument("--keep", action="store_true", help="leave everything running afterwards, until Ctrl-C")
    demo.add_argument("--cluster", action="store_true",
                      help="run it on an embedded Redis Cluster of 3 primaries and 3 replicas (12 partitions)")
    demo.set_defaults(run=_demo, sync=True)

    # Subcommands that live with the parts they drive: the API server, the channel workers.
    serve.register(sub)
    consumers_cli.register(sub)
    order_commands.register(sub)
    reconcile.register(sub)
    inventory_commands.register(sub, sku_sub)  # sku count|ship|cancel, bundle, rules, reservation
    return commandline.finish(parser)


def _sku_commands(sub):
    sku = sub.add_parser("sku", help="read or change SKUs: one, or many from a CSV file")
    sku_sub = sku.add_subparsers(dest="action", required=True)
    get = sku_sub.add_parser("get", help="print a SKU's stock")
    get.add_argument("sku", help="the SKU")
    get.set_defaults(run=_sku_get)
    put = sku_sub.add_parser("set", help="set the absolute quantity (creates the SKU)")
    put.add_argument("sku", help="the SKU")
    put.add_argument("available", type=int, help="units available")
    put.add_argument("--expected-version", type=int,
                     help="refuse (conflict) unless the SKU's version is this (0: unless it is new; default: no check)")
    put.add_argument("--ref", help="idempotency key (default: a new one)")
    put.set_defaults(run=_sku_set)
    adj = sku_sub.add_parser("adjust", help="add (positive) or remove (negative) units")
    adj.add_argument("sku", help="the SKU")
    adj.add_argument("delta", type=int, help="units to add (negative: to remove)")
    adj.add_argument("--ref", help="idempotency key (default: a new one)")
    adj.set_defaults(run=_sku_adjust)
    ls = sku_sub.add_parser("list", help="list SKUs with their stock (every partition, in no particular order)")
    ls.add_argument("--prefix", default="", help="only SKUs that start with this")
    ls.add_argument("--limit", type=int, default=0, help="stop after this many SKUs (0: every one)")
    ls.set_defaults(run=_sku_list)
    imp = sku_sub.add_parser("import", help="set SKUs' quantities from a CSV file, each row exactly once",
                             description=IMPORT_HELP)
    imp.add_argument("file", help="the CSV file (- for standard input)")
    imp.add_argument("--dry-run", action="store_true", help="change nothing: check every row and say what it would do")
    imp.set_defaults(run=_sku_import)
    exp = sku_sub.add_parser("export", help="write every SKU with its stock as CSV (importable as it is)")
    exp.add_argument("file", nargs="?", help="where to write it (default: standard output)")
    exp.set_defaults(run=_sku_export, sync=True)
    return sku_sub


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
        q = await store.quantities(args.sku)
    if q is None:
        print(f"{args.sku}: unknown SKU", file=sys.stderr)
        return 1
    parts = " ".join(f"{c}x{n}" for c, n in q.components.items())
    held = f"bundle of {parts}" if q.is_bundle else f"on_hand={q.on_hand}"
    print(f"{q.sku}: available={q.available} reserved={q.reserved} version={q.version} "
          f"updated_ms={q.updated_ms} source={q.source} committed={q.committed} {held}")
    return 0


async def _sku_set(args) -> int:
    async with await _open(args) as store:
        return _print_outcome(await store.set(args.sku, args.available, ref=args.ref, source="cli",
                                              expected_version=args.expected_version))


async def _sku_adjust(args) -> int:
    async with await _open(args) as store:
        return _print_outcome(await store.adjust(args.sku, args.delta, ref=args.ref, source="cli"))


async def _tail(args) -> int:
    if args.count < 0:
        raise SettingsError("--count must be 0 (follow) or more")
    shown = 0
    async with await _open(args) as store, contextlib.aclosing(follow(store.redis, store.keys, since=args.since)) as events:
        async for event in events:  # (closed on the way out: its readers end before the store closes)
            print(event.line(), flush=True)
            shown += 1
            if shown == args.count:
                break
    return 0


async def _sku_list(args) -> int:
    shown, cursor = 0, None
    async with await _open(args) as store:
        while True:
            page = await inventory.list_page(store, cursor, 1000, args.prefix)
            for s in page.items:
                print(f"{s.sku}\tavailable={s.available}\treserved={s.reserved}\tversion={s.version}")
                shown += 1
                if shown == args.limit:
                    return 0
            cursor = page.next_cursor
            if cursor is None:
                break
    print(f"{shown} SKU(s)", file=sys.stderr)
    return 0


def _read_file(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        with open(name, "rb") as f:
            return f.read()
    except OSError as e:
        raise SettingsError(f"cannot read {name}: {e.strerror}") from None


async def _sku_import(args) -> int:
    parsed = inventory.parse_csv(_read_file(args.file))
    bar = commandline.ProgressBar("rows")
    async with await _open(args) as store:
        report = await inventory.import_rows(store, parsed, dry_run=args.dry_run, source="import", progress=bar)
    bar.end()
    for r in report.refused:
        print(f"refused {r.text()}", file=sys.stderr)
    print(f"{args.file}: {report.summary()}")
    return 0 if report.ok else 1


def _sku_export(args) -> int:
    with open(args.file, "w", newline="") if args.file else contextlib.nullcontext(sys.stdout) as out:
        rows = asyncio.run(_export_to(args, out))
    print(f"{rows} SKU(s) exported", file=sys.stderr)
    return 0


async def _export_to(args, out) -> int:
    rows = -1  # (the header)
    async with await _open(args) as store:
        async for chunk in inventory.export_lines(store):
            out.write(chunk)
            rows += chunk.count("\n")
    return rows


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

    return demo_main(args.settings, keep=args.keep, cluster=args.cluster)


def main(argv: list[str] | None = None) -> int:
    return commandline.main(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
