"""The command line of the inventory model (library 0.6):

    stocksync sku count SKU ON_HAND [--expected-version V] [--ref REF]   a warehouse count (committed stays)
    stocksync sku ship SKU QTY [--ref REF]       units of sold lines left: out of committed and on_hand
    stocksync sku cancel SKU QTY [--ref REF]     units of sold lines will not ship: back to available
    stocksync bundle set BUNDLE COMPONENT=UNITS...   define (a multipack: one component)
    stocksync bundle get|delete BUNDLE | bundle list | bundle apply   (apply: the config file's [bundles])
    stocksync rules list CHANNEL | rules set CHANNEL SKU [--buffer N|auto] [--max-listed N] [--end-when N]
    stocksync rules delete CHANNEL SKU
    stocksync reservation show|commit|release ID | reservation expire   (expire: end the due ones now)

Exit codes as stocksync's: 0 done, 1 refused (insufficient, conflict, not a bundle, expired, ...), 2 bad input.
"""

from __future__ import annotations

import argparse
import uuid

import orjson

from .bundles import Bundles, from_config, want_components
from .channels import load_channels
from .errors import InvalidArgument
from .inventory_rules import RuleStore, as_dict, want_override
from .library import Quantities
from .reservations import Reservations, expire_due
from .settings import SettingsError
from .store import StockStore


def register(sub, sku_sub) -> None:
    for name, text in (("count", "record a warehouse count: on_hand (committed stays)"),
                       ("ship", "units of sold lines left the warehouse"),
                       ("cancel", "units of sold lines will not ship: back to available")):
        p = sku_sub.add_parser(name, help=text)
        p.add_argument("sku")
        p.add_argument("on_hand" if name == "count" else "qty", type=int)
        if name == "count":
            p.add_argument("--expected-version", type=int,
                           help="refuse (conflict) unless the SKU's version is this (default: no check)")
        p.add_argument("--ref", help="idempotency key (default: a new one)")
        p.set_defaults(run=_sku_move, op=name)

    bundle = sub.add_parser("bundle", help="bundles and multipacks").add_subparsers(dest="action", required=True)
    p = bundle.add_parser("set", help="define a bundle: COMPONENT=UNITS ...")
    p.add_argument("bundle")
    p.add_argument("components", nargs="+", metavar="COMPONENT=UNITS")
    p.set_defaults(run=_bundle_set)
    for name, text in (("get", "show a bundle"), ("delete", "a bundle becomes a plain SKU at 0")):
        p = bundle.add_parser(name, help=text)
        p.add_argument("bundle")
        p.set_defaults(run=_bundle_get if name == "get" else _bundle_delete)
    bundle.add_parser("list", help="every bundle").set_defaults(run=_bundle_list)
    bundle.add_parser("apply", help="define the config file's [bundles]").set_defaults(run=_bundle_apply)

    rules = sub.add_parser("rules", help="per-SKU rules of a channel").add_subparsers(dest="action", required=True)
    p = rules.add_parser("list", help="a channel's rules and every SKU's overrides")
    p.add_argument("channel")
    p.set_defaults(run=_rules_list)
    p = rules.add_parser("set", help="override a SKU's rules on a channel (pushed again at once)")
    p.add_argument("channel")
    p.add_argument("sku")
    p.add_argument("--buffer", help='units held back from this SKU on the channel, or "auto" (default: the '
                   "channel's rule)")
    p.add_argument("--max-listed", type=int, dest="max_listed",
                   help="the most this channel lists of the SKU, 0: no cap (default: the channel's rule)")
    p.add_argument("--end-when", type=int, dest="end_when",
                   help="list 0 at or below this quantity (default: the channel's rule)")
    p.set_defaults(run=_rules_set)
    p = rules.add_parser("delete", help="back to the channel's rules")
    p.add_argument("channel")
    p.add_argument("sku")
    p.set_defaults(run=_rules_delete)

    res = sub.add_parser("reservation", help="reservations").add_subparsers(dest="action", required=True)
    for name in ("show", "commit", "release"):
        p = res.add_parser(name, help=f"{name} a reservation")
        p.add_argument("id")
        p.set_defaults(run=_reservation, op=name)
    res.add_parser("expire", help="end the due reservations now").set_defaults(run=_reservation_expire)


def _say(doc: dict) -> None:
    print(orjson.dumps(doc).decode())


def _quantities(q: Quantities) -> dict:
    return {"sku": q.sku, "available": q.available, "on_hand": q.on_hand, "committed": q.committed,
            "reserved": q.reserved, "version": q.version, "components": q.components, "bundles": list(q.bundles)}


