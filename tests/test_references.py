"""The reference record (G2) as library 0.5.0 keeps it: fields of 4096 listpack buckets per partition, the
window exact to the second, a bounded sweep inside the writing functions, old per-reference keys honoured
after an upgrade, and stocksync_ref. Real servers only (the suite runs once on Redis, once on Valkey)."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from stocksync import functions
from stocksync.keys import Keys

from .helpers import fcall, sku_call_keys, snapshot, wait_for

TTL = 172800
OLD_LIBRARY_COMMIT = "46b48ac"  # the last commit with library 0.4.0 (a key with a TTL per reference)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def r(sync_redis):
    sync_redis.function_load(functions.library_source(TTL), replace=True)
    return sync_redis


@pytest.fixture
def keys(prefix):
    return Keys(prefix, 1)


def slot(keys: Keys, ref: str, partition: int = 0) -> tuple[str, str]:
    """The bucket and field of a reference, as the library derives them from the reference key."""
    digest = hashlib.sha1(keys.idem(partition, ref).encode()).hexdigest()
    return f"{keys.tag(partition)}:refs:{digest[:3]}", digest[24:40]


def call(r, keys, fn, sku, ref, *args):
    return fcall(r, fn, sku_call_keys(keys, sku, ref), *args)


def order(r, keys, ref, lines, source="shopify"):
    ks = [keys.events(0), keys.idem(0, ref)] + [keys.sku(s) for s, _ in lines]
    return fcall(r, "stocksync_order", ks, source, ref, *[q for _, q in lines])


def ref_status(r, keys, ref):
    return r.fcall_ro("stocksync_ref", 1, keys.idem(0, ref))


def server_now(r) -> int:
    return int(r.time()[0])


def test_a_reference_is_one_field_of_its_bucket(r, keys):
    before = server_now(r)
    call(r, keys, "stocksync_set", "A", "s1", 10, "admin", "s1")
    assert call(r, keys, "stocksync_decrement", "A", "d1", 3, "amazon", "d1") == ["ok", 7, 2, 0]
    bucket, field = slot(keys, "d1")
    value = r.hget(bucket, field)
    assert value[10:] == "o|7|2" and before <= int(value[:10]) <= server_now(r)
    assert r.object("encoding", bucket) == "listpack"
    assert not r.exists(keys.idem(0, "d1"))  # the reference key itself is not written
    assert set(r.scan_iter(match=f"\\{{{keys.prefix}:*")) == {
        keys.sku("A"), keys.events(0), bucket, slot(keys, "s1")[0]}


def test_every_function_replays_its_first_outcome(r, keys):
    assert call(r, keys, "stocksync_set", "A", "s1", 5, "admin", "s1", 0) == ["ok", 5, 1, 0]
    call(r, keys, "stocksync_set", "B", "s2", 5, "admin", "s2")
    assert call(r, keys, "stocksync_set", "A", "c1", 9, "admin", "c1", 7) == ["conflict", 5, 1, 0]
    assert call(r, keys, "stocksync_adjust", "A", "a1", -9, "count", "a1") == ["insufficient", 5, 1, 0]
    assert order(r, keys, "o1", [("A", 2), ("B", 1)]) == ["ok", [["A", 3, 2], ["B", 4, 2]], 0]
    before = snapshot(r, keys.prefix)
    assert call(r, keys, "stocksync_set", "A", "s1", 5, "admin", "s1", 0) == ["ok", 5, 1, 1]
    assert call(r, keys, "stocksync_set", "A", "c1", 9, "admin", "c1", 7) == ["conflict", 5, 1, 1]
    assert call(r, keys, "stocksync_adjust", "A", "a1", -9, "count", "a1") == ["insufficient", 5, 1, 1]
    assert order(r, keys, "o1", [("A", 2), ("B", 1)]) == ["ok", [["A", 3, 2], ["B", 4, 2]], 1]
    assert snapshot(r, keys.prefix) == before


async def test_the_same_reference_from_fifty_connections_at_once_applies_once(r, keys, redis_url):
    call(r, keys, "stocksync_set", "A", "s1", 100, "admin", "s1")
    clients = [aioredis.Redis.from_url(redis_url, decode_responses=True) for _ in range(50)]
    try:
        replies = await asyncio.gather(*(
            c.fcall("stocksync_decrement", 3, *sku_call_keys(keys, "A", "d1"), 3, "amazon", "d1") for c in clients))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    assert sorted(reply[3] for reply in replies) == [0] + [1] * 49
    assert {tuple(reply[:3]) for reply in replies} == {("ok", 97, 2)}
    assert r.hget(keys.sku("A"), "available") == "97" and r.xlen(keys.events(0)) == 2


def test_the_window_is_exact_and_never_shrinks(r, keys):
    """A record is replayed while it is at most TTL seconds old, and forgotten after (crafted first-use
    times, so no waiting: two seconds of margin either side for the clock ticking during the test)."""
    call(r, keys, "stocksync_set", "A", "s1", 10, "admin", "s1")
    now = server_now(r)
    young, old = slot(keys, "young"), slot(keys, "old")
    r.hset(young[0], young[1], f"{now - TTL + 2:010d}o|4|9")
    r.hset(old[0], old[1], f"{now - TTL - 2:010d}o|4|9")
    assert call(r, keys, "stocksync_decrement", "A", "young", 1, "amazon", "young") == ["ok", 4, 9, 1]
    assert ref_status(r, keys, "young") == "ok" and ref_status(r, keys, "old") is None
    # Past the window the reference is a first use: applied, and recorded again from now.
    assert call(r, keys, "stocksync_decrement", "A", "old", 1, "amazon", "old") == ["ok", 9, 2, 0]
    assert int(r.hget(*old)[:10]) >= now and r.hget(*old)[10:] == "o|9|2"
    assert call(r, keys, "stocksync_decrement", "A", "old", 1, "amazon", "old") == ["ok", 9, 2, 1]


def test_a_reference_is_forgotten_after_a_short_window(sync_redis, keys):
    """End to end with a 2-second window: replayed at first, applied again once forgotten."""
    r = sync_redis
    r.function_load(functions.library_source(2), replace=True)
    try:
        call(r, keys, "stocksync_set", "A", "s1", 10, "admin", "s1")
        assert call(r, keys, "stocksync_decrement", "A", "d1", 1, "amazon", "d1") == ["ok", 9, 2, 0]
        assert call(r, keys, "stocksync_decrement", "A", "d1", 1, "amazon", "d1") == ["ok", 9, 2, 1]
        wait_for(lambda: ref_status(r, keys, "d1") is None, timeout=10, what="d1 to be forgotten")
        assert call(r, keys, "stocksync_decrement", "A", "d1", 1, "amazon", "d1") == ["ok", 8, 3, 0]
    finally:
        r.function_load(functions.library_source(TTL), replace=True)


def test_unknown_sku_is_not_remembered_anywhere(r, keys):
    assert call(r, keys, "stocksync_decrement", "NOPE", "d1", 1, "amazon", "d1") == ["unknown_sku", 0, 0, 0]
    assert ref_status(r, keys, "d1") is None and not r.exists(slot(keys, "d1")[0])
    assert order(r, keys, "o1", [("NOPE", 1)])[0] == "unknown_sku"
    assert ref_status(r, keys, "o1") is None and snapshot(r, keys.prefix) == {}


def test_stocksync_ref_answers_the_first_status(r, keys):
    call(r, keys, "stocksync_set", "A", "s1", 2, "admin", "s1")
    call(r, keys, "stocksync_decrement", "A", "d1", 5, "amazon", "d1")
    call(r, keys, "stocksync_set", "A", "c1", 1, "admin", "c1", 9)
    order(r, keys, "o1", [("A", 1)])
    assert [ref_status(r, keys, ref) for ref in ("s1", "d1", "c1", "o1", "never")] == [
        "ok", "insufficient", "conflict", "ok", None]
    for bad in ([], [keys.sku("A")], [keys.idem(0, "a"), keys.idem(0, "b")]):
        with pytest.raises(redis.ResponseError, match="stocksync: "):
            r.fcall_ro("stocksync_ref", len(bad), *bad)


def test_a_long_order_outcome_overflows_to_the_reference_key(r, keys):
    skus = [f"S{i}" for i in range(6)]
    for s in skus:
        call(r, keys, "stocksync_set", s, f"set-{s}", 2_000_000_000, "admin", f"set-{s}")
    lines = [(s, 1) for s in skus]
    first = order(r, keys, "big", lines)
    assert first[0] == "ok" and first[2] == 0
    bucket, field = slot(keys, "big")
    assert r.hget(bucket, field)[10:] == "k" and r.object("encoding", bucket) == "listpack"
    assert r.get(keys.idem(0, "big")).startswith("o|1999999999,2;") and TTL - 5 <= r.ttl(keys.idem(0, "big")) <= TTL + 1
    assert order(r, keys, "big", lines) == first[:2] + [1]
    assert ref_status(r, keys, "big") == "ok"
    with pytest.raises(redis.ResponseError, match="was first used for a different operation"):
        call(r, keys, "stocksync_decrement", "S0", "big", 1, "shopify", "big")
    # The key expiring first (its TTL is the window + 1 s) forgets the reference too.
    r.delete(keys.idem(0, "big"))
    assert ref_status(r, keys, "big") is None
    assert order(r, keys, "big", lines)[2] == 0


def test_the_reference_key_is_the_identity_as_before(r, keys):
    """Two calls naming the same reference key are one reference (callers may hash long references into
    shorter keys; ARGV's ref only goes into the event), as with 0.4's key per reference."""
    call(r, keys, "stocksync_set", "A", "s1", 10, "admin", "s1")
    ks = sku_call_keys(keys, "A", "h:1234")
    assert fcall(r, "stocksync_decrement", ks, 1, "amazon", "a-very-long-reference") == ["ok", 9, 2, 0]
    assert fcall(r, "stocksync_decrement", ks, 1, "amazon", "another-reference") == ["ok", 9, 2, 1]


def test_buckets_stay_compact(r, keys):
    call(r, keys, "stocksync_set", "A", "s1", 1_000_000, "admin", "s1")
    pipe = r.pipeline(transaction=False)
    for i in range(20_000):
        pipe.fcall("stocksync_decrement", 3, *sku_call_keys(keys, "A", f"r{i}"), 1, "amazon", f"r{i}")
    assert all(reply[0] == "ok" for reply in pipe.execute())
    buckets = list(r.scan_iter(match=f"\\{{{keys.prefix}:0\\}}:refs:*", count=1000))
    assert 4000 <= len(buckets) <= 4096
    assert {r.object("encoding", b) for b in buckets} == {"listpack"}
    assert sum(r.hlen(b) for b in buckets) == 20_001


# The sweep ---------------------------------------------------------------------------------------------


def _fill(r, keys, buckets: range, per_bucket: int, first_use: int) -> dict[str, list[str]]:
    """per_bucket crafted records in each of those buckets of partition 0, all first used at first_use:
    {bucket: [fields]}."""
    crafted = {}
    pipe = r.pipeline(transaction=False)
    for b in buckets:
        name, fields = f"{keys.tag(0)}:refs:{b:03x}", [f"{b:03x}{i:013x}" for i in range(per_bucket)]
        pipe.hset(name, mapping={f: f"{first_use:010d}o|1|1" for f in fields})
        crafted[name] = fields
    pipe.execute()
    return crafted


def _left(r, crafted: dict[str, list[str]]) -> dict[str, int]:
    """How many of the crafted records each bucket still holds (the test's own calls add others)."""
    pipe = r.pipeline(transaction=False)
    for name, fields in crafted.items():
        pipe.hmget(name, fields)
    return {name: sum(v is not None for v in values) for name, values in zip(crafted, pipe.execute(), strict=True)}


def test_the_sweep_removes_expired_records_one_bucket_per_call(sync_redis, keys):
    """With a 1-second window a bucket is due every 122 us (half the window over 4096 buckets), less than
    one turn of this loop takes, so every call is past its sweep time and sweeps the next bucket: one
    bucket (one HSCAN page) per call, all 4096 in turn. (With 4 s, a step of 488 us, an idle machine ran
    some turns faster than that, and those calls rightly swept nothing.) Expired records go, records
    inside the window stay."""
    r = sync_redis
    r.function_load(functions.library_source(1), replace=True)
    try:
        now = server_now(r)
        crafted = _fill(r, keys, range(0, 4096, 64), 3, now - 100)  # 64 buckets of 3 expired records
        live = slot(keys, "recent")
        r.hset(live[0], live[1], f"{now + 60:010d}o|1|1")  # inside the window for the whole test
        call(r, keys, "stocksync_set", "A", "s1", 10**9, "admin", "s1")
        left = _left(r, crafted)
        calls, deadline = 0, time.monotonic() + 30
        while any(left.values()) and time.monotonic() < deadline:
            call(r, keys, "stocksync_decrement", "A", f"d{calls}", 1, "amazon", f"d{calls}")
            calls += 1
            after = _left(r, crafted)
            shrunk = [name for name in crafted if after[name] < left[name]]
            assert len(shrunk) <= 1, f"one call swept {len(shrunk)} buckets"
            assert all(after[name] == 0 for name in shrunk)  # a listpack bucket comes in one page
            left = after
        assert not any(left.values()), "expired records left after 30 s"
        assert calls <= 4096 + 64, calls
        assert r.hget(*live) is not None, "a record inside the window was swept"
    finally:
        r.function_load(functions.library_source(TTL), replace=True)


def test_the_sweep_of_a_large_bucket_is_bounded_per_call(sync_redis, keys):
    """A bucket past the listpack limit (a hashtable) is swept a page at a time, over several calls."""
    r = sync_redis
    r.function_load(functions.library_source(4), replace=True)
    try:
        now = server_now(r)
        big = f"{keys.tag(0)}:refs:abc"
        crafted = {big: [f"abc{i:013x}" for i in range(3000)]}
        r.hset(big, mapping={f: f"{now - 100:010d}o|1|1" for f in crafted[big]})
        assert r.object("encoding", big) == "hashtable"
        call(r, keys, "stocksync_set", "A", "s1", 10**9, "admin", "s1")
        # HLEN after each call (cheap: the test's own references rarely land in this bucket); the crafted
        # records themselves are counted every 100 calls (HMGET of 3,000 fields is not cheap)
        sizes, i = [r.hlen(big)], 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (i % 100 or _left(r, crafted)[big]):
            call(r, keys, "stocksync_decrement", "A", f"d{i}", 1, "amazon", f"d{i}")
            i += 1
            sizes.append(r.hlen(big))
        assert _left(r, crafted)[big] == 0, "the large bucket was not swept in 60 s"
        steps = [a - b for a, b in zip(sizes, sizes[1:], strict=False) if a > b]
        assert len(steps) >= 3 and max(steps) <= 1500, steps  # HSCAN COUNT 128: a page, never the whole
    finally:
        r.function_load(functions.library_source(TTL), replace=True)


# Upgrading from 0.4 ------------------------------------------------------------------------------------


async def _as_old_library(store, version="0.4.0"):
    """Load this library labelled as an older version, as a deployment before the upgrade has it."""
    old = functions.library_source(store.settings.idem_ttl_s).replace(
        f"local VERSION = '{functions.library_version()}'", f"local VERSION = '{version}'")
    await store.redis.execute_command("FUNCTION", "LOAD", "REPLACE", old)


async def test_an_upgrade_honours_old_reference_keys_until_they_expire(store, sync_redis):
    r, keys = sync_redis, store.keys
    await store.set("A", 10, source="w", ref="s1")
    await _as_old_library(store)
    # What 0.4 left: a key per reference, with its TTL (here a decrement that took 3 at version 2).
    r.set(keys.idem(0, "old"), "o|7|2", ex=TTL)
    before_load = server_now(r)
    [result] = await functions.ensure_loaded(store.redis, store.settings.idem_ttl_s)
    assert result.action == "replaced"
    assert before_load + TTL + 1 <= result.legacy_until <= server_now(r) + TTL + 1
    assert r.fcall("stocksync_legacy_until", 0) == result.legacy_until
    before = snapshot(r, keys.prefix)
    assert (await store.decrement("A", 3, ref="old", source="amazon")).replayed
    assert snapshot(r, keys.prefix) == before
    assert ref_status(r, keys, "old") == "ok"
    new = await store.decrement("A", 3, ref="new", source="amazon")
    assert (new.status, new.available, new.replayed) == ("ok", 7, False) and not r.exists(keys.idem(0, "new"))
    # Later loads (another TTL, --force) keep reading old keys until the moment the upgrade wrote.
    [result] = await functions.ensure_loaded(store.redis, 3600)
    assert result.legacy_until == r.fcall("stocksync_legacy_until", 0) > server_now(r)
    [result] = await functions.ensure_loaded(store.redis, store.settings.idem_ttl_s, force=True)
    assert result.legacy_until == r.fcall("stocksync_legacy_until", 0) > server_now(r)
    # Past that moment no call reads them (the loader drops the moment at its next load).
    r.function_load(functions.library_source(TTL, legacy_until=server_now(r) - 1), replace=True)
    assert ref_status(r, keys, "old") is None
    assert not (await store.decrement("A", 3, ref="old", source="amazon")).replayed
    [result] = await functions.ensure_loaded(store.redis, store.settings.idem_ttl_s, force=True)
    assert result.legacy_until == 0 == r.fcall("stocksync_legacy_until", 0)


async def test_a_fresh_install_reads_no_old_keys(store, sync_redis):
    await store.redis.execute_command("FUNCTION", "DELETE", "stocksync")
    [result] = await functions.ensure_loaded(store.redis, store.settings.idem_ttl_s)
    assert (result.action, result.legacy_until) == ("loaded", 0)
    [result] = await functions.ensure_loaded(store.redis, store.settings.idem_ttl_s)
    assert (result.action, result.legacy_until) == ("current", 0)


def _old_library_source() -> str | None:
    if not shutil.which("git"):
        return None
    run = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD_LIBRARY_COMMIT}:lua/stocksync.lua"],
                         capture_output=True, text=True)
    if run.returncode != 0 or "local VERSION = '0.4.0'" not in run.stdout:
        return None
    return run.stdout


