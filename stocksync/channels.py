"""Channel configuration: which marketplaces stock is pushed to, and the rules that shape each listing.

In the TOML file (STOCKSYNC_CONFIG), one table per channel; credentials are never in the file, only the
names of the environment variables that hold them:

    [channels.shopify]
    kind = "shopify"                 # shopify | amazon | flipkart | webhook
    url = "https://example.myshopify.com"
    credentials = { token = "SHOPIFY_ACCESS_TOKEN" }   # name -> environment variable
    buffer = 2                       # units held back from this channel, or "auto" (consumers/risk.py)
    oversell_target = 1.0            # with buffer = "auto": expected oversold units per 10,000 orders
    share = 100                      # percent of the rest listed here
    max_listed = 0                   # cap on the listed quantity (0: none)
    end_when = 0                     # list 0 at or below this quantity
    poll_s = 60                      # read orders back from the order API this often (0 or absent: off;
                                     # Shopify, Amazon and Flipkart, see stocksync/orders/pollers/)
    options = { location_id = "gid://shopify/Location/1" }   # adapter-specific
    [channels.shopify.sku_map]       # channel SKU -> canonical SKU, where they differ
    "SHOP-RED-M" = "RED-M"
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .settings import Settings, SettingsError

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Kind:
    """A marketplace API stocksync pushes stock to (an adapter in consumers/adapters/) and, where
    `orders_in`, whose order webhooks it receives (stocksync/orders/webhooks.py)."""

    name: str
    marketplace: str
    orders_in: bool
    # keys of the channel's `options` table read on the orders side (webhook receiver, order poller); the
    # adapter declares its own, and a key neither reads is refused at start
    order_options: frozenset[str] = frozenset()


# The one registry of channel kinds: every table of implementations (adapters, webhook receivers,
# simulators) is built with by_kind() against it, so a kind cannot be half added.
# The order poller's options, every kind with orders in (stocksync/orders/pollers/options.py).
POLL_OPTIONS = frozenset({"settle_s", "poll_overlap_s", "poll_lease_s", "poll_timeout_s", "poll_page_size"})
KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("shopify", "Shopify", orders_in=True, order_options=frozenset({"restock"}) | POLL_OPTIONS),
    Kind("amazon", "Amazon", orders_in=True,
         order_options=frozenset({"token_header", "include_afn", "order_api_limits"}) | POLL_OPTIONS),
    Kind("flipkart", "Flipkart", orders_in=True, order_options=frozenset({"notification_url", "max_skew_s"}) | POLL_OPTIONS),
    Kind("webhook", "a generic HTTP receiver", orders_in=False),
)}

T = TypeVar("T")


def by_kind(implementations: Iterable[T], what: str, *, orders_in: bool = False) -> dict[str, T]:
    """{kind name: implementation} of classes that each name their `kind`, checked against KINDS: every
    kind (or every kind with orders_in) has exactly one, and no class names a kind KINDS lacks."""
    table: dict[str, T] = {}
    for impl in implementations:
        kind = impl.kind  # type: ignore[attr-defined]
        if kind not in KINDS or kind in table:
            raise RuntimeError(f"{what} {impl!r}: kind {kind!r} is unknown or taken (stocksync.channels.KINDS)")
        table[kind] = impl
    wanted = {k.name for k in KINDS.values() if k.orders_in or not orders_in}
    if set(table) != wanted:
        raise RuntimeError(f"{what}s missing for kind(s) {sorted(wanted - set(table))} (stocksync.channels.KINDS)")
    return table


@dataclass(frozen=True)
class Rules:
    buffer: int | str = 0  # units held back, or "auto": by the channel's measured risk (consumers/risk.py)
    share: int = 100
    max_listed: int = 0
    end_when: int = 0
    oversell_target: float = 1.0  # with buffer = "auto": expected oversold units per 10,000 orders

    def __post_init__(self) -> None:
        for name in ("max_listed", "end_when") + (() if self.buffer == "auto" else ("buffer",)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SettingsError(f"{name} must be a whole number >= 0" + (' or "auto"' if name == "buffer" else "")
                                    + f", got {value!r}")
        if isinstance(self.share, bool) or not isinstance(self.share, int) or not 0 <= self.share <= 100:
            raise SettingsError(f"share must be a whole number of percent from 0 to 100, got {self.share!r}")
        target = self.oversell_target
        if isinstance(target, bool) or not isinstance(target, int | float) or not 0 < target <= 10_000:
            raise SettingsError(f"oversell_target must be a number of units per 10,000 orders in (0, 10000], got {target!r}")

    def listed(self, available: int, auto_buffer: int = 0) -> int:
        """The quantity this channel lists when `available` units are in stock (`auto_buffer`: what the
        risk model holds back where buffer = "auto")."""
        buffer = auto_buffer if self.buffer == "auto" else self.buffer
        q = max(available - buffer, 0) * self.share // 100
        if self.max_listed:
            q = min(q, self.max_listed)
        return 0 if q <= self.end_when else q


@dataclass(frozen=True)
class ChannelConfig:
    name: str
    kind: str
    url: str
    rules: Rules = Rules()
    credentials: Mapping[str, str] = field(default_factory=dict)  # name -> environment variable
    sku_map: Mapping[str, str] = field(default_factory=dict)  # channel SKU -> canonical SKU
    options: Mapping[str, Any] = field(default_factory=dict)
    poll_s: float = 0.0  # seconds between two passes of the channel's order poller; 0: no poller

    def secret(self, name: str) -> str:
        """A credential's value from the environment; the error names the variable, never a value."""
        var = self.credentials.get(name)
        if not var:
            raise SettingsError(f"channel {self.name}: no credential {name!r} configured (channels.{self.name}."
                                f"credentials names the environment variable that holds it: {name} = \"VARIABLE\")")
        value = os.environ.get(var, "")
        if not value:
            raise SettingsError(f"channel {self.name}: environment variable {var} (credential {name!r}) is not set")
        return value


