"""Bundles and multipacks: SKUs with no stock of their own, made of components (library 0.6).

A bundle ("MUG+PLATE" = 1 MUG + 1 PLATE, "MUG-2PACK" = 2 MUG: a multipack is a bundle of one component)
lists, on every channel, the fewest whole bundles its components' available units make (each channel's
rules applied to that). Selling one takes its components in one library call, all or nothing, once per
reference; every change of a component updates, in the same call, the quantity of every bundle it is in
(an event each, so every channel listing them is pushed). A bundle and its components share a partition:
always so on one partition; on a cluster, pin them with a common `{group}` in their names (stocksync.keys).

Defined through the admin API (PUT /v1/bundles/{sku}), the command line (`stocksync bundle set`) or, in
bulk, the config file's [bundles] table, applied by `stocksync bundle apply`:

    [bundles]
    "MUG-2PACK" = { MUG = 2 }
    "MUG+PLATE" = { MUG = 1, PLATE = 1 }
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from typing import Any

from . import library
from .library import BundleOutcome, Quantities
from .limits import MAX_BUNDLE_COMPONENTS, MAX_BUNDLE_QTY
from .settings import Settings
from .store import StockStore
from .validate import invalid, want_int, want_object, want_sku


def want_components(value: Any, field: str = "components") -> dict[str, int]:
    """{component SKU: units} with 1 to MAX_BUNDLE_COMPONENTS components of 1 to MAX_BUNDLE_QTY units."""
    doc = want_object(value, field)
    if not 1 <= len(doc) <= MAX_BUNDLE_COMPONENTS:
        raise invalid(field, f"must have 1 to {MAX_BUNDLE_COMPONENTS} components, has {len(doc)}")
    out = {}
    for sku, qty in doc.items():
        out[want_sku(sku, f"{field} key")] = want_int(qty, f"{field}.{sku}", 1, MAX_BUNDLE_QTY)
    return out


def from_config(settings: Settings) -> dict[str, dict[str, int]]:
    """The [bundles] table of the config file, checked: bundle SKU -> {component: units}."""
    table = settings.section("bundles")
    return {want_sku(sku, "bundles key"): want_components(parts, f"bundles.{sku}") for sku, parts in table.items()}


class Bundles:
    def __init__(self, store: StockStore) -> None:
        self.store, self.keys = store, store.keys

    async def set(self, bundle: str, components: Mapping[str, int], *, source: str = "api",
                  ref: str | None = None) -> BundleOutcome:
        """Define or redefine a bundle (InvalidArgument when refused: nothing changed)."""
        bundle, components = want_sku(bundle, "bundle"), want_components(dict(components))
        if bundle in components:
            raise invalid("components", f"{bundle!r} cannot be a component of itself")
        call = library.bundle_set(self.keys, bundle, components, source, ref or uuid.uuid4().hex)
        return await self.store.run(call)

    async def delete(self, bundle: str, *, source: str = "api", ref: str | None = None) -> BundleOutcome:
        """The bundle becomes a plain SKU at 0 (every channel lists 0 under its name)."""
        call = library.bundle_delete(self.keys, want_sku(bundle, "bundle"), source, ref or uuid.uuid4().hex)
        return await self.store.run(call)

    async def get(self, bundle: str) -> Quantities | None:
        """The bundle's quantities and components (None when it is no bundle)."""
        q = await self.store.quantities(bundle)
        return q if q is not None and q.is_bundle else None

    async def list(self) -> dict[str, Quantities]:
        """Every bundle of every partition, by SKU."""
        names = []
        for p in range(self.keys.partitions):
            names += sorted(await self.store.redis.smembers(self.keys.bundles(p)))
        found = await asyncio.gather(*(self.get(name) for name in names))
        return {q.sku: q for q in found if q is not None}

    async def apply(self, table: Mapping[str, Mapping[str, int]], *, source: str = "config") -> list[BundleOutcome]:
        """Define every bundle of a table (the config file's [bundles]); unchanged ones stay as they are."""
        return [await self.set(bundle, parts, source=source) for bundle, parts in table.items()]
