"""Amazon SP-API Listings Items: `patchListingsItem` on /attributes/fulfillment_availability.

One SKU a call; the documented usage plan is 5 requests/s with a burst of 10, so the adapter holds a
client-side token bucket at that rate (options rate_limit, burst) that slows down further on a 429.
Options: seller_id (required), marketplace_id (default ATVPDKIKX0DER, US), product_type (default
PRODUCT), fulfillment_channel_code (default DEFAULT, merchant-fulfilled). Credential: access_token (the
LWA access token, sent as x-amz-access-token). An INVALID reply with ERROR issues is permanent for that
SKU.

With `lane = "feeds"` the channel's worker patches only the urgent changes and sends the rest through
JSON_LISTINGS_FEED (the options and the API calls: amazon_feeds.py; the lane itself: consumers/feeds.py).
"""

from __future__ import annotations

from urllib.parse import quote

from yarl import URL

from stocksync.settings import SettingsError

from .amazon_feeds import FEED_OPTIONS, FeedOptions, FeedsClient
from .base import Adapter, PermanentError, Result, TransientError, Update, json_body

API = "/listings/2021-08-01/items"
ATTRIBUTE = "/attributes/fulfillment_availability"


class AmazonAdapter(Adapter):
    kind = "amazon"
    max_batch = 1
    default_in_flight = 8
    default_rate = 5.0
    default_burst = 10.0
    OPTIONS = Adapter.OPTIONS | {"seller_id", "marketplace_id", "product_type", "fulfillment_channel_code"} | FEED_OPTIONS
    CREDENTIALS = ("access_token",)

    @classmethod
    def check_options(cls, config) -> None:
        super().check_options(config)
        FeedOptions.parse(config.name, config.options)

    def __init__(self, config, session=None) -> None:
        super().__init__(config, session)
        opts = config.options
        self.seller_id = opts.get("seller_id")
        if not self.seller_id:
            raise SettingsError(f"channels.{config.name}.options.seller_id is required")
        self.marketplace_id = str(opts.get("marketplace_id", "ATVPDKIKX0DER"))
        self.product_type = str(opts.get("product_type", "PRODUCT"))
        self.channel_code = str(opts.get("fulfillment_channel_code", "DEFAULT"))
        # per call only the SKU and the quantity change: the rest of the URL and body is built once. The
        # URL is handed to aiohttp already percent-encoded (the base URL normalised by yarl once, every
        # part after it quoted here), so it is not parsed and encoded again on every call.
        self._url_head = f"{str(URL(self.config.url)).rstrip('/')}{API}/{quote(self.seller_id, safe='')}/"
        self._url_tail = f"?marketplaceIds={quote(self.marketplace_id, safe=',')}"
        head = json_body({"productType": self.product_type, "patches": [{"op": "replace", "path": ATTRIBUTE,
                          "value": [{"fulfillment_channel_code": self.channel_code, "quantity": 0}]}]})
        self._body_head, self._body_tail = head.split(b'"quantity":0', 1)
        self._body_head += b'"quantity":'
        self._headers: dict[str, str] = {}
        self.lane = FeedOptions.parse(config.name, opts)
        # the Feeds API client, for the worker's feed lane (None: every change is patched)
        self.feeds = (FeedsClient(self, self.lane, self.seller_id, self.marketplace_id, self.product_type,
                                  self.channel_code) if self.lane.feeds else None)

    def headers(self) -> dict[str, str]:
        """The call's headers; the token is read every call (it may be rotated) and the dict reused."""
        token = self.config.secret("access_token")
        if self._headers.get("x-amz-access-token") != token:
            self._headers = {"x-amz-access-token": token, "Content-Type": "application/json"}
        return self._headers

    async def push_batch(self, updates: list[Update], deadline: float | None, rank: int) -> list[Result]:
        (u,) = updates
        url = URL(self._url_head + quote(u.channel_sku, safe="") + self._url_tail, encoded=True)
        body = b"%s%d%s" % (self._body_head, int(u.quantity), self._body_tail)
        try:
            _, data = await self.request("PATCH", url, body=body, headers=self.headers(), deadline=deadline,
                                         rank=rank)
        except PermanentError as e:
            return [Result.failed(u.sku, str(e), permanent=True)]
        if not isinstance(data, dict):
            raise TransientError(f"{self.name}: reply is not a JSON object")
        if data.get("status") == "ACCEPTED":
            return [Result.accepted(u.sku)]
        issues = [i for i in data.get("issues") or [] if i.get("severity") == "ERROR"]
        message = "; ".join(f"{i.get('code')}: {i.get('message')}" for i in issues) or str(data)[:300]
        return [Result.failed(u.sku, f"{data.get('status')}: {message}", permanent=True)]
