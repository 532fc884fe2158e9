"""Amazon SP-API Listings Items simulator (version 2021-08-01), one SKU a call.

``PATCH /listings/2021-08-01/items/{sellerId}/{sku}?marketplaceIds=ATVPDKIKX0DER`` (patchListingsItem)
with header ``x-amz-access-token`` (the LWA access token) and a body::

    {"productType": "PRODUCT",
     "patches": [{"op": "replace", "path": "/attributes/fulfillment_availability",
                  "value": [{"fulfillment_channel_code": "DEFAULT", "quantity": 7}]}]}

answers 200 ``{"sku", "status": "ACCEPTED" | "INVALID", "submissionId", "issues": [{"code",
"message", "severity", "attributeNames"}]}``. ``op`` may be add, replace or merge (merge: the
partial update that only touches the quantity); other attributes are accepted and ignored. A bad
quantity, or a SKU in ``reject_skus``, answers INVALID with an ERROR issue and changes nothing
(the real API reports listing problems this way, inside a 200). ``mode=VALIDATION_PREVIEW``
validates without applying. ``GET`` on the same path (getListingsItem) answers ``{"sku",
"fulfillmentAvailability": [{"fulfillmentChannelCode": "DEFAULT", "quantity"}]}`` or 404.

Errors use SP-API's ``{"errors": [{"code", "message", "details"}]}``: 400 InvalidInput, 429
QuotaExceeded (+ Retry-After and x-amzn-RateLimit-Limit), 500 InternalFailure, 503
ServiceUnavailable. A missing or wrong token, or a sellerId other than ``seller_id``, answers
``auth_status`` (401 by default, as the project asks; the real API answers 403 ``Unauthorized``:
pass ``auth_status=403`` to get that). Issue codes are the simulator's own: an adapter should go by
``severity``. The documented usage plan of patchListingsItem is 5 requests/s with a burst of 10
(``AmazonSim.realistic_faults()``); GET shares the same bucket here.

The simulator also sells: ORDER_CHANGE notifications and the Orders API v0, with their own rate
limits (``amazon_orders``); and serves the Feeds API with JSON_LISTINGS_FEED, processed after a delay,
with per-message errors (``amazon_feeds``).
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .amazon_feeds import DEFAULT_FEED_SETTINGS, FEED_LIMITS, AmazonFeeds
from .amazon_orders import AmazonOrders
from .base import Call, Faults, Parsed, TokenBucket, is_int, json_response
from .market import MarketSim

API_PREFIX = "/listings/2021-08-01/items"
ATTRIBUTE = "/attributes/fulfillment_availability"
_ERROR_CODES = {
    "bad_request": "InvalidInput",
    "unauthorized": "Unauthorized",
    "throttled": "QuotaExceeded",
    "server_error": "InternalFailure",
    "outage": "ServiceUnavailable",
}


class AmazonSim(AmazonFeeds, AmazonOrders, MarketSim):
    name = kind = "amazon"  # kind: its entry in stocksync.channels.KINDS
    # SP-API limits each operation apart: the Orders API's and the Feeds API's, one bucket each
    ORDER_LIMITS = {**AmazonOrders.ORDER_LIMITS, **FEED_LIMITS}

    def __init__(
        self,
        faults: Faults | None = None,
        *,
        access_token: str = "Atza|stocksync-simulator",
        seller_id: str = "A2SIMSELLER000",
        marketplace_id: str = "ATVPDKIKX0DER",
        auth_status: int = 401,
    ) -> None:
        self.access_token, self.seller_id, self.marketplace_id = access_token, seller_id, marketplace_id
        self.auth_status = auth_status
        super().__init__(faults)

    @staticmethod
    def realistic_faults() -> Faults:
        return Faults(latency_ms=20, jitter_ms=10, rate_limit=5, burst=10)

    def listing_path(self, sku: str) -> str:
        """Path and query of ``sku``'s listing (the SKU percent-encoded, as SP-API requires)."""
        return f"{API_PREFIX}/{self.seller_id}/{quote(sku, safe='')}?marketplaceIds={self.marketplace_id}"

    def auth_headers(self, body: bytes = b"") -> dict[str, str]:
        return {"x-amz-access-token": self.access_token, "Content-Type": "application/json"}

    def api_routes(self) -> list[Route]:
        path = API_PREFIX + "/{seller_id}/{sku:path}"
        return [
            Route(path, self.endpoint(self._parse_patch, self._handle_patch), methods=["PATCH"]),
            Route(path, self.endpoint(self._parse_get, self._handle_get), methods=["GET"]),
            *self.order_routes(),
            *self.feed_routes(),
        ]

    def control_routes(self) -> list[Route]:
        return [*super().control_routes(), *self.feed_control_routes()]

    def _reset_state(self) -> None:
        super()._reset_state()
        self._reset_feeds()

    def reset(self, faults: bool = True) -> None:
        with self._lock:
            if faults:
                self._feed_settings = dict(DEFAULT_FEED_SETTINGS)
            super().reset(faults)

    def authorized(self, request: Request, body: bytes) -> bool:
        return (
            request.headers.get("x-amz-access-token") == self.access_token
            # the Orders API's paths name no seller: the token alone is the credential
            and request.path_params.get("seller_id", self.seller_id) == self.seller_id
        )

    def error_response(self, kind: str, status: int, message: str) -> Response:
        code = _ERROR_CODES.get(kind, "InvalidInput")
        if kind == "unauthorized":
            message = "Access to requested resource is denied."
        response = json_response({"errors": [{"code": code, "message": message, "details": ""}]}, status)
        response.headers["x-amzn-RequestId"] = str(uuid.uuid4())
        return response

    def throttled_response(self, wait_s: float, cost: float, bucket: TokenBucket) -> Response:
        response = super().throttled_response(wait_s, cost, bucket)
        response.headers["x-amzn-RateLimit-Limit"] = f"{bucket.rate:g}"  # the refusing operation's rate
        return response

    # ----- patchListingsItem -------------------------------------------------------------------

    def _check_marketplace(self, request: Request) -> None:
        ids = request.query_params.get("marketplaceIds", "")
        if self.marketplace_id not in ids.split(","):
            raise self.bad_request(f"marketplaceIds must include {self.marketplace_id}")

    def _parse_patch(self, request: Request, body: bytes) -> Parsed:
        sku = request.path_params["sku"]
        doc = self.load_json(body)
        self._check_marketplace(request)
        if not isinstance(doc, dict) or not isinstance(doc.get("productType"), str) or not doc["productType"]:
            raise self.bad_request("productType is required")
        patches = doc.get("patches")
        if not isinstance(patches, list) or not patches:
            raise self.bad_request("patches must be a non-empty array")
        items: list[dict[str, Any]] = []
        for patch in patches:
            if not isinstance(patch, dict) or patch.get("op") not in ("add", "replace", "merge", "delete"):
                raise self.bad_request("each patch needs an op of add, replace, merge or delete")
            if not isinstance(patch.get("path"), str) or not patch["path"].startswith("/attributes/"):
                raise self.bad_request("each patch needs a path under /attributes/")
            if patch["path"] == ATTRIBUTE and patch["op"] != "delete":
                values = patch.get("value")
                for value in values if isinstance(values, list) else [values]:
                    value = value if isinstance(value, dict) else {}
                    items.append(
                        {
                            "sku": sku,
                            "quantity": value.get("quantity"),
                            "channel": value.get("fulfillment_channel_code"),
                        }
                    )
        preview = request.query_params.get("mode") == "VALIDATION_PREVIEW"
        return Parsed({"sku": sku, "preview": preview}, items)

    def _handle_patch(self, request: Request, parsed: Parsed, call: Call) -> Response:
        sku = parsed.data["sku"]
        issues = []
        for item in call.items:
            if not isinstance(item["channel"], str) or not item["channel"]:
                issues.append(_issue("90220", "'fulfillment_channel_code' is required."))
            elif not is_int(item["quantity"]) or item["quantity"] < 0:
                issues.append(_issue("90220", "'quantity' must be an integer of at least 0."))
        if self.rejected(sku):
            issues.append(
                _issue("8541", f"SKU '{sku}' cannot be updated: the listing is blocked (simulated).")
            )
        ok = not issues
        for item in call.items:
            if ok and not parsed.data["preview"]:
                self.apply(sku, item["quantity"])
                item["result"] = "applied"
            else:
                item["result"] = "validated" if ok else "invalid"
        reply = {
            "sku": sku,
            "status": "ACCEPTED" if ok else "INVALID",
            "submissionId": uuid.uuid4().hex,
            "issues": issues,
        }
        return json_response(reply, headers={"x-amzn-RequestId": str(uuid.uuid4())})

    # ----- getListingsItem ---------------------------------------------------------------------

    def _parse_get(self, request: Request, body: bytes) -> Parsed:
        self._check_marketplace(request)
        sku = request.path_params["sku"]
        return Parsed({"sku": sku}, [{"sku": sku}])

    def _handle_get(self, request: Request, parsed: Parsed, call: Call) -> Response:
        sku = parsed.data["sku"]
        if sku not in self._quantities:
            call.items[0]["result"] = "not_found"
            return json_response(
                {"errors": [{"code": "NOT_FOUND", "message": f"SKU '{sku}' not found.", "details": ""}]}, 404
            )
        quantity = self._quantities[sku]
        call.items[0].update(quantity=quantity, result="found")
        availability = [{"fulfillmentChannelCode": "DEFAULT", "quantity": quantity}]
        return json_response({"sku": sku, "fulfillmentAvailability": availability})


def _issue(code: str, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "severity": "ERROR",
        "attributeNames": ["fulfillment_availability"],
    }