async def test_references_the_real_0_4_library_recorded_survive_the_upgrade(store, sync_redis):
    old = _old_library_source()
    if old is None:
        pytest.skip(f"library 0.4.0 not in this checkout's history ({OLD_LIBRARY_COMMIT})")
    r, keys = sync_redis, store.keys
    await store.redis.execute_command("FUNCTION", "LOAD", "REPLACE", old)
    await store.set("A", 10, source="w", ref="s1")
    await store.set("B", 10, source="w", ref="s2")
    taken = await store.decrement("A", 3, ref="d1", source="amazon")
    short = await store.decrement("A", 30, ref="d2", source="amazon")
    ordered = await store.order({"A": 1, "B": 2}, ref="o1", source="shopify")
    assert r.ttl(keys.idem(0, "d1")) > 0  # 0.4's layout
    await functions.ensure_loaded(store.redis, store.settings.idem_ttl_s)
    assert r.fcall("stocksync_version", 0) == functions.library_version()
    before = snapshot(r, keys.prefix)
    for ref, first in (("d1", taken), ("d2", short)):
        again = await store.decrement("A", 3 if ref == "d1" else 30, ref=ref, source="amazon")
        assert again.replayed and (again.status, again.available, again.version) == (
            first.status, first.available, first.version)
    again = await store.order({"A": 1, "B": 2}, ref="o1", source="shopify")
    assert again.replayed and again.lines == ordered.lines
    with pytest.raises(redis.ResponseError, match="different operation"):
        r.fcall("stocksync_decrement", 3, *sku_call_keys(keys, "A", "o1"), 1, "x", "o1")
    assert snapshot(r, keys.prefix) == before
    assert [ref_status(r, keys, ref) for ref in ("d1", "d2", "o1", "s1")] == ["ok", "insufficient", "ok", "ok"]


