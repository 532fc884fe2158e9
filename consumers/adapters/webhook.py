"""A generic signed HTTP webhook, for any channel without an adapter of its own.

`POST <url><path>` with `{"items": [{"sku", "quantity", "version"}, ...]}` and the header
`X-Stocksync-Signature: sha256=<hex HMAC-SHA256 of the raw body with the shared secret>`. The receiver
answers 200 with `{"results": [{"sku", "status": applied | stale | rejected, "reason"}]}`: stale means
it already has that version or a newer one (delivered, as far as stocksync is concerned); rejected is
permanent. A 2xx without results (no body, or no `results` list) counts as every item applied; when
`results` lists some items, an item it leaves out was not answered for and is retried (a transient
failure), never counted as applied.

Options: path (default /webhook), batch_size (default 100, at most 500). Credential: secret.
"""

from __future__ import annotations

import hashlib
import hmac

from .base import Adapter, Result, Update, json_body

SIGNATURE_HEADER = "X-Stocksync-Signature"


def signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookAdapter(Adapter):
    kind = "webhook"
    max_batch = 500
    versioned = True  # the receiver orders pushes by version per SKU name (a version-less push is dropped)
    default_in_flight = 8
    default_batch = 100
    OPTIONS = Adapter.OPTIONS | {"path"}
    CREDENTIALS = ("secret",)

    def __init__(self, config, session=None) -> None:
        super().__init__(config, session)
        self.url = config.url + str(config.options.get("path", "/webhook"))

    async def push_batch(self, updates: list[Update], deadline: float | None, rank: int) -> list[Result]:
        body = json_body({"items": [{"sku": u.channel_sku, "quantity": u.quantity, "version": u.version}
                                    for u in updates]})
        headers = {SIGNATURE_HEADER: signature(body, self.config.secret("secret")), "Content-Type": "application/json"}
        _, data = await self.request("POST", self.url, body=body, headers=headers, deadline=deadline, rank=rank)
        listed = (data or {}).get("results") if isinstance(data, dict) else None
        if not listed:  # no per-item answers at all: the 2xx covers every item
            return [Result.accepted(u.sku) for u in updates]
        answers = {r.get("sku"): r for r in listed if isinstance(r, dict)}
        results = []
        for u in updates:
            r = answers.get(u.channel_sku)
            if r is None:  # the receiver answered for other items but not this one: not accepted
                results.append(Result.failed(u.sku, "no result for this item in the reply", permanent=False))
            elif r.get("status") in ("applied", "stale"):
                results.append(Result.accepted(u.sku))
            elif r.get("status") == "rejected":
                results.append(Result.failed(u.sku, f"rejected: {r.get('reason')}", permanent=True))
            else:
                results.append(Result.failed(u.sku, f"{r.get('status')}: {r.get('reason')}", permanent=False))
        return results
