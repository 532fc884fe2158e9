"""Worker settings: defaults, then the [worker] table of the config file, then keyword overrides.

    [worker]
    read_count = 500            # entries per XREADGROUP
    block_ms = 1000             # XREADGROUP BLOCK
    max_pending = 20000         # entries held in memory per channel; past it reads go on but hold only
                                # urgent entries (the rest stay pending and are read again once there is
                                # room), and stop at twice it
    lease_ms = 15000            # per-SKU push lease (crash recovery waits at most this long)
    reclaim_idle_ms = 30000     # XAUTOCLAIM entries idle this long (a dead consumer's); rechecks owed this
                                # long past their time are pushed by any worker
    max_deliveries = 10         # an entry delivered more often goes to the dead-letter stream
    max_attempts = 12           # failed pushes of one SKU (circuit closed; 429s not counted) before dead-lettering it
    backoff_base_ms = 100       # exponential backoff with full jitter, capped
    backoff_cap_ms = 30000
    breaker_threshold = 5       # consecutive failed calls that open the circuit
    breaker_open_ms = 1000      # first open period, doubling to breaker_max_open_ms
    breaker_max_open_ms = 30000
    retention_ms = 86400000     # the trimmer keeps at least this much history (24 h)
    trim_interval_ms = 10000    # 0: no trimming by this worker
    reap_idle_ms = 3600000      # consumers idle this long with nothing pending are removed
    heartbeat_ms = 1000         # status written to <prefix>:status:<channel>
    low_stock = 5               # a listed quantity at or below this is pushed first (after drops to 0)
    linger_ms = 5               # batch channels: while a call is in flight, a partial batch waits
                                # up to this long to fill (urgent SKUs never wait); 0: never
    start_id = "0"              # where a new group starts ("0": the whole stream, "$": new entries); a
                                # group that misses history gets an initial sync
    recheck_ms = 0              # after a push that got no answer (timeout, dropped connection), push the
                                # current quantity again this long after it, even if the channel has that
                                # version (the abandoned request may land late); 0: 4 x the channel's timeout;
                                # kept in Redis (stocksync_recheck): another worker pays it if this one dies
    sku_map_refresh_ms = 5000   # re-read the admin API's SKU map (<prefix>:skumap:<channel>) and the per-SKU
                                # rules this often; 0: never (read at start only)
    partition_lease_ms = 10000  # each worker process reads the partitions it leases (consumers/partitions.py);
                                # a dead one's are taken over this long after it stopped renewing them; 0: every
                                # worker reads every partition (no leases)
    partitions = ""             # the partitions this process may lease, e.g. "0,2,5-7" ("": all of them)
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, fields
from typing import Any

from stocksync.settings import Settings, SettingsError

_SUFFIX = uuid.uuid4().hex[:8]  # drawn once per process


def default_consumer() -> str:
    """Stable for the life of the process, unique across hosts and containers: two containers can share a
    hostname pattern and both run as pid 1 or 7, so the name ends in a random suffix drawn once per
    process (hostname-pid-suffix)."""
    return f"{socket.gethostname()}-{os.getpid()}-{_SUFFIX}"


def parse_partitions(text: str) -> frozenset[int]:
    """'0,2,5-7' -> {0, 2, 5, 6, 7}; '' -> empty (every partition). SettingsError naming what is wrong."""
    out: set[int] = set()
    for part in (p.strip() for p in text.split(",")) if text.strip() else []:
        lo, dash, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise SettingsError(f"partitions: {part!r} is not a partition number or a range like 4-7") from None
        if first < 0 or last < first:
            raise SettingsError(f"partitions: {part!r} is not a range of partition numbers >= 0")
        out.update(range(first, last + 1))
    return frozenset(out)


@dataclass(frozen=True)
class WorkerOptions:
    consumer: str = ""
    read_count: int = 500
    block_ms: int = 1000
    max_pending: int = 20000
    lease_ms: int = 15000
    reclaim_idle_ms: int = 30000
    max_deliveries: int = 10
    max_attempts: int = 12
    backoff_base_ms: int = 100
    backoff_cap_ms: int = 30000
    breaker_threshold: int = 5
    breaker_open_ms: int = 1000
    breaker_max_open_ms: int = 30000
    retention_ms: int = 86_400_000
    trim_interval_ms: int = 10000
    reap_idle_ms: int = 3_600_000
    heartbeat_ms: int = 1000
    low_stock: int = 5
    linger_ms: int = 5
    start_id: str = "0"
    recheck_ms: int = 0
    sku_map_refresh_ms: int = 5000
    partition_lease_ms: int = 10000
    partitions: str = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise SettingsError(f"worker.{f.name} must be a whole number >= 0, got {value!r}")
        if not self.consumer:
            object.__setattr__(self, "consumer", default_consumer())
        if self.lease_ms < 1000:
            raise SettingsError("worker.lease_ms must be at least 1000")
        if 0 < self.partition_lease_ms < 300:
            raise SettingsError("worker.partition_lease_ms must be 0 (no leases) or at least 300")
        if not isinstance(self.partitions, str):
            raise SettingsError(f"worker.partitions must be a string like \"0,2,5-7\", got {self.partitions!r}")
        parse_partitions(self.partitions)  # (a clear error now; checked against the deployment's count later)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> WorkerOptions:
        table = dict(settings.section("worker"))
        names = {f.name for f in fields(cls)}
        unknown = set(table) - names
        if unknown:
            raise SettingsError(f"worker: unknown setting(s) {', '.join(sorted(unknown))}")
        table.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**table)