# Elsewhere: a cluster (fakeredis, for users' own unit tests: tests/test_fakeredis.py) ------------------------------------------


@pytest.mark.cluster
async def test_buckets_live_in_the_slot_of_their_partition_on_a_cluster(cluster):
    import uuid

    from stocksync.settings import Settings
    from stocksync.store import StockStore

    prefix = f"c{uuid.uuid4().hex[:10]}"
    store = await StockStore.connect(Settings(redis_url=cluster.url, cluster=True, prefix=prefix, partitions=12))
    try:
        skus = [f"SKU-{i}" for i in range(24)]
        for s in skus:
            await store.set(s, 5, source="w", ref=f"i-{s}")
            assert (await store.decrement(s, 1, ref=f"d-{s}", source="amazon")).available == 4
            assert (await store.decrement(s, 1, ref=f"d-{s}", source="amazon")).replayed
        for s in skus:
            p = store.keys.partition(s)
            bucket, _ = slot(store.keys, f"d-{s}", p)
            assert store.redis.keyslot(bucket) == store.redis.keyslot(store.keys.events(p))
            assert await store.redis.fcall_ro("stocksync_ref", 1, store.keys.idem(p, f"d-{s}")) == "ok"
    finally:
        keys = [k async for k in store.redis.scan_iter(match=f"\\{{{prefix}:*")] + [store.keys.meta]
        for k in keys:
            await store.redis.delete(k)
        await store.close()


