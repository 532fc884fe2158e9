"""Shopify Admin GraphQL API simulator: ``inventorySetQuantities`` and the reads an adapter needs.

Endpoint: ``POST /admin/api/{version}/graphql.json`` with ``X-Shopify-Access-Token`` (a missing or
wrong token answers 401 ``{"errors": "[API] Invalid API key or access token ..."}``) and a JSON
body ``{"query": ..., "variables": {...}}``.

This is not a GraphQL server. It recognises the root field of the document and answers a fixed
shape for it (every field listed below, whatever the selection set; aliases are not supported):

* ``mutation ($input: InventorySetQuantitiesInput!) { inventorySetQuantities(input: $input)
  @idempotent(key: "...") { inventoryAdjustmentGroup {...} userErrors { code field message } } }``.
  The input must be a variable: ``name`` ("available"; anything else is INVALID_NAME here),
  ``reason`` (one of Shopify's reasons), optional ``referenceDocumentUri`` (a URI), and
  ``quantities[]`` of ``{inventoryItemId, locationId, quantity, changeFromQuantity}``, at most 250
  (more: top-level error MAX_INPUT_SIZE_EXCEEDED). From API version 2026-04 ``changeFromQuantity``
  must be present; ``null`` skips the compare-and-swap, a number that differs from the current
  quantity gives CHANGE_FROM_QUANTITY_STALE. The mutation is all-or-nothing: with any userError
  nothing is applied and ``inventoryAdjustmentGroup`` is null (``partial_apply=True`` applies the
  valid quantities anyway, for adapters that want to test against that behaviour). A SKU in
  ``reject_skus`` fails with NON_MUTABLE_INVENTORY_ITEM. An ``@idempotent`` key replays the
  first reply of a successful call without applying it again.
* Reads: ``inventoryItem(id: ...)``, ``nodes(ids: [...])`` and ``inventoryItems(query: "sku:A OR
  sku:B")``, each item answered as ``{id, sku, tracked, inventoryLevel: {id, location {id},
  quantities: [{name: "available", quantity}]}}``; ``inventoryLevel`` is null when the query's
  ``locationId`` is not the simulated shop's location. Arguments may be variables or literals.

SKUs and inventory item ids: an item's gid is ``inventory_item_gid(sku)``, i.e.
``gid://shopify/InventoryItem/<int of the first 12 hex digits of sha1(sku)>``: stable across runs
and processes. An item exists once seeded (``sim.seed`` / ``POST /_sim/seed``, which answer the
gids), looked up (``sim.item_id(sku)``), or, with ``auto_create`` (default), searched for by SKU
through ``inventoryItems``; a gid the shop does not know is INVALID_INVENTORY_ITEM. The shop has one
location, ``sim.location_id``; ``sim.quantities`` and ``sim.history`` are keyed by SKU.

Rate limit: Shopify's cost-based leaky bucket. ``Faults.rate_limit`` is the restore rate in points
per second and ``Faults.burst`` the bucket size; a mutation costs 10 points, a read 1 + one per
item. A throttled call answers HTTP 200 with ``errors[0].extensions.code == "THROTTLED"``; every
reply carries ``extensions.cost.throttleStatus`` (huge numbers when no limit is set).

The shop also sells: order webhooks and the ``orders`` query, which shares this bucket with its own
calculated cost (``shopify_orders``).
"""

from __future__ import annotations

import hashlib
import re
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .base import Call, Faults, Parsed, Reject, TokenBucket, json_response
from .market import MarketSim
from .shopify_orders import ShopifyOrders

