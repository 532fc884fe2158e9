"""Flipkart Marketplace Seller API simulator: listings v3 inventory update, up to 10 SKUs a call.

``POST /sellers/listings/v3/update/inventory`` with ``Authorization: Bearer <access token>`` and a
body that maps each SKU to its update::

    {"SKU-1": {"product_id": "MOBFDG3VACEXZEYZ",
               "locations": [{"id": "LOC0123456789abcdef0123456789abcdef", "inventory": 7}]}}

answers 200 with one ListingChangeResponse per SKU, each applied on its own::

    {"SKU-1": {"status": "SUCCESS", "errors": [], "attribute_errors": []},
     "SKU-2": {"status": "FAILURE", "errors": [{"severity": "ERROR", "code": 6003,
               "description": "..."}], "attribute_errors": []}}

A SKU fails when its ``product_id`` (the FSN, 13 to 16 characters) or a location is missing or
wrong, an inventory is not a non-negative integer, or the SKU is in ``reject_skus``. More than 10
SKUs, or a body that is not such a map, answers 400 and changes nothing. The seller has one
location, ``sim.location_id``. Error codes and the bodies of 400/401 are the simulator's own (the
public docs do not show them): an adapter should go by ``status`` and the HTTP status.

The simulator also sells: order notifications and the v3 shipment search (``flipkart_orders``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .base import Call, Faults, Parsed, is_int, json_response
from .flipkart_orders import FlipkartOrders
from .market import MarketSim

INVENTORY_PATH = "/sellers/listings/v3/update/inventory"
MAX_SKUS = 10


class FlipkartSim(FlipkartOrders, MarketSim):
    name = kind = "flipkart"  # kind: its entry in stocksync.channels.KINDS

    def __init__(
        self,
        faults: Faults | None = None,
        *,
        access_token: str = "flipkart-stocksync-simulator",
        location_id: str = "LOC0123456789abcdef0123456789abcdef",
    ) -> None:
        self.access_token, self.location_id = access_token, location_id
        super().__init__(faults)

    def auth_headers(self, body: bytes = b"") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}", "Content-Type": "application/json"}

    def api_routes(self) -> list[Route]:
        return [Route(INVENTORY_PATH, self.endpoint(self._parse, self._handle), methods=["POST"]), *self.order_routes()]

    def authorized(self, request: Request, body: bytes) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.access_token}"

    def error_response(self, kind: str, status: int, message: str) -> Response:
        if kind == "unauthorized":  # the shape of Flipkart's OAuth service (Spring Security OAuth)
            return json_response(
                {"error": "invalid_token", "error_description": "Invalid access token"}, status
            )
        return json_response(
            {"errors": [{"severity": "ERROR", "code": status, "description": message}]}, status
        )

    def _parse(self, request: Request, body: bytes) -> Parsed:
        doc = self.load_json(body)
        if not isinstance(doc, dict) or not doc:
            raise self.bad_request("expected a non-empty map of SKU to inventory update")
        if len(doc) > MAX_SKUS:
            raise self.bad_request(f"Max batch size allowed is {MAX_SKUS}, got {len(doc)}")
        items = []
        for sku, update in doc.items():
            update = update if isinstance(update, dict) else {}
            locations = update.get("locations") if isinstance(update.get("locations"), list) else []
            quantity = next((loc.get("inventory") for loc in locations if isinstance(loc, dict)), None)
            items.append({"sku": sku, "quantity": quantity, "product_id": update.get("product_id")})
        return Parsed(doc, items)

    def _handle(self, request: Request, parsed: Parsed, call: Call) -> Response:
        reply: dict[str, Any] = {}
        doc, apply = parsed.data, self.apply
        for item in call.items:
            sku = item["sku"]
            update = doc[sku]
            errors = self._errors(sku, update)
            if errors:
                item["result"] = "FAILURE"
            else:
                for location in update["locations"]:
                    apply(sku, location["inventory"])
                item["result"] = "SUCCESS"
            reply[sku] = {"status": item["result"], "errors": errors, "attribute_errors": []}
        return json_response(reply)

    def _errors(self, sku: str, update: Any) -> list[dict[str, Any]]:
        # the common case first, in one pass: one location, ours, a non-negative int, not rejected
        # (the request comes from orjson: exact type checks are isinstance checks, bool is not int)
        if type(update) is dict:
            fsn, locations = update.get("product_id"), update.get("locations")
            if (
                type(fsn) is str
                and 13 <= len(fsn) <= 16
                and type(locations) is list
                and len(locations) == 1
                and type(location := locations[0]) is dict
                and location.get("id") == self.location_id
                and type(inventory := location.get("inventory")) is int
                and inventory >= 0
                and not self.rejected(sku)
            ):
                return []
        return self._errors_slow(sku, update)

    def _errors_slow(self, sku: str, update: Any) -> list[dict[str, Any]]:
        def error(code: int, description: str, path: str) -> list[dict[str, Any]]:
            return [{"severity": "ERROR", "code": code, "description": description, "path": path}]

        if not isinstance(update, dict):
            return error(6000, "update must be an object with product_id and locations", "")
        fsn = update.get("product_id")
        if not isinstance(fsn, str) or not 13 <= len(fsn) <= 16:
            return error(6001, "product_id must be the listing's FSN (13 to 16 characters)", "product_id")
        locations = update.get("locations")
        if not isinstance(locations, list) or not locations:
            return error(6002, "locations must be a non-empty array", "locations")
        for i, location in enumerate(locations):
            if not isinstance(location, dict) or location.get("id") != self.location_id:
                return error(6002, f"unknown location for this seller: {location!r}", f"locations[{i}].id")
            if not is_int(location.get("inventory")) or location["inventory"] < 0:
                return error(6002, "inventory must be a non-negative integer", f"locations[{i}].inventory")
        if self.rejected(sku):
            return error(6003, f"listing for SKU {sku} cannot be updated (simulated permanent failure)", "")
        return []