async def _sku_move(args: argparse.Namespace) -> int:
    async with await StockStore.connect(args.settings) as store:
        ref = args.ref or uuid.uuid4().hex
        if args.op == "count":
            o = await store.count(args.sku, args.on_hand, ref=ref, source="cli", expected_version=args.expected_version)
            units = ""
        else:
            o = await (store.ship if args.op == "ship" else store.cancel)(args.sku, args.qty, ref=ref, source="cli")
            units = f" {'shipped' if args.op == 'ship' else 'from_committed'}={o.units}"
        q = await store.quantities(args.sku) if o.status != "unknown_sku" else None
    replay = " (replayed)" if o.replayed else ""
    extra = f" on_hand={q.on_hand} committed={q.committed} reserved={q.reserved}" if q else ""
    print(f"{o.sku}: {o.status} available={o.available} version={o.version}{units}{extra}{replay}")
    return 0 if o.ok else 1


def _components(items: list[str]) -> dict[str, int]:
    parts: dict[str, object] = {}
    for item in items:
        sku, sep, units = item.rpartition("=")
        if not sep or not units.isdigit():
            raise InvalidArgument(f"component {item!r} is not COMPONENT=UNITS")
        parts[sku] = int(units)
    return want_components(parts)


async def _bundle_set(args) -> int:
    async with await StockStore.connect(args.settings) as store:
        o = await Bundles(store).set(args.bundle, _components(args.components), source="cli")
    _say({"sku": o.sku, "status": o.status, "available": o.available, "version": o.version})
    return 0


async def _bundle_get(args) -> int:
    async with await StockStore.connect(args.settings) as store:
        q = await Bundles(store).get(args.bundle)
    if q is None:
        print(f"{args.bundle}: not a bundle")
        return 1
    _say(_quantities(q))
    return 0


async def _bundle_delete(args) -> int:
    async with await StockStore.connect(args.settings) as store:
        o = await Bundles(store).delete(args.bundle, source="cli")
    _say({"sku": o.sku, "status": o.status, "available": o.available, "version": o.version})
    return 0 if o.status == "ok" else 1


async def _bundle_list(args) -> int:
    async with await StockStore.connect(args.settings) as store:
        for q in (await Bundles(store).list()).values():
            _say(_quantities(q))
    return 0


async def _bundle_apply(args) -> int:
    table = from_config(args.settings)
    if not table:
        raise SettingsError("the config file has no [bundles] table")
    async with await StockStore.connect(args.settings) as store:
        for o in await Bundles(store).apply(table):
            _say({"sku": o.sku, "status": o.status, "available": o.available})
    return 0


def _channel(args):
    channels = load_channels(args.settings)
    if args.channel not in channels:
        raise SettingsError(f"no channel {args.channel!r} is configured (known: {', '.join(sorted(channels)) or 'none'})")
    return channels[args.channel]


async def _rules_list(args) -> int:
    config = _channel(args)
    async with await StockStore.connect(args.settings) as store:
        overrides = await RuleStore(store.redis, store.keys).get(config.name)
    _say({"channel": config.name, "rules": as_dict(config.rules), "overrides": overrides})
    return 0


async def _rules_set(args) -> int:
    config = _channel(args)
    doc: dict = {k: getattr(args, k) for k in ("max_listed", "end_when") if getattr(args, k) is not None}
    if args.buffer is not None:
        doc["buffer"] = args.buffer if args.buffer == "auto" else _whole(args.buffer, "--buffer")
    override = want_override(doc, "options")
    async with await StockStore.connect(args.settings) as store:
        rules = await RuleStore(store.redis, store.keys).set(config, args.sku, override)
    _say({"channel": config.name, "sku": args.sku, "override": override, "rules": as_dict(rules)})
    return 0


def _whole(text: str, name: str) -> int:
    if not text.isdigit():
        raise InvalidArgument(f'{name} must be a whole number >= 0 or "auto", got {text!r}')
    return int(text)


async def _rules_delete(args) -> int:
    config = _channel(args)
    async with await StockStore.connect(args.settings) as store:
        removed = await RuleStore(store.redis, store.keys).delete(config.name, args.sku)
    print(f"{args.sku}: {'back to the rules of ' + config.name if removed else 'had no rules of its own'}")
    return 0 if removed else 1


async def _reservation(args) -> int:
    async with await StockStore.connect(args.settings) as store:
        res = Reservations(store)
        if args.op == "show":
            r = await res.get(args.id)
            if r is None:
                print(f"{args.id}: unknown reservation")
                return 1
            _say({"id": args.id, "state": r.state, "expires_ms": r.expires_ms, "ttl_ms": r.ms_left,
                  "lines": r.lines, "source": r.source})
            return 0
        o = await (res.commit if args.op == "commit" else res.release)(args.id, source="cli")
    _say({"id": args.id, "status": o.status, "replayed": o.replayed})
    return 0 if o.status == "ok" else 1


async def _reservation_expire(args) -> int:
    async with await StockStore.connect(args.settings) as store:
        print(f"ended {await expire_due(store.redis, store.keys)} reservations")
    return 0
