"""The OpenAPI 3.1 document of the API, written by hand to match what the endpoints accept and return.

tests/test_api_schemathesis.py checks that every route is documented and runs schemathesis against it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson

from stocksync import __version__, functions
from stocksync.library import Status
from stocksync.limits import (
    MAX_BUNDLE_COMPONENTS,
    MAX_BUNDLE_QTY,
    MAX_HOLD_MS,
    MAX_ORDER_LINES,
    MAX_QTY,
    MAX_VERSION,
)
from stocksync.orders.rejections import ACTIONS

from .auth import SCOPES
from .console.document import PATHS as CONSOLE_PATHS


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str = "") -> dict:
    return {"description": description or "JSON", "content": {"application/json": {"schema": schema}}}


ERR = _json(_ref("Error"), "Error")

SKU = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[^\\x00-\\x1f]+$"}
SKU_PATH = {**SKU, "pattern": "^[^\\x00-\\x1f/]+$", "description": "a SKU with '/' cannot be addressed in a path"}
QTY = {"type": "integer", "minimum": 0, "maximum": MAX_QTY}
VERSION = {"type": "integer", "minimum": 0, "maximum": MAX_VERSION}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error", "message"], "properties": {
        "error": {"type": "string"}, "message": {"type": "string"},
        "field": {"type": "string", "description": "the request field at fault (422)"}}},
    "Stock": {"type": "object", "required": ["sku", "available", "reserved", "version", "updated_ms", "source"],
              "description": "available = on_hand - committed - reserved; a bundle has no on_hand (null) and lists "
                             "its components", "properties": {
                  "sku": SKU, "available": QTY, "reserved": QTY, "version": VERSION, "updated_ms": {"type": "integer"},
                  "source": {"type": "string"}, "on_hand": {"type": ["integer", "null"]}, "committed": QTY,
                  "components": {"type": "object", "additionalProperties": {"type": "integer"}},
                  "bundles": {"type": "array", "items": SKU}}},
    "Count": {"type": "object", "required": ["on_hand"], "additionalProperties": False,
              "properties": {"on_hand": QTY, "expected_version": VERSION}},
    "Qty": {"type": "object", "required": ["qty"], "additionalProperties": False,
            "properties": {"qty": {"type": "integer", "minimum": 1, "maximum": MAX_QTY}}},
    "Components": {"type": "object", "minProperties": 1, "maxProperties": MAX_BUNDLE_COMPONENTS,
                   "propertyNames": SKU, "additionalProperties": {"type": "integer", "minimum": 1, "maximum": MAX_BUNDLE_QTY}},
    "Bundle": {"type": "object", "required": ["components"], "additionalProperties": False,
               "properties": {"components": _ref("Components")}},
    "Reserve": {"type": "object", "required": ["lines", "ttl_s"], "additionalProperties": False, "properties": {
        "lines": {"type": "object", "minProperties": 1, "maxProperties": MAX_ORDER_LINES, "propertyNames": SKU,
                  "additionalProperties": {"type": "integer", "minimum": 1, "maximum": MAX_QTY}},
        "ttl_s": {"type": "integer", "minimum": 1, "maximum": MAX_HOLD_MS // 1000}}},
    "Ship": {"type": "object", "required": ["lines"], "additionalProperties": False, "properties": {
        "lines": {"type": "array", "minItems": 1, "maxItems": MAX_ORDER_LINES, "items": {
            "type": "object", "required": ["line_id"], "additionalProperties": False, "properties": {
                "line_id": {"type": "string", "minLength": 1, "maxLength": 100},
                "qty": {"type": "integer", "minimum": 1, "maximum": MAX_QTY,
                        "description": "left out: the whole line"}}}}}},
    "Rules": {"type": "object", "minProperties": 1, "additionalProperties": False, "properties": {
        "buffer": {"oneOf": [{"type": "integer", "minimum": 0, "maximum": MAX_QTY}, {"const": "auto"}]},
        "max_listed": QTY, "end_when": QTY}},
    "Outcome": {"type": "object", "required": ["sku", "status", "available", "version", "replayed"],
                "properties": {"sku": SKU, "status": {"enum": [s.value for s in Status]},
                               "available": QTY, "version": VERSION, "replayed": {"type": "boolean"}}},
    "SetStock": {"type": "object", "required": ["available"], "additionalProperties": False,
                 "properties": {"available": QTY, "expected_version": {
                     **VERSION, "description": "refuse with 409 unless the SKU is at this version (0: new SKU)"}}},
    "Adjust": {"type": "object", "required": ["delta"], "additionalProperties": False,
               "properties": {"delta": {"type": "integer", "minimum": -MAX_QTY, "maximum": MAX_QTY, "not": {"const": 0}}}},
    "Batch": {"type": "object", "required": ["items"], "additionalProperties": False, "properties": {
        "items": {"type": "array", "minItems": 1, "maxItems": 1000, "items": {
            "type": "object", "required": ["sku", "available"], "additionalProperties": False,
            "properties": {"sku": SKU, "available": QTY, "expected_version": VERSION}}}}},
    "BatchResult": {"type": "object", "required": ["results"], "properties": {
        "results": {"type": "array", "items": _ref("Outcome")}}},
    "Order": {"type": "object", "required": ["lines"], "additionalProperties": False, "properties": {
        "lines": {"type": "array", "minItems": 1, "maxItems": MAX_ORDER_LINES, "items": {
            "type": "object", "required": ["sku", "qty"], "additionalProperties": False,
            "properties": {"sku": SKU, "qty": {"type": "integer", "minimum": 1, "maximum": MAX_QTY}}}}}},
    "OrderLine": {"type": "object", "properties": {
        "sku": SKU, "qty": {"type": "integer"}, "available": {"type": ["integer", "null"]},
        "version": {"type": ["integer", "null"]}}},
    "OrderResult": {"type": "object", "required": ["status", "lines", "replayed"], "properties": {
        "status": {"const": "ok"}, "lines": {"type": "array", "items": _ref("OrderLine")},
        "replayed": {"type": "boolean"}}},
    "OrderShort": {"type": "object", "required": ["error", "message", "short_lines"], "properties": {
        "error": {"const": "insufficient"}, "message": {"type": "string"},
        "short_lines": {"type": "array", "items": _ref("OrderLine")},
        "lines": {"type": "array", "items": _ref("OrderLine")}, "replayed": {"type": "boolean"}}},
    "Rejection": {"type": "object", "required": ["channel", "order_id", "lines", "ts_ms"], "properties": {
        "channel": {"type": "string"}, "order_id": {"type": "string"}, "ts_ms": {"type": "integer"},
        "lines": {"type": "array", "items": {"type": "object", "properties": {
            "line": {"type": "string", "description": "the line's key (order and line ids)"},
            "line_id": {"type": "string"}, "channel_sku": {"type": ["string", "null"]},
            "sku": {"type": ["string", "null"]}, "qty": {"type": "integer"},
            "reason": {"enum": list(ACTIONS)}, "available": {"type": ["integer", "null"]},
            "action": {"enum": sorted({a for a, _ in ACTIONS.values()}), "description": (
                "cancel: cancel the line at the marketplace; fix_map: fix the SKU map (or create the SKU), "
                "then POST .../{order_id}:apply; none: nothing to do but resolve")},
            "hint": {"type": "string"}}}}}},
    "SkuMapEntry": {"type": "object", "required": ["sku"], "additionalProperties": False,
                    "properties": {"sku": SKU}},
    "SkuPage": {"type": "object", "required": ["skus", "next_cursor"], "properties": {
        "skus": {"type": "array", "items": _ref("Stock")},
        "next_cursor": {"type": ["string", "null"], "description": "pass as `cursor` for the next page; null: done"}}},
    "ImportReport": {"type": "object", "required": ["rows", "applied", "replayed", "refused", "dry_run"], "properties": {
        "rows": {"type": "integer", "description": "data rows in the file"},
        "applied": {"type": "integer", "description": "rows set now"},
        "replayed": {"type": "integer", "description": "rows set by an earlier import of the same file (unchanged)"},
        "refused": {"type": "array", "items": {"type": "object", "required": ["line", "sku", "reason"], "properties": {
            "line": {"type": "integer"}, "sku": {"type": "string"}, "reason": {"type": "string"}}}},
        "dry_run": {"type": "boolean"},
        "new": {"type": "integer"}, "changed": {"type": "integer"}, "unchanged": {"type": "integer"}}},
    "WebhookResult": {"type": "object", "required": ["status"], "properties": {
        "status": {"enum": ["applied", "duplicate", "ignored"]}, "event": {"type": "string"},
        "reason": {"type": "string"}, "lines": {"type": "array", "items": {"type": "object"}}}},
}

AUTH = [{"bearer": []}]
IDEM = {"name": "Idempotency-Key", "in": "header", "required": True,
        "description": "required; not stored for this operation: sent again, the request runs again (safe to "
                       "repeat; no Idempotent-Replayed header)",
        "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[!-~]+$"}}
# The writes that replay their first outcome: the key names one request (method, path and body).
IDEM_REPLAYED = {**IDEM, "description": (
    "names one request: the same key with the same method, path and body (the same JSON document; key order "
    "and spacing do not count) changes nothing and answers the first outcome (Idempotent-Replayed: true); "
    "with another body (or method, or path) it is refused with "
    "422 `idempotency_key_reused` and changes nothing. Kept as long as references (STOCKSYNC_IDEM_TTL, 48 h "
    "by default); a request refused before it changed anything (400, 413, 422 on a field) does not take it")}
SKU_PARAM = {"name": "sku", "in": "path", "required": True, "schema": SKU_PATH,
             "description": "the canonical SKU; it may hold '/' (as is, or percent-encoded as %2F)"}
CHANNEL_PARAM = {"name": "channel", "in": "path", "required": True, "schema": {"type": "string"}}
AUTH_ERRORS = {"401": ERR, "403": ERR}
BODY_ERRORS = {"400": ERR, "413": ERR, "422": ERR}
REPLAYED_ERRORS = {**BODY_ERRORS, "422": _json(_ref("Error"), "A field is invalid (`invalid`, with `field`), or the "
                                             "Idempotency-Key was first sent with another request "
                                             "(`idempotency_key_reused`)")}


def _op(summary: str, scope: str | None, responses: dict, **extra: Any) -> dict:
    op = {"summary": summary, "responses": responses, **extra}
    if scope:
        op["security"] = AUTH
        op["description"] = (extra.get("description", "") + f"\n\nScope: `{scope}`.").strip()
        op["responses"] = {**responses, **AUTH_ERRORS}
    return op


def _body(schema: dict) -> dict:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _webhook(name: str, headers: str) -> dict:
    return _op(f"{name} webhook", None, {"200": _json(_ref("WebhookResult")), "401": ERR, "404": ERR,
                                         "503": ERR, **BODY_ERRORS},
               description=f"Verified before it is parsed ({headers}); each order line is applied exactly once. "
                           "200 once the changes are as durable as STOCKSYNC_DURABILITY says; 503 (Redis "
                           "unavailable, or `not_durable`) asks for the delivery again, applied once.",
               parameters=[CHANNEL_PARAM],
               requestBody={"required": True, "content": {"application/json": {"schema": {"type": "object"}}}})


PATHS = {
    "/webhooks/{channel}": {"post": _webhook(
        "Shopify, Amazon or Flipkart (by the channel's kind)",
        "Shopify: X-Shopify-Hmac-Sha256; Amazon: the configured token header; Flipkart: X_Date and X_Authorization")},
    "/v1/skus/{sku}": {
        "parameters": [SKU_PARAM],
        "get": _op("A SKU's stock", "stock:read", {"200": _json(_ref("Stock")), "404": ERR, "422": ERR}),
        "put": _op("Set the absolute quantity (creates the SKU)", "stock:write",
                   {"200": _json(_ref("Outcome")), "409": ERR, **REPLAYED_ERRORS},
                   parameters=[IDEM_REPLAYED], requestBody=_body(_ref("SetStock"))),
    },
    "/v1/skus/{sku}/adjust": {"parameters": [SKU_PARAM], "post": _op(
        "Add or remove units", "stock:write", {"200": _json(_ref("Outcome")), "404": ERR, "409": ERR, **REPLAYED_ERRORS},
        parameters=[IDEM_REPLAYED], requestBody=_body(_ref("Adjust")))},
    "/v1/skus:batch": {"post": _op(
        "Set many SKUs (initial import)", "stock:write", {"200": _json(_ref("BatchResult")), **REPLAYED_ERRORS},
        parameters=[IDEM_REPLAYED], requestBody=_body(_ref("Batch")))},
    "/v1/skus": {"get": _op(
        "A page of SKUs with their stock (SCAN over every partition: in no particular order)", "stock:read",
        {"200": _json(_ref("SkuPage")), "422": ERR},
        description="A page holds at most `limit` SKUs, possibly fewer (even none, for a rare prefix): go on "
                    "with `next_cursor` until it is null. A SKU created during the walk may be missed, and one "
                    "may come twice.",
        parameters=[{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"},
                     "description": "the `next_cursor` of the previous page (opaque)"},
                    {"name": "prefix", "in": "query", "schema": {"type": "string"},
                     "description": "only SKUs that start with this (the cursor keeps it)"}])},
    "/v1/skus:import": {"post": _op(
        "Set SKUs' quantities from a CSV file, each row exactly once", "stock:write",
        {"200": _json(_ref("ImportReport")), **BODY_ERRORS},
        description="The body is CSV whose first line names the columns sku, available and optionally "
                    "expected_version (an export's columns are accepted). Each row is applied under a reference "
                    "made of the file's content and its line: the same file imported again changes nothing. "
                    "Rows that cannot be read, or whose expected_version differs, are refused with their line; "
                    "the others are imported.",
        parameters=[{"name": "dry_run", "in": "query", "schema": {"type": "boolean"},
                     "description": "change nothing: say what each row would do"},
                    {**IDEM, "required": False, "description": "required unless dry_run; bound to the file's "
                     "content (the same key with another file: 422)"}],
        requestBody={"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}})},
    "/v1/skus:export": {"get": _op(
        "Every SKU with its stock, as CSV (importable as it is)", "stock:read",
        {"200": {"description": "CSV: sku,available,reserved,version,updated_ms,source",
                 "content": {"text/csv": {"schema": {"type": "string"}}}}})},
    "/v1/orders": {"post": _op(
        "Take a multi-line order, all or nothing", "orders:write",
        {"200": _json(_ref("OrderResult")), "404": ERR, "409": _json(_ref("OrderShort"), "Short lines"),
         **REPLAYED_ERRORS}, parameters=[IDEM_REPLAYED], requestBody=_body(_ref("Order")))},
    "/v1/events": {"get": _op(
        "Every stock event as server-sent events", "events:read",
        {"200": {"description": "text/event-stream; each id: resumes through Last-Event-ID",
                 "content": {"text/event-stream": {"schema": {"type": "string"}}}}, "400": ERR, "422": ERR},
        parameters=[
            {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"},
             "description": "resume after this id: field (an entry ID, or one per partition joined by commas); "
                            "0 (or a time in ms) starts from the beginning (or that time)"},
            {"name": "since", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "the same as Last-Event-ID"},
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 0}, "description": "end after this many events"}])},
    "/v1/rejections": {"get": _op(
        "Orders with lines that could not be covered", "stock:read",
        {"200": _json({"type": "object", "properties": {"rejections": {"type": "array", "items": _ref("Rejection")}}}),
         "404": ERR, "422": ERR},
        parameters=[{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    {"name": "channel", "in": "query", "schema": {"type": "string"}}])},
    "/v1/rejections/{channel}/{order_id}:apply": {"post": _op(
        "Take again the order's lines whose SKU map was fixed (action fix_map); a line taken leaves the list",
        "orders:write", {"200": _json({"type": "object", "properties": {
            "channel": {"type": "string"}, "order_id": {"type": "string"},
            "lines": {"type": "array", "items": {"type": "object"}},
            "remaining": {"type": "array", "items": {"type": "object"}}}}), "400": ERR, "404": ERR},
        parameters=[CHANNEL_PARAM, {"name": "order_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    IDEM])},
    "/v1/rejections/{channel}/{order_id}": {"delete": _op(
        "Mark a rejected order as handled", "orders:write", {"204": {"description": "removed"}, "400": ERR, "404": ERR},
        parameters=[CHANNEL_PARAM, {"name": "order_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    IDEM])},
    "/v1/channels": {"get": _op(
        "Per channel: lag, pending, dead letters, circuit state (from the workers' heartbeats)", "channels:read",
        {"200": _json({"type": "object", "properties": {"channels": {"type": "object"}}})})},
    "/v1/channels/{channel}/dead-letters": {"get": _op(
        "A channel's dead letters, oldest first", "channels:read",
        {"200": _json({"type": "object", "properties": {"channel": {"type": "string"},
                                                        "dead_letters": {"type": "array", "items": {"type": "object"}}}}),
         "404": ERR, "422": ERR},
        parameters=[CHANNEL_PARAM, {"name": "limit", "in": "query",
                                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}])},
    "/v1/channels/{channel}/dead-letters:replay": {"post": _op(
        "Push the dead-lettered SKUs' current quantity again (all, or the SKUs / dead-letter ids given)",
        "channels:write",
        {"200": _json({"type": "object"}), "502": _json({"type": "object"}, "Some pushes failed"), "404": ERR,
         "503": ERR, **BODY_ERRORS},
        parameters=[CHANNEL_PARAM, IDEM],
        requestBody=_body({"type": "object", "additionalProperties": False, "properties": {
            "skus": {"type": "array", "minItems": 1, "maxItems": 1000, "items": SKU},
            "ids": {"type": "array", "minItems": 1, "maxItems": 1000,
                    "items": {"type": "string", "minLength": 1, "maxLength": 64}}}}))},
    "/v1/channels/{channel}/sku-map": {"get": _op(
        "A channel's SKU map (config and edits)", "channels:read",
        {"200": _json({"type": "object", "properties": {"channel": {"type": "string"}, "map": {"type": "object"},
                                                        "config": {"type": "object"}, "edited": {"type": "object"}}}),
         "404": ERR}, parameters=[CHANNEL_PARAM])},
    "/v1/channels/{channel}/sku-map/{channel_sku}": {
        "parameters": [CHANNEL_PARAM, {"name": "channel_sku", "in": "path", "required": True, "schema": SKU_PATH}],
        "put": _op("Map a channel SKU to a canonical SKU", "channels:write",
                   {"200": _json({"type": "object"}), "404": ERR, **BODY_ERRORS},
                   parameters=[IDEM], requestBody=_body(_ref("SkuMapEntry"))),
        "delete": _op("Remove an edited mapping", "channels:write",
                      {"204": {"description": "removed"}, "400": ERR, "404": ERR, "422": ERR}, parameters=[IDEM]),
    },
    **{f"/v1/skus/{{sku}}/{op}": {"parameters": [SKU_PARAM], "post": _op(
        summary, "stock:write", {"200": _json(_ref("Outcome")), "404": ERR, "409": ERR, **REPLAYED_ERRORS},
        parameters=[IDEM_REPLAYED], requestBody=_body(_ref(body)))} for op, summary, body in (
        ("count", "A warehouse count: on_hand is set, committed stays (409 below committed + reserved)", "Count"),
        ("ship", "Units of sold lines left: out of committed and on_hand", "Qty"),
        ("cancel", "Units of sold lines will not ship: back to available", "Qty"))},
    "/v1/orders/{channel}/{order_id}:ship": {"post": _op(
        "Lines of a marketplace order shipped (as its fulfillment webhook would say)", "orders:write",
        {"200": _json({"type": "object"}), "404": ERR, **REPLAYED_ERRORS},
        parameters=[CHANNEL_PARAM, {"name": "order_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    IDEM_REPLAYED], requestBody=_body(_ref("Ship")))},
    "/v1/bundles": {"get": _op("Every bundle", "stock:read", {"200": _json({"type": "object"})})},
    "/v1/bundles/{sku}": {
        "parameters": [SKU_PARAM],
        "get": _op("A bundle", "stock:read", {"200": _json({"type": "object"}), "404": ERR, "422": ERR}),
        "put": _op("Define or redefine a bundle (a multipack: one component)", "stock:write",
                   {"200": _json({"type": "object"}), **BODY_ERRORS}, parameters=[IDEM], requestBody=_body(_ref("Bundle"))),
        "delete": _op("It stops being a bundle: a plain SKU at 0", "stock:write",
                      {"200": _json({"type": "object"}), "400": ERR, "404": ERR, "422": ERR}, parameters=[IDEM]),
    },
    "/v1/reservations": {"post": _op(
        "Hold every line or none for ttl_s (a checkout)", "orders:write",
        {"200": _json({"type": "object"}, "Replayed"), "201": _json({"type": "object"}, "Held"), "404": ERR,
         "409": ERR, **REPLAYED_ERRORS}, parameters=[IDEM_REPLAYED], requestBody=_body(_ref("Reserve")))},
    "/v1/reservations/{id}": {
        "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "get": _op("A reservation's state", "stock:read", {"200": _json({"type": "object"}), "404": ERR}),
        "delete": _op("Release a reservation", "orders:write",
                      {"200": _json({"type": "object"}), "400": ERR, "404": ERR, "409": ERR}, parameters=[IDEM]),
    },
    "/v1/reservations/{id}:commit": {"post": _op(
        "A held reservation becomes a sale", "orders:write", {"200": _json({"type": "object"}), "400": ERR, "404": ERR,
                                                               "409": ERR},
        parameters=[{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}, IDEM])},
    "/v1/channels/{channel}/rules": {"get": _op(
        "A channel's rules and every SKU's overrides", "channels:read", {"200": _json({"type": "object"}), "404": ERR},
        parameters=[CHANNEL_PARAM])},
    "/v1/channels/{channel}/rules/{sku}": {
        "parameters": [CHANNEL_PARAM, SKU_PARAM],
        "get": _op("A SKU's rules on a channel", "channels:read", {"200": _json({"type": "object"}), "404": ERR, "422": ERR}),
        "put": _op("Override a SKU's buffer, max_listed, end_when on a channel (pushed again at once)", "channels:write",
                   {"200": _json({"type": "object"}), "404": ERR, **BODY_ERRORS}, parameters=[IDEM],
                   requestBody=_body(_ref("Rules"))),
        "delete": _op("Back to the channel's rules", "channels:write",
                      {"204": {"description": "removed"}, "400": ERR, "404": ERR, "422": ERR}, parameters=[IDEM]),
    },
    "/healthz": {"get": _op("The process is up", None, {"200": _json({"type": "object"})})},
    "/readyz": {"get": _op("Redis is reachable and the function library is at the expected version", None,
                           {"200": _json({"type": "object"}), "503": _json({"type": "object"})})},
    "/metrics": {"get": _op("Prometheus metrics", None,
                            {"200": {"description": "Prometheus text format",
                                     "content": {"text/plain": {"schema": {"type": "string"}}}}})},
    "/openapi.json": {"get": _op("This document", None, {"200": _json({"type": "object"})})},
}


def document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "stocksync", "version": __version__, "x-function-library-version": functions.library_version(),
                 "description": "Webhooks in, stock admin, health and metrics. Scopes: " + ", ".join(SCOPES)},
        "paths": {**PATHS, **CONSOLE_PATHS},
        "components": {"schemas": SCHEMAS, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


@cache
def document_bytes() -> bytes:
    return orjson.dumps(document())
