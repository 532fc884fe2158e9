"""One adapter per marketplace API; `make_adapter(config)` picks it by the channel's kind."""

from __future__ import annotations

import aiohttp

from stocksync.channels import ChannelConfig

from .amazon import AmazonAdapter
from .base import Adapter, PermanentError, PushError, Result, TransientError, Update, push_rank
from .flipkart import FlipkartAdapter
from .shopify import ShopifyAdapter
from .webhook import WebhookAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    "shopify": ShopifyAdapter,
    "amazon": AmazonAdapter,
    "flipkart": FlipkartAdapter,
    "webhook": WebhookAdapter,
}


def make_adapter(config: ChannelConfig, session: aiohttp.ClientSession | None = None) -> Adapter:
    return ADAPTERS[config.kind](config, session)


__all__ = ["ADAPTERS", "Adapter", "PermanentError", "PushError", "Result", "TransientError", "Update", "make_adapter", "push_rank"]
