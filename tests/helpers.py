"""Small helpers the tests share."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import time
from collections.abc import Callable

import redis

from consumers.options import WorkerOptions
from stocksync.keys import Keys


def snapshot(client: redis.Redis, prefix: str) -> dict:
    """Every key of a prefix with its type and content: equal snapshots mean nothing changed."""
    out = {}
    for pattern in (f"\\{{{prefix}:*", f"{prefix}:*"):
        for key in client.scan_iter(match=pattern, count=1000):
            kind = client.type(key)
            if kind == "hash":
                out[key] = client.hgetall(key)
            elif kind == "stream":
                out[key] = client.xrange(key)
            elif kind == "string":
                out[key] = client.get(key)
            else:
                out[key] = kind
    return out


def fcall(client: redis.Redis, fn: str, keys: list[str], *args) -> list:
    return client.fcall(fn, len(keys), *keys, *args)


def sku_call_keys(keys: Keys, sku: str, ref: str) -> list[str]:
    p = keys.partition(sku)
    return [keys.sku(sku), keys.events(p), keys.idem(p, ref)]


def wait_for(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll until condition() is truthy; fail with `what` after the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def worker_options(**kw):
    """WorkerOptions for tests: short blocks, leases, backoffs and beats, no trimming."""
    base = dict(block_ms=100, reclaim_idle_ms=2000, lease_ms=3000, backoff_base_ms=20, backoff_cap_ms=200,
                breaker_open_ms=200, breaker_max_open_ms=400, trim_interval_ms=0, heartbeat_ms=200)
    return WorkerOptions(**{**base, **kw})


def forget_reference(client, keys: Keys, partition: int, ref: str) -> int:
    """Delete a reference's record from its bucket, as its expiry would (1 if it was there)."""
    digest = hashlib.sha1(keys.idem(partition, ref).encode()).hexdigest()
    return client.hdel(f"{keys.tag(partition)}:refs:{digest[:3]}", digest[24:40])


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a process a test started: SIGTERM, then SIGKILL if it has not exited within `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