MAX_QUANTITIES = 250
MUTATION_COST, READ_COST = 10.0, 1.0
CAS_REQUIRED_FROM = "2026-04"  # API version from which changeFromQuantity is mandatory
REASONS = frozenset(
    "correction cycle_count_available damaged movement_canceled movement_created movement_received "
    "movement_updated other promotion quality_control received reservation_created "
    "reservation_deleted reservation_updated restock safety_stock shrinkage".split()
)
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")
_ROOTS = ("inventorySetQuantities", "inventoryItems", "inventoryItem", "nodes", "orders")  # orders: shopify_orders
_VALUE = r'(\$\w+|"(?:[^"\\]|\\.)*"|\[[^\]]*\])'  # a variable, a string or a list literal
# Compiled once: the parser runs on every call (an adapter sends the same few documents again and again)
# a connection without arguments is still the root (`orders { ... }` is refused later, for its missing `first`)
_ROOT_RES = tuple((r, re.compile(rf"\b{r}\s*[({'{' if r == 'orders' else ''}]")) for r in _ROOTS)
_SET_INPUT = re.compile(r"\binventorySetQuantities\s*\(\s*input\s*:\s*\$(\w+)")
_IDEMPOTENT = re.compile(r'@idempotent\s*\(\s*key\s*:\s*(?:"([^"]*)"|\$(\w+))')
_QUERY_CACHE_MAX = 256  # documents remembered (root field, input variable, idempotency key)
_ROOT_OF: dict[str, str | None] = {}  # document -> its root field (None: none supported)
# mutation document -> (the input variable's name or None, the @idempotent key's (literal, variable) or None)
_SET_DOCS: dict[str, tuple[str | None, tuple[str | None, str | None] | None]] = {}
_STAMP: list[Any] = [None, ""]  # (second, createdAt of that second): strftime once a second


def _root_of(query: str) -> str | None:
    try:
        return _ROOT_OF[query]
    except KeyError:
        pass
    root = next((r for r, pattern in _ROOT_RES if pattern.search(query)), None)
    if len(_ROOT_OF) >= _QUERY_CACHE_MAX:
        _ROOT_OF.clear()
    _ROOT_OF[query] = root
    return root


