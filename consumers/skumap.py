"""Channel SKU names for the outbound side: the canonical SKU -> the SKU the channel lists it under.

Two sources, as the webhook intake reads them: the channel's `sku_map` in the config file and the Redis
hash <prefix>:skumap:<channel> (channel SKU -> canonical) that the admin API edits
(PUT/DELETE /v1/channels/<channel>/sku-map/<channel SKU>). The hash wins over the file for a channel SKU
it lists. Both map channel SKU -> canonical; the worker needs the reverse. If several channel SKUs map to
one canonical SKU, an edited one wins over the file's, then the smallest name (so every worker picks the
same). The worker loads the hash on start and again every worker.sku_map_refresh_ms; refresh() returns
the canonical SKUs whose channel name changed, with their old names. The worker pushes those SKUs again
(the newly mapped listing must get the current quantity, not wait for the next sale) and lists 0 under an
old name no SKU uses any more (that listing would go on selling units no order of it takes; not on
webhook channels, whose receiver orders pushes by version per name).
"""

from __future__ import annotations

from stocksync.channels import ChannelConfig
from stocksync.connection import AnyRedis
from stocksync.keys import Keys


class ChannelSkus:
    def __init__(self, redis: AnyRedis, keys: Keys, config: ChannelConfig) -> None:
        self.redis, self.key, self.config = redis, keys.sku_map(config.name), config
        self.edited: dict[str, str] = {}  # the hash as last read: channel SKU -> canonical
        self.reverse: dict[str, str] = self._reverse({})
        self.loaded = False

    def channel_sku(self, canonical: str) -> str:
        return self.reverse.get(canonical, canonical)

    def _reverse(self, edited: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        merged = {**self.config.sku_map, **edited}
        for theirs in sorted(merged, key=lambda t: (t not in edited, t)):
            out.setdefault(merged[theirs], theirs)
        return out

    def in_use(self, channel_sku: str, canonical_exists: bool) -> bool:
        """Whether a listing of that name is some SKU's now: mapped to one, or a canonical SKU of that
        name (canonical_exists) that is not mapped to another listing."""
        return channel_sku in self.reverse.values() or (canonical_exists and channel_sku not in self.reverse)

    async def refresh(self) -> dict[str, str]:
        """Read the hash again; answer {canonical SKU: its channel SKU before} for those whose channel SKU
        changed (none on the first load)."""
        raw = await self.redis.hgetall(self.key)
        edited = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                  for k, v in raw.items()}
        if edited == self.edited and self.loaded:
            return {}
        reverse = self._reverse(edited)
        changed = {} if not self.loaded else {
            sku: self.channel_sku(sku) for sku in set(reverse) | set(self.reverse)
            if reverse.get(sku, sku) != self.reverse.get(sku, sku)}
        self.edited, self.reverse, self.loaded = edited, reverse, True
        return changed