@pytest.mark.cluster
async def test_buckets_move_with_their_slot_and_a_call_never_reads_a_moved_one(cluster):
    """The buckets are not declared keys, so a slot migration is where that could go wrong: mid-migration,
    a call whose bucket has already left gets an error and changes nothing; once the slot has moved, the
    references are remembered on the new node."""
    import uuid

    from stocksync.settings import Settings
    from stocksync.store import StockStore

    store = await StockStore.connect(Settings(redis_url=cluster.url, cluster=True,
                                              prefix=f"m{uuid.uuid4().hex[:8]}", partitions=1))
    keys = store.keys
    nodes = {n.port: redis.Redis(port=n.port, decode_responses=True) for n in cluster.nodes}
    source = target = None
    moved = False
    try:
        skus = [f"S{i}" for i in range(6)]
        for s in skus:
            await store.set(s, 2_000_000_000, source="w", ref=f"i-{s}")
        taken = await store.decrement("S0", 3, ref="d1", source="amazon")
        big = await store.order({s: 1 for s in skus}, ref="big", source="shopify")  # its outcome is at KEYS[2]
        slot_no = store.redis.keyslot(keys.events(0))
        source_port = store.redis.nodes_manager.get_node_from_slot(slot_no).port
        target_port = next(port for port in nodes if port != source_port)
        source, target = nodes[source_port], nodes[target_port]
        target.execute_command("CLUSTER", "SETSLOT", slot_no, "IMPORTING", source.execute_command("CLUSTER", "MYID"))
        source.execute_command("CLUSTER", "SETSLOT", slot_no, "MIGRATING", target.execute_command("CLUSTER", "MYID"))
        for ref in ("d1", "big"):  # only the buckets move first
            source.execute_command("MIGRATE", "127.0.0.1", target_port, slot(keys, ref)[0], 0, 5000)
        raw = redis.Redis(port=source_port)  # DUMP's payload is bytes

        def contents():
            return {k: raw.dump(k) for k in source.execute_command("CLUSTER", "GETKEYSINSLOT", slot_no, 1000)}

        before = contents()
        order_keys = [keys.events(0), keys.idem(0, "big")] + [keys.sku(s) for s in skus]
        with pytest.raises(redis.ResponseError, match="non local key"):  # every declared key is here, not the bucket
            source.fcall("stocksync_order", len(order_keys), *order_keys, "shopify", "big", *[1] * len(skus))
        with pytest.raises(redis.ResponseError):  # ASK: the declared reference key is not here
            source.fcall("stocksync_decrement", 3, *sku_call_keys(keys, "S0", "d1"), 3, "amazon", "d1")
        assert contents() == before, "a refused call changed something"
        raw.close()
        rest = source.execute_command("CLUSTER", "GETKEYSINSLOT", slot_no, 1000)
        source.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *rest)
        target_id = target.execute_command("CLUSTER", "MYID")
        for client in nodes.values():
            client.execute_command("CLUSTER", "SETSLOT", slot_no, "NODE", target_id)
        moved = True
        again = await store.decrement("S0", 3, ref="d1", source="amazon")
        assert again.replayed and (again.available, again.version) == (taken.available, taken.version)
        again = await store.order({s: 1 for s in skus}, ref="big", source="shopify")
        assert again.replayed and again.lines == big.lines
        assert store.redis.nodes_manager.get_node_from_slot(slot_no).port == target_port
    finally:
        if source is not None and not moved:  # leave the session's cluster as it was
            for client in (source, target):
                client.execute_command("CLUSTER", "SETSLOT", slot_no, "STABLE")
        for client in nodes.values():
            for k in client.execute_command("CLUSTER", "GETKEYSINSLOT", slot_no, 1000):
                client.delete(k)
        await store.redis.delete(keys.meta)
        for client in nodes.values():
            client.close()
        await store.close()

