"""Checking input wherever it comes from (HTTP bodies, marketplace payloads read by the order pollers, the
CLI): each check names the field it refuses, and raises Invalid, which the HTTP side answers with 422
(400 for a body that is not JSON) and `{"error", "message", "field"}`.
"""

from __future__ import annotations

from typing import Any

import orjson

from .limits import MAX_QTY, MAX_SKU_BYTES


class Invalid(ValueError):
    """Bad input: nothing was changed. `field` names what to fix."""

    def __init__(self, message: str, field: str | None = None, code: str = "invalid") -> None:
        super().__init__(message)
        self.field, self.code = field, code


def invalid(field: str, message: str) -> Invalid:
    return Invalid(f"{field}: {message}", field)


def parse_json(body: bytes) -> Any:
    if not body:
        raise Invalid("the body is empty; a JSON document is expected", code="invalid_json")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise Invalid(f"the body is not valid JSON: {e}", code="invalid_json") from None


def want_object(value: Any, field: str) -> dict:
    if not isinstance(value, dict):
        raise invalid(field, "must be a JSON object")
    return value


def want_list(value: Any, field: str, max_items: int, min_items: int = 1) -> list:
    if not isinstance(value, list):
        raise invalid(field, "must be a JSON array")
    if not min_items <= len(value) <= max_items:
        raise invalid(field, f"must have {min_items} to {max_items} items, has {len(value)}")
    return value


def want_int(value: Any, field: str, low: int, high: int = MAX_QTY) -> int:
    # bool is an int in Python and 2.0 is a float in JSON: neither is a quantity.
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(field, f"must be an integer, got {_kind(value)}")
    if not low <= value <= high:
        raise invalid(field, f"must be between {low} and {high}, got {value}")
    return value


def want_str(value: Any, field: str, max_bytes: int = 255) -> str:
    if not isinstance(value, str) or not value:
        raise invalid(field, "must be a non-empty string")
    if len(value.encode()) > max_bytes:
        raise invalid(field, f"must be at most {max_bytes} bytes")
    return value


def want_sku(value: Any, field: str = "sku") -> str:
    sku = want_str(value, field, MAX_SKU_BYTES)
    if any(ord(c) < 32 for c in sku):
        raise invalid(field, "must not contain control characters")
    return sku


def check_keys(doc: dict, allowed: set[str], where: str = "") -> None:
    extra = sorted(set(doc) - allowed)
    if extra:
        raise invalid(f"{where}{extra[0]}", "unknown field")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", float: "a number with a fraction", str: "a string", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)
