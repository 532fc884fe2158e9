"""Durability: acknowledged decrements survive a SIGKILL with appendfsync always, and so does the library."""

from __future__ import annotations

import shutil
import tempfile

import redis

from stocksync import functions
from stocksync.embedded import EmbeddedRedis
from stocksync.keys import Keys

from .helpers import fcall, sku_call_keys


def test_acknowledged_decrements_survive_sigkill():
    directory = tempfile.mkdtemp(prefix="stocksync-aof-")
    aof = ["--appendonly", "yes", "--appendfsync", "always"]
    server = EmbeddedRedis(extra=aof, directory=directory).start()
    keys = Keys("durable", 1)
    try:
        client = redis.Redis(port=server.port, decode_responses=True)
        client.function_load(functions.library_source(3600), replace=True)
        fcall(client, "stocksync_set", sku_call_keys(keys, "SKU", "init"), 1000, "w", "init")
        acknowledged = 0
        for i in range(300):
            reply = fcall(client, "stocksync_decrement", sku_call_keys(keys, "SKU", f"o{i}"), 1, "amazon", f"o{i}")
            assert reply[0] == "ok"
            acknowledged += 1
        client.close()
        server.kill()

        server = EmbeddedRedis(port=server.port, extra=aof, directory=directory).start()
        client = redis.Redis(port=server.port, decode_responses=True)
        # The library came back from the AOF: no reload needed.
        assert client.fcall("stocksync_version", 0) == functions.library_version()
        available, _, version, _, _ = client.fcall_ro("stocksync_get", 1, keys.sku("SKU"))
        assert (available, version) == (1000 - acknowledged, 1 + acknowledged)
        assert client.xlen(keys.events(0)) == 1 + acknowledged
        # And the references too: a retry after the crash is still a replay.
        assert fcall(client, "stocksync_decrement", sku_call_keys(keys, "SKU", "o7"), 1, "amazon", "o7")[3] == 1
        client.close()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
