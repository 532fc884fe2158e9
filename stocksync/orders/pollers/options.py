"""A channel's poller settings, checked once at start, and the bound the references' retention sets.

    [channels.shopify]
    poll_s = 60                     # a pass every minute (0 or absent: no poller)
    options = { settle_s = 30, poll_overlap_s = 60, poll_lease_s = 30, poll_timeout_s = 10,
                poll_page_size = 0 }

settle_s        a pass reads only orders updated before now - settle_s, so that a webhook arriving on
                time applies its order first (the poller then finds it applied: "already applied")
poll_overlap_s  each pass reads again from its cursor less this, so an order updated in the same second
                as the cursor (or shown late by the marketplace's search) is not missed
poll_lease_s    the lease one worker process holds while it polls the channel (renewed every third of it)
poll_timeout_s  each call to the order API
poll_page_size  orders a page (0: the marketplace's default; Shopify's is bounded by its query cost)

The retention bound: a line's reference is remembered STOCKSYNC_IDEM_TTL seconds (48 hours by default),
after which applying it again would change stock again. A pass never reads further back than that less a
margin (a tenth of it, at most an hour, for the pass itself to finish): the overlap, the settle time and
the interval together must fit in it, and `reconcile orders --since` must be within it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stocksync.channels import KINDS, ChannelConfig
from stocksync.settings import SettingsError

NAMES = {"settle_s": 30.0, "poll_overlap_s": 60.0, "poll_lease_s": 30.0, "poll_timeout_s": 10.0}


def retention_s(idem_ttl_s: int) -> float:
    """How far back a pass may read: the references' retention less a margin for the pass itself."""
    return idem_ttl_s - min(3600.0, idem_ttl_s / 10)


@dataclass(frozen=True)
class PollOptions:
    poll_s: float = 0.0
    settle_s: float = 30.0
    overlap_s: float = 60.0
    lease_s: float = 30.0
    timeout_s: float = 10.0
    page_size: int = 0
    retention_s: float = retention_s(48 * 3600)

    @classmethod
    def from_config(cls, config: ChannelConfig, idem_ttl_s: int) -> PollOptions:
        """The channel's options, checked (SettingsError names the setting and the bound it breaks)."""
        kind = KINDS.get(config.kind)
        if kind is None or not kind.orders_in:
            raise SettingsError(f"channel {config.name}: kind {config.kind} has no order API to read orders from")
        values = {name: _number(config, name, default) for name, default in NAMES.items()}
        page = config.options.get("poll_page_size", 0)
        if isinstance(page, bool) or not isinstance(page, int) or not 0 <= page <= 250:
            raise SettingsError(f"channels.{config.name}.options.poll_page_size must be 0 (the marketplace's "
                                f"default) to 250, got {page!r}")
        options = cls(config.poll_s, values["settle_s"], values["poll_overlap_s"], values["poll_lease_s"],
                      values["poll_timeout_s"], page, retention_s(idem_ttl_s))
        options.check_retention(config.name, idem_ttl_s)
        return options

    def check_retention(self, channel: str, idem_ttl_s: int) -> None:
        reach = self.settle_s + self.overlap_s + self.poll_s
        if reach > self.retention_s:
            raise SettingsError(
                f"channels.{channel}: settle_s ({self.settle_s:g}) + poll_overlap_s ({self.overlap_s:g}) + poll_s "
                f"({self.poll_s:g}) = {reach:g} s reach back further than the references are remembered "
                f"(STOCKSYNC_IDEM_TTL {idem_ttl_s} s, less {idem_ttl_s - self.retention_s:g} s for a pass to "
                f"finish: {self.retention_s:g} s); an order read again then could be applied twice")

    def check_since(self, since_ms: int, now_ms: int, idem_ttl_s: int) -> None:
        """--since must be in the past and within the references' retention."""
        if since_ms > now_ms:
            raise SettingsError("--since is in the future")
        if now_ms - since_ms > self.retention_s * 1000:
            raise SettingsError(
                f"--since is {(now_ms - since_ms) / 3600_000:.1f} hours ago, further back than the references are "
                f"remembered (STOCKSYNC_IDEM_TTL {idem_ttl_s} s, less a margin: {self.retention_s / 3600:.1f} "
                f"hours); an order older than that could be applied twice")


def _number(config: ChannelConfig, name: str, default: float) -> float:
    value: Any = config.options.get(name, default)
    low = 0.0 if name in ("settle_s", "poll_overlap_s") else 0.1
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= 366 * 86400:
        raise SettingsError(f"channels.{config.name}.options.{name} must be a number of seconds >= {low:g}, "
                            f"got {value!r}")
    return float(value)
