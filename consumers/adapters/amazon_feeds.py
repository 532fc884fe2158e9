"""Amazon's feed lane, the HTTP side: JSON_LISTINGS_FEED through the Feeds API 2021-06-30, and its options.

What goes through a feed and when is the worker's (consumers/feeds.py); this module only speaks the API:

    createFeedDocument (POST /feeds/2021-06-30/documents) -> feedDocumentId + presigned URL
    PUT <url> the JSON document: {"header": {"sellerId", "version": "2.0"}, "messages": [{"messageId",
        "sku", "operationType": "PATCH", "productType", "patches": [fulfillment_availability]}]}
    createFeed (POST /feeds/2021-06-30/feeds) -> feedId
    getFeed (GET /feeds/2021-06-30/feeds/<feedId>) -> processingStatus, resultFeedDocumentId once DONE
    getFeedDocument (GET .../documents/<id>) -> URL of the processing report; GET it: issues by messageId

Each operation has its own client-side token bucket (SP-API limits each apart): createFeed at the
channel's `create_feed_rate`/`create_feed_burst` (5 feeds per 5 minutes: 1/60 s, burst 5), getFeed 2/s
burst 15, createFeedDocument 0.5/s burst 15, getFeedDocument 0.0222/s burst 10. A 429 blocks that
operation for its Retry-After (TransientError with status 429 reaches the caller, which waits it out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from stocksync.settings import SettingsError

from .base import Adapter, PushError, RateLimiter, TransientError, Update

FEEDS = "/feeds/2021-06-30"
FEED_TYPE = "JSON_LISTINGS_FEED"
MAX_MESSAGES = 25_000  # Amazon's limit of messages a feed (since May 2025)
ATTRIBUTE = "/attributes/fulfillment_availability"
CONTENT_TYPE = "application/json; charset=UTF-8"
PENDING = ("IN_QUEUE", "IN_PROGRESS")  # processingStatus of a feed not done yet (DONE, FATAL, CANCELLED: done)

# option -> (types, test, what the error says, default)
_OPTIONS: dict[str, tuple[Any, Any, str, Any]] = {
    "lane": (str, lambda v: v in ("patch", "feeds"), '"patch" (every change patched) or "feeds"', "patch"),
    "patch_at_or_below": (int, lambda v: v >= 0, "a whole number >= 0 (a listed quantity)", None),
    "patch_risk_above": ((int, float), lambda v: v >= 0, "a number >= 0 (expected oversold units)", 0.05),
    "feed_after_s": ((int, float), lambda v: v >= 0, "a number >= 0 (seconds)", 1.0),
    "feed_horizon_s": ((int, float), lambda v: v >= 0, "a number >= 0 (seconds)", 300.0),
    "feed_linger_s": ((int, float), lambda v: v >= 0, "a number >= 0 (seconds)", 2.0),
    "feed_max_messages": (int, lambda v: 1 <= v <= MAX_MESSAGES, f"a whole number from 1 to {MAX_MESSAGES}",
                          MAX_MESSAGES),
    "feed_poll_s": ((int, float), lambda v: v > 0, "a number > 0 (seconds)", 15.0),
    "feed_max_attempts": (int, lambda v: v >= 1, "a whole number >= 1", 3),
    "create_feed_rate": ((int, float), lambda v: v > 0, "a number > 0 (createFeed calls per second)", 1 / 60),
    "create_feed_burst": ((int, float), lambda v: v >= 1, "a number >= 1", 5.0),
}
FEED_OPTIONS = frozenset(_OPTIONS)


@dataclass(frozen=True, slots=True)
class FeedOptions:
    """The Amazon channel's lane options (docs/channels/amazon.md, "Bulk: the feed lane")."""

    lane: str = "patch"
    patch_at_or_below: int | None = None  # None: the worker's ranks decide (worker.low_stock)
    patch_risk_above: float = 0.05
    feed_after_s: float = 1.0  # a non-urgent SKU waits this long for a patch call before it goes to a feed
    feed_horizon_s: float = 300.0  # a SKU expected to reach low stock within this long is not fed
    feed_linger_s: float = 2.0  # the oldest SKU gathered waits at least this long before a feed is built
    feed_max_messages: int = MAX_MESSAGES
    feed_poll_s: float = 15.0
    feed_max_attempts: int = 3
    create_feed_rate: float = 1 / 60
    create_feed_burst: float = 5.0

    @classmethod
    def parse(cls, channel: str, options: dict[str, Any]) -> FeedOptions:
        """The options as given, checked: SettingsError naming the channel and the option."""
        values = {}
        for name, (kind, test, bound, default) in _OPTIONS.items():
            value = options.get(name, default)
            if value is not None and (isinstance(value, bool) or not isinstance(value, kind) or not test(value)):
                raise SettingsError(f"channels.{channel}.options.{name} must be {bound}, got {value!r}")
            values[name] = value
        return cls(**values)

    @property
    def feeds(self) -> bool:
        return self.lane == "feeds"

    @property
    def interval_s(self) -> float:
        """The steady pace of feeds the createFeed quota allows (a feed cycle)."""
        return 1 / self.create_feed_rate


@dataclass(frozen=True, slots=True)
class Status:
    """getFeed's answer: processingStatus, and the report's document once DONE (or FATAL)."""

    status: str
    result_id: str | None

    @property
    def done(self) -> bool:
        return self.status not in PENDING


