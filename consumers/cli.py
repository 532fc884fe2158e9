"""Subcommands of the channel side: `worker`, `dlq list|replay`, `resync`, `status`.

`register(subparsers)` adds them to stocksync's CLI (stocksync.cli calls it): each sets
`run(args) -> int` (the exit code) with `sync=True`, the convention of stocksync.cli; the settings are
`args.settings` when the caller has loaded them, else Settings.load(args.config).
`python -m consumers ...` runs them on their own.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

import orjson

from stocksync.channels import load_channels
from stocksync.limits import MAX_SKU_BYTES
from stocksync.settings import Settings, SettingsError
from stocksync.store import StockStore

from . import dlq, resync
from .options import WorkerOptions
from .runner import run_workers, use_event_loop
from .status import channel_status, format_table

OPTION_FLAGS = ("read_count", "block_ms", "lease_ms", "reclaim_idle_ms", "max_deliveries", "max_attempts",
                "retention_ms", "trim_interval_ms", "heartbeat_ms")


def register(subparsers: argparse._SubParsersAction) -> None:
    w = subparsers.add_parser("worker", help="push stock changes to the channels (consumer groups)",
                              description="Run channel workers until SIGTERM/SIGINT. Several processes of a "
                              "channel share its work. Runs on uvloop when it is installed "
                              "(STOCKSYNC_LOOP=auto|uvloop|asyncio).")
    w.add_argument("--channel", "-c", action="append", help="a channel to run (repeatable; default: all)")
    w.add_argument("--consumer", help="consumer name (default: <host>-<pid>-<random suffix>, fixed for the process)")
    w.add_argument("--lag-file", help="at exit, write [commit ms, accepted ms, rank (0 drop to 0, 1 urgent, "
                   "2 normal)] per accepted entry, per channel, here (JSON; used by bench/propagation.py)")
    for name in OPTION_FLAGS:
        w.add_argument("--" + name.replace("_", "-"), type=int, dest=name, help=f"worker.{name}")
    w.set_defaults(run=cmd_worker, sync=True)

    d = subparsers.add_parser("dlq", help="dead letters of a channel: list, replay")
    dsub = d.add_subparsers(dest="dlq_command", required=True)
    ls = dsub.add_parser("list", help="list a channel's dead letters")
    ls.add_argument("channel")
    ls.add_argument("--count", type=int, default=100)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(run=cmd_dlq_list, sync=True)
    rp = dsub.add_parser("replay", help="push the current quantity of dead-lettered SKUs, then remove them",
                         description="Push the current quantity of the channel's dead-lettered SKUs (all, or "
                         "--sku/--id), then remove the dead letters of those the channel accepted or already "
                         "had at their current version, or that no longer exist. Failures are printed and "
                         "their entries stay (exit 1).")
    rp.add_argument("channel")
    rp.add_argument("--sku", action="append", help="only this SKU (repeatable)")
    rp.add_argument("--id", action="append", help="only this dead-letter entry (repeatable)")
    rp.set_defaults(run=cmd_dlq_replay, sync=True)

    r = subparsers.add_parser("resync", help="push the current quantity of every SKU (or some) to a channel",
                              description="Push SKUs' current quantity to a channel, whatever it was last "
                              "sent (with --missing: only SKUs it has not accepted at their current version): "
                              "after listings were edited by hand on the marketplace, or to fill a new "
                              "listing. Runs beside the workers (each SKU under its push lease). Exit 1 if a "
                              "SKU failed or a --sku does not exist.")
    r.add_argument("channel")
    r.add_argument("--sku", action="append", type=_sku_arg, help="only this SKU (repeatable; default: every SKU)")
    r.add_argument("--missing", action="store_true",
                   help="only SKUs the channel has not accepted at their current version")
    r.set_defaults(run=cmd_resync, sync=True)

    s = subparsers.add_parser("status", help="per channel: lag, pending, dead letters, last push, circuit")
    s.add_argument("--json", action="store_true")
    s.set_defaults(run=cmd_status, sync=True)


def _sku_arg(value: str) -> str:
    """A SKU as the function library takes it (a clear error and exit 2 instead of a Redis error)."""
    if not value or len(value.encode()) > MAX_SKU_BYTES or any(ord(c) < 32 for c in value):
        raise argparse.ArgumentTypeError(f"a SKU is 1 to {MAX_SKU_BYTES} bytes without control characters")
    return value


def _settings(args: argparse.Namespace) -> Settings:
    settings = getattr(args, "settings", None)
    return settings if isinstance(settings, Settings) else Settings.load(getattr(args, "config", None))


def _run(coro) -> int:
    try:
        return asyncio.run(coro)
    except SettingsError as e:
        print(f"stocksync: {e}", file=sys.stderr)
        return 2


def cmd_worker(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # `stocksync worker` too, not only `python -m consumers worker`: uvloop when importable
        use_event_loop()
    except SettingsError as e:
        print(f"stocksync: {e}", file=sys.stderr)
        return 2

    async def main() -> int:
        settings = _settings(args)
        overrides = {name: getattr(args, name, None) for name in OPTION_FLAGS}
        options = WorkerOptions.from_settings(settings, consumer=args.consumer, **overrides)
        await run_workers(settings, args.channel, options, lag_file=args.lag_file)
        return 0

    return _run(main())


def _channel(settings: Settings, name: str):
    configs = load_channels(settings)
    if name not in configs:
        raise SettingsError(f"no channel named {name!r} (configured: {', '.join(configs) or 'none'})")
    return configs[name]


def cmd_dlq_list(args: argparse.Namespace) -> int:
    async def main() -> int:
        settings = _settings(args)
        async with await StockStore.connect(settings) as store:
            letters = await dlq.list_dead_letters(store.redis, store.keys, args.channel, args.count)
        if args.json:
            print(orjson.dumps([_as_dict(d) for d in letters]).decode())
        else:
            for d in letters:
                print(d.line())
            print(f"{len(letters)} dead letter(s) for {args.channel}", file=sys.stderr)
        return 0

    return _run(main())


def _as_dict(d: dlq.DeadLetter) -> dict:
    return {name: getattr(d, name) for name in d.__slots__}


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    async def main() -> int:
        settings = _settings(args)
        config = _channel(settings, args.channel)
        recheck_ms = WorkerOptions.from_settings(settings).recheck_ms  # (pushed again as a worker would)
        async with await StockStore.connect(settings) as store:
            report = await dlq.replay(store.redis, store.keys, config, skus=set(args.sku) if args.sku else None,
                                      ids=set(args.id) if args.id else None, recheck_ms=recheck_ms)
        for sku in report.resolved:
            print(f"replayed {sku}")
        for sku, error in report.failed.items():
            print(f"failed {sku}: {error}", file=sys.stderr)
        return 0 if report.ok else 1

    return _run(main())


def cmd_resync(args: argparse.Namespace) -> int:
    async def main() -> int:
        settings = _settings(args)
        config = _channel(settings, args.channel)
        shown = [time.monotonic()]

        def progress(report: resync.ResyncReport) -> None:  # a line a second on stderr: this can take long
            if time.monotonic() - shown[0] >= 1:
                shown[0] = time.monotonic()
                print(f"{report.done + report.failed} SKUs so far: {report.pushed} pushed, {report.failed} failed",
                      file=sys.stderr)

        recheck_ms = WorkerOptions.from_settings(settings).recheck_ms  # (pushed again as a worker would)
        async with await StockStore.connect(settings) as store:
            report = await resync.resync(store.redis, store.keys, config, skus=args.sku, force=not args.missing,
                                         progress=progress, recheck_ms=recheck_ms)
        for sku, error in report.failures.items():
            print(f"failed {sku}: {error}", file=sys.stderr)
        if report.failed + report.refused > len(report.failures):
            print(f"... and {report.failed + report.refused - len(report.failures)} more failed", file=sys.stderr)
        unknown = report.gone_skus if args.sku else []  # (a SKU deleted during a full pass is not an error)
        for sku in unknown:
            print(f"unknown SKU {sku!r}: nothing pushed", file=sys.stderr)
        print(f"{args.channel}: {report.pushed} pushed, {report.current} current already, "
              f"{report.busy} being pushed by a worker, {report.gone} unknown, {report.failed + report.refused} failed")
        return 0 if report.ok and not unknown else 1

    return _run(main())


def cmd_status(args: argparse.Namespace) -> int:
    async def main() -> int:
        settings = _settings(args)
        names = list(load_channels(settings))
        async with await StockStore.connect(settings) as store:
            status = await channel_status(store.redis, store.keys, names)
        print(orjson.dumps(status).decode() if args.json else format_table(status))
        return 0

    return _run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consumers")
    parser.add_argument("--config", help="TOML settings file (default: $STOCKSYNC_CONFIG)")
    parser.add_argument("--log-level", default="INFO")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.run(args)
