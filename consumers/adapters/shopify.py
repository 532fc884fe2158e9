"""Shopify: Admin GraphQL `inventorySetQuantities`, up to 250 quantities a call, compare-and-swap.

Each quantity carries `changeFromQuantity`, the quantity we believe Shopify lists now (mandatory from
API 2026-04). Shopify also sells, so that belief goes stale: CHANGE_FROM_QUANTITY_STALE makes the
adapter re-read those items' quantities and send again (the mutation is all-or-nothing, so nothing was
applied). The sale itself reaches stocksync as an order, and its event pushes again.

Options: location_id (required, a Location gid), api_version (default 2026-04), reason (default
correction). Credential: token (the Admin API access token, sent as X-Shopify-Access-Token).
Inventory item gids are looked up by SKU (inventoryItems(query: "sku:...")) and cached.

Idempotency: each mutation call carries a fresh @idempotent key (a UUID), except the retry of a request
that ended without an answer (a timeout, a dropped connection): the same input is sent again under the
same key, so Shopify applies it at most once. A key is never derived from the input: a later, distinct
set with the same input (a quantity oscillating 1 -> 0 -> 1 -> 0) would be answered from Shopify's
idempotency record and not applied. IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED (the earlier attempt under that
key failed, nothing applied) and IDEMPOTENCY_KEY_PARAMETER_MISMATCH drop the key: the items are re-read
and sent again under a fresh key.
"""

from __future__ import annotations

import collections
import logging
import uuid
from typing import Any

from yarl import URL

from stocksync.settings import SettingsError

from .base import Adapter, PermanentError, Result, TransientError, Update, json_body

log = logging.getLogger(__name__)

SET_QUANTITIES = """mutation stocksyncSet($input: InventorySetQuantitiesInput!, $key: String!) {
  inventorySetQuantities(input: $input) @idempotent(key: $key) {
    inventoryAdjustmentGroup { id }
    userErrors { code field message }
  }
}"""

READ_ITEMS = """query stocksyncItems($q: String!, $n: Int!, $loc: ID!) {
  inventoryItems(first: $n, query: $q) {
    nodes { id sku inventoryLevel(locationId: $loc) { quantities(names: ["available"]) { name quantity } } }
  }
}"""

READ_CHUNK = 50
MAX_ROUNDS = 3
RETRYABLE_CODES = {"THROTTLED", "INTERNAL_SERVER_ERROR", "SERVICE_UNAVAILABLE", "TIMEOUT"}
IDEMPOTENCY_CODES = {"IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED", "IDEMPOTENCY_KEY_PARAMETER_MISMATCH"}
MAX_UNANSWERED = 1000  # inputs sent without an answer whose key a retry reuses
# The mutation's body is json_body({"query": SET_QUANTITIES, "variables": {"input": payload, "key": key}}),
# assembled from the input's serialization (made once, it is also the input's identity for the key)
_SET_HEAD = b'{"query":' + json_body(SET_QUANTITIES) + b',"variables":{"input":'