class FeedsClient:
    """The Feeds API calls of one Amazon channel, through its adapter's session and error handling."""

    def __init__(self, adapter: Adapter, options: FeedOptions, seller_id: str, marketplace_id: str,
                 product_type: str, channel_code: str) -> None:
        self.adapter, self.options = adapter, options
        self.seller_id, self.marketplace_id = seller_id, marketplace_id
        self.product_type, self.channel_code = product_type, channel_code
        self.base = adapter.config.url.rstrip("/") + FEEDS
        self.create_limit = RateLimiter(options.create_feed_rate, options.create_feed_burst)
        self.limits = {"createFeedDocument": RateLimiter(0.5, 15), "getFeed": RateLimiter(2.0, 15),
                       "getFeedDocument": RateLimiter(0.0222, 10), "createFeed": self.create_limit}

    def document(self, updates: list[Update]) -> bytes:
        """The JSON_LISTINGS_FEED document: one PATCH message per update, messageId = its place from 1."""
        messages = [{"messageId": i, "sku": u.channel_sku, "operationType": "PATCH", "productType": self.product_type,
                     "patches": [{"op": "replace", "path": ATTRIBUTE, "value": [
                         {"fulfillment_channel_code": self.channel_code, "quantity": int(u.quantity)}]}]}
                    for i, u in enumerate(updates, 1)]
        return orjson.dumps({"header": {"sellerId": self.seller_id, "version": "2.0", "issueLocale": "en_US"},
                             "messages": messages})

    async def _call(self, op: str, method: str, url: str, body: bytes | None = None, *, token: bool = True) -> Any:
        """One call under op's own bucket (none for the presigned URL); a 429 blocks op for its Retry-After."""
        limiter = self.limits.get(op)
        if limiter is not None:
            await limiter.acquire()
        headers = self.adapter.headers() if token else {"Content-Type": CONTENT_TYPE}
        try:
            _, data = await self.adapter.request(method, url, body=body, headers=headers, limited=False)
        except TransientError as e:
            if e.throttled and limiter is not None:
                limiter.throttled(e.retry_after)
            raise
        return data

    async def upload(self, body: bytes) -> str:
        """createFeedDocument and the upload of `body` to its URL; answers the feedDocumentId."""
        data = await self._call("createFeedDocument", "POST", self.base + "/documents",
                                orjson.dumps({"contentType": CONTENT_TYPE}))
        if not isinstance(data, dict) or not data.get("feedDocumentId") or not data.get("url"):
            raise TransientError(f"{self.adapter.name}: createFeedDocument answered no document: {data!r}"[:300])
        await self._call("upload", "PUT", data["url"], body, token=False)
        return str(data["feedDocumentId"])

    async def create(self, document_id: str) -> str:
        """createFeed of an uploaded document; answers the feedId."""
        spec = {"feedType": FEED_TYPE, "marketplaceIds": [self.marketplace_id], "inputFeedDocumentId": document_id}
        data = await self._call("createFeed", "POST", self.base + "/feeds", orjson.dumps(spec))
        if not isinstance(data, dict) or not data.get("feedId"):
            raise TransientError(f"{self.adapter.name}: createFeed answered no feedId: {data!r}"[:300])
        return str(data["feedId"])

    async def status(self, feed_id: str) -> Status:
        data = await self._call("getFeed", "GET", f"{self.base}/feeds/{feed_id}")
        if not isinstance(data, dict) or not isinstance(data.get("processingStatus"), str):
            raise TransientError(f"{self.adapter.name}: getFeed answered no processingStatus: {data!r}"[:300])
        return Status(data["processingStatus"], data.get("resultFeedDocumentId"))

    async def report(self, result_id: str, messages: int) -> dict[int, str]:
        """The processing report's ERROR issues by messageId ("code: message"); a report without
        per-message issues but with errors (a FATAL feed's) fails every message."""
        doc = await self._call("getFeedDocument", "GET", f"{self.base}/documents/{result_id}")
        if not isinstance(doc, dict) or not doc.get("url"):
            raise TransientError(f"{self.adapter.name}: getFeedDocument answered no URL: {doc!r}"[:300])
        report = await self._call("report", "GET", doc["url"], token=False)
        if not isinstance(report, dict):
            raise TransientError(f"{self.adapter.name}: the processing report is not a JSON object")
        return report_errors(report, messages)


def report_errors(report: dict[str, Any], messages: int) -> dict[int, str]:
    """messageId -> the ERROR issues of that message, from a processing report."""
    errors: dict[int, str] = {}
    unattached = []
    for issue in report.get("issues") or []:
        if not isinstance(issue, dict) or issue.get("severity") != "ERROR":
            continue
        text = f"{issue.get('code')}: {issue.get('message')}"
        mid = issue.get("messageId")
        if isinstance(mid, int) and not isinstance(mid, bool):
            errors[mid] = f"{errors[mid]}; {text}" if mid in errors else text
        else:
            unattached.append(text)
    if unattached and not errors:  # a feed-level error (FATAL): no message was applied
        text = "; ".join(unattached)
        return dict.fromkeys(range(1, messages + 1), text)
    return errors


__all__ = ["FEED_OPTIONS", "FeedOptions", "FeedsClient", "PushError", "Status", "report_errors"]
