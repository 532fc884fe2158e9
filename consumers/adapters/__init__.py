"""One adapter per marketplace API; `make_adapter(config)` picks it by the channel's kind, and
`check_options(config)` refuses options that kind of channel does not read and `check_credentials(config)`
credentials its pushes need that are missing (before anything starts)."""

from __future__ import annotations

import aiohttp

from stocksync.channels import ChannelConfig, by_kind

from .amazon import AmazonAdapter
from .base import Adapter, PermanentError, PushError, Result, TransientError, Update
from .flipkart import FlipkartAdapter
from .shopify import ShopifyAdapter
from .webhook import WebhookAdapter

ADAPTERS: dict[str, type[Adapter]] = by_kind((ShopifyAdapter, AmazonAdapter, FlipkartAdapter, WebhookAdapter),
                                              "adapter")


def make_adapter(config: ChannelConfig, session: aiohttp.ClientSession | None = None) -> Adapter:
    return ADAPTERS[config.kind](config, session)


def check_options(config: ChannelConfig) -> None:
    """Raise SettingsError, naming the channel and the key, for an option its kind does not read."""
    ADAPTERS[config.kind].check_options(config)


def check_credentials(config: ChannelConfig) -> None:
    """Raise SettingsError, naming the environment variable, for a credential the channel's pushes read
    that is not configured or not set."""
    ADAPTERS[config.kind].check_credentials(config)


__all__ = ["ADAPTERS", "Adapter", "PermanentError", "PushError", "Result", "TransientError", "Update",
           "check_credentials", "check_options", "make_adapter"]
