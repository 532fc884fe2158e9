"""What the roles of one channel worker share (consumers/worker.py composes the roles).

The reader, the dispatcher, the pushes, housekeeping and the initial sync of one ChannelWorker work on the
same things, held here:

* the entries held for pushing, per SKU (the coalescer), the channel's SKU names (skumap) and its rules
  per SKU (stocksync.inventory_rules, applied by the risk model);
* the channel's health: its circuit breaker, the channel-wide pause of a 429 (`paused_until`, its
  Retry-After), the last error and the counters the heartbeat reports (and the worker's /metrics); each
  change of the circuit and each throttled period is logged (consumers/health.py);
* the worker's life: `stopping`, the gate the readers wait on (`pull_ok`: closed while the circuit is
  not closed or past the hard cap of held entries, twice max_pending), and the push tasks under way,
  which a stopping worker lets finish.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import time
from collections.abc import Coroutine

from stocksync.channels import ChannelConfig
from stocksync.connection import AnyRedis
from stocksync.inventory_rules import ChannelRules
from stocksync.keys import Keys
from stocksync.outage import Outage

from .adapters import Adapter
from .coalescer import Coalescer
from .health import ChannelHealth
from .metrics import push_seconds
from .options import WorkerOptions
from .ranks import PushOrder
from .retry import CLOSED, CircuitBreaker
from .risk import RiskModel
from .skumap import ChannelSkus


class ChannelState:
    def __init__(self, redis: AnyRedis, keys: Keys, config: ChannelConfig, options: WorkerOptions,
                 adapter: Adapter) -> None:
        self.redis, self.keys, self.config, self.options, self.adapter = redis, keys, config, options, adapter
        self.channel, self.consumer = config.name, options.consumer
        o = options
        self.stats: collections.Counter[str] = collections.Counter()
        self.last_error = ""
        self.health = ChannelHealth(self.channel, self.stats, lambda: self.last_error)
        # Redis errors of every role, logged as one outage (a line when it starts, a summary every 30 s,
        # a line when it ends) instead of a line per failed call
        self.outage = Outage(logging.getLogger("consumers.outage"), f"{self.channel}: Redis")
        self.breaker = CircuitBreaker(o.breaker_threshold, o.breaker_open_ms / 1000, o.breaker_max_open_ms / 1000,
                                      on_change=lambda old, new: self.health.circuit_changed(self.breaker, old, new))
        self.risk = RiskModel(config.name, config.rules)
        self.coalescer = Coalescer(PushOrder(self.risk.listed, o.low_stock),
                                   lambda e: self.risk.risk(e.sku, e.available, e.delta))
        self.skus = ChannelSkus(redis, keys, config)
        self.rules = ChannelRules(redis, keys, config)  # per-SKU overrides (housekeeping refreshes them)
        self.hard_cap = 2 * o.max_pending  # held entries past which reads stop
        self._paused_until = 0.0  # a 429's Retry-After, channel-wide
        self.in_flight = 0  # pushes under way
        self.last_push_ms = 0
        self.beat_at = 0.0  # when the last heartbeat reached Redis (time.monotonic(); the worker's /healthz)
        self.push_seconds = push_seconds(self.channel)  # each marketplace call's duration (observe)
        self.stopping = asyncio.Event()
        self.pull_ok = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()  # pushes (and retirements of channel SKUs) under way

    @property
    def paused_until(self) -> float:
        return self._paused_until

    @paused_until.setter
    def paused_until(self, until: float) -> None:
        longer = until > self._paused_until
        self._paused_until = until
        if longer:
            self.health.paused(until)

    def spawn(self, coro: Coroutine) -> asyncio.Task:
        """A task the worker lets finish when it stops (for a while: then it is cancelled)."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def update_gates(self) -> None:
        if self.breaker.state == CLOSED and len(self.coalescer) < self.hard_cap:
            self.pull_ok.set()
        else:
            self.pull_ok.clear()

    async def wait_pull(self) -> None:
        """Wait (a while) for the readers' gate to open; look at it again afterwards."""
        await wait(self.pull_ok, 0.5)
        self.update_gates()

    def error(self, text: str) -> None:
        self.last_error = text[:300]

    async def sleep(self, seconds: float) -> None:
        """Sleep, unless the worker stops meanwhile."""
        await wait(self.stopping, seconds)

    async def channel_open(self) -> None:
        """Wait while the channel is paused (a 429's Retry-After) or its circuit is not closed: what runs
        beside the pushes of new changes (the initial sync) does not call a channel the worker spares."""
        while not self.stopping.is_set():
            pause = max(self.paused_until - time.monotonic(), 0.0)
            if self.breaker.state != CLOSED:
                pause = max(pause, self.breaker.wait_s(), 0.1)
            if pause <= 0:
                return
            await self.sleep(pause)

    def circuit(self) -> str:
        """The breaker's state, or `throttled` while a 429's Retry-After pauses the channel (a 429 is the
        channel's pace, not a failure: it never opens the circuit, counts an attempt or dead-letters)."""
        if self.breaker.state == CLOSED and self.paused_until > time.monotonic():
            return "throttled"
        return self.breaker.state

    def status(self) -> dict:
        """The heartbeat's content (consumers/status.py reads it)."""
        return {
            "consumer": self.consumer, "host": socket.gethostname(), "pid": os.getpid(),
            "ts_ms": int(time.time() * 1000), "heartbeat_ms": self.options.heartbeat_ms, "circuit": self.circuit(),
            "circuit_opened": self.breaker.opened_total, "last_push_ms": self.last_push_ms,
            "last_error": self.last_error, "held": len(self.coalescer), "in_flight": self.in_flight,
            "oversell_risk_units": round(self.coalescer.total_risk(), 3), "land_s": round(self.risk.land_s, 3),
            "land_risky_s": round(self.risk.land_risky_s, 3),
            **{k: int(v) for k, v in self.stats.items()},
        }


async def wait(event: asyncio.Event, seconds: float) -> None:
    """Wait for the event, at most `seconds`."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        pass
