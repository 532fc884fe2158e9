"""Per-SKU rules at run time: a channel's buffer, max_listed and end_when overridden for one SKU.

A channel's rules (stocksync.channels.Rules) come from the config file and apply to every SKU. A seller
also sets them per SKU, and changes them while selling: through the admin API (PUT
/v1/channels/<channel>/rules/<sku>) or the command line (`stocksync rules set`). They live in Redis:

    <prefix>:rules:<channel>           hash: SKU -> JSON of its overrides, e.g. {"buffer": 3, "max_listed": 10}
    <prefix>:rules:<channel>:version   counter: bumped with every change (in the same transaction; on a
                                       cluster, where the two keys are in different slots, right after it)

Fields left out keep the channel's value. A channel's workers read the hash again whenever the counter
moved (they look every worker.sku_map_refresh_ms), apply the overrides where a listed quantity is computed
(consumers.risk.RiskModel.listed), and push each SKU whose rules changed again at once, so the change
takes effect on its next push without a restart. `stocksync resync` and dead-letter replays apply them too.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import orjson

from .channels import ChannelConfig, Rules
from .connection import AnyRedis, is_cluster
from .keys import Keys
from .limits import MAX_QTY, MAX_RULE_OVERRIDES
from .settings import SettingsError
from .validate import check_keys, invalid, want_int, want_object

log = logging.getLogger(__name__)
FIELDS = ("buffer", "max_listed", "end_when")


def want_override(value: Any, field: str = "body") -> dict[str, Any]:
    """An override: one or more of buffer (a whole number >= 0, or "auto"), max_listed (0: no cap) and
    end_when, each a whole number >= 0."""
    doc = want_object(value, field)
    check_keys(doc, set(FIELDS), f"{field}." if field != "body" else "")
    if not doc:
        raise invalid(field, f"must set at least one of {', '.join(FIELDS)}")
    out: dict[str, Any] = {}
    for name, v in doc.items():
        out[name] = v if name == "buffer" and v == "auto" else want_int(v, name, 0, MAX_QTY)
    return out


def effective(rules: Rules, override: Mapping[str, Any]) -> Rules:
    """The channel's rules with one SKU's overrides."""
    return dataclasses.replace(rules, **override)


def as_dict(rules: Rules) -> dict[str, Any]:
    return {name: getattr(rules, name) for name in ("buffer", "share", "max_listed", "end_when")}


class RuleStore:
    """The overrides in Redis, for the admin API and the command line."""

    def __init__(self, redis: AnyRedis, keys: Keys) -> None:
        self.redis, self.keys = redis, keys

    async def get(self, channel: str) -> dict[str, dict[str, Any]]:
        raw = await self.redis.hgetall(self.keys.rules(channel))
        return {sku: orjson.loads(v) for sku, v in raw.items()}

    async def set(self, config: ChannelConfig, sku: str, override: Mapping[str, Any]) -> Rules:
        """Store a SKU's override (replacing the one it had) and answer the rules it makes."""
        rules = effective(config.rules, override)  # (SettingsError when they do not make valid rules)
        key = self.keys.rules(config.name)
        if not await self.redis.hexists(key, sku) and await self.redis.hlen(key) >= MAX_RULE_OVERRIDES:
            raise SettingsError(f"channel {config.name} has {MAX_RULE_OVERRIDES} overrides, the most it can have")
        await self._change(config.name, "HSET", sku, orjson.dumps(dict(override)))
        return rules

    async def delete(self, channel: str, sku: str) -> bool:
        return bool(await self._change(channel, "HDEL", sku))

    async def _change(self, channel: str, *command) -> Any:
        """Change the hash and bump the counter: one transaction on a single Redis. On a cluster the two keys
        are in different slots (no MULTI across slots; the key names predate the cluster support and stay),
        so the hash first, then the counter, one after the other: a worker that sees the counter move
        re-reads a hash that has the change. Should the caller die in between, the change waits for the
        next one (or a worker's restart); the caller got no answer, and its retry bumps the counter."""
        key, version = self.keys.rules(channel), self.keys.rules_version(channel)
        if is_cluster(self.redis):
            first = await self.redis.execute_command(command[0], key, *command[1:])
            await self.redis.incr(version)
            return first
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.execute_command(command[0], key, *command[1:])
            pipe.incr(version)
            first, _ = await pipe.execute()
        return first


class ChannelRules:
    """A channel's rules per SKU as a worker holds them: `rules` maps each SKU with an override to its
    rules (every other SKU: the channel's)."""

    def __init__(self, redis: AnyRedis, keys: Keys, config: ChannelConfig) -> None:
        self.redis, self.keys, self.config = redis, keys, config
        self.rules: dict[str, Rules] = {}
        self.version: bytes | str | None = None
        self.loaded = False

    def rules_for(self, sku: str) -> Rules:
        return self.rules.get(sku, self.config.rules)

    async def refresh(self) -> set[str]:
        """Read the overrides again if they changed; answer the SKUs whose rules changed (none at the first
        load). An override that does not make valid rules (edited by hand) is logged and left out."""
        version = await self.redis.get(self.keys.rules_version(self.config.name))
        if self.loaded and version == self.version:
            return set()
        raw = await self.redis.hgetall(self.keys.rules(self.config.name))
        rules: dict[str, Rules] = {}
        for sku, value in raw.items():
            try:
                rules[sku] = effective(self.config.rules, orjson.loads(value))
            except (ValueError, TypeError) as e:  # (SettingsError and JSON errors are ValueErrors)
                log.warning("%s: rules of %s ignored: %s", self.config.name, sku, e)
        changed = set() if not self.loaded else {
            sku for sku in set(rules) | set(self.rules) if self.rules.get(sku) != rules.get(sku)}
        self.rules, self.version, self.loaded = rules, version, True
        return changed