class ShopifyAdapter(Adapter):
    kind = "shopify"
    max_batch = 250
    default_in_flight = 4
    OPTIONS = Adapter.OPTIONS | {"location_id", "api_version", "reason"}
    CREDENTIALS = ("token",)

    def __init__(self, config, session=None) -> None:
        super().__init__(config, session)
        opts = config.options
        self.location_id = opts.get("location_id")
        if not self.location_id:
            raise SettingsError(f"channels.{config.name}.options.location_id (a Location gid) is required")
        self.api_version = str(opts.get("api_version", "2026-04"))
        self.reason = str(opts.get("reason", "correction"))
        self.endpoint = f"{config.url}/admin/api/{self.api_version}/graphql.json"
        self._url = URL(self.endpoint)  # parsed once, not on every call
        self._headers: tuple[str, dict[str, str]] | None = None  # (token, headers), rebuilt when it changes
        self.items: dict[str, str] = {}  # channel SKU -> inventory item gid
        self.known: dict[str, int | None] = {}  # channel SKU -> quantity we believe Shopify lists
        # input (serialized) -> its idempotency key, for inputs sent without an answer (a retry reuses it)
        self.unanswered: collections.OrderedDict[bytes, str] = collections.OrderedDict()

    def _key_for(self, payload_json: bytes) -> str:
        """The @idempotent key of one call: the key of the same input sent before without an answer (this
        is a retry of that request), otherwise a fresh one."""
        return (self.unanswered and self.unanswered.get(payload_json)) or uuid.uuid4().hex

    def _answered(self, payload_json: bytes, item_ids: list[str]) -> None:
        """A call got an answer: forget its key, and those of unanswered inputs about the same items
        (a later identical input is a new logical push, not a retry of those)."""
        if not self.unanswered:
            return
        self.unanswered.pop(payload_json, None)
        if self.unanswered:
            needles = [json_body(i) for i in item_ids]  # '"gid://..."', as they appear in an input
            for old in [k for k in self.unanswered if any(n in k for n in needles)]:
                self.unanswered.pop(old, None)

    async def _graphql(self, query: str, variables: dict[str, Any], deadline: float | None, rank: int) -> dict[str, Any]:
        return await self._post(json_body({"query": query, "variables": variables}), deadline, rank)

    async def _post(self, body: bytes, deadline: float | None, rank: int) -> dict[str, Any]:
        token = self.config.secret("token")  # read on every call (a rotated token is used at once)
        if self._headers is None or self._headers[0] != token:
            self._headers = (token, {"X-Shopify-Access-Token": token, "Content-Type": "application/json"})
        _, data = await self.request("POST", self._url, body=body, headers=self._headers[1], deadline=deadline,
                                     rank=rank)
        if not isinstance(data, dict):
            raise TransientError(f"{self.name}: reply is not a JSON object")
        errors = data.get("errors")
        if errors:
            first = errors[0] if isinstance(errors, list) and errors else {"message": str(errors)}
            code = (first.get("extensions") or {}).get("code", "")
            if code == "THROTTLED":
                raise TransientError(f"{self.name}: throttled", retry_after=_throttle_wait(data), status=429)
            if code in RETRYABLE_CODES:
                raise TransientError(f"{self.name}: {code}: {first.get('message')}")
            raise PermanentError(f"{self.name}: {code or 'error'}: {first.get('message')}")
        return data.get("data") or {}

    async def _read(self, skus: list[str], deadline: float | None, rank: int) -> None:
        """Look up gids and current quantities of channel SKUs (absent ones stay unknown)."""
        for i in range(0, len(skus), READ_CHUNK):
            chunk = skus[i : i + READ_CHUNK]
            q = " OR ".join(f'sku:"{s}"' for s in chunk)
            data = await self._graphql(READ_ITEMS, {"q": q, "n": len(chunk), "loc": self.location_id}, deadline, rank)
            for node in (data.get("inventoryItems") or {}).get("nodes") or []:
                sku = node.get("sku")
                if sku not in chunk:
                    continue
                self.items[sku] = node["id"]
                level = node.get("inventoryLevel")
                quantities = (level or {}).get("quantities") or []
                self.known[sku] = next((q["quantity"] for q in quantities if q.get("name") == "available"), None)
                if level is None:
                    self.known[sku] = None
                    self.items.pop(sku, None)  # not stocked at this location

    async def push_batch(self, updates: list[Update], deadline: float | None, rank: int) -> list[Result]:
        results: dict[str, Result] = {}
        todo = {u.channel_sku: u for u in updates}
        missing = [s for s in todo if s not in self.items]
        if missing:
            await self._read(missing, deadline, rank)
        for _ in range(MAX_ROUNDS):
            self._drop_unstocked(todo, results)  # (never stocked here, or a re-read found it no longer is)
            if not todo:
                break
            again = await self._set(todo, results, deadline, rank)
            if again:
                await self._read(again, deadline, rank)
        for u in todo.values():  # still stale after MAX_ROUNDS: Shopify is selling fast; retry later
            results[u.sku] = Result.failed(u.sku, f"not applied after {MAX_ROUNDS} rounds (CHANGE_FROM_QUANTITY_STALE "
                                           "or an idempotency error) and re-reads", permanent=False)
        return list(results.values())

    def _drop_unstocked(self, todo: dict[str, Update], results: dict[str, Result]) -> None:
        for sku in [s for s in todo if s not in self.items]:
            u = todo.pop(sku)
            results[u.sku] = Result.failed(u.sku, f"no inventory item with SKU {sku!r} stocked at "
                                           f"{self.location_id}", permanent=True)

    async def _set(self, todo: dict[str, Update], results: dict[str, Result], deadline: float | None,
                   rank: int) -> list[str]:
        """One inventorySetQuantities call for every update of `todo`: those applied or refused leave
        `todo` with their result; answers the channel SKUs to re-read before the next round."""
        order = list(todo.values())
        items, known, location_id = self.items, self.known, self.location_id
        item_ids = [items[u.channel_sku] for u in order]
        quantities = [{"inventoryItemId": item_id, "locationId": location_id, "quantity": u.quantity,
                       "changeFromQuantity": known.get(u.channel_sku)} for u, item_id in zip(order, item_ids, strict=True)]
        payload_json = json_body({"name": "available", "reason": self.reason, "quantities": quantities})
        key = self._key_for(payload_json)
        try:
            data = await self._post(_SET_HEAD + payload_json + b',"key":' + json_body(key) + b"}}", deadline, rank)
        except TransientError as e:
            if e.ambiguous:  # it may have been applied: a retry of this same input reuses the key
                self._unanswered(payload_json, key)
            raise
        self._answered(payload_json, item_ids)
        errors = (data.get("inventorySetQuantities") or {}).get("userErrors") or []
        if not errors:
            for u in order:
                known[u.channel_sku] = u.quantity
                results[u.sku] = Result(u.sku, True)  # Result.accepted(u.sku), one call less
            todo.clear()
            return []
        codes = {err.get("code") for err in errors}
        if "IDEMPOTENCY_CONCURRENT_REQUEST" in codes:
            # the first attempt under this key is still being processed: ask again later, same key
            self.unanswered[payload_json] = key
            raise TransientError(f"{self.name}: IDEMPOTENCY_CONCURRENT_REQUEST", ambiguous=True)
        if codes & IDEMPOTENCY_CODES:
            # the earlier attempt under this key failed (or differs): nothing was applied by this call;
            # re-read what Shopify lists and send again under a fresh key
            log.info("%s: %s; sending again under a fresh key", self.name, ", ".join(sorted(map(str, codes))))
            return list(todo)
        return self._user_errors(errors, order, todo, results)

    def _unanswered(self, payload_json: bytes, key: str) -> None:
        self.unanswered[payload_json] = key
        self.unanswered.move_to_end(payload_json)
        while len(self.unanswered) > MAX_UNANSWERED:
            self.unanswered.popitem(last=False)

    def _user_errors(self, errors: list[dict], order: list[Update], todo: dict[str, Update],
                     results: dict[str, Result]) -> list[str]:
        """Per-quantity errors of a call (nothing was applied): a stale compare value is re-read (answered),
        any other error is that SKU's permanent failure."""
        stale: list[str] = []
        for err in errors:
            index = _quantity_index(err.get("field"))
            if index is None or index >= len(order):
                raise PermanentError(f"{self.name}: {err.get('code')}: {err.get('message')}")
            u = order[index]
            if err.get("code") == "CHANGE_FROM_QUANTITY_STALE":
                stale.append(u.channel_sku)
            else:
                todo.pop(u.channel_sku, None)
                results[u.sku] = Result.failed(u.sku, f"{err.get('code')}: {err.get('message')}", permanent=True)
        return stale

def _quantity_index(field: Any) -> int | None:
    # ["input", "quantities", "3", "changeFromQuantity"]
    if isinstance(field, list) and len(field) >= 3 and field[1] == "quantities":
        try:
            return int(field[2])
        except (TypeError, ValueError):
            return None
    return None


def _throttle_wait(data: dict[str, Any]) -> float | None:
    cost = (data.get("extensions") or {}).get("cost") or {}
    status = cost.get("throttleStatus") or {}
    try:
        need = float(cost.get("requestedQueryCost") or 10) - float(status["currentlyAvailable"])
        return max(need, 0.0) / float(status["restoreRate"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return 1.0
