"""One poller per channel at a time: a lease in Redis that the polling process holds and renews.

    <prefix>:poll:lease:<channel>    string: the owner polling the channel (SET NX PX, renewed)

The holder renews it every third of its time; another worker process of the channel tries to take it
every so often and polls only once it has it (the holder stopped, or died and the lease expired).
Renewing and releasing check the owner with GET before PEXPIRE or DEL: if the lease expired in between
and another took it, that one's lease is extended or dropped, and the two may poll at once until the
next renewal tells the first it lost. That is allowed: polling twice applies nothing twice (every line
goes through its reference), it only spends the API's quota twice.
"""

from __future__ import annotations

import os
import socket
import uuid


def owner_name() -> str:
    """<host>-<pid>-<random>: who holds a lease, for an operator reading it."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Lease:
    def __init__(self, redis, key: str, ttl_s: float, owner: str | None = None) -> None:
        self.redis, self.key = redis, key
        self.ttl_ms = max(100, int(ttl_s * 1000))
        self.owner = owner or owner_name()

    async def acquire(self) -> bool:
        return bool(await self.redis.set(self.key, self.owner, nx=True, px=self.ttl_ms))

    async def renew(self) -> bool:
        """Still ours: extend it. Someone else's (or gone): False, stop polling."""
        if await self.redis.get(self.key) != self.owner:
            return False
        return bool(await self.redis.pexpire(self.key, self.ttl_ms))

    async def release(self) -> None:
        if await self.redis.get(self.key) == self.owner:
            await self.redis.delete(self.key)

    async def holder(self) -> str | None:
        return await self.redis.get(self.key)
