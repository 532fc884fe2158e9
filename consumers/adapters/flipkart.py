"""Flipkart Marketplace Seller API: listings v3 inventory update, at most 10 SKUs a call.

`POST /sellers/listings/v3/update/inventory` with a map SKU -> {product_id, locations: [{id,
inventory}]}; the reply is a 200 with a status per SKU (SUCCESS or FAILURE with errors), each SKU
applied on its own, so a FAILURE is that SKU's permanent failure.

Options: location_id (required), product_ids (a table SKU -> FSN), product_id_format (used for SKUs
not in the table: a format string with {sku} and {sha}, 16 upper-case hex digits of SHA-1 of the SKU,
e.g. "{sha}" for the simulator). Credential: access_token (Bearer).
"""

from __future__ import annotations

import hashlib

from yarl import URL

from stocksync.settings import SettingsError

from .base import Adapter, Result, TransientError, Update, json_body

PATH = "/sellers/listings/v3/update/inventory"
FORMATTED_MAX = 100_000  # product ids made from product_id_format that are remembered (then forgotten, all)


class FlipkartAdapter(Adapter):
    kind = "flipkart"
    max_batch = 10
    default_in_flight = 8
    OPTIONS = Adapter.OPTIONS | {"location_id", "product_ids", "product_id_format"}
    CREDENTIALS = ("access_token",)

    def __init__(self, config, session=None) -> None:
        super().__init__(config, session)
        opts = config.options
        self.location_id = opts.get("location_id")
        if not self.location_id:
            raise SettingsError(f"channels.{config.name}.options.location_id is required")
        self.product_ids = dict(opts.get("product_ids", {}))
        self.product_id_format = opts.get("product_id_format")
        self._formatted: dict[str, str] = {}  # SKU -> product_id_format's product id (a SHA-1 and a format)
        self._url = URL(config.url + PATH)  # parsed once, not on every call
        self._headers: tuple[str, dict[str, str]] | None = None  # (token, headers), rebuilt when it changes

    def product_id(self, sku: str) -> str | None:
        if sku in self.product_ids:
            return self.product_ids[sku]
        if self.product_id_format:
            fsn = self._formatted.get(sku)
            if fsn is None:
                sha = hashlib.sha1(sku.encode()).hexdigest()[:16].upper()
                fsn = self.product_id_format.format(sku=sku, sha=sha)
                if len(self._formatted) >= FORMATTED_MAX:
                    self._formatted.clear()
                self._formatted[sku] = fsn
            return fsn
        return None

    async def push_batch(self, updates: list[Update], deadline: float | None, rank: int) -> list[Result]:
        results, body, by_sku = [], {}, {}
        location_id = self.location_id
        for u in updates:
            fsn = self.product_id(u.channel_sku)
            if fsn is None:
                results.append(Result.failed(u.sku, f"no product_id (FSN) configured for {u.channel_sku!r}",
                                             permanent=True))
                continue
            body[u.channel_sku] = {"product_id": fsn, "locations": [{"id": location_id, "inventory": u.quantity}]}
            by_sku[u.channel_sku] = u
        if not body:
            return results
        token = self.config.secret("access_token")  # read on every call (a rotated token is used at once)
        if self._headers is None or self._headers[0] != token:
            self._headers = (token, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        _, data = await self.request("POST", self._url, body=json_body(body), headers=self._headers[1],
                                     deadline=deadline, rank=rank)
        if not isinstance(data, dict):
            raise TransientError(f"{self.name}: reply is not a JSON object")
        for channel_sku, u in by_sku.items():
            status = data.get(channel_sku) or {}
            if status.get("status") == "SUCCESS":
                results.append(Result(u.sku, True))  # Result.accepted(u.sku), one call less
            elif not status:
                results.append(Result.failed(u.sku, "no status for this SKU in the reply", permanent=False))
            else:
                errors = "; ".join(f"{e.get('code')}: {e.get('description')}" for e in status.get("errors") or [])
                results.append(Result.failed(u.sku, f"{status.get('status')}: {errors}", permanent=True))
        return results
