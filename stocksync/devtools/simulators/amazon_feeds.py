"""The Amazon simulator's Feeds API (2021-06-30) with JSON_LISTINGS_FEED: bulk quantity updates.

The flow a client follows, with the shapes served here (those of SP-API's Feeds API 2021-06-30)::

    POST /feeds/2021-06-30/documents   {"contentType": "application/json; charset=UTF-8"}
         -> 201 {"feedDocumentId", "url"}                (createFeedDocument, 0.5/s burst 15)
    PUT  <url>  the feed document                        (the presigned upload: no token, no rate limit)
    POST /feeds/2021-06-30/feeds {"feedType": "JSON_LISTINGS_FEED", "marketplaceIds": [...],
                                  "inputFeedDocumentId"}
         -> 202 {"feedId"}                               (createFeed: 5 per 5 minutes, rate 1/60 s burst 5)
    GET  /feeds/2021-06-30/feeds/{feedId}
         -> 200 {"feedId", "feedType", "marketplaceIds", "createdTime", "processingStatus",
                 "processingStartTime"?, "processingEndTime"?, "resultFeedDocumentId"?}   (getFeed, 2/s burst 15)
    GET  /feeds/2021-06-30/documents/{feedDocumentId}
         -> 200 {"feedDocumentId", "url"}                (getFeedDocument, 0.0222/s burst 10)
    GET  <url>  the processing report

The feed document: ``{"header": {"sellerId", "version": "2.0", "issueLocale"?}, "messages": [{"messageId",
"sku", "operationType": "PATCH" | "PARTIAL_UPDATE" | "UPDATE" | "DELETE", "productType", "patches": [...]}]}``,
at most 25,000 messages. The processing report: ``{"header": {"sellerId", "version": "2.0", "feedId"},
"issues": [{"messageId", "code", "severity": "ERROR" | "WARNING", "message", "attributeNames"?}],
"summary": {"errors", "warnings", "messagesProcessed", "messagesAccepted", "messagesInvalid"}}``.

``processingStatus`` goes IN_QUEUE -> IN_PROGRESS (past half the processing delay) -> DONE when the delay
has passed; a document that is not a listings feed (bad JSON, no messages, too many) ends FATAL with a
report of one issue. Feeds are processed in the order they were created. Processing applies each
accepted message's quantity to the listing *then*, whatever was patched since: a feed holding an older
quantity that is processed after a newer patch overwrites it (the hazard a client must handle). A
message fails (an ERROR issue, the listing unchanged) for a SKU in ``error_skus`` or ``reject_skus``
(the faults), or by chance at ``error_rate`` (seeded), or for a malformed quantity.

Settings (``GET|POST /_sim/feeds`` or ``set_feeds()``): ``delay_s`` (processing delay, default 60),
``error_rate``, ``error_skus``, ``seed``. The operations' rate limits are the simulator's per-operation
limits (``POST /_sim/market {"limits": {"createFeed": {"rate", "burst"}}}``). ``feeds()`` lists the feeds.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .base import Call, Parsed, is_int, json_response
from .market import OrderError

FEEDS_PATH = "/feeds/2021-06-30"
UPLOAD_PATH = "/_sim/s3"
FEED_TYPE = "JSON_LISTINGS_FEED"
MAX_MESSAGES = 25_000
ATTRIBUTE = "/attributes/fulfillment_availability"
FEED_LIMITS: dict[str, tuple[float, float] | None] = {
    "createFeedDocument": (0.5, 15.0), "createFeed": (1 / 60, 5.0), "getFeed": (2.0, 15.0),
    "getFeedDocument": (0.0222, 10.0),
}
DEFAULT_FEED_SETTINGS: dict[str, Any] = {"delay_s": 60.0, "error_rate": 0.0, "error_skus": [], "seed": 0}


@dataclass
class Feed:
    feed_id: str
    document_id: str
    created: float  # time.monotonic()
    due: float  # when processing ends
    created_ms: int
    status: str = "IN_QUEUE"
    result_id: str | None = None
    done_ms: int = 0
    applied: dict[str, int] = field(default_factory=dict)  # sku -> quantity the feed listed


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class AmazonFeeds:
    """Mixed into AmazonSim (a MarketSim: its lock, its per-operation buckets, its listings)."""

    def _reset_feeds(self) -> None:
        for timer in getattr(self, "_feed_timers", []):
            timer.cancel()
        self._feed_timers: list[threading.Timer] = []
        self._documents: dict[str, bytes | None] = {}  # id -> content (None: created, not uploaded yet)
        self._feeds: dict[str, Feed] = {}  # in creation order
        if not hasattr(self, "_feed_settings"):
            self._feed_settings = dict(DEFAULT_FEED_SETTINGS)
        self._feed_rng = random.Random(self._feed_settings["seed"])

    # ----- settings and state -------------------------------------------------------------------------

    def set_feeds(self, **changes: Any) -> dict[str, Any]:
        """Change delay_s, error_rate, error_skus, seed (all or nothing; OrderError for bad values)."""
        unknown = set(changes) - set(DEFAULT_FEED_SETTINGS)
        if unknown:
            raise OrderError(400, f"unknown feed setting(s): {sorted(unknown)}")
        new = {**self._feed_settings, **changes}
        if not (isinstance(new["delay_s"], (int, float)) and not isinstance(new["delay_s"], bool)
                and 0 <= new["delay_s"] <= 86400):
            raise OrderError(400, "delay_s must be a number of seconds from 0 to 86400")
        if not (isinstance(new["error_rate"], (int, float)) and 0 <= new["error_rate"] <= 1):
            raise OrderError(400, "error_rate must be a number from 0 to 1")
        if not (isinstance(new["error_skus"], (list, set, tuple)) and all(isinstance(s, str) for s in new["error_skus"])):
            raise OrderError(400, "error_skus must be a list of SKUs")
        if not is_int(new["seed"]):
            raise OrderError(400, "seed must be an integer")
        with self._lock:
            self._feed_settings = {**new, "delay_s": float(new["delay_s"]), "error_skus": sorted(new["error_skus"])}
            if "seed" in changes:
                self._feed_rng = random.Random(new["seed"])
            return dict(self._feed_settings)

    def feeds(self) -> list[dict[str, Any]]:
        """Every feed, oldest first: id, status, and the quantities it applied (once DONE)."""
        with self._lock:
            return [{"feedId": f.feed_id, "status": f.status, "applied": dict(f.applied)} for f in self._feeds.values()]

    def feed_routes(self) -> list[Route]:
        def op(name: str, parse: Any, handle: Any) -> Any:
            return self.endpoint(parse, handle, op=name, limit=self.order_limit(name))

        return [
            Route(FEEDS_PATH + "/documents", op("createFeedDocument", self._parse_create_document,
                                                self._handle_create_document), methods=["POST"]),
            Route(FEEDS_PATH + "/documents/{document_id}", op("getFeedDocument", self._parse_path,
                                                              self._handle_get_document), methods=["GET"]),
            Route(FEEDS_PATH + "/feeds", op("createFeed", self._parse_create_feed, self._handle_create_feed),
                  methods=["POST"]),
            Route(FEEDS_PATH + "/feeds/{feed_id}", op("getFeed", self._parse_path, self._handle_get_feed),
                  methods=["GET"]),
        ]

    def feed_control_routes(self) -> list[Route]:
        return [Route(UPLOAD_PATH + "/{document_id}", self._s3, methods=["PUT", "GET"]),
                Route("/_sim/feeds", self._control(self._ctl_feeds), methods=["GET", "POST"])]

    def _ctl_feeds(self, request: Request, body: dict[str, Any]) -> Any:
        if request.method == "POST":
            self.set_feeds(**body)
        with self._lock:
            return {**self._feed_settings, "feeds": self.feeds()}

    # ----- the presigned URL (S3's side: no token, no rate limit) ----------------------------------------

    async def _s3(self, request: Request) -> Response:
        doc_id = request.path_params["document_id"]
        body = await request.body()
        with self._lock:
            if doc_id not in self._documents:
                return Response(b"<Error><Code>NoSuchKey</Code></Error>", 404, media_type="application/xml")
            if request.method == "PUT":
                self._documents[doc_id] = body
                return Response(b"", 200)
            content = self._documents[doc_id]
        return Response(content or b"", 200, media_type="application/json")

    # ----- the operations ----------------------------------------------------------------------------

    def _parse_path(self, request: Request, body: bytes) -> Parsed:
        return Parsed(dict(request.path_params))

    def _parse_create_document(self, request: Request, body: bytes) -> Parsed:
        doc = self.load_json(body)
        if not isinstance(doc, dict) or not isinstance(doc.get("contentType"), str) or not doc["contentType"]:
            raise self.bad_request("contentType is required")
        return Parsed({"base": str(request.base_url).rstrip("/")})

    def _handle_create_document(self, request: Request, parsed: Parsed, call: Call) -> Response:
        doc_id = f"amzn1.tortuga.4.na.{uuid.uuid4()}"
        self._documents[doc_id] = None
        return json_response({"feedDocumentId": doc_id, "url": f"{parsed.data['base']}{UPLOAD_PATH}/{doc_id}"}, 201)

    def _parse_create_feed(self, request: Request, body: bytes) -> Parsed:
        doc = self.load_json(body)
        if not isinstance(doc, dict) or doc.get("feedType") != FEED_TYPE:
            raise self.bad_request(f"feedType must be {FEED_TYPE} (the only feed type simulated)")
        ids = doc.get("marketplaceIds")
        if not isinstance(ids, list) or self.marketplace_id not in ids:
            raise self.bad_request(f"marketplaceIds must include {self.marketplace_id}")
        doc_id = doc.get("inputFeedDocumentId")
        if not isinstance(doc_id, str) or self._documents.get(doc_id) is None:
            raise self.bad_request("inputFeedDocumentId must name a feed document whose content was uploaded")
        return Parsed({"document_id": doc_id})

    def _handle_create_feed(self, request: Request, parsed: Parsed, call: Call) -> Response:
        now = time.monotonic()
        delay = self._feed_settings["delay_s"]
        feed = Feed(str(50_000_000_000 + len(self._feeds) + 1), parsed.data["document_id"], now, now + delay,
                    int(time.time() * 1000))
        self._feeds[feed.feed_id] = feed
        timer = threading.Timer(delay, self._process_due)
        timer.daemon = True
        self._feed_timers.append(timer)
        timer.start()
        call.items = [{"feedId": feed.feed_id}]
        return json_response({"feedId": feed.feed_id}, 202)

    def _handle_get_feed(self, request: Request, parsed: Parsed, call: Call) -> Response:
        self._process_due()
        feed = self._feeds.get(parsed.data["feed_id"])
        if feed is None:
            return _not_found(f"Feed {parsed.data['feed_id']} not found.")
        status = feed.status
        if status == "IN_QUEUE" and time.monotonic() >= feed.created + (feed.due - feed.created) / 2:
            status = "IN_PROGRESS"
        reply: dict[str, Any] = {"feedId": feed.feed_id, "feedType": FEED_TYPE, "marketplaceIds": [self.marketplace_id],
                                 "createdTime": _iso(feed.created_ms), "processingStatus": status}
        if status != "IN_QUEUE":
            reply["processingStartTime"] = _iso(feed.created_ms)
        if feed.done_ms:
            reply["processingEndTime"] = _iso(feed.done_ms)
        if feed.result_id:
            reply["resultFeedDocumentId"] = feed.result_id
        return json_response(reply)

    def _handle_get_document(self, request: Request, parsed: Parsed, call: Call) -> Response:
        doc_id = parsed.data["document_id"]
        if doc_id not in self._documents:
            return _not_found(f"Feed document {doc_id} not found.")
        base = str(request.base_url).rstrip("/")
        return json_response({"feedDocumentId": doc_id, "url": f"{base}{UPLOAD_PATH}/{doc_id}"})

    # ----- processing --------------------------------------------------------------------------------

    def _process_due(self) -> None:
        """Process, in creation order, every feed whose delay has passed (a timer's call, or a getFeed's)."""
        with self._lock:
            now = time.monotonic()
            for feed in self._feeds.values():
                if feed.status == "IN_QUEUE" and feed.due <= now:
                    self._process(feed)

    def _process(self, feed: Feed) -> None:
        content = self._documents.get(feed.document_id) or b""
        try:
            doc = orjson.loads(content)
        except orjson.JSONDecodeError:
            doc = None
        messages = doc.get("messages") if isinstance(doc, dict) else None
        if not isinstance(messages, list) or not 1 <= len(messages) <= MAX_MESSAGES:
            feed.status = "FATAL"
            issues = [{"code": "FATAL", "severity": "ERROR",
                       "message": f"not a {FEED_TYPE} document with 1 to {MAX_MESSAGES} messages"}]
            accepted = 0
        else:
            issues, accepted = self._apply_messages(feed, messages)
            feed.status = "DONE"
        errors = sum(1 for i in issues if i["severity"] == "ERROR")
        report = {"header": {"sellerId": self.seller_id, "version": "2.0", "feedId": feed.feed_id},
                  "issues": issues,
                  "summary": {"errors": errors, "warnings": len(issues) - errors,
                              "messagesProcessed": len(messages) if isinstance(messages, list) else 0,
                              "messagesAccepted": accepted,
                              "messagesInvalid": (len(messages) - accepted) if isinstance(messages, list) else 0}}
        feed.result_id = f"amzn1.tortuga.4.na.{uuid.uuid4()}"
        self._documents[feed.result_id] = orjson.dumps(report)
        feed.done_ms = int(time.time() * 1000)

    def _apply_messages(self, feed: Feed, messages: list[Any]) -> tuple[list[dict[str, Any]], int]:
        """Apply each valid message's quantity to its listing; answers (issues, messages accepted)."""
        s = self._feed_settings
        failing = set(s["error_skus"])
        issues: list[dict[str, Any]] = []
        for m in messages:
            message_id = m.get("messageId") if isinstance(m, dict) else None
            sku, quantity = _message_quantity(m)
            problem = None
            if sku is None or quantity is None:
                problem = ("90220", "the message needs a sku and a fulfillment_availability quantity >= 0")
            elif sku in failing or self.rejected(sku):
                problem = ("8541", f"SKU '{sku}' cannot be updated: the listing is blocked (simulated).")
            elif s["error_rate"] and self._feed_rng.random() < s["error_rate"]:
                problem = ("4000003", "An internal error occurred processing this message (simulated).")
            if problem is not None:
                issues.append({"messageId": message_id, "code": problem[0], "severity": "ERROR",
                               "message": problem[1], "attributeNames": ["fulfillment_availability"]})
                continue
            self.apply(sku, quantity)
            feed.applied[sku] = quantity
        return issues, len(messages) - len(issues)


def _message_quantity(m: Any) -> tuple[str | None, int | None]:
    """(sku, quantity) a PATCH, PARTIAL_UPDATE or UPDATE message lists; None where it has none."""
    if not isinstance(m, dict) or not isinstance(m.get("sku"), str) or not is_int(m.get("messageId")):
        return None, None
    sku, values = m["sku"], None
    if m.get("operationType") == "PATCH":
        for patch in m.get("patches") or []:
            if isinstance(patch, dict) and patch.get("path") == ATTRIBUTE and patch.get("op") in ("add", "replace", "merge"):
                values = patch.get("value")
    elif m.get("operationType") in ("UPDATE", "PARTIAL_UPDATE"):
        values = (m.get("attributes") or {}).get("fulfillment_availability")
    if not isinstance(values, list) or not values or not isinstance(values[0], dict):
        return sku, None
    quantity = values[0].get("quantity")
    return sku, quantity if is_int(quantity) and quantity >= 0 else None


def _not_found(message: str) -> Response:
    return json_response({"errors": [{"code": "NotFound", "message": message, "details": ""}]}, 404)
