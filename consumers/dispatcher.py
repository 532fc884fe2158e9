"""The dispatcher: hands a channel worker's most urgent ready SKUs to push tasks, batch_size at a time.

At most max_in_flight pushes run at once, so reads keep flowing while pushes are in flight. Behind a
client-side rate limit, fewer: pushes past what the limiter lets through soon would only queue inside the
adapter, so they wait in the coalescer instead, ranked. On a batch channel a partial batch waits up to
linger_ms to fill while a call is already under way (fewer calls; urgent SKUs never wait). While the
circuit is open nothing starts; half open, one SKU goes as the probe. While a 429's Retry-After pauses the
channel nothing starts either.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from .coalescer import SkuWork
from .retry import CLOSED
from .state import ChannelState, wait

LIMITER_QUEUE_S = 0.25  # at most this much of the rate limit's worth of pushes handed to the adapter at once

Push = Callable[[list[SkuWork], bool], Awaitable[None]]  # (batch, probe)


class Dispatcher:
    def __init__(self, state: ChannelState, push: Push) -> None:
        self.state, self.push = state, push
        self._kick = asyncio.Event()
        self._wake_at = 0.0  # when the sleeping dispatcher wakes on its own (0: it is awake)
        self._linger_until: float | None = None  # a partial batch waits until then to fill up

    async def run(self) -> None:
        s = self.state
        while not s.stopping.is_set():
            self._kick.clear()
            self._start_pushes()
            now = time.monotonic()
            wake = self._next_timer()
            if s.breaker.state != CLOSED and s.breaker.wait_s() > 0:
                wake = min(wake, now + s.breaker.wait_s())
            self._wake_at = wake
            await wait(self._kick, wake - now)
            self._wake_at = 0.0  # awake: nothing needs to kick

    def launch(self) -> None:
        """Start pushes while there is room and ready work. Called directly where work or room appears
        (entries taken in, a push ended), which is cheaper than waking the dispatcher each time (a
        wait_for per wake-up: a task and a timer); the dispatcher is woken only when a timer it sleeps
        on may have changed (a delayed SKU, a channel-wide pause, the circuit)."""
        s = self.state
        if s.stopping.is_set():
            return
        self._start_pushes()
        if s.breaker.state != CLOSED or self._next_timer() < self._wake_at:
            self._kick.set()

    def _next_timer(self) -> float:
        """The earliest time the dispatcher must look again (a delayed SKU due, a pause ending)."""
        s = self.state
        now = time.monotonic()
        at = now + 1.0
        if s.paused_until > now:
            at = min(at, s.paused_until)
        due = s.coalescer.next_due()
        if due is not None:
            at = min(at, max(due, now + 0.001))
        if self._linger_until is not None:
            at = min(at, max(self._linger_until, now + 0.001))
        return at

    def _start_pushes(self) -> None:
        s = self.state
        coalescer, breaker, batch_size = s.coalescer, s.breaker, s.adapter.batch_size
        linger = s.options.linger_ms / 1000 if batch_size > 1 else 0.0
        self._linger_until = None
        while s.in_flight < self._room_in_flight() and time.monotonic() >= s.paused_until and coalescer.has_ready():
            if linger and s.in_flight and breaker.state == CLOSED:
                # a call is already under way: let a partial batch fill up for a moment (fewer calls)
                self._linger_until = coalescer.linger_until(batch_size, linger)
                if self._linger_until is not None:
                    break
            if not breaker.allow():
                break
            probe = breaker.probe
            batch = coalescer.take(1 if probe else batch_size)
            if not batch:
                if probe:
                    breaker.probing = False
                break
            s.in_flight += 1
            s.spawn(self._push(batch, probe))

    def _room_in_flight(self) -> int:
        """Pushes that may be under way at once. Behind a client-side rate limit, pushes past what it lets
        through in the next LIMITER_QUEUE_S would only queue inside the adapter, where an urgent SKU
        handed out later waits behind those already waiting at its rank or above: keep them in the
        coalescer instead, ranked."""
        adapter = self.state.adapter
        if adapter.limiter is None:
            return adapter.max_in_flight
        return min(adapter.max_in_flight, max(2, adapter.limiter.room(LIMITER_QUEUE_S)))

    async def _push(self, batch: list[SkuWork], probe: bool) -> None:
        s = self.state
        try:
            await self.push(batch, probe)
        finally:
            s.in_flight -= 1
            s.update_gates()
            self.launch()
