"""The bounds every entry point checks, in one table: the function library's own (tests/test_limits.py holds
them against the `local MAX_... =` constants of lua/stocksync.lua) and the API's.

Python checks them first so that bad input gets a clear message before any call; the library checks them
again, since other services call it directly.
"""

from __future__ import annotations

import hashlib

# The function library's bounds (lua/stocksync.lua; the name there in the comment).
MAX_QTY = 2**31 - 1  # MAX_QTY: a quantity, delta or available
MAX_VERSION = 99_999_999_999  # MAX_VERSION: a version number (11 digits: the library's integer parser)
MAX_DURATION_MS = 99_999_999_999  # MAX_DURATION_MS: a stream retention or idle time
MAX_SKU_BYTES = 255  # MAX_SKU_LEN
MAX_REF_BYTES = 256  # MAX_REF_LEN: a reference (idempotency key)
MAX_SOURCE_BYTES = 64  # MAX_SOURCE_LEN: the source of a change (a channel or service name)
MAX_ORDER_LINES = 250  # MAX_ORDER_LINES: lines of one all-or-nothing order
MAX_CHANNEL_BYTES = 64  # MAX_GROUP_LEN: a channel (consumer group) name in the library
MAX_LEASE_MS = 3_600_000  # MAX_TTL_MS: a push lease
MAX_RESTOCK_ID_BYTES = 200  # MAX_RESTOCK_ID_LEN
MAX_LINE_TTL_S = 315_360_000  # MAX_LINE_TTL_S: an order line's record (10 years)
MAX_ENTRY_ID_BYTES = 41  # MAX_ID_LEN: a stream entry ID (<ms>-<seq>, two 20-digit numbers)
MAX_BUNDLE_COMPONENTS = 20  # MAX_BUNDLE_COMPONENTS: components of one bundle
MAX_BUNDLE_QTY = 99_999  # MAX_BUNDLE_QTY: units of one component in one bundle
MAX_BUNDLES_OF_SKU = 50  # MAX_BUNDLES_OF_SKU: bundles one SKU is a component of (a change updates them all)
MAX_HOLD_MS = 604_800_000  # MAX_HOLD_MS: a reservation's time to live (7 days)
MAX_EXPIRE_COUNT = 500  # MAX_EXPIRE_COUNT: reservations one stocksync_expire call ends

LUA_NAMES = {
    "MAX_QTY": MAX_QTY, "MAX_VERSION": MAX_VERSION, "MAX_DURATION_MS": MAX_DURATION_MS, "MAX_SKU_LEN": MAX_SKU_BYTES, "MAX_REF_LEN": MAX_REF_BYTES,
    "MAX_SOURCE_LEN": MAX_SOURCE_BYTES, "MAX_ORDER_LINES": MAX_ORDER_LINES, "MAX_GROUP_LEN": MAX_CHANNEL_BYTES,
    "MAX_TTL_MS": MAX_LEASE_MS, "MAX_RESTOCK_ID_LEN": MAX_RESTOCK_ID_BYTES, "MAX_LINE_TTL_S": MAX_LINE_TTL_S,
    "MAX_ID_LEN": MAX_ENTRY_ID_BYTES, "MAX_BUNDLE_COMPONENTS": MAX_BUNDLE_COMPONENTS, "MAX_BUNDLE_QTY": MAX_BUNDLE_QTY,
    "MAX_BUNDLES_OF_SKU": MAX_BUNDLES_OF_SKU, "MAX_HOLD_MS": MAX_HOLD_MS, "MAX_EXPIRE_COUNT": MAX_EXPIRE_COUNT,
}

# The API's own.
MAX_BATCH_ITEMS = 1000  # items of one POST /v1/stock:batch
MAX_WEBHOOK_LINES = MAX_ORDER_LINES  # line items of one marketplace order (Shopify's own cap is 250 too)
MAX_RULE_OVERRIDES = 100_000  # per-SKU rule overrides of one channel (a worker holds them all)


def fit(text: str, limit: int, head: str) -> str:
    """`text` if it fits `limit` bytes, else `<head>:#<digest of text>`: a reference or name built from a
    marketplace's ids stays within the library's bounds and stays the same for the same ids."""
    if len(text.encode()) <= limit:
        return text
    return f"{head}:#{hashlib.blake2b(text.encode(), digest_size=16).hexdigest()}"
