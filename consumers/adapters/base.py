"""What every channel adapter shares: the update/result shapes, error classes, the HTTP call, rate limits.

An adapter turns "SKU s is now listed at q (version v)" into one marketplace's API call and knows that
API's limits (batch size, requests per second); the worker owns everything else (coalescing, ordering,
leases, retries, the circuit breaker, acknowledgements). One aiohttp session per channel, a timeout on
every call, credentials read through ChannelConfig.secret() and never logged or put in an error.

What the worker needs to know of an adapter is declared on Adapter (class attributes, and the values
read from the channel's `options` table): `versioned`, `batch_size`, `max_in_flight`, `timeout_s`,
`limiter`. Each adapter lists the options it takes (`OPTIONS`); an unknown one is refused when the
adapter is made (`check_options`), naming the channel and the option.
"""

from __future__ import annotations

import asyncio
import email.utils
import heapq
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from yarl import URL

from stocksync.channels import KINDS, ChannelConfig
from stocksync.settings import SettingsError

from ..ranks import NORMAL

log = logging.getLogger(__name__)
MIN_CALL_S = 0.1  # no call is started with less time than this left before the deadline


@dataclass(frozen=True, slots=True)
class Update:
    """Push this: the channel should list `quantity` of `sku` (canonical name), as of `version`."""

    sku: str
    channel_sku: str
    quantity: int
    version: int


@dataclass(frozen=True, slots=True)
class Result:
    """The channel's answer for one SKU: accepted, or failed for good (permanent) or for now.
    `ambiguous`: the request was sent and no answer came back (a timeout, a dropped connection), so the
    channel may still apply it later."""

    sku: str
    ok: bool
    permanent: bool = False
    error: str = ""
    retry_after: float | None = None
    ambiguous: bool = False

    @classmethod
    def accepted(cls, sku: str) -> Result:
        return cls(sku, True)

    @classmethod
    def failed(cls, sku: str, error: str, *, permanent: bool, retry_after: float | None = None,
               ambiguous: bool = False) -> Result:
        return cls(sku, False, permanent, error[:500], retry_after, ambiguous)


class PushError(Exception):
    """The whole call failed (every SKU in it). `ambiguous`: the request may have reached the channel
    (timed out, or the connection dropped after it was sent), which may still apply it later."""

    permanent = False

    def __init__(self, message: str, *, retry_after: float | None = None, status: int = 0,
                 ambiguous: bool = False) -> None:
        super().__init__(message[:500])
        self.retry_after = retry_after
        self.status = status
        self.ambiguous = ambiguous


class TransientError(PushError):
    """Timeout, connection error, 5xx, 429, throttled, auth (a channel-wide problem): retry later."""

    @property
    def throttled(self) -> bool:
        return self.status == 429


class PermanentError(PushError):
    """A 4xx that retrying cannot fix: the SKUs of the call go to the dead-letter stream."""

    permanent = True


def retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


class RateLimiter:
    """A client-side token bucket (rate per second, capacity burst) that adapts to the server.

    Waiting callers are served by the rank of their push (consumers/ranks.py), then in arrival order: a drop to 0 handed to the adapter
    after ordinary pushes does not queue behind them. On a 429 it stops every caller until Retry-After
    and halves its rate (not below a tenth of the configured one); each success gives back a twentieth.
    So a channel keeps under the marketplace's limit even when the configured rate is too high, instead
    of storming it with calls that get 429.
    """

    def __init__(self, rate: float, burst: float) -> None:
        self.configured = rate
        self.rate, self.capacity = rate, max(burst, 1.0)
        self.tokens, self.stamp = self.capacity, time.monotonic()
        self.blocked_until = 0.0
        self._turns = asyncio.Condition()
        self._waiting: list[tuple[int, int]] = []  # heap of (rank, arrival) tickets
        self._arrivals = itertools.count()

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def available(self) -> float:
        """Tokens in the bucket now (0 while a 429's Retry-After blocks it)."""
        now = time.monotonic()
        if now < self.blocked_until:
            return 0.0
        self._refill(now)
        return self.tokens

    def room(self, seconds: float) -> int:
        """Calls it lets through within `seconds` from a full bucket: what it is worth queueing here."""
        return int(self.capacity + self.rate * seconds)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def acquire(self, cost: float = 1.0, rank: int = NORMAL) -> None:
        ticket = (rank, next(self._arrivals))
        async with self._turns:
            heapq.heappush(self._waiting, ticket)
            try:
                while True:
                    if self._waiting[0] != ticket:  # another caller goes first: woken when it leaves
                        await self._turns.wait()
                        continue
                    now = time.monotonic()
                    if now < self.blocked_until:
                        wait = self.blocked_until - now
                    else:
                        self._refill(now)
                        if self.tokens >= cost:
                            self.tokens -= cost
                            return
                        wait = (cost - self.tokens) / self.rate
                    try:  # (a more urgent caller arriving meanwhile takes the head and the next token)
                        await asyncio.wait_for(self._turns.wait(), wait)
                    except TimeoutError:
                        pass
            finally:
                self._waiting.remove(ticket)
                heapq.heapify(self._waiting)
                self._turns.notify_all()

    def throttled(self, retry_after: float | None) -> None:
        now = time.monotonic()
        self._refill(now)
        self.tokens = 0.0
        self.rate = max(self.rate / 2, self.configured / 10)
        self.blocked_until = max(self.blocked_until, now + (retry_after if retry_after is not None else 1.0))

    def succeeded(self) -> None:
        if self.rate < self.configured:
            self.rate = min(self.configured, self.rate + self.configured / 20)


