"""Order webhooks leaving a marketplace simulator: in the background, in a chosen mode, with retries.

An order call never waits for its webhook: ``Outbox.send`` hands the notice to one background thread
(its own event loop and aiohttp session, shared by every simulator of the process, started on first
use) and returns its ``Delivery`` record at once. Modes:

    deliver  now
    drop     never (recorded as dropped: the webhook a marketplace lost)
    late     after ``late_s`` seconds
    twice    the same notice twice, same delivery id and body, the second once the first is done (a
             marketplace's redelivery after a timeout it believed happened)

Retries: an attempt fails on a connection error, on no answer within ``timeout_s`` (5 s: Shopify's
limit), or on a status outside 2xx. It is retried after each of ``retry_delays_s`` in turn (default
1, 2 and 4 s: four attempts over about 7 s, the marketplaces' schedules compressed, Shopify's being
8 retries over 4 hours), then the delivery is recorded as failed. Every attempt is recorded.
Headers are made at each attempt (``Notice.sign``), so a signature over the send time (Flipkart's
X_Date) is fresh on a retry, a late delivery and a redelivery.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp

MODES = ("deliver", "drop", "late", "twice")


@dataclass
class Notice:
    """One webhook as the marketplace sends it."""

    delivery_id: str  # duplicates share it (X-Shopify-Webhook-Id, NotificationId, ...)
    topic: str
    order_id: str
    url: str
    body: bytes
    sign: Callable[[bytes], dict[str, str]]  # the headers of one attempt


@dataclass
class Delivery:
    seq: int
    delivery_id: str
    topic: str
    order_id: str
    mode: str
    url: str
    # pending | delivered | failed | dropped | cancelled | no_receiver
    state: str = "pending"
    delivered: int = 0  # copies answered 2xx (twice: 2 when both were)
    attempts: list[dict[str, Any]] = field(default_factory=list)  # {copy, attempt, wall_ms, status, error}

    def view(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in
                ("seq", "delivery_id", "topic", "order_id", "mode", "url", "state", "delivered", "attempts")}


class _Loop:
    """The background thread and its event loop and HTTP session (one per process)."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    _session: aiohttp.ClientSession | None = None

    @classmethod
    def submit(cls, coro: Coroutine[Any, Any, None]) -> concurrent.futures.Future:
        with cls._lock:
            if cls._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="sim-outbox", daemon=True).start()
                cls._loop = loop
        return asyncio.run_coroutine_threadsafe(coro, cls._loop)

    @classmethod
    def session(cls) -> aiohttp.ClientSession:
        """The session, made on the loop's thread (aiohttp wants its loop running)."""
        if cls._session is None:
            cls._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        return cls._session


class Outbox:
    """One simulator's webhooks: what was sent, how, and the deliveries still under way."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        self._pending: dict[int, concurrent.futures.Future] = {}

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def views(self, since: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return [d.view() for d in self._deliveries if d.seq > since]

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def record(self, notice: Notice, mode: str, state: str = "pending") -> Delivery:
        with self._lock:
            d = Delivery(len(self._deliveries) + 1, notice.delivery_id, notice.topic, notice.order_id, mode,
                         notice.url, state)
            self._deliveries.append(d)
            return d

    def send(self, notice: Notice, mode: str, *, late_s: float, retry_delays_s: tuple[float, ...],
             timeout_s: float) -> Delivery:
        """Record ``notice`` and deliver it in ``mode`` from the background thread; returns at once."""
        if mode == "drop":
            return self.record(notice, mode, "dropped")
        delivery = self.record(notice, mode)
        copies = 2 if mode == "twice" else 1
        delay = late_s if mode == "late" else 0.0
        future = _Loop.submit(self._deliver(notice, delivery, copies, delay, retry_delays_s, timeout_s))
        with self._lock:
            if not future.done():
                self._pending[delivery.seq] = future
        future.add_done_callback(lambda f, seq=delivery.seq: self._done(seq, delivery, f))
        return delivery

    def cancel_all(self) -> None:
        """Stop every delivery under way (a reset: a late webhook must not reach the next test)."""
        with self._lock:
            futures = list(self._pending.values())
        for future in futures:
            future.cancel()
        with self._lock:
            self._deliveries, self._pending = [], {}

    def _done(self, seq: int, delivery: Delivery, future: concurrent.futures.Future) -> None:
        with self._lock:
            self._pending.pop(seq, None)
            if future.cancelled() and delivery.state == "pending":
                delivery.state = "cancelled"

    async def _deliver(self, notice: Notice, delivery: Delivery, copies: int, delay: float,
                       retry_delays_s: tuple[float, ...], timeout_s: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        ok = True
        for copy in range(1, copies + 1):
            ok = await self._attempts(notice, delivery, copy, retry_delays_s, timeout_s) and ok
        with self._lock:
            delivery.state = "delivered" if ok else "failed"

    async def _attempts(self, notice: Notice, delivery: Delivery, copy: int, retry_delays_s: tuple[float, ...],
                        timeout_s: float) -> bool:
        """One copy, retried; True once a receiver answered 2xx."""
        session = _Loop.session()
        for attempt, backoff in enumerate((*retry_delays_s, None), start=1):
            status, error = None, None
            try:
                async with session.post(notice.url, data=notice.body, headers=notice.sign(notice.body),
                                        timeout=aiohttp.ClientTimeout(total=timeout_s)) as reply:
                    await reply.read()
                    status = reply.status
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            with self._lock:
                delivery.attempts.append({"copy": copy, "attempt": attempt, "wall_ms": int(time.time() * 1000),
                                          "status": status, "error": error})
                if status is not None and 200 <= status < 300:
                    delivery.delivered += 1
                    return True
            if backoff is None:
                return False
            await asyncio.sleep(backoff)
        return False
