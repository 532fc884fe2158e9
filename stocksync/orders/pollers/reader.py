"""What a marketplace's order reader gives the poller: pages of orders in update order, each order as the
deliveries its webhooks would have made.

A reader knows one order API: how to ask for the orders updated in [start, end) oldest first, how to page,
how to stay within the API's rate limits, and how to rebuild from each order the bodies of the webhooks
that order's events send, which it parses with the receiver's own parser
(stocksync.orders.webhooks.parse_payload). It never touches the stock: the poller applies what it reads.

Times: marketplaces show and compare update times in whole seconds, so a reader asks for whole seconds
(start rounded down, end exclusive and rounded down) and the poller's cursor is a whole second too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

from stocksync.channels import ChannelConfig
from stocksync.orders.webhooks import Delivery, parse_payload, payload_parser
from stocksync.settings import SettingsError
from stocksync.store import StockStore
from stocksync.validate import Invalid

from .client import OrderApi, PollError
from .options import PollOptions


@dataclass(slots=True)
class PolledOrder:
    order_id: str  # what the API lists (Flipkart: a shipment)
    updated_ms: int  # its last update as the API shows it (whole seconds)
    events: list[Delivery] = field(default_factory=list)  # its webhooks' deliveries, in the order sent
    state: str = ""  # what the reader remembers of it once applied (Amazon: open or cancelled)


@dataclass(slots=True)
class Page:
    stream: str
    orders: list[PolledOrder]


class OrderReader:
    """Base class: subclasses set `kind` and `streams` and implement `pages`."""

    kind = ""
    streams: tuple[str, ...] = ("orders",)  # searches read apart, each with its own cursor

    def __init__(self, config: ChannelConfig, store: StockStore | None, options: PollOptions) -> None:
        """`store` may come later (set it before the first pass): a reader checks its options when made."""
        self.config, self.store, self.options = config, store, options
        self.name = config.name
        try:
            self.parser = payload_parser(config)
        except ValueError as e:
            raise SettingsError(str(e)) from None
        self.api = OrderApi(config.name, options.timeout_s)

    def pages(self, stream: str, start_ms: int, end_ms: int) -> AsyncIterator[Page]:
        """The orders of `stream` updated in [start_ms, end_ms), oldest update first, a page at a time."""
        raise NotImplementedError

    async def applied(self, page: Page) -> None:
        """The page was applied in full (a reader may remember what it need not read again)."""

    async def close(self) -> None:
        await self.api.close()

    def parse(self, order_id: str, payload: dict, topic: str = "") -> Delivery:
        """A rebuilt webhook body parsed as the receiver parses it; a body it refuses stops the pass."""
        try:
            return parse_payload(self.parser, payload, topic)
        except Invalid as e:
            raise PollError(f"{self.name}: order {order_id} cannot be read: {e}") from None


def to_ms(text: object, what: str) -> int:
    """An API's ISO 8601 time (Z or an offset) as ms; PollError if it is not one."""
    if isinstance(text, str) and text:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return int(when.timestamp() * 1000)
    raise PollError(f"{what}: {text!r} is not an ISO 8601 time")


def iso(ms: int, offset_minutes: int = 0) -> str:
    """`ms` rounded down to the second, ISO 8601 ("...Z" in UTC, else with the offset, "+05:30")."""
    text = datetime.fromtimestamp(ms // 1000, timezone(timedelta(minutes=offset_minutes))).isoformat()
    return text[:-6] + "Z" if offset_minutes == 0 else text


def floor_s(ms: int) -> int:
    return ms // 1000 * 1000
