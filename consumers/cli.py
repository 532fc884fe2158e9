"""Subcommands of the channel side: `worker`, `dlq list|replay`, `resync`, `status`.

`register(subparsers)` adds them to stocksync's CLI (stocksync.cli calls it): each sets
`run(args) -> int` (the exit code) with `sync=True`, the convention of stocksync.cli; the settings are
`args.settings` (stocksync.commandline loads them). `python -m consumers ...` runs them on their own.
A channel named on the line that the config file does not configure is an error (exit 2, naming the
configured ones), for every command.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import fields

import orjson

from stocksync import commandline, preflight
from stocksync.channels import known, load_channels
from stocksync.limits import MAX_SKU_BYTES
from stocksync.settings import Settings, SettingsError
from stocksync.store import StockStore

from . import dlq, metrics, resync
from .options import WorkerOptions, parse_partitions
from .runner import channels_to_run, run_workers, use_event_loop
from .status import channel_status, format_table

# worker.<name> settings that `stocksync worker` also takes as --<name> (what each does)
OPTION_FLAGS = {
    "read_count": "entries read per XREADGROUP",
    "block_ms": "how long an XREADGROUP waits for new entries (ms)",
    "lease_ms": "per-SKU push lease (ms): a dead worker's pushes are retried after at most this",
    "reclaim_idle_ms": "claim entries a dead consumer held for this long (ms; XAUTOCLAIM)",
    "max_deliveries": "an entry delivered more often than this goes to the dead-letter stream",
    "max_attempts": "failed pushes of one SKU (circuit closed, 429s not counted) before it is dead-lettered",
    "retention_ms": "the trimmer keeps at least this much history (ms)",
    "trim_interval_ms": "how often this worker trims the streams (ms; 0: never)",
    "heartbeat_ms": "how often the worker writes its status to Redis (ms)",
    "partition_lease_ms": "this process reads the partitions it leases; a dead worker's are taken over this long "
                          "after its last renewal (ms; 0: every worker reads every partition)",
}
_DEFAULTS = {f.name: f.default for f in fields(WorkerOptions)}
WORKER_HELP = ("Run channel workers until SIGTERM/SIGINT. Several processes of a channel share its work. First "
               "the start-up checks: every channel named is configured and its credentials are set (else exit 2), "
               "Redis answers (waited for up to STOCKSYNC_WAIT_S, 300 s, then exit 1), its maxmemory-policy cannot evict keys (else exit 2; "
               "STOCKSYNC_ALLOW_EVICTION=1 starts anyway). Settings of the [worker] table not given here come "
               "from the config file. Runs on uvloop when it is installed (STOCKSYNC_LOOP=auto|uvloop|asyncio).")


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_worker(subparsers)
    d = subparsers.add_parser("dlq", help="dead letters of a channel: list, replay")
    dsub = d.add_subparsers(dest="dlq_command", required=True)
    ls = dsub.add_parser("list", help="list a channel's dead letters, oldest first")
    ls.add_argument("channel", help="the channel's name in the config file")
    ls.add_argument("--count", type=int, default=100, help="list at most this many")
    ls.add_argument("--json", action="store_true", help="one JSON document instead of lines of text")
    ls.set_defaults(run=cmd_dlq_list, sync=True)
    rp = dsub.add_parser("replay", help="push the current quantity of dead-lettered SKUs, then remove them",
                         description="Push the current quantity of the channel's dead-lettered SKUs (all, or "
                         "--sku/--id), then remove the dead letters of those the channel accepted or already "
                         "had at their current version, or that no longer exist. Failures are printed and "
                         "their entries stay (exit 1).")
    rp.add_argument("channel", help="the channel's name in the config file")
    rp.add_argument("--sku", action="append", help="only this SKU (repeatable; default: every SKU listed)")
    rp.add_argument("--id", action="append", help="only this dead-letter entry (repeatable; default: all)")
    rp.set_defaults(run=cmd_dlq_replay, sync=True)

    r = subparsers.add_parser("resync", help="push the current quantity of every SKU (or some) to a channel",
                              description="Push SKUs' current quantity to a channel, whatever it was last "
                              "sent (with --missing: only SKUs it has not accepted at their current version): "
                              "after listings were edited by hand on the marketplace, or to fill a new "
                              "listing. Runs beside the workers (each SKU under its push lease). Exit 1 if a "
                              "SKU failed or a --sku does not exist.")
    r.add_argument("channel", help="the channel's name in the config file")
    r.add_argument("--sku", action="append", type=_sku_arg, help="only this SKU (repeatable; default: every SKU)")
    r.add_argument("--missing", action="store_true",
                   help="only SKUs the channel has not accepted at their current version")
    r.set_defaults(run=cmd_resync, sync=True)

    s = subparsers.add_parser("status", help="per channel: lag, pending, dead letters, last push, circuit")
    s.add_argument("--channel", "-c", action="append", help="only this channel (repeatable; default: every one)")
    s.add_argument("--json", action="store_true", help="one JSON document, with each worker's heartbeat")
    s.add_argument("--healthy", action="store_true",
                   help="exit 1 unless every channel shown has a live worker (for health checks)")
    s.set_defaults(run=cmd_status, sync=True)


def _register_worker(subparsers: argparse._SubParsersAction) -> None:
    w = subparsers.add_parser("worker", help="push stock changes to the channels (consumer groups)",
                              description=WORKER_HELP)
    w.add_argument("--channel", "-c", action="append", help="a channel to run (repeatable; default: every one configured)")
    w.add_argument("--consumer", help="consumer name (default: <host>-<pid>-<random suffix>, fixed for the process)")
    w.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                   help="serve /metrics (Prometheus) and /healthz on this port (0: none)")
    w.add_argument("--metrics-host", default=metrics.DEFAULT_METRICS_HOST, metavar="HOST",
                   help="address of the metrics endpoint (0.0.0.0 for every interface)")
    w.add_argument("--lag-file", help="at exit, write [commit ms, accepted ms, rank (0 drop to 0, 1 urgent, "
                   "2 normal)] per accepted entry, per channel, here (JSON; used by bench/propagation.py; default: none)")
    w.add_argument("--partitions", type=_partitions_arg, metavar="LIST",
                   help="the partitions this process may lease, e.g. 0,2,5-7 (default: worker.partitions of the "
                   "config file, else every partition); checked against the deployment's partition count on start")
    for name, text in OPTION_FLAGS.items():
        w.add_argument("--" + name.replace("_", "-"), type=int, dest=name, metavar="N",
                       help=f"{text} (default: worker.{name} of the config file, else {_DEFAULTS[name]})")
    w.set_defaults(run=cmd_worker, sync=True, log_default="info")


def _partitions_arg(value: str) -> str:
    """--partitions: a clear error and exit 2 for a list that is not one (its range is checked on start)."""
    try:
        if not parse_partitions(value):
            raise SettingsError("give at least one partition")
    except SettingsError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("partitions: ")) from None
    return value


def _sku_arg(value: str) -> str:
    """A SKU as the function library takes it (a clear error and exit 2 instead of a Redis error)."""
    if not value or len(value.encode()) > MAX_SKU_BYTES or any(ord(c) < 32 for c in value):
        raise argparse.ArgumentTypeError(f"a SKU is 1 to {MAX_SKU_BYTES} bytes without control characters")
    return value


def _channel(settings: Settings, name: str):
    configs = load_channels(settings)
    return configs[known(configs, [name])[0]]


def cmd_worker(args: argparse.Namespace) -> int:
    use_event_loop()  # (before the loop exists) `stocksync worker` too: uvloop when importable
    settings = args.settings
    overrides = {name: getattr(args, name, None) for name in [*OPTION_FLAGS, "partitions"]}
    options = WorkerOptions.from_settings(settings, consumer=args.consumer, **overrides)
    channels_to_run(settings, args.channel)  # (refused before anything connects)

    async def main() -> int:
        await preflight.check(settings)
        async with metrics.serving(args.metrics_host, args.metrics_port):
            await run_workers(settings, args.channel, options, lag_file=args.lag_file)
        return 0

    return asyncio.run(main())


def cmd_dlq_list(args: argparse.Namespace) -> int:
    async def main() -> int:
        _channel(args.settings, args.channel)
        async with await StockStore.connect(args.settings) as store:
            letters = await dlq.list_dead_letters(store.redis, store.keys, args.channel, args.count)
        if args.json:
            print(orjson.dumps([_as_dict(d) for d in letters]).decode())
        else:
            for d in letters:
                print(d.line())
            print(f"{len(letters)} dead letter(s) for {args.channel}", file=sys.stderr)
        return 0

    return asyncio.run(main())


def _as_dict(d: dlq.DeadLetter) -> dict:
    return {name: getattr(d, name) for name in d.__slots__}


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    async def main() -> int:
        settings = args.settings
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

    return asyncio.run(main())


def cmd_resync(args: argparse.Namespace) -> int:
    async def main() -> int:
        settings = args.settings
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

    return asyncio.run(main())


def cmd_status(args: argparse.Namespace) -> int:
    async def main() -> int:
        configs = load_channels(args.settings)
        names = known(configs, args.channel) if args.channel else list(configs)
        async with await StockStore.connect(args.settings) as store:
            status = await channel_status(store.redis, store.keys, names)
        print(orjson.dumps(status).decode() if args.json else format_table(status))
        if args.healthy:
            dead = [name for name, s in status.items() if not any(w["alive"] for w in s["workers"])]
            if dead:
                print(f"no live worker for {', '.join(dead)}", file=sys.stderr)
                return commandline.REFUSED
        return 0

    return asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    """`python -m consumers ...`: the same commands as `stocksync worker|dlq|resync|status`."""
    parser = argparse.ArgumentParser(prog="python -m consumers")
    register(parser.add_subparsers(dest="command", required=True))
    return commandline.main(commandline.finish(parser), argv)
