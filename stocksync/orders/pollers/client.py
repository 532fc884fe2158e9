"""The HTTP side of an order poller: one aiohttp session, a timeout on every call, transient failures
retried a few times, 429 waited out at the marketplace's pace.

A failure that retrying cannot fix (4xx, credentials refused) or that outlasts the retries (5xx, timeouts,
connection errors) raises PollError: the pass stops there and its cursor stays where the last page
applied left it, so the next pass reads the same orders again. Credentials travel in headers the caller
builds from ChannelConfig.secret(); no message here ever includes a header, a token or a query string.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from yarl import URL

from .pacing import Pace

log = logging.getLogger(__name__)
MAX_THROTTLED = 100  # 429s in a row on one call before the pass gives up (the quota is someone else's)


class PollError(Exception):
    """A pass cannot go on: the order API failed or refused, or an order could not be read."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    data: Any


def retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(float(value.strip()), 0.0)
    except ValueError:
        pass
    try:
        return max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def rate_limit(headers: Mapping[str, str]) -> float | None:
    """x-amzn-RateLimit-Limit (the operation's requests per second), None when absent or unreadable."""
    try:
        return float(headers.get("x-amzn-RateLimit-Limit", ""))
    except ValueError:
        return None


class OrderApi:
    """One channel's order API client (one session per poller)."""

    retries = 3
    backoff_s = (0.5, 1.0, 2.0)

    def __init__(self, name: str, timeout_s: float = 10.0) -> None:
        self.name, self.timeout = name, aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self.calls = self.throttled = 0

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on first use: aiohttp wants a running loop
            self._session = aiohttp.ClientSession(timeout=self.timeout, cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, method: str, url: str | URL, *, headers: Mapping[str, str], pace: Pace | None = None,
                   params: Mapping[str, str] | None = None, body: bytes | None = None) -> Reply:
        """The JSON reply of one call, after the pace allows it; retried on 5xx, timeouts, connection errors."""
        where = f"{self.name}: {method} {URL(url).path}"
        attempt = throttled = 0
        while True:
            if pace is not None:
                await pace.acquire()
            self.calls += 1
            try:
                async with self.session.request(method, url, headers=headers, params=params, data=body) as r:
                    raw, status, got = await r.read(), r.status, r.headers
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                failure = f"{type(e).__name__}" + (f": {e}" if str(e) and not isinstance(e, TimeoutError) else "")
            else:
                if status == 429:
                    throttled += 1
                    self.throttled += 1
                    if throttled > MAX_THROTTLED:
                        raise PollError(f"{where}: still 429 after {MAX_THROTTLED} waits")
                    await self._wait_throttled(pace, got)
                    continue
                if status < 300:
                    if pace is not None:
                        pace.told(rate_limit(got))
                    return Reply(status, got, _json(raw, where))
                if status in (401, 403):
                    raise PollError(f"{where}: {status}, the order API refused the channel's credentials")
                if status < 500:
                    raise PollError(f"{where}: {status} {raw[:300].decode(errors='replace')}")
                failure = f"{status} {raw[:200].decode(errors='replace')}"
            if attempt >= self.retries:
                raise PollError(f"{where}: {failure} (after {attempt + 1} attempts)")
            log.info("%s: %s, retrying", where, failure)
            await asyncio.sleep(self.backoff_s[min(attempt, len(self.backoff_s) - 1)])
            attempt += 1

    async def _wait_throttled(self, pace: Pace | None, headers: Mapping[str, str]) -> None:
        wait = retry_after_s(headers.get("Retry-After"))
        if pace is not None:
            wait = pace.throttled(wait, rate_limit(headers))  # the next acquire() waits it out
        else:
            await asyncio.sleep(wait if wait is not None else 1.0)
        log.info("%s: throttled (429), waiting %.1f s", self.name, wait or 1.0)


def _json(raw: bytes, where: str) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        raise PollError(f"{where}: the reply is not JSON: {raw[:200].decode(errors='replace')}") from None
