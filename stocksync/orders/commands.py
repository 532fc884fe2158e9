"""`stocksync rejections list|apply|resolve`: the orders the marketplaces took that could not be covered.

    stocksync rejections list [--channel C] [--json]     each line with what to do (cancel, fix_map, none)
    stocksync rejections apply CHANNEL ORDER_ID          take again the lines waiting for a fixed SKU map
    stocksync rejections resolve CHANNEL ORDER_ID        take the order off the list (handled)

Exit codes: 0 done (apply: every fix_map line taken), 1 lines remain to fix or the order is not listed,
2 bad input (an unknown channel).
"""

from __future__ import annotations

import sys

import orjson

from stocksync.channels import ChannelConfig, known, load_channels
from stocksync.metrics import Metrics
from stocksync.store import StockStore

from .intake import Intake


def register(subparsers) -> None:
    parser = subparsers.add_parser("rejections", help="orders that could not be covered: list, apply again, resolve")
    sub = parser.add_subparsers(dest="rejections_command", required=True)
    ls = sub.add_parser("list", help="orders with lines to act on, newest first, each line with what to do")
    ls.add_argument("--channel", help="only this channel's orders (default: all)")
    ls.add_argument("--json", action="store_true", help="one JSON document instead of lines of text")
    ls.set_defaults(run=_list)
    for name, run, text in (("apply", _apply, "take again the lines of an order waiting for a fixed SKU map"),
                            ("resolve", _resolve, "take an order off the list (it was handled at the marketplace)")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("channel", help="the channel's name in the config file")
        cmd.add_argument("order_id", help="the marketplace's order id, as listed")
        cmd.set_defaults(run=run)


def _channel(args) -> ChannelConfig:
    channels = load_channels(args.settings)
    return channels[known(channels, [args.channel])[0]]


async def _list(args) -> int:
    if args.channel:
        _channel(args)
    async with await StockStore.connect(args.settings) as store:
        orders = await Intake(store, Metrics()).rejections.list(1000, args.channel)
    if args.json:
        print(orjson.dumps({"rejections": orders}).decode())
        return 0
    for order in orders:
        print(f"{order['channel']} order {order['order_id']}:")
        for line in order["lines"]:
            print(f"  line {line['line_id']}: {line['qty']} x {line.get('channel_sku') or '(no SKU)'} "
                  f"-> {line['reason']}: {line['action']} ({line['hint']})")
    print(f"{len(orders)} order(s) to act on", file=sys.stderr)
    return 0


async def _apply(args) -> int:
    config = _channel(args)
    async with await StockStore.connect(args.settings) as store:
        intake = Intake(store, Metrics())
        lines = await intake.apply_rejected(config, args.order_id)
        remaining = await intake.rejections.lines(config.name, args.order_id)
    if lines is None:
        print(f"stocksync: no rejection recorded for order {args.order_id} of {config.name}", file=sys.stderr)
        return 1
    for line in lines:
        print(f"line {line['line_id']}: {line['status']}")
    waiting = [line for line in remaining if line["action"] == "fix_map"]
    print(f"{len(lines)} line(s) applied again; {len(remaining)} listed still, {len(waiting)} waiting for a "
          "fixed SKU map", file=sys.stderr)
    return 1 if waiting else 0


async def _resolve(args) -> int:
    config = _channel(args)
    async with await StockStore.connect(args.settings) as store:
        found = await Intake(store, Metrics()).rejections.resolve(config.name, args.order_id)
    print(f"order {args.order_id} of {config.name}: {'resolved' if found else 'not listed'}")
    return 0 if found else 1
