"""`stocksync reconcile orders CHANNEL [--since ISO-TIME]`: one pass of the channel's order poller, now.

It reads the orders updated since the channel's cursor less its overlap (or since --since) up to now
(settle_s is not waited for), applies what the webhooks did not, prints progress about once a second on
stderr and a summary on stdout, and raises the cursor as a worker's poller would. It needs no lease: a
worker's poller may poll the channel meanwhile (both apply each line once; the cursor only goes up).

Exit codes: 0 the pass finished; 1 it stopped (the order API failed, Redis, an order that cannot be read;
the cursor stays at the last page applied: run it again); 2 bad input (no such channel, a kind without an
order API, a --since that is not a time or is older than the references' retention), nothing changed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from datetime import UTC, datetime

from redis.exceptions import RedisError

from stocksync.channels import KINDS, ChannelConfig, load_channels
from stocksync.metrics import Metrics
from stocksync.settings import Settings, SettingsError
from stocksync.store import StockStore

from .intake import Intake, IntakeSettings
from .pollers.client import PollError
from .pollers.options import PollOptions
from .pollers.poller import READERS, OrderPoller
from .pollers.report import PassReport


def register(subparsers: argparse._SubParsersAction) -> None:
    rec = subparsers.add_parser("reconcile", help="read a marketplace's orders back and apply what is missing")
    sub = rec.add_subparsers(dest="what", required=True, metavar="WHAT")
    orders = sub.add_parser(
        "orders", help="one pass of a channel's order poller, now",
        description="Read the channel's orders updated since its cursor (less poll_overlap_s) or --since, up to "
        "now, and apply every line the webhooks did not (each line once, under its webhook's reference). "
        "Progress on stderr about once a second, a summary on stdout. Exit 1 if the pass stopped (run it "
        "again: it resumes from the last page applied), 2 on bad input.")
    orders.add_argument("channel", help="a Shopify, Amazon or Flipkart channel of the config file")
    orders.add_argument("--since", help="ISO 8601 time (e.g. 2025-01-31T12:00:00Z; no offset means UTC) to read "
                        "from; at most STOCKSYNC_IDEM_TTL (less a margin) ago (default: the channel's cursor, "
                        "less poll_overlap_s)")
    orders.set_defaults(run=cmd_reconcile_orders)


def since_ms(text: str) -> int:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise SettingsError(f"--since {text!r} is not an ISO 8601 time (e.g. 2025-01-31T12:00:00Z)") from None
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)


def polled_channel(settings: Settings, name: str) -> ChannelConfig:
    channels = load_channels(settings)
    if name not in channels:
        raise SettingsError(f"no channel named {name!r} (configured: {', '.join(channels) or 'none'})")
    config = channels[name]
    if not KINDS[config.kind].orders_in:
        raise SettingsError(f"channel {name} is of kind {config.kind}, which has no order API to reconcile with")
    return config


async def cmd_reconcile_orders(args: argparse.Namespace) -> int:
    settings: Settings = args.settings
    config = polled_channel(settings, args.channel)
    options = PollOptions.from_config(config, settings.idem_ttl_s)
    since = None
    if args.since is not None:
        since = since_ms(args.since)
        options.check_since(since, int(time.time() * 1000), settings.idem_ttl_s)
    ttls = IntakeSettings.from_settings(settings)
    reader = READERS[config.kind](config, None, options)  # checks the marketplace's own options
    # (everything above is checked before anything connects: bad input changes nothing)
    async with await StockStore.connect(settings) as store:
        reader.store = store
        poller = OrderPoller(store, config, Intake(store, Metrics(), ttls), options, reader=reader)
        return await _pass(poller, since)


async def _pass(poller: OrderPoller, since: int | None) -> int:
    report = PassReport(poller.name)
    ticker = asyncio.create_task(_progress(report))
    try:
        await poller.run_pass(since_ms=since, settle=False, report=report)
    except (PollError, RedisError) as e:
        print(f"stocksync: {e}; the cursor stays at the last page applied", file=sys.stderr)
        print(report.summary())
        return 1
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        await poller.reader.close()
    if report.gap_ms:
        print(f"stocksync: the cursor was older than the references' retention: {report.gap_ms / 3600_000:.1f} hours "
              "of orders were not read", file=sys.stderr)
    print(report.summary())
    return 0


async def _progress(report: PassReport) -> None:
    while True:
        await asyncio.sleep(1.0)
        print(f"{report.line()} so far", file=sys.stderr, flush=True)