def load_channels(settings: Settings) -> dict[str, ChannelConfig]:
    return {name: parse_channel(name, table) for name, table in settings.section("channels").items()}


def known(channels: Mapping[str, ChannelConfig], names: Iterable[str]) -> list[str]:
    """The names, each checked against the configured channels: an unknown one is a SettingsError that
    lists the configured ones (a typo never reads as "nothing to do")."""
    names = list(names)
    missing = [n for n in names if n not in channels]
    if missing:
        listed = ", ".join(sorted(channels)) or "none"
        raise SettingsError(f"no channel named {', '.join(repr(n) for n in missing)} is configured (configured: "
                            f"{listed})")
    return names


def parse_channel(name: str, table: Mapping[str, Any]) -> ChannelConfig:
    if not _NAME_RE.match(name):
        raise SettingsError(f"channel name {name!r} must be 1-32 of a-z, 0-9, '_' or '-'")
    if not isinstance(table, Mapping):
        raise SettingsError(f"channels.{name} must be a table")
    known = {"kind", "url", "credentials", "sku_map", "options", "buffer", "share", "max_listed", "end_when",
             "oversell_target", "poll_s"}
    unknown = set(table) - known
    if unknown:
        raise SettingsError(f"channels.{name}: unknown setting(s) {', '.join(sorted(unknown))}")
    kind = table.get("kind", name)
    if kind not in KINDS:
        raise SettingsError(f"channels.{name}.kind must be one of {', '.join(KINDS)}, got {kind!r}")
    url = table.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise SettingsError(f"channels.{name}.url must be an http(s) URL")
    rules = Rules(**{k: table[k] for k in ("buffer", "share", "max_listed", "end_when", "oversell_target") if k in table})
    for sub in ("credentials", "sku_map", "options"):
        if not isinstance(table.get(sub, {}), Mapping):
            raise SettingsError(f"channels.{name}.{sub} must be a table")
    return ChannelConfig(name, kind, url.rstrip("/"), rules, dict(table.get("credentials", {})),
                         dict(table.get("sku_map", {})), dict(table.get("options", {})),
                         _poll_s(name, kind, table.get("poll_s", 0)))


MIN_POLL_S, MAX_POLL_S = 0.1, 86_400  # a day: a poller that runs less often is a forgotten one


def _poll_s(name: str, kind: str, value: Any) -> float:
    """poll_s: a number of seconds, 0 (off) or 0.1 to a day, and only for a kind with an order API."""
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not (value == 0 or MIN_POLL_S <= value <= MAX_POLL_S)):
        raise SettingsError(f"channels.{name}.poll_s must be 0 (off) or a number of seconds from {MIN_POLL_S:g} to "
                            f"{MAX_POLL_S}, got {value!r}")
    if value and not KINDS[kind].orders_in:
        raise SettingsError(f"channels.{name}.poll_s: kind {kind} has no order API to poll (only "
                            f"{', '.join(k.name for k in KINDS.values() if k.orders_in)})")
    return float(value)
