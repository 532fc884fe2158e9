"""Marketplace webhooks: verify the request, then turn the body into order lines to take or restock.

Nothing here touches Redis: a verifier checks the raw body and headers before anything is parsed, and a
parser returns a `Delivery` (stocksync.orders.intake applies it). Every line carries a key built from the
marketplace's own order and line ids, so the same line gets the same reference however it is delivered
(a Shopify redelivery under a new webhook id, the fifth Amazon ORDER_CHANGE of one order, ...).

Channel settings (the channel's table in the config file; secrets are names of environment variables):

    [channels.shopify]          kind = "shopify"
    credentials = { webhook_secret = "SHOPIFY_WEBHOOK_SECRET" }   # the app's client secret
    options = { restock = "refund" }     # refund (default) | cancel | never, see ShopifyParser

    [channels.amazon]           kind = "amazon"
    credentials = { webhook_token = "AMAZON_WEBHOOK_TOKEN" }      # the API destination's API key value
    options = { token_header = "x-stocksync-token", include_afn = false }

    [channels.flipkart]         kind = "flipkart"
    credentials = { app_id = "FLIPKART_APP_ID", app_secret = "FLIPKART_APP_SECRET" }
    options = { notification_url = "https://stock.example.com/webhooks/flipkart", max_skew_s = 900 }
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import orjson
from starlette.requests import Request

from stocksync.channels import ChannelConfig, by_kind
from stocksync.limits import MAX_QTY, MAX_WEBHOOK_LINES
from stocksync.validate import invalid, parse_json, want_list, want_object


class Unverified(Exception):
    """The request's signature or token did not verify (401, nothing parsed, nothing changed)."""


@dataclass(frozen=True, slots=True)
class Line:
    """One order line as the marketplace names it."""

    key: str  # the marketplace's order and line ids, unique per channel
    order_id: str
    line_id: str
    channel_sku: str | None  # None: the marketplace sent no SKU
    qty: int


@dataclass(frozen=True, slots=True)
class Restock:
    line: Line  # channel_sku may be None (Flipkart cancellations name only the line): looked up
    suffix: str  # what makes this restock's reference distinct from the take's and other restocks'
    full: bool = False  # restock whatever was taken for the line, whatever line.qty says
    returned: bool = False  # units that were shipped come back (a return), not a cancellation before shipping


@dataclass(frozen=True, slots=True)
class Ship:
    """Units of a line that left the warehouse (a fulfillment, a shipment, a dispatch)."""

    line: Line
    suffix: str  # ship:<shipment id>: distinct per shipment of the line (its reference's last part)
    full: bool = False  # the whole line shipped, whatever line.qty says


@dataclass
class Delivery:
    delivery_id: str | None  # the marketplace's id of this delivery (duplicates share it)
    kind: str  # the topic or event type, for logs and replies
    takes: list[Line] = field(default_factory=list)
    restocks: list[Restock] = field(default_factory=list)
    # Lines of an order cancelled with a full restock: one not taken yet is never taken (in order, it would
    # be taken and put back whole; see stocksync.orders.intake).
    cancels: list[Line] = field(default_factory=list)
    ships: list[Ship] = field(default_factory=list)  # units that left: out of committed (library 0.6)
    ignored: str = ""  # why the delivery changes nothing, when it does not


# Verification ------------------------------------------------------------------------------------------


def _header(request: Request, *names: str) -> str:
    for name in names:
        value = request.headers.get(name)
        if value is not None:
            return value
    return ""


