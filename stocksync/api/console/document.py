"""The console's part of the OpenAPI document (stocksync.api.openapi merges PATHS into its paths): the
pages, their static files, and the three reads the console needs beyond the rest of /v1."""

from __future__ import annotations

from .pages import PAGES

AUTH = [{"bearer": []}]
ERROR = {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
HTML = {"description": "An HTML page (no data: its script fetches the /v1 API with the token it asks for)",
        "content": {"text/html": {"schema": {"type": "string"}}}}
SKU = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[^\\x00-\\x1f]+$"}


def json(schema: dict, description: str = "JSON") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def read(summary: str, scopes: str, schema: dict, parameters: list, description: str) -> dict:
    return {"summary": summary, "security": AUTH, "parameters": parameters,
            "description": f"{description}\n\nScope: {scopes}.",
            "responses": {"200": json(schema), "401": ERROR, "403": ERROR, "422": ERROR}}


LISTED = {"type": "object", "properties": {
    "listed": {"type": "integer", "description": "the channel's rules applied to available"},
    "accepted_version": {"type": "integer", "description": "the last version the channel accepted (0: none)"},
    "current": {"type": "boolean", "description": "the channel accepted the SKU's current version"},
    "auto_buffer": {"type": "boolean", "description": "buffer = \"auto\": listed is before the risk model's buffer"}}}
LISTINGS = {"type": "object", "required": ["channels", "skus", "next_cursor"], "properties": {
    "channels": {"type": "object", "description": "channel -> its kind and rules",
                 "additionalProperties": {"type": "object"}},
    "skus": {"type": "array", "items": {"type": "object", "properties": {
        "sku": SKU, "available": {"type": "integer"}, "version": {"type": "integer"},
        "stock": {"type": "object", "description": "every field of the SKU's hash (reserved, on_hand, committed "
                                                   "where kept)"},
        "channels": {"type": "object", "additionalProperties": LISTED}}}},
    "next_cursor": {"type": ["string", "null"]}}}
EVENT = {"type": "object", "properties": {
    "id": {"type": "string"}, "type": {"enum": ["stock.changed", "stock.rejected"]}, "delta": {"type": "integer"},
    "available": {"type": "integer"}, "version": {"type": "integer"}, "source": {"type": "string"},
    "ref": {"type": "string"}, "reason": {"type": "string"}, "ts_ms": {"type": "integer"}}}
HISTORY = {"type": "object", "required": ["sku", "events", "next_before"], "properties": {
    "sku": SKU, "stock": {"type": ["object", "null"]}, "events": {"type": "array", "items": EVENT},
    "next_before": {"type": ["string", "null"], "description": "pass as `before` for older events; null: none"},
    "scanned": {"type": "integer", "description": "stream entries read"}}}


def query(name: str, schema: dict, description: str = "", required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


PATHS = {
    **{page.path: {"get": {"summary": f"Console: {page.title}", "responses": {"200": HTML}}} for page in PAGES},
    "/console/static/{name}": {"get": {
        "summary": "A file of the console (CSS, JavaScript, icon), served from the package",
        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "the file", "content": {"text/css": {"schema": {"type": "string"}},
                                                                     "text/javascript": {"schema": {"type": "string"}},
                                                                     "image/svg+xml": {"schema": {"type": "string"}}}},
                      "304": {"description": "not modified (If-None-Match)"}, "404": ERROR}}},
    "/v1/whoami": {"get": {
        "summary": "The token's name and scopes", "security": AUTH,
        "description": "Any valid token may ask (the console shows only the actions its scopes allow).",
        "responses": {"200": json({"type": "object", "properties": {
            "token": {"type": ["string", "null"]}, "scopes": {"type": "array", "items": {"type": "string"}}}}),
            "401": ERROR}}},
    "/v1/skus:listings": {"get": read(
        "A page of SKUs with what each channel lists and the version it accepted", "stock:read and channels:read",
        LISTINGS, [query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                   query("cursor", {"type": "string"}, "the `next_cursor` of the previous page (opaque)"),
                   query("prefix", {"type": "string"}, "only SKUs that start with this")],
        "The page of GET /v1/skus (same cursor) with each SKU's hash and, per channel, its rules applied to "
        "available and the last version it accepted.")},
    "/v1/skus:history": {"get": read(
        "A SKU's events, newest first", "events:read", HISTORY,
        [query("sku", SKU, "the canonical SKU", required=True),
         query("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
         query("before", {"type": "string", "pattern": "^\\d+-\\d+$"}, "the `next_before` of the previous reply")],
        "Read backwards from the SKU's partition stream, at most 20,000 entries a call (go on with next_before).")},
}