def _created_at() -> str:
    """datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), formatted once a second."""
    second = int(time.time())
    if _STAMP[0] != second:
        _STAMP[:] = [second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")]
    return _STAMP[1]


def inventory_item_gid(sku: str) -> str:
    """The simulator's gid for ``sku`` (the convention documented above)."""
    return f"gid://shopify/InventoryItem/{int(hashlib.sha1(sku.encode()).hexdigest()[:12], 16)}"


class ShopifySim(ShopifyOrders, MarketSim):
    name = kind = "shopify"  # kind: its entry in stocksync.channels.KINDS

    def __init__(
        self,
        faults: Faults | None = None,
        *,
        access_token: str = "shpat_stocksync_simulator",
        api_version: str = "2026-04",
        location_id: str = "gid://shopify/Location/1",
        auto_create: bool = True,
        partial_apply: bool = False,
    ) -> None:
        self.access_token, self.api_version, self.location_id = access_token, api_version, location_id
        self.auto_create, self.partial_apply = auto_create, partial_apply
        super().__init__(faults)

    @staticmethod
    def realistic_faults() -> Faults:
        # Standard plan of the GraphQL Admin API: 100 points/s restored; the bucket size is ours.
        return Faults(latency_ms=20, jitter_ms=10, rate_limit=100, burst=2000)

    @property
    def graphql_path(self) -> str:
        return f"/admin/api/{self.api_version}/graphql.json"

    def auth_headers(self, body: bytes = b"") -> dict[str, str]:
        return {"X-Shopify-Access-Token": self.access_token, "Content-Type": "application/json"}

    def item_id(self, sku: str) -> str:
        """The gid of ``sku``'s inventory item, creating the item (at 0) if needed."""
        with self._lock:
            gid = inventory_item_gid(sku)
            self._skus[gid] = sku
            self._quantities.setdefault(sku, 0)
            return gid

    def seed(self, quantities: dict[str, int]) -> dict[str, str]:
        with self._lock:
            super().seed(quantities)
            return {sku: self.item_id(sku) for sku in quantities}

    def _reset_state(self) -> None:
        super()._reset_state()
        self._skus: dict[str, str] = {}  # gid -> sku
        self._idempotency: dict[str, tuple[bytes, dict[str, Any], bool]] = {}
        self._groups = 0

    # ----- HTTP shapes -------------------------------------------------------------------------

    def api_routes(self) -> list[Route]:
        return [
            Route(
                "/admin/api/{version}/graphql.json",
                self.endpoint(self._parse, self._handle),
                methods=["POST"],
            )
        ]

    def authorized(self, request: Request, body: bytes) -> bool:
        return request.headers.get("x-shopify-access-token") == self.access_token

    def error_response(self, kind: str, status: int, message: str) -> Response:
        if kind == "unauthorized":
            msg = "[API] Invalid API key or access token (unrecognized login or wrong password)"
            return json_response({"errors": msg}, status)
        code = {"outage": "SERVICE_UNAVAILABLE", "server_error": "INTERNAL_SERVER_ERROR"}.get(
            kind, "BAD_REQUEST"
        )
        return json_response({"errors": [{"message": message, "extensions": {"code": code}}]}, status)

    def throttled_response(self, wait_s: float, cost: float, bucket: TokenBucket) -> Response:
        error = {
            "message": "Throttled",
            "extensions": {"code": "THROTTLED", "documentation": "https://shopify.dev/api/usage/rate-limits"},
        }
        return json_response({"errors": [error], "extensions": self._cost(cost, actual=None)})

    def _cost(self, requested: float, actual: float | None) -> dict[str, Any]:
        capacity, available, rate = self.bucket_status() or (1e9, 1e9, 1e9)
        return {
            "cost": {
                "requestedQueryCost": requested,
                "actualQueryCost": actual,
                "throttleStatus": {
                    "maximumAvailable": capacity,
                    "currentlyAvailable": int(available),
                    "restoreRate": rate,
                },
            }
        }

    def _graphql_error(self, message: str, code: str, **extra: Any) -> Reject:
        error = {"message": message, "extensions": {"code": code, **extra}}
        return Reject(json_response({"errors": [error]}))

    # ----- parsing -----------------------------------------------------------------------------

    def _parse(self, request: Request, body: bytes) -> Parsed:
        doc = self.load_json(body)
        if not isinstance(doc, dict) or not isinstance(doc.get("query"), str):
            raise self.bad_request("expected a JSON object with a 'query' string")
        query, variables = doc["query"], doc.get("variables") or {}
        root = _root_of(query)
        if root is None:
            raise self._graphql_error(
                "stocksync simulator: supported root fields are " + ", ".join(_ROOTS),
                "UNSUPPORTED_BY_SIMULATOR",
            )
        if root == "inventorySetQuantities":
            return self._parse_set(query, variables)
        if root == "orders":
            return self._parse_orders(query, variables)
        location = _arg(query, "inventoryLevel", "locationId", variables)
        if root == "inventoryItems":
            search = _arg(query, root, "query", variables) or ""
            skus = [a or b for a, b in re.findall(r'sku:\s*(?:"([^"]*)"|([^\s()]+))', search)]
            gids = [inventory_item_gid(s) for s in skus]  # created by _handle, once authorized
        elif root == "nodes":
            gids = list(_arg(query, root, "ids", variables) or [])
        else:
            gids = [_arg(query, root, "id", variables)]
        known = {inventory_item_gid(s): s for s in skus} if root == "inventoryItems" else self._skus
        items = [{"sku": known.get(g, g), "item_id": g} for g in gids]
        return Parsed((root, gids, location), items, cost=READ_COST + len(gids))

    def _parse_set(self, query: str, variables: dict[str, Any]) -> Parsed:
        doc = _SET_DOCS.get(query)
        if doc is None:
            m = _SET_INPUT.search(query)
            key_m = _IDEMPOTENT.search(query)
            doc = (m.group(1) if m else None, key_m.groups() if key_m else None)
            if len(_SET_DOCS) >= _QUERY_CACHE_MAX:
                _SET_DOCS.clear()
            _SET_DOCS[query] = doc
        var, key = doc
        data = variables.get(var) if var is not None else None
        if not isinstance(data, dict) or not isinstance(data.get("quantities"), list):
            var = var if var is not None else "input"
            raise self._graphql_error(
                f"Variable ${var} of type InventorySetQuantitiesInput! was provided invalid value",
                "INVALID_VARIABLE",
                problems=[
                    {"path": ["quantities"], "explanation": "Expected a list of InventoryQuantityInput"}
                ],
            )
        quantities = data["quantities"]
        if len(quantities) > MAX_QUANTITIES:
            raise self._graphql_error(
                f"The input array size of {len(quantities)} is greater than the maximum allowed"
                f" of {MAX_QUANTITIES}.",
                "MAX_INPUT_SIZE_EXCEEDED",
            )
        # one pass: check each quantity and build its record item (the request comes from orjson, so
        # exact type checks are isinstance checks, and bool is not int)
        known = self._skus
        items = []
        for i, q in enumerate(quantities):
            if not (
                type(q) is dict
                and type(item_id := q.get("inventoryItemId")) is str
                and type(q.get("locationId")) is str
                and type(quantity := q.get("quantity")) is int
            ):
                raise self._graphql_error(
                    "Variable $input of type InventorySetQuantitiesInput! was provided invalid value",
                    "INVALID_VARIABLE",
                    problems=[
                        {
                            "path": ["quantities", i],
                            "explanation": "inventoryItemId, locationId and quantity are required",
                        }
                    ],
                )
            items.append(
                {
                    "sku": known.get(item_id, item_id),
                    "quantity": quantity,
                    "change_from": q.get("changeFromQuantity"),
                    "item_id": item_id,
                }
            )
        idem = (key[0] if key[0] is not None else variables.get(key[1])) if key else None
        return Parsed(("inventorySetQuantities", data, idem), items, cost=MUTATION_COST)

    # ----- handling ----------------------------------------------------------------------------

    def _handle(self, request: Request, parsed: Parsed, call: Call) -> Response:
        root = parsed.data[0]
        if root == "orders":
            return self._handle_orders(parsed, call)
        if root == "inventorySetQuantities":
            _, data, idem = parsed.data
            payload = self._set_quantities(request.path_params["version"], data, idem, call)
            result: dict[str, Any] = {"inventorySetQuantities": payload}
        else:
            _, gids, location = parsed.data
            if root == "inventoryItems" and self.auto_create:
                for item in call.items:
                    self.item_id(item["sku"])
            nodes = [self._item_node(g, location) for g in gids]
            for item, node in zip(call.items, nodes, strict=True):
                item["result"] = "found" if node else "not_found"
            if root == "inventoryItems":
                found = [n for n in nodes if n]
                result = {
                    root: {
                        "nodes": found,
                        "edges": [{"node": n} for n in found],
                        "pageInfo": {"hasNextPage": False, "endCursor": None},
                    }
                }
            else:
                result = {root: nodes if root == "nodes" else nodes[0]}
        return json_response({"data": result, "extensions": self._cost(parsed.cost, parsed.cost)})

    def _handle_orders(self, parsed: Parsed, call: Call) -> Response:
        connection, search, actual = self._orders_result(parsed)
        if self._bucket is not None:  # Shopify charges the actual cost: the rest of the requested goes back
            self._bucket.give(parsed.cost - actual)
        call.cost = actual
        extensions = self._cost(parsed.cost, actual)
        if search:
            extensions["search"] = search
        return json_response({"data": {"orders": connection}, "extensions": extensions})

    def _item_node(self, gid: Any, location: Any) -> dict[str, Any] | None:
        sku = self._skus.get(gid) if isinstance(gid, str) else None
        if sku is None:
            return None
        level = None
        if location in (None, self.location_id):
            level = {
                "id": f"gid://shopify/InventoryLevel/1?inventory_item_id={gid.rsplit('/', 1)[-1]}",
                "location": {"id": self.location_id},
                "quantities": [{"name": "available", "quantity": self._quantities.get(sku, 0)}],
            }
        return {"id": gid, "sku": sku, "tracked": True, "inventoryLevel": level}

    def _set_quantities(self, version: str, data: dict[str, Any], idem: Any, call: Call) -> dict[str, Any]:
        fingerprint = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
        if isinstance(idem, str) and idem in self._idempotency:
            first, payload, ok = self._idempotency[idem]
            code = None
            if first != fingerprint:
                code = "IDEMPOTENCY_KEY_PARAMETER_MISMATCH"
            elif not ok:
                code = "IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED"
            for item in call.items:
                item["result"] = "replayed" if code is None else "not_applied"
            if code is None:
                return payload
            return {
                "inventoryAdjustmentGroup": None,
                "userErrors": [{"code": code, "field": None, "message": code.replace("_", " ").lower()}],
            }
        errors = self._validate(version, data, call)
        if errors and not self.partial_apply:
            for item in call.items:
                item.setdefault("result", "not_applied")
            payload = {"inventoryAdjustmentGroup": None, "userErrors": errors}
        else:
            changes = []
            listed, apply, location_id = self._quantities, self.apply, self.location_id
            for item in call.items:
                if "result" in item:
                    continue
                sku, quantity = item["sku"], item["quantity"]
                before = listed.get(sku, 0)
                apply(sku, quantity)
                item["result"] = "applied"
                changes.append(
                    {
                        "name": "available",
                        "delta": quantity - before,
                        "quantityAfterChange": quantity,
                        "item": {"id": item["item_id"], "sku": sku},
                        "location": {"id": location_id},
                    }
                )
            self._groups += 1
            group = {
                "id": f"gid://shopify/InventoryAdjustmentGroup/{self._groups}",
                "createdAt": _created_at(),
                "reason": data.get("reason"),
                "referenceDocumentUri": data.get("referenceDocumentUri"),
                "changes": changes,
            }
            payload = {"inventoryAdjustmentGroup": group if changes else None, "userErrors": errors}
        if isinstance(idem, str):
            self._idempotency[idem] = (fingerprint, payload, not errors)
        return payload

    def _validate(self, version: str, data: dict[str, Any], call: Call) -> list[dict[str, Any]]:
        """userErrors of the whole input, then of each quantity (marking that item's result)."""
        errors = _input_errors(data)
        if errors:  # the input as a whole is invalid: nothing can be applied, even partially
            for item in call.items:
                item["result"] = "not_applied"
            return errors
        seen: set[tuple[str, str]] = set()
        cas_required = version >= CAS_REQUIRED_FROM
        for i, (q, item) in enumerate(zip(data["quantities"], call.items, strict=True)):
            pair = (q["inventoryItemId"], q["locationId"])
            found = self._quantity_error(q, item["sku"], pair in seen, cas_required)
            seen.add(pair)
            if found is not None:
                code, field, message = found
                errors.append({"code": code, "field": ["input", "quantities", str(i), field], "message": message})
                item["result"] = code or "CHANGE_FROM_QUANTITY_REQUIRED"
        return errors

    def _quantity_error(self, q: dict[str, Any], sku: str, duplicate: bool,
                        cas_required: bool) -> tuple[str | None, str, str] | None:
        """(code, field, message) of the first thing wrong with one quantity, as Shopify checks them."""
        quantity = q["quantity"]
        checks = (
            (q["inventoryItemId"] not in self._skus, "INVALID_INVENTORY_ITEM", "inventoryItemId",
             "The specified inventory item could not be found."),
            (q["locationId"] != self.location_id, "INVALID_LOCATION", "locationId",
             "The specified location could not be found."),
            (duplicate, "NO_DUPLICATE_INVENTORY_ITEM_ID_GROUP_ID_PAIR", "inventoryItemId",
             "The combination of inventoryItemId and locationId must be unique."),
            (quantity < 0, "INVALID_QUANTITY_NEGATIVE", "quantity", "The quantity can't be negative."),
            (quantity > 1_000_000_000, "INVALID_QUANTITY_TOO_HIGH", "quantity",
             "The total quantity can't be higher than 1,000,000,000."),
            (cas_required and "changeFromQuantity" not in q, None, "changeFromQuantity",
             "changeFromQuantity is required: pass the expected quantity, or null to skip the check."),
            (q.get("changeFromQuantity") is not None and q["changeFromQuantity"] != self._quantities.get(sku, 0),
             "CHANGE_FROM_QUANTITY_STALE", "changeFromQuantity",
             "The changeFromQuantity value does not match persisted value."),
            (self.rejected(sku), "NON_MUTABLE_INVENTORY_ITEM", "inventoryItemId",
             "The specified inventory item is not allowed to be adjusted via API."),
        )
        return next(((code, field, message) for wrong, code, field, message in checks if wrong), None)


def _input_errors(data: dict[str, Any]) -> list[dict[str, Any]]:
    """userErrors of the input as a whole (its name, reason and reference document)."""
    errors = []
    uri = data.get("referenceDocumentUri")
    for wrong, code, field, message in (
        (data.get("name") != "available", "INVALID_NAME", "name",
         "The quantity name must be 'available' (the only one simulated)."),
        (data.get("reason") not in REASONS, "INVALID_REASON", "reason", "The specified reason is invalid."),
        (uri is not None and not (isinstance(uri, str) and _URI.match(uri)), "INVALID_REFERENCE_DOCUMENT",
         "referenceDocumentUri", "The specified reference document is invalid."),
    ):
        if wrong:
            errors.append({"code": code, "field": ["input", field], "message": message})
    return errors


def _arg(query: str, field: str, name: str, variables: dict[str, Any]) -> Any:
    """The value of argument ``name`` of ``field`` in ``query``: a variable, a string or a list
    of strings (enough for the documents an adapter sends; not a GraphQL parser)."""
    m = re.search(rf"\b{field}\s*\([^)]*?\b{name}\s*:\s*{_VALUE}", query)
    if m is None:
        return None
    raw = m.group(1)
    if raw.startswith("$"):
        return variables.get(raw[1:])
    if raw.startswith("["):
        return re.findall(r'"((?:[^"\\]|\\.)*)"', raw)
    return orjson.loads(raw)
