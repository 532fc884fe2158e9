"""Generic signed HTTP webhook receiver: what stocksync pushes to "any other channel".

``POST /webhook`` with a JSON body ``{"items": [{"sku": "A", "quantity": 7, "version": 12}, ...]}``
and the header ``X-Stocksync-Signature: sha256=<hex HMAC-SHA256 of the raw body with the shared
secret>`` (``sign(body, secret)``). A missing or wrong signature answers 401 and changes nothing; a
malformed body answers 400. Otherwise the reply is 200 with one result per item, in order::

    {"results": [{"sku": "A", "status": "applied"},
                 {"sku": "B", "status": "stale", "reason": "version 3 <= 5 already applied"},
                 {"sku": "C", "status": "rejected", "reason": "..."}]}

``applied``: listed. ``stale``: not applied, because this receiver already has that version or a
newer one of the SKU; the sender may treat it as delivered. ``rejected``: not applied, permanently
(the SKU is in ``reject_skus``). Other errors use ``{"error", "message"}`` (429 with Retry-After).
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .base import Call, Faults, Parsed, Simulator, is_int, json_response

SIGNATURE_HEADER = "X-Stocksync-Signature"


def sign(body: bytes, secret: str) -> str:
    """The ``X-Stocksync-Signature`` value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSim(Simulator):
    name = kind = "webhook"  # kind: its entry in stocksync.channels.KINDS

    def __init__(
        self,
        faults: Faults | None = None,
        *,
        secret: str = "stocksync-webhook-secret",
        path: str = "/webhook",
    ) -> None:
        self.secret, self.path = secret, path
        super().__init__(faults)

    def auth_headers(self, body: bytes = b"") -> dict[str, str]:
        return {SIGNATURE_HEADER: sign(body, self.secret), "Content-Type": "application/json"}

    def versions(self) -> dict[str, int]:
        """The last version applied per SKU."""
        with self._lock:
            return dict(self._versions)

    def _reset_state(self) -> None:
        self._versions: dict[str, int] = {}

    def api_routes(self) -> list[Route]:
        return [Route(self.path, self.endpoint(self._parse, self._handle), methods=["POST"])]

    def authorized(self, request: Request, body: bytes) -> bool:
        # compare_digest: the time taken must not tell how much of a forged signature was right.
        return hmac.compare_digest(request.headers.get(SIGNATURE_HEADER, ""), sign(body, self.secret))

    def _parse(self, request: Request, body: bytes) -> Parsed:
        doc = self.load_json(body)
        items = doc.get("items") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise self.bad_request('expected {"items": [{"sku", "quantity", "version"}, ...]}')
        for i, item in enumerate(items):
            if not (
                isinstance(item, dict)
                and isinstance(item.get("sku"), str)
                and item["sku"]
                and is_int(item.get("quantity"))
                and item["quantity"] >= 0
                and is_int(item.get("version"))
                and item["version"] >= 0
            ):
                raise self.bad_request(f"items[{i}] needs a sku, a quantity >= 0 and a version >= 0")
        return Parsed(
            None, [{"sku": i["sku"], "quantity": i["quantity"], "version": i["version"]} for i in items]
        )

    def _handle(self, request: Request, parsed: Parsed, call: Call) -> Response:
        results = []
        for item in call.items:
            sku, version = item["sku"], item["version"]
            last = self._versions.get(sku)
            if self.rejected(sku):
                result = {
                    "sku": sku,
                    "status": "rejected",
                    "reason": "SKU not accepted by this channel (simulated)",
                }
            elif last is not None and version <= last:
                result = {
                    "sku": sku,
                    "status": "stale",
                    "reason": f"version {version} <= {last} already applied",
                }
            else:
                self.apply(sku, item["quantity"])
                self._versions[sku] = version
                result = {"sku": sku, "status": "applied"}
            item["result"] = result["status"]
            results.append(result)
        return json_response({"results": results})
