"""Exceptions for callers who prefer them to checking an outcome's status."""

from __future__ import annotations

from typing import Any


class StockError(Exception):
    """Base class of stocksync's errors."""


class InvalidArgument(StockError, ValueError):
    """The library refused the call (an `ERR stocksync:` reply): nothing changed."""


class StockRejected(StockError):
    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        super().__init__(f"{outcome.status}: {outcome}")


class InsufficientStock(StockRejected):
    """Fewer units are available than the call needs; nothing changed."""


class UnknownSku(StockRejected):
    """The SKU does not exist; nothing changed."""


class VersionConflict(StockRejected):
    """The SKU's version differs from the expected one; nothing changed."""


REJECTIONS: dict[str, type[StockRejected]] = {
    "insufficient": InsufficientStock,
    "unknown_sku": UnknownSku,
    "conflict": VersionConflict,
}
