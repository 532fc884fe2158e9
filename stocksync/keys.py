"""Every Redis key stocksync uses, in one place.

A SKU lives in partition crc16(pin) mod P, where the pin is what Redis Cluster would hash of the SKU as a
key name: the part between its first "{" and the first "}" after it when that part is not empty, else
the whole SKU. So "MUG{kitchen}" and "PLATE{kitchen}" share a partition whatever P is (a bundle and its
components must), and a SKU without such a part stays in crc16(sku) mod P as before 0.6. Every key of a
partition carries the hash tag {<prefix>:<p>}, so that each function call touches one cluster slot (the
SKU's own braces come after that tag, so they never decide the slot). P is fixed once per deployment and
stored in <prefix>:meta.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass

DEFAULT_PREFIX = "stocksync"
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def crc16(data: bytes) -> int:
    """CRC16-XMODEM, the checksum Redis Cluster hashes keys with."""
    return binascii.crc_hqx(data, 0)


def pin_of(sku: str) -> str:
    """What a SKU's partition is computed from: the part between its first "{" and the next "}" when that
    part is not empty (Redis Cluster's hash tag rule), else the whole SKU."""
    start = sku.find("{")
    if start >= 0:
        end = sku.find("}", start + 1)
        if end > start + 1:
            return sku[start + 1 : end]
    return sku


def partition_of(sku: str, partitions: int) -> int:
    return crc16(pin_of(sku).encode()) % partitions


def check_prefix(prefix: str) -> str:
    if not _PREFIX_RE.match(prefix):
        raise ValueError(
            f"prefix {prefix!r} must be 1-64 characters of letters, digits, '_', '.', ':' or '-' "
            "(no braces: it goes inside the hash tag)"
        )
    return prefix


@dataclass(frozen=True)
class Keys:
    prefix: str = DEFAULT_PREFIX
    partitions: int = 1

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        if not 1 <= self.partitions <= 16384:
            raise ValueError(f"partitions must be between 1 and 16384, got {self.partitions}")

    # The consumer group of a channel on every events stream is named after the channel.

    @property
    def meta(self) -> str:
        return f"{self.prefix}:meta"

    def partition(self, sku: str) -> int:
        return partition_of(sku, self.partitions)

    def tag(self, partition: int) -> str:
        return f"{{{self.prefix}:{partition}}}"

    def sku(self, sku: str, partition: int | None = None) -> str:
        """The SKU's hash; pass its partition when already computed (saves hashing the SKU twice)."""
        p = self.partition(sku) if partition is None else partition
        return f"{self.tag(p)}:sku:{sku}"

    def events(self, partition: int) -> str:
        return f"{self.tag(partition)}:events"

    def idem(self, partition: int, ref: str) -> str:
        return f"{self.tag(partition)}:idem:{ref}"

    def pushed(self, partition: int, channel: str) -> str:
        return f"{self.tag(partition)}:pushed:{channel}"

    def lease(self, partition: int, channel: str, sku: str) -> str:
        """string: the consumer pushing that SKU to that channel right now (a short TTL)."""
        return f"{self.tag(partition)}:lease:{channel}:{sku}"

    def recheck(self, partition: int, channel: str) -> str:
        """sorted set: sku -> when a push of its current quantity to the channel is owed (ms), whatever
        version the channel has (after a push that got no answer; stocksync_recheck)."""
        return f"{self.tag(partition)}:recheck:{channel}"

    def resync(self, partition: int, channel: str) -> str:
        """string: present while the channel's initial sync of that partition is unfinished (its group was
        created on a stream that no longer holds every change); the worker deletes it when done."""
        return f"{self.tag(partition)}:resync:{channel}"

    def dlq(self, partition: int, channel: str) -> str:
        return f"{self.tag(partition)}:dlq:{channel}"

    # Reservations and bundles (library 0.6): the library derives hold, expiries and bundles itself; they
    # are here for reading them.

    def reservation(self, partition: int, reservation_id: str) -> str:
        """hash: one reservation (state, exp, src, lines, holds); its id is its reference."""
        return f"{self.tag(partition)}:res:{reservation_id}"

    def hold(self, partition: int, sku: str) -> str:
        """sorted set: <units>:<reservation id> -> expiry (ms), the live holds on a SKU."""
        return f"{self.tag(partition)}:hold:{sku}"

    def expiries(self, partition: int) -> str:
        """sorted set: reservation id -> expiry (ms), the partition's held reservations."""
        return f"{self.tag(partition)}:expiries"

    def bundles(self, partition: int) -> str:
        """set: the partition's bundles."""
        return f"{self.tag(partition)}:bundles"

    def rules(self, channel: str) -> str:
        """hash: SKU -> JSON of that SKU's rule overrides on the channel (buffer, max_listed, end_when)."""
        return f"{self.prefix}:rules:{channel}"

    def rules_version(self, channel: str) -> str:
        """string: a counter bumped with every change of the channel's rule overrides (workers re-read the
        hash when it moves)."""
        return f"{self.prefix}:rules:{channel}:version"

    def api_idem(self, key: str) -> str:
        """string per Idempotency-Key of the admin API: a digest of the first request sent with it (TTL)."""
        return f"{self.prefix}:api:idem:{key}"

    def sku_map(self, channel: str) -> str:
        """hash: the channel's SKU -> canonical SKU, where they differ (edited through the admin API)."""
        return f"{self.prefix}:skumap:{channel}"

    @property
    def durable_mark(self) -> str:
        """string, 60 s TTL: written before each WAIT/WAITAOF of the replicated and fsync durability modes,
        so that the wait covers every write made before it (stocksync.durability). On Redis Cluster each
        node gets its own: the partition's `{<prefix>:<p>}:durable` (in the change's slot), or
        `{<prefix>:durable:<n>}` for a node written only untagged keys (stocksync.cluster_wire)."""
        return f"{self.prefix}:durable"

    def feeds(self, channel: str) -> str:
        """hash: feed document id -> JSON of a feed the channel's feed lane submitted and has not settled
        (its feedId once created, when, and each SKU's partition, version and quantity in it)."""
        return f"{self.prefix}:feeds:{channel}"

    def feed_lane(self, channel: str) -> str:
        """string: the worker running the channel's feed lane (a TTL, renewed while it runs)."""
        return f"{self.prefix}:feeds:{channel}:lane"

    def feed_creates(self, channel: str) -> str:
        """sorted set: the channel's recent createFeed calls (ms), so a restarted lane keeps the quota."""
        return f"{self.prefix}:feeds:{channel}:created"

    def channel_status(self, channel: str) -> str:
        """hash: consumer name -> JSON heartbeat of that worker (last push, circuit state, ...)."""
        return f"{self.prefix}:status:{channel}"

    # The webhook intake (stocksync/orders/intake.py): shortcuts and bookkeeping around the library's references.

    def webhook_seen(self, channel: str) -> str:
        """string per delivery: <this>:<delivery id>, a delivery already processed (TTL)."""
        return f"{self.prefix}:wh:seen:{channel}"

    def webhook_line(self, channel: str) -> str:
        """string per order line: <this>:<line key>, what was taken or refused, for capped restocks."""
        return f"{self.prefix}:wh:line:{channel}"

    def webhook_line_restocks(self, channel: str, line_key: str) -> str:
        """hash per order line: restock id -> p<units> reserved / d<units> applied (stocksync_restock_claim)."""
        return f"{self.prefix}:wh:line:{channel}:{line_key}:restocks"

    # The order pollers (stocksync/orders/pollers/): orders read back from the marketplaces' order APIs.

    def poll_cursor(self, channel: str) -> str:
        """sorted set: order stream (Shopify and Amazon: "orders"; Flipkart: one per shipment search) -> the
        update time in ms before which every order of that stream was applied (only ever raised: ZADD GT)."""
        return f"{self.prefix}:poll:cursor:{channel}"

    def poll_lease(self, channel: str) -> str:
        """string: the poller of that channel polling now (SET NX PX, renewed while it runs)."""
        return f"{self.prefix}:poll:lease:{channel}"

    def poll_stats(self, channel: str) -> str:
        """hash: the channel's poller counters (found_by_polling, orders, applied, ...) and its last pass."""
        return f"{self.prefix}:poll:stats:{channel}"

    def webhook_line_waiting(self, channel: str, line_key: str) -> str:
        """hash per order line: restock id -> units ("all": whatever is taken) of restocks that came before
        the line's take; the take applies them (stocksync.orders.intake)."""
        return f"{self.prefix}:wh:line:{channel}:{line_key}:waiting"

    @property
    def rejections(self) -> str:
        """hash "<channel>|<order id>" -> JSON of the order lines that could not be covered (before 0.3:
        read and resolved still, no longer written; see rejection_lines)."""
        return f"{self.prefix}:rejections"

    def rejection_lines(self, member: str) -> str:
        """hash per order ("<channel>|<order id>"): line id -> JSON of that line, one field per line."""
        return f"{self.prefix}:rejections:order:{member}"

    @property
    def rejections_index(self) -> str:
        """sorted set of the same members by first rejection time (ms)."""
        return f"{self.prefix}:rejections:index"

    def sku_pattern(self, partition: int) -> str:
        """A SCAN pattern for every SKU hash of a partition."""
        tag = self.tag(partition).replace("{", r"\{").replace("}", r"\}")
        return f"{tag}:sku:*"
