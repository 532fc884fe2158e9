"""uvicorn's HTTP protocols with a read deadline: a connection whose request has not arrived whole within
`[api] read_timeout_s` (from its opening, or from the end of the previous response) is closed.

uvicorn has no such timeout: its keep-alive timer is disarmed by the first byte of a request, so a client
that sends half a request and stops holds a connection, a file descriptor and its buffers for as long as
it likes (3,000 such clients took 3,000 descriptors and 40 MB for 30 s and more). A proxy in front
(nginx's client_header_timeout and client_body_timeout) does the same job; this keeps the server safe
without one. It relies on uvicorn's protocol classes (hence the upper bound on uvicorn in pyproject.toml;
tests/test_api_serve.py holds the behaviour).
"""

from __future__ import annotations

import asyncio
import os
from typing import ClassVar

from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional (uvicorn[standard])
    HttpToolsProtocol = None

DEFAULT_READ_TIMEOUT_S = 10.0
SWEEP_S = 1.0  # how often connections past their deadline are looked for
# serve() sets it from [api] read_timeout_s; the environment carries it to uvicorn's worker processes.
ENV = "STOCKSYNC_READ_TIMEOUT_S"


class ReadDeadline:
    """Mixed into a uvicorn protocol: arm at connection and after each response, disarm once the request
    (head and body) has arrived. One sweep a second closes the connections past their deadline (cheaper
    than a timer per request: arming is a clock read and an attribute)."""

    _deadline: float | None = None
    _open: ClassVar[set[ReadDeadline]] = set()
    _sweeping: ClassVar[asyncio.AbstractEventLoop | None] = None  # the loop a sweep is scheduled on

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + float(os.environ.get(ENV) or DEFAULT_READ_TIMEOUT_S)
        if ReadDeadline._sweeping is not loop:
            ReadDeadline._sweeping = loop
            loop.call_later(SWEEP_S, _sweep, loop)

    def _disarm(self) -> None:
        self._deadline = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        ReadDeadline._open.add(self)
        self._arm()

    def connection_lost(self, exc) -> None:
        ReadDeadline._open.discard(self)
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # (an idle connection is closed sooner by the keep-alive timer)


def _sweep(loop: asyncio.AbstractEventLoop) -> None:
    """Close the connections whose request did not arrive whole in time; look again in a second."""
    now = loop.time()
    for conn in [c for c in ReadDeadline._open if c._deadline is not None and c._deadline <= now]:
        conn._deadline = None
        if not conn.transport.is_closing():
            conn.transport.close()
    if ReadDeadline._open:
        loop.call_later(SWEEP_S, _sweep, loop)
    else:
        ReadDeadline._sweeping = None


class ReadDeadlineH11(ReadDeadline, H11Protocol):
    _armed_cycle = None

    def _arm(self) -> None:
        super()._arm()
        self._armed_cycle = self.cycle  # the request before: already complete

    def handle_events(self) -> None:
        super().handle_events()
        cycle = self.cycle
        if self._deadline is not None and cycle is not None and cycle is not self._armed_cycle and not cycle.more_body:
            self._disarm()


if HttpToolsProtocol is not None:

    class ReadDeadlineHttpTools(ReadDeadline, HttpToolsProtocol):
        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._disarm()
else:
    ReadDeadlineHttpTools = None


def protocol(http: str) -> type[asyncio.Protocol]:
    """The protocol class for uvicorn's --http choice (auto: httptools when installed)."""
    if http == "httptools" or (http == "auto" and ReadDeadlineHttpTools is not None):
        if ReadDeadlineHttpTools is None:
            raise RuntimeError("--http httptools needs the httptools package (pip install 'uvicorn[standard]')")
        return ReadDeadlineHttpTools
    return ReadDeadlineH11