def shopify_signature(body: bytes, secret: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def flipkart_authorization(app_id: str, secret: str, date: str, url: str, method: str = "POST") -> str:
    """FKLOGIN base64(appId:sha1hex(date + url + method + secret)); `date` as signed (see flipkart_dates)."""
    digest = hashlib.sha1((date + url + method + secret).encode()).hexdigest()
    return "FKLOGIN " + base64.b64encode(f"{app_id}:{digest}".encode()).decode()


def flipkart_dates(x_date: str) -> list[str]:
    """The forms of X_Date a notification may be signed over: the Unix time in seconds, as Flipkart's
    published sample signs it ("Tue, 19 May 2015 09:02:15 GMT" as 1432026135), and the header's text,
    as its prose reads (and as stocksync verified before)."""
    forms = [x_date]
    try:
        forms.insert(0, str(int(parsedate_to_datetime(x_date).timestamp())))
    except (TypeError, ValueError):
        pass
    return forms


class Webhook:
    """One configured channel's webhook: its verifier and its parser."""

    kind = ""
    CREDENTIALS: tuple[str, ...] = ()  # the credentials it verifies deliveries with

    def __init__(self, channel: ChannelConfig) -> None:
        self.channel = channel
        self.name = channel.name

    def verify(self, request: Request, body: bytes) -> None:
        raise NotImplementedError

    def parse(self, request: Request, body: bytes) -> Delivery:
        raise NotImplementedError


class ShopifyWebhook(Webhook):
    """Topics orders/create (take each line), orders/cancelled and refunds/create (restock by policy),
    fulfillments/create (ship each fulfilled line: its units leave committed and on_hand).

    orders/cancelled also marks the order's lines that were not taken yet (it can arrive first), so that
    a late orders/create takes none of them.

    Restock policy (options.restock):
      refund  (default) restock what the merchant restocked in Shopify: every refund line item whose
              restock_type is cancel, return or legacy_restock, from refunds/create and from the refunds
              embedded in orders/cancelled (same reference per refund line item, so once either way).
      cancel  orders/cancelled restocks each taken line's whole quantity; refunds restock only returns.
      never   webhooks never restock (restock through the admin API or the warehouse system).
    """

    kind = "shopify"
    CREDENTIALS = ("webhook_secret",)
    POLICIES = ("refund", "cancel", "never")

    def __init__(self, channel: ChannelConfig) -> None:
        super().__init__(channel)
        self.secret = channel.secret("webhook_secret")
        self.policy = channel.options.get("restock", "refund")
        if self.policy not in self.POLICIES:
            raise ValueError(f"channels.{channel.name}.options.restock must be one of {', '.join(self.POLICIES)}")

    def verify(self, request: Request, body: bytes) -> None:
        given = _header(request, "x-shopify-hmac-sha256", "shopify-hmac-sha256")
        if not given or not hmac.compare_digest(given.encode(), shopify_signature(body, self.secret).encode()):
            raise Unverified("X-Shopify-Hmac-Sha256 is missing or does not match the body")

    def parse(self, request: Request, body: bytes) -> Delivery:
        topic = _header(request, "x-shopify-topic", "shopify-topic")
        webhook_id = _header(request, "x-shopify-webhook-id", "shopify-webhook-id") or None
        doc = want_object(parse_json(body), "body")
        delivery = Delivery(webhook_id, topic)
        if topic == "orders/create":
            order_id = _id(doc, "id")
            delivery.takes = [line for line in self._lines(doc, order_id) if line]
        elif topic == "orders/cancelled":
            order_id = _id(doc, "id")
            if self.policy == "cancel":  # every line restocked whole: one not taken yet is never taken
                lines = [line for line in self._lines(doc, order_id) if line]
                delivery.cancels = lines
                delivery.restocks = [Restock(line, "cancel", full=True) for line in lines]
            elif self.policy == "refund":  # what the merchant restocked: the refunds the cancellation made
                refunds = want_list(doc.get("refunds", []), "refunds", 1000, 0)
                for i, refund in enumerate(refunds):
                    delivery.restocks += self._refund(want_object(refund, f"refunds[{i}]"), order_id, f"refunds[{i}].")
        elif topic == "refunds/create":
            if self.policy != "never":
                delivery.restocks = self._refund(doc, _id(doc, "order_id"), "")
        elif topic == "fulfillments/create":
            order_id, shipment = _id(doc, "order_id"), f"ship:{_id(doc, 'id')}"
            delivery.ships = [Ship(line, shipment) for line in self._lines(doc, order_id) if line]
        else:
            delivery.ignored = f"topic {topic or '(none)'} changes no stock"
        if self.policy == "never" and topic in ("orders/cancelled", "refunds/create"):
            delivery.ignored = "restock policy is never"
        return delivery

    def _lines(self, doc: dict, order_id: str, required: bool = True) -> list[Line | None]:
        if not required:
            return []
        items = want_list(doc.get("line_items"), "line_items", MAX_WEBHOOK_LINES, 0)
        out: list[Line | None] = []
        for i, item in enumerate(items):
            item = want_object(item, f"line_items[{i}]")
            if item.get("gift_card") is True:
                out.append(None)  # gift cards are not stock
                continue
            line_id = _id(item, "id", f"line_items[{i}].")
            out.append(Line(f"{order_id}:{line_id}", order_id, line_id, _sku(item, f"line_items[{i}]."),
                            _qty(item, "quantity", f"line_items[{i}].")))
        return out

    def _refund(self, refund: dict, order_id: str, where: str) -> list[Restock]:
        restock_types = ("cancel", "return", "legacy_restock") if self.policy == "refund" else ("return", "legacy_restock")
        items = want_list(refund.get("refund_line_items", []), f"{where}refund_line_items", MAX_WEBHOOK_LINES, 0)
        out = []
        for i, item in enumerate(items):
            at = f"{where}refund_line_items[{i}]."
            item = want_object(item, at[:-1])
            if item.get("restock_type") not in restock_types:
                continue
            line_id = _id(item, "line_item_id", at)
            line_item = item.get("line_item") if isinstance(item.get("line_item"), dict) else {}
            line = Line(f"{order_id}:{line_id}", order_id, line_id, _sku(line_item, f"{at}line_item."),
                        _qty(item, "quantity", at))
            # a return gives back shipped units; cancel (and legacy_restock) units not shipped yet
            out.append(Restock(line, f"r{_id(item, 'id', at)}", returned=item.get("restock_type") != "cancel"))
        return out


class AmazonWebhook(Webhook):
    """SP-API ORDER_CHANGE notifications, as posted by an EventBridge API destination or an SQS forwarder.

    A line is taken once per (AmazonOrderId, OrderItemId) whatever the status (Pending reserves stock on
    Amazon too), restocked once when the order becomes Canceled, and shipped whole once when it becomes
    Shipped (PartiallyShipped does not say which units: they ship with the order's Shipped). Orders fulfilled by Amazon (AFN)
    ship from Amazon's warehouse, not from the shared stock: ignored unless options.include_afn.
    """

    kind = "amazon"
    CREDENTIALS = ("webhook_token",)

    def __init__(self, channel: ChannelConfig) -> None:
        super().__init__(channel)
        self.token = channel.secret("webhook_token")
        self.header = str(channel.options.get("token_header", "x-stocksync-token")).lower()
        self.include_afn = bool(channel.options.get("include_afn", False))

    def verify(self, request: Request, body: bytes) -> None:
        given = request.headers.get(self.header, "")
        if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
            raise Unverified(f"the {self.header} header is missing or wrong")

    def parse(self, request: Request, body: bytes) -> Delivery:
        doc = want_object(parse_json(body), "body")
        if isinstance(doc.get("detail"), dict):  # an EventBridge event around the notification
            doc = doc["detail"]
        meta = doc.get("NotificationMetadata") if isinstance(doc.get("NotificationMetadata"), dict) else {}
        notification_id = meta.get("NotificationId") if isinstance(meta.get("NotificationId"), str) else None
        ntype = doc.get("NotificationType")
        delivery = Delivery(notification_id or None, str(ntype))
        if ntype != "ORDER_CHANGE":
            delivery.ignored = f"notification type {ntype} changes no stock"
            return delivery
        payload = want_object(doc.get("Payload"), "Payload")
        change = want_object(payload.get("OrderChangeNotification"), "Payload.OrderChangeNotification")
        order_id = _id(change, "AmazonOrderId", "Payload.OrderChangeNotification.")
        where = "Payload.OrderChangeNotification.Summary"
        summary = want_object(change.get("Summary"), where)
        status = summary.get("OrderStatus")
        if not isinstance(status, str) or not status:
            raise invalid(f"{where}.OrderStatus", "must be a non-empty string")
        delivery.kind = f"ORDER_CHANGE {status}"
        if summary.get("FulfillmentType") == "AFN" and not self.include_afn:
            delivery.ignored = "fulfilled by Amazon (AFN): not the shared stock"
            return delivery
        lines = []
        for i, item in enumerate(want_list(summary.get("OrderItems"), f"{where}.OrderItems", MAX_WEBHOOK_LINES, 0)):
            at = f"{where}.OrderItems[{i}]."
            item = want_object(item, at[:-1])
            item_id = _id(item, "OrderItemId", at)
            sku = item.get("SellerSKU") if isinstance(item.get("SellerSKU"), str) and item["SellerSKU"] else None
            lines.append(Line(f"{order_id}:{item_id}", order_id, item_id, sku, _qty(item, "Quantity", at, True)))
        if status == "Canceled":  # (a Canceled item may say Quantity 0: what was taken is put back whole)
            delivery.restocks = [Restock(line, "cancel", full=True) for line in lines]
            delivery.cancels = lines
        else:
            delivery.takes = [line for line in lines if line.qty]
            if status == "Shipped":
                delivery.ships = [Ship(line, "ship:order", full=True) for line in delivery.takes]
        return delivery


class FlipkartWebhook(Webhook):
    """Flipkart order notifications, signed with X_Authorization: FKLOGIN base64(appId:sha1hex(...)).

    shipment_created (and the older order_item_created) take each order item; shipment_cancelled restocks
    the cancelled quantity of items taken before (capped at what was taken); shipment_dispatched ships
    each order item's quantity (its units leave committed and on_hand). Every other event type is
    answered 200 and changes nothing: a failed event would block the rest of its group.

    The signature covers X_Date, the URL, the method and the secret, not the body, so X_Date must be
    within max_skew_s of our clock (a captured header pair cannot be replayed later with another body).
    """

    kind = "flipkart"
    CREDENTIALS = ("app_id", "app_secret")

    def __init__(self, channel: ChannelConfig) -> None:
        super().__init__(channel)
        self.app_id = channel.secret("app_id")
        self.secret = channel.secret("app_secret")
        self.url = channel.options.get("notification_url")
        self.max_skew_s = float(channel.options.get("max_skew_s", 900))

    def verify(self, request: Request, body: bytes) -> None:
        date = _header(request, "x_date", "x-date")
        given = _header(request, "x_authorization", "x-authorization")
        if not date or not given:
            raise Unverified("X_Date or X_Authorization is missing")
        url = self.url or str(request.url)
        if not any(hmac.compare_digest(given.encode(), flipkart_authorization(
                self.app_id, self.secret, form, url, request.method).encode()) for form in flipkart_dates(date)):
            raise Unverified("X_Authorization does not match")
        try:
            sent = parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            raise Unverified("X_Date is not an HTTP date") from None
        if self.max_skew_s and abs(time.time() - sent) > self.max_skew_s:
            raise Unverified(f"X_Date is more than {self.max_skew_s:g} s away from now")

    def parse(self, request: Request, body: bytes) -> Delivery:
        doc = want_object(parse_json(body), "body")
        event = doc.get("eventType")
        delivery = Delivery(None, str(event))
        attributes = doc.get("attributes") if isinstance(doc.get("attributes"), dict) else {}
        if event == "shipment_created":
            items = want_list(attributes.get("orderItems"), "attributes.orderItems", MAX_WEBHOOK_LINES, 0)
            for i, item in enumerate(items):
                at = f"attributes.orderItems[{i}]."
                item = want_object(item, at[:-1])
                delivery.takes.append(self._line(item, at, _id(item, "orderId", at)))
        elif event == "order_item_created":
            delivery.takes.append(self._line(attributes, "attributes.", _id(attributes, "orderId", "attributes.")))
        elif event == "shipment_cancelled":
            # Each cancellation event is its own restock (a shipment can be cancelled in parts): named by a
            # digest of the event itself, so a redelivery is the same restock and two partial cancellations
            # within one second are not (their timestamps have whole seconds).
            event_id = "x" + hashlib.blake2b(body, digest_size=12).hexdigest()
            delivery.restocks.extend(Restock(line, event_id) for line in _flipkart_items(attributes))
        elif event == "shipment_dispatched":
            shipment = doc.get("shipmentId") if isinstance(doc.get("shipmentId"), str) and doc.get("shipmentId") else None
            suffix = "ship:" + (_id(doc, "shipmentId") if shipment else hashlib.blake2b(body, digest_size=12).hexdigest())
            delivery.ships.extend(Ship(line, suffix) for line in _flipkart_items(attributes))
        else:
            delivery.ignored = f"event type {event} changes no stock"
        return delivery

    def _line(self, item: dict, at: str, order_id: str) -> Line:
        item_id = _id(item, "orderItemId", at)  # unique across Flipkart: cancellations name only it
        return Line(item_id, order_id, item_id, _sku(item, at), _qty(item, "quantity", at))


RECEIVERS: dict[str, type[Webhook]] = by_kind((ShopifyWebhook, AmazonWebhook, FlipkartWebhook), "webhook receiver",
                                              orders_in=True)


# Field helpers -----------------------------------------------------------------------------------------


def _flipkart_items(attributes: dict) -> list[Line]:
    """The lines of a cancellation or dispatch event: its order items, each by its orderItemId alone."""
    items = want_list(attributes.get("orderItems"), "attributes.orderItems", MAX_WEBHOOK_LINES, 0)
    lines = []
    for i, item in enumerate(items):
        at = f"attributes.orderItems[{i}]."
        item = want_object(item, at[:-1])
        item_id = _id(item, "orderItemId", at)
        lines.append(Line(item_id, "", item_id, None, _qty(item, "quantity", at)))
    return lines


def _id(doc: dict, name: str, where: str = "") -> str:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise invalid(f"{where}{name}", "must be a non-empty string or an integer id")
    text = str(value)
    if len(text) > 100 or any(c in text for c in ": \t\r\n"):
        raise invalid(f"{where}{name}", "must be at most 100 characters without ':' or spaces")
    return text


def _sku(doc: dict, where: str) -> str | None:
    value = doc.get("sku")
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise invalid(f"{where}sku", "must be a string")
    return value


def _qty(doc: dict, name: str, where: str, allow_zero: bool = False) -> int:
    value = doc.get(name)
    # Flipkart sends 1.0 where it means 1; a fraction is still refused.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1) or value > MAX_QTY:
        raise invalid(f"{where}{name}", f"must be a whole number >= {0 if allow_zero else 1}")
    return value


# Parsing what the order pollers read -------------------------------------------------------------------
#
# An order poller (stocksync/orders/pollers/) reads a marketplace's orders from its order API, rebuilds from
# each order the bodies of the webhooks its events send (orders/create, ORDER_CHANGE, shipment_created,
# ...), and parses them here with the receiver's own parse(): so a polled order is taken and restocked
# under the very line keys, SKUs, quantities and restock suffixes its webhooks carry, and a change to a
# receiver's mapping is a change to the poller's too. These are the receivers without their verifiers: a
# poller holds no webhook secret, and they are never installed as receivers (verify refuses everything).


class _Headers:
    """What parse() reads of a request: its headers (lower-case names)."""

    __slots__ = ("headers",)

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


class ShopifyPayloads(ShopifyWebhook):
    """ShopifyWebhook's parser and restock policy, without the webhook secret."""

    def __init__(self, channel: ChannelConfig) -> None:
        Webhook.__init__(self, channel)
        self.secret = ""
        self.policy = channel.options.get("restock", "refund")  # read and checked as the receiver does
        if self.policy not in self.POLICIES:
            raise ValueError(f"channels.{channel.name}.options.restock must be one of {', '.join(self.POLICIES)}")

    def verify(self, request: Request, body: bytes) -> None:
        raise Unverified("a parser of polled orders verifies nothing")


class AmazonPayloads(AmazonWebhook):
    """AmazonWebhook's parser (include_afn as the receiver reads it), without the destination's token."""

    def __init__(self, channel: ChannelConfig) -> None:
        Webhook.__init__(self, channel)
        self.token, self.header = "", ""
        self.include_afn = bool(channel.options.get("include_afn", False))

    def verify(self, request: Request, body: bytes) -> None:
        raise Unverified("a parser of polled orders verifies nothing")


class FlipkartPayloads(FlipkartWebhook):
    """FlipkartWebhook's parser, without the app's id and secret."""

    def __init__(self, channel: ChannelConfig) -> None:
        Webhook.__init__(self, channel)
        self.app_id = self.secret = ""
        self.url, self.max_skew_s = None, 0.0

    def verify(self, request: Request, body: bytes) -> None:
        raise Unverified("a parser of polled orders verifies nothing")


PAYLOAD_PARSERS: dict[str, type[Webhook]] = by_kind((ShopifyPayloads, AmazonPayloads, FlipkartPayloads),
                                                    "payload parser", orders_in=True)


def payload_parser(channel: ChannelConfig) -> Webhook:
    """The channel's webhook parser without its verifier (ValueError: a bad option, as the receiver says)."""
    return PAYLOAD_PARSERS[channel.kind](channel)


def parse_payload(parser: Webhook, payload: dict, topic: str = "") -> Delivery:
    """The Delivery the receiver makes of a webhook with body `payload` (Shopify: and topic `topic`, which it
    reads from X-Shopify-Topic). Raises Invalid where the receiver would answer 422."""
    return parser.parse(_Headers({"x-shopify-topic": topic} if topic else {}), orjson.dumps(payload))  # type: ignore[arg-type]


def build(channels: dict[str, ChannelConfig]) -> tuple[dict[str, Webhook], dict[str, str]]:
    """The webhooks of every channel of a known kind, and why the others' are disabled (no secret, ...)."""
    hooks, disabled = {}, {}
    for name, channel in channels.items():
        cls = RECEIVERS.get(channel.kind)
        if cls is None:
            continue
        try:
            hooks[name] = cls(channel)
        except (ValueError, KeyError) as e:  # SettingsError is a ValueError
            disabled[name] = str(e)
    return hooks, disabled


def unset_credentials(channels: dict[str, ChannelConfig]) -> list[str]:
    """Credentials a channel's webhook reads whose environment variable is named in the config file but not
    set: a deployment mistake, refused at start (a channel that names none has its webhook disabled: it
    may take its orders through the order poller only)."""
    out = []
    for name, channel in channels.items():
        cls = RECEIVERS.get(channel.kind)
        for credential in cls.CREDENTIALS if cls else ():
            var = channel.credentials.get(credential)
            if var and not os.environ.get(var):
                out.append(f"channel {name}: environment variable {var} (credential {credential!r}) is not set")
    return out


__all__ = ["Delivery", "Line", "Restock", "Ship", "Unverified", "Webhook", "build", "flipkart_authorization",
           "parse_payload", "payload_parser", "shopify_signature", "unset_credentials"]