# The options every adapter reads: (type, test, what the error says)
NUMERIC_OPTIONS: dict[str, tuple[type | tuple[type, ...], Any, str]] = {
    "timeout_s": ((int, float), lambda v: v > 0, "a number > 0 (seconds)"),
    "batch_size": (int, lambda v: v >= 1, "a whole number >= 1 (at most the API's own limit is used)"),
    "max_in_flight": (int, lambda v: v >= 1, "a whole number >= 1"),
    "rate_limit": ((int, float), lambda v: v >= 0, "a number >= 0 (requests per second, 0: no limit)"),
    "burst": ((int, float), lambda v: v >= 0, "a number >= 0"),
}
COMMON_OPTIONS = frozenset(NUMERIC_OPTIONS)


class Adapter:
    """Base class. Subclasses set kind/max_batch/OPTIONS and implement push_batch()."""

    kind = "base"
    max_batch = 1  # the API's own limit of SKUs per call
    default_batch: int | None = None  # SKUs a call without options.batch_size (None: max_batch)
    # The receiver orders pushes by version per channel SKU itself (a push without a newer version is
    # dropped there), so it retires channel SKUs no SKU uses any more on its own: the worker does not
    # list 0 under them.
    versioned = False
    default_in_flight = 8
    default_rate: float | None = None  # requests per second, None: no client-side limit
    default_burst: float = 1.0
    default_timeout_s = 5.0
    OPTIONS: frozenset[str] = COMMON_OPTIONS  # the keys of the channel's `options` table this adapter reads
    CREDENTIALS: tuple[str, ...] = ()  # the credentials its pushes read (checked when a worker starts)

    # read from the channel's options (declared here: the worker reads them, and nothing else of an adapter)
    timeout_s: float  # a call's timeout (the worker also derives its recheck delay from it)
    batch_size: int  # SKUs a call (at most max_batch)
    max_in_flight: int  # calls at once
    limiter: RateLimiter | None  # the client-side rate limit, None: none

    def __init__(self, config: ChannelConfig, session: aiohttp.ClientSession | None = None) -> None:
        self.check_options(config)
        self.config = config
        self.name = config.name
        opts = config.options
        self.timeout_s = float(opts.get("timeout_s", self.default_timeout_s))
        self.batch_size = max(1, min(int(opts.get("batch_size", self.default_batch or self.max_batch)), self.max_batch))
        self.max_in_flight = max(1, int(opts.get("max_in_flight", self.default_in_flight)))
        rate = opts.get("rate_limit", self.default_rate)
        self.limiter = RateLimiter(float(rate), float(opts.get("burst", self.default_burst))) if rate else None
        self._session = session
        self._own_session = session is None
        self.calls = 0

    @classmethod
    def check_options(cls, config: ChannelConfig) -> None:
        """Refuse an options table with a key this kind of channel does not read (a typo would otherwise
        be ignored silently) or a malformed common option."""
        known = cls.OPTIONS | KINDS[config.kind].order_options
        unknown = sorted(set(config.options) - known)
        if unknown:
            raise SettingsError(f"channels.{config.name}.options: unknown option(s) {', '.join(unknown)} "
                                f"(a {config.kind} channel reads {', '.join(sorted(known))})")
        for name, (kind, test, bound) in NUMERIC_OPTIONS.items():
            value = config.options.get(name)
            if value is not None and not (isinstance(value, kind) and not isinstance(value, bool) and test(value)):
                raise SettingsError(f"channels.{config.name}.options.{name} must be {bound}, got {value!r}")

    @classmethod
    def check_credentials(cls, config: ChannelConfig) -> None:
        """Refuse, naming the environment variable, a credential the pushes read that is not configured
        or not set: found at start, not as a failure of every push."""
        for name in cls.CREDENTIALS:
            config.secret(name)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.max_in_flight, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                json_serialize=lambda o: orjson.dumps(o).decode(),
                cookie_jar=aiohttp.DummyCookieJar(),  # token-authenticated APIs: no cookies kept or sent
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> Adapter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:  # no credentials, ever
        return f"<{type(self).__name__} channel={self.name} url={self.config.url}>"

    # ----- the contract ------------------------------------------------------------------------

    async def push(self, updates: list[Update], deadline: float | None = None, *, rank: int = NORMAL) -> list[Result]:
        """Push up to batch_size updates; one Result per update (any order). Raises PushError when
        the whole call failed. `deadline` (time.monotonic()) is when the worker's lease on these SKUs
        ends: no request is sent that could still be running then. `rank` (consumers/ranks.py): the
        push's place in the rate limiter's queue."""
        if not updates:
            return []
        if len(updates) > self.batch_size:
            raise ValueError(f"{self.name}: at most {self.batch_size} updates a call, got {len(updates)}")
        return await self.push_batch(updates, deadline, rank)

    async def push_batch(self, updates: list[Update], deadline: float | None, rank: int) -> list[Result]:
        """The API call(s) of one push; every request() made for it passes `rank` on."""
        raise NotImplementedError

    # ----- one HTTP call -------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        url: str | URL,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        deadline: float | None = None,
        cost: float = 1.0,
        rank: int = NORMAL,
        limited: bool = True,
    ) -> tuple[int, Any]:
        """Send one request and answer (status, parsed JSON or None) for a 2xx; raise PushError for
        anything else (TransientError: timeout, connection, 429, 5xx, 401/403; PermanentError: other
        4xx). A timeout or a connection lost after connecting raises an `ambiguous` TransientError.
        `limited=False`: a call outside the channel's rate limit (an operation the caller limits itself,
        such as Amazon's Feeds API: consumers/adapters/amazon_feeds.py)."""
        limiter = self.limiter if limited else None
        if limiter is not None:
            await limiter.acquire(cost, rank)
        timeout = self.timeout_s
        if deadline is not None:  # the call must end (or be abandoned) before the worker's lease does
            timeout = min(timeout, deadline - time.monotonic())
            if timeout < MIN_CALL_S:
                raise TransientError(f"{self.name}: the lease would expire before the call could end")
        self.calls += 1
        # the session's own timeout unless the lease leaves less (saves building one per call)
        extra = {"timeout": aiohttp.ClientTimeout(total=timeout)} if timeout < self.timeout_s else {}
        try:
            async with self.session.request(method, url, data=body, headers=headers, **extra) as response:
                raw = await response.read()
                status = response.status
                retry = None if status < 300 else retry_after_s(response.headers.get("Retry-After"))
        except TimeoutError:
            raise TransientError(f"{self.name}: {method} timed out after {timeout:.3g} s", ambiguous=True) from None
        except aiohttp.ClientConnectorError as e:  # no connection: the request was never sent
            raise TransientError(f"{self.name}: {method} failed: {type(e).__name__}: {e}") from None
        except aiohttp.ClientError as e:  # the connection dropped: the request may have been sent
            raise TransientError(f"{self.name}: {method} failed: {type(e).__name__}: {e}", ambiguous=True) from None
        try:
            data = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            data = None
        if 200 <= status < 300:
            if limiter is not None:
                limiter.succeeded()
            return status, data
        detail = raw[:300].decode(errors="replace")
        if status == 429:
            if limiter is not None:
                limiter.throttled(retry)
            raise TransientError(f"{self.name}: 429 throttled: {detail}", retry_after=retry, status=429)
        if status >= 500 or status in (401, 403, 408):
            # 401/403 is the credentials, not the SKU: retried (and the circuit opens) rather than
            # dead-lettering every SKU of a channel whose token expired.
            raise TransientError(f"{self.name}: HTTP {status}: {detail}", retry_after=retry, status=status)
        raise PermanentError(f"{self.name}: HTTP {status}: {detail}", status=status)


def json_body(data: Any) -> bytes:
    return orjson.dumps(data)

