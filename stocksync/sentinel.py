"""Redis Sentinel in front of one primary and its replicas: `redis+sentinel://` URLs.

    REDIS_URL=redis+sentinel://[:password@]host:port[,host:port...]/<service name>[/<db>]

The hosts are Sentinels (one or more); the service name is the one Sentinel monitors (`sentinel monitor
<name> ...`). The client asks a Sentinel which server is the primary of the service, and asks again when a
connection to it fails or it turns out to be a replica (redis-py's SentinelConnectionPool), so after a
failover the processes follow the promoted replica without a restart. A password in the URL is the data
servers' (the Sentinels are asked without one: give them none, or put them behind the same network rules).
What an acknowledged change survives is as with a cluster: replication is asynchronous (docs/runbook.md).
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

SCHEME = "redis+sentinel"


def is_sentinel_url(url: str) -> bool:
    return urlsplit(url).scheme == SCHEME


def parse(url: str) -> tuple[list[tuple[str, int]], str, int, str | None]:
    """(sentinels, service name, db, password) of a redis+sentinel:// URL; ValueError naming what is wrong."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    password = unquote(parts.password) if parts.password else None
    hosts = []
    for item in netloc.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a Sentinel must be host:port, got {item!r}")
        hosts.append((host, int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("expected redis+sentinel://host:port[,host:port]/<service name>[/<db>]")
    return hosts, path[0], int(path[1]) if len(path) == 2 else 0, password


def connect(url: str, max_connections: int, **kwargs) -> Redis:
    hosts, service, db, password = parse(url)
    sentinel = Sentinel(hosts, socket_timeout=kwargs.get("socket_timeout", 2.0))
    return sentinel.master_for(service, redis_class=Redis, db=db, password=password,
                               max_connections=max_connections, **kwargs)
