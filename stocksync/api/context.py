"""What every endpoint needs (the store, the intake, the channels, the settings of [api]), built once at
startup and kept on the app's state.

Settings of the API (the [api] table of the config file; an unknown key is refused at start):

    [api]
    max_body_bytes = 4194304      # larger bodies get 413 before they are read whole (the largest valid
                                  # payload, a 250-line Shopify cancellation with its refund, is ~1.1 MB)
    read_timeout_s = 10           # a request must arrive whole within this (stocksync.api.protocols)
    webhook_seen_ttl_s = 604800   # how long a webhook id / NotificationId is remembered
    line_ttl_days = 120           # how long a taken order line is remembered for its restock
    sse_keepalive_s = 15          # a comment line on an idle /v1/events stream this often
    [api.tokens.<name>]           # see stocksync.api.auth
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from starlette.requests import Request

from stocksync.channels import ChannelConfig, load_channels
from stocksync.metrics import Metrics
from stocksync.orders.intake import Intake, IntakeSettings
from stocksync.orders.webhooks import Webhook, build
from stocksync.settings import Settings, SettingsError
from stocksync.store import StockStore

from .auth import Auth
from .httputil import HTTPError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiSettings:
    max_body_bytes: int = 4 << 20
    read_timeout_s: float = 10.0
    webhook_seen_ttl_s: int = IntakeSettings.seen_ttl_s
    line_ttl_days: int = IntakeSettings.line_ttl_s // 86400
    sse_keepalive_s: float = 15.0
    tokens: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "read_timeout_s", "webhook_seen_ttl_s", "line_ttl_days", "sse_keepalive_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise SettingsError(f"api.{name} must be a number > 0, got {value!r}")
        if not isinstance(self.tokens, Mapping):
            raise SettingsError("api.tokens must be a table of tables ([api.tokens.<name>])")

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiSettings:
        table = dict(settings.section("api"))
        unknown = set(table) - {f.name for f in fields(cls)}
        if unknown:
            raise SettingsError(f"api: unknown setting(s) {', '.join(sorted(unknown))}; known: "
                                f"{', '.join(f.name for f in fields(cls))}")
        return cls(**table)



@dataclass
class Context:
    """What every endpoint needs, built once at startup."""

    settings: Settings
    store: StockStore
    metrics: Metrics
    auth: Auth
    intake: Intake
    channels: dict[str, ChannelConfig]
    hooks: dict[str, Webhook]
    disabled: dict[str, str] = field(default_factory=dict)
    max_body: int = 4 << 20
    sse_keepalive_s: float = 15.0

    def channel(self, name: str) -> ChannelConfig:
        """The channel named, or 404 naming the configured ones (a typo never reads as "nothing there")."""
        channel = self.channels.get(name)
        if channel is None:
            raise HTTPError(404, "unknown_channel", f"no channel named {name!r} is configured (configured: "
                            f"{', '.join(sorted(self.channels)) or 'none'})")
        return channel


async def build_context(settings: Settings, metrics: Metrics) -> Context:
    api = ApiSettings.from_settings(settings)  # (refused before anything connects)
    store = await StockStore.connect(settings)
    channels = load_channels(settings)
    hooks, disabled = build(channels)
    for name, reason in disabled.items():
        log.warning("webhook of channel %s disabled: %s", name, reason)
    return Context(
        settings=settings, store=store, metrics=metrics, auth=Auth(api.tokens),
        intake=Intake(store, metrics, IntakeSettings.from_settings(settings)), channels=channels, hooks=hooks,
        disabled=disabled, max_body=int(api.max_body_bytes), sse_keepalive_s=float(api.sse_keepalive_s),
    )


def context(request: Request) -> Context:
    return request.app.state.ctx
