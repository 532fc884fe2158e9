"""Decrement benchmark (issue 2): `python -m bench.decrement [--quick] [--rounds N]`.

1. Server side, redis-benchmark -c 50 at -P 1 and -P 16, over 10,000 SKUs and over one hot SKU:
   FCALL stocksync_decrement ("full") beside a bare check-and-decrement + XADD function ("bare") and
   beside bare + one SET EX of the reference ("bare+SET EX"), plus, at -P 16, variants that take one
   part out of the real library (built from its source by text substitution, loaded in its place) to
   show what costs what. Throughput and INFO commandstats usec_per_call of FCALL (server time per call).
2. Python, one process: StockStore (decrement_many in batches; 64 asyncio tasks) beside a raw redis-py
   loop doing the same FCALLs; asyncpg with 64 tasks running the article's UPDATE, same run.
3. PostgreSQL: pgbench with the article's UPDATE, -c 50 -j 2, hot row and 10,000 rows,
   synchronous_commit on and off, beside redis-benchmark -P 1 (no persistence, and AOF everysec).
4. Memory (bench/memory.py): bytes per SKU and per remembered reference.

Every measured thing runs once per round, rounds interleaved (rotated order); the tables give medians,
and each ratio is the median of the per-round ratios of two figures measured minutes apart at most.
Writes bench/results/decrement.json. Servers are private (EmbeddedRedis on free ports); PostgreSQL
gets a throwaway database that is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import os
import random
import re
import resource
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass

import redis

from stocksync import connection
from stocksync.embedded import EmbeddedRedis
from stocksync.functions import library_source, library_version
from stocksync.keys import Keys
from stocksync.settings import Settings
from stocksync.store import StockStore

from . import memory
from .common import (
    fmt,
    log,
    machine,
    median,
    python_versions,
    redis_server_version,
    rotated,
    table,
    today,
    tool_version,
    write_json,
)

PREFIX = "b"
KEYS = Keys(PREFIX, 1)
TTL_S = 172800
STOCK = 2_000_000_000
N_SKUS = 10_000
HOT = "HOTSKU000001"  # 12 characters, like redis-benchmark's __rand_int__
SKUS = [f"{i:012d}" for i in range(N_SKUS)]  # the names redis-benchmark's __rand_int__ produces with -r
RAND_REF = "__rand_int____rand_int____rand_int__"

TARGETS = {
    "full_vs_bare": 0.75,
    "store_vs_raw": 0.8,
    "hot_vs_postgres": 20.0,
    "many_vs_postgres": 4.0,
    "bytes_per_sku": 180,
    "bytes_per_ref": 60,
}

# Bench-only functions, loaded beside the real library (library stocksync_bench). Same KEYS and ARGV
# as stocksync_decrement; no validation, no pcall.
BENCH_LIBRARY = f"""#!lua name=stocksync_bench
local TTL = {TTL_S}

-- HMGET, check, HSET available+version, XADD the fields the real function writes.
local function take(keys, args)
  local qty = tonumber(args[1])
  local cur = redis.call('HMGET', keys[1], 'available', 'version')
  local available, version = tonumber(cur[1]), tonumber(cur[2])
  if available < qty then
    return 'insufficient', available, version
  end
  available, version = available - qty, version + 1
  redis.call('HSET', keys[1], 'available', available, 'version', version)
  redis.call('XADD', keys[2], '*', 'type', 'stock.changed', 'sku', string.match(keys[1], ':sku:(.+)$'),
    'available', available, 'delta', -qty, 'version', version, 'source', args[2], 'ref', args[3])
  return 'ok', available, version
end

local function bare(keys, args)
  local status, available, version = take(keys, args)
  return {{status, available, version, 0}}
end

-- bare plus the least that exactly-once needs: one SET EX of a compact record under the reference.
local function bare_setex(keys, args)
  local status, available, version = take(keys, args)
  redis.call('SET', keys[3], 'o|' .. available .. '|' .. version, 'EX', TTL)
  return {{status, available, version, 0}}
end

-- bare plus the least a record in a bucket needs (library 0.5): the server's clock for the first-use
-- time, the digest of the reference key, one HSETNX of a field of one of 4096 hashes.
local function bare_bucket(keys, args)
  local now = redis.call('TIME')[1]
  local h = redis.sha1hex(keys[3])
  redis.call('HSETNX', '{{b:0}}:refs:' .. string.sub(h, 1, 3), string.sub(h, 25, 40), now .. 'o|1999999999|2')
  local status, available, version = take(keys, args)
  return {{status, available, version, 0}}
end

-- The cost of an FCALL with these keys and arguments that does nothing.
local function noop(keys, args)
  return {{'ok', 1, 1, 0}}
end

redis.register_function('bench_bare', bare)
redis.register_function('bench_bare_setex', bare_setex)
redis.register_function('bench_bare_bucket', bare_bucket)
redis.register_function('bench_noop', noop)
"""

# Text substitutions on the real library that take one part out. If the library changes so that a
# pattern no longer matches, that variant is skipped (and said so), the rest still runs.
NO_RECORD = [("local function remember(tag, idem_key, record)\n",
              "local function remember(tag, idem_key, record)\n  if true then return nil end\n")]
NO_VALIDATION = [
    ("local tag, sku, source, ref = mutation(keys, args)\n  local qty = integer(args[1], 'qty', 1, MAX_QTY)",
     "local tag, sku = string.match(keys[1], '^(%b{}):sku:(.+)$')\n  local source, ref = args[2], args[3]\n"
     "  local qty = tonumber(args[1])"),
    ("redis.register_function('stocksync_decrement', guarded(decrement))",
     "redis.register_function('stocksync_decrement', decrement)"),
]


@dataclass(frozen=True)
class Variant:
    name: str
    function: str
    library: tuple[tuple[str, str], ...] | None = None  # substitutions on the real library; None = real
    decomposition: bool = False  # only at -P 16 (where the server is the bottleneck)
    writes_event: bool = True
    # new: this checkout's library; old: 0.4.0 from git (memory.OLD_LIBRARY_REV); upgrade: this checkout's
    # with LEGACY_UNTIL a day ahead, as in the retention window after an upgrade (one GET more a call)
    source: str = "new"
    store: str = "buckets"  # where it keeps references (what --prefill fills): buckets, keys or none


VARIANTS = [
    Variant("bare", "bench_bare", store="none"),
    Variant("bare+SET EX", "bench_bare_setex", store="keys"),
    Variant("bare+bucket record", "bench_bare_bucket"),
    Variant("full", "stocksync_decrement"),
    Variant("full 0.4.0", "stocksync_decrement", source="old", store="keys"),
    Variant("full, upgrade window", "stocksync_decrement", source="upgrade"),
    Variant("noop FCALL", "bench_noop", decomposition=True, writes_event=False, store="none"),
    Variant("full - record - validation", "stocksync_decrement", tuple(NO_RECORD + NO_VALIDATION), True),
    Variant("full - validation", "stocksync_decrement", tuple(NO_VALIDATION), True),
    Variant("full - record", "stocksync_decrement", tuple(NO_RECORD), True),
]
CONFIGS = [(1, "10k"), (1, "hot"), (16, "10k"), (16, "hot")]


def derived_source(subs: tuple[tuple[str, str], ...] | None, source: str = "new") -> str | None:
    if source == "old":
        src = memory.old_library_source(TTL_S)
    elif source == "upgrade":
        src = library_source(TTL_S, legacy_until=int(time.time()) + 86400)
    else:
        src = library_source(TTL_S)
    for old, new in subs or ():
        if src is None or old not in src:
            return None
        src = src.replace(old, new)
    return src


def variant_source(v: Variant) -> str | None:
    return derived_source(v.library, v.source)


def config_name(pipeline: int, keyspace: str) -> str:
    return f"-P {pipeline} {'10,000 SKUs' if keyspace == '10k' else 'hot SKU'}"


# Server side -------------------------------------------------------------------------------------


class NativeServer:
    """A private server with the real library and the bench library; resets its keyspace per run."""

    def __init__(self, extra: list[str] | None = None) -> None:
        self.srv = EmbeddedRedis(extra=extra or [])
        self.loaded: tuple | None = None

    def __enter__(self) -> NativeServer:
        self.srv.start()
        self.r = redis.Redis(port=self.srv.port, decode_responses=True)
        self.r.function_load(BENCH_LIBRARY, replace=True)
        self.load(None)
        return self

    def __exit__(self, *exc: object) -> None:
        self.r.close()
        self.srv.stop()

    def load(self, v: Variant | None) -> None:
        """Load a variant's library (None: this checkout's, unchanged) unless it is loaded already."""
        want = (v.source, v.library) if v else ("new", None)
        if self.loaded != want:
            self.r.function_load(derived_source(want[1], want[0]), replace=True)
            self.loaded = want

    def reset(self, store: str = "none", prefill: int = 0) -> None:
        """An empty keyspace with the 10,000 SKUs and the hot one, each holding STOCK; with prefill, also
        the references a deployment would already remember: prefill records in each of the 4096 buckets
        (store "buckets", library 0.5) or prefill x 4096 reference keys with a TTL (store "keys", 0.4)."""
        self.r.flushall()
        now_ms = int(time.time() * 1000)
        pipe = self.r.pipeline(transaction=False)
        for sku in SKUS + [HOT]:
            pipe.hset(KEYS.sku(sku), mapping={"available": STOCK, "version": 1, "updated_ms": now_ms,
                                              "source": "bench"})
        pipe.execute()
        if prefill and store != "none":
            rng = random.Random(0)
            for start in range(0, 4096, 256):
                pipe = self.r.pipeline(transaction=False)
                for b in range(start, start + 256):
                    if store == "keys":
                        for j in range(prefill):
                            pipe.set(KEYS.idem(0, f"pre-{b}-{j}"), "o|1999999999|123", ex=TTL_S)
                    else:
                        pipe.hset(f"{KEYS.tag(0)}:refs:{b:03x}", mapping={
                            f"{rng.getrandbits(64):016x}": f"{now_ms // 1000}o|1999999999|123" for _ in range(prefill)})
                pipe.execute()
        self.r.config_resetstat()

    def benchmark(self, function: str, pipeline: int, keyspace: str, requests: int, store: str = "none",
                  prefill: int = 0) -> dict:
        sku_key = KEYS.sku("__rand_int__" if keyspace == "10k" else HOT)
        argv = ["redis-benchmark", "-p", str(self.srv.port), "-c", "50", "-n", str(requests), "-P", str(pipeline),
                "-r", str(N_SKUS), "--csv", "FCALL", function, "3", sku_key, KEYS.events(0),
                KEYS.idem(0, RAND_REF), "1", "bench", RAND_REF]
        self.reset(store, prefill)
        cpu_before, client_before = server_cpu_ns(self.srv.proc.pid), children_cpu_s()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        cpu_ns = server_cpu_ns(self.srv.proc.pid) - cpu_before
        client_us = (children_cpu_s() - client_before) * 1e6 / requests
        if proc.returncode != 0:
            raise RuntimeError(f"redis-benchmark failed: {proc.stderr[-500:]}")
        rows = list(csv.reader(io.StringIO(proc.stdout)))
        rps = float(rows[-1][1])
        stats = self.r.info("commandstats")
        # us per FCALL spent in each command run inside it (a command that runs in few calls, like the
        # sweep's HSCAN, counts for what it costs spread over all of them)
        fcalls = stats["cmdstat_fcall"]["calls"]
        nested = {k.removeprefix("cmdstat_"): v["usec"] / fcalls for k, v in stats.items()
                  if k.removeprefix("cmdstat_") in NESTED}
        return {"rps": rps, "usec_per_call": stats["cmdstat_fcall"]["usec_per_call"],
                "cpu_us_per_call": cpu_ns / 1000 / requests, "client_cpu_us_per_call": client_us, "nested": nested,
                "events": self.r.xlen(KEYS.events(0)), "keys": self.r.dbsize()}


NESTED = ("hmget", "hset", "xadd", "set", "get", "time", "hsetnx", "hscan")  # commands run inside the FCALL


def children_cpu_s() -> float:
    """CPU seconds of this process's finished children: the load generator's share of the machine."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def server_cpu_ns(pid: int) -> int:
    """CPU time the server's threads have run, in ns (schedstat): unlike commandstats, which times calls
    by the wall clock, it does not grow when another process takes the core in the middle of a call."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def server_round(server: NativeServer, round_no: int, requests: dict[int, int], out: list, prefill: int = 0,
                 pipelines: tuple[int, ...] = (1, 16)) -> None:
    jobs = []
    for pipeline, keyspace in CONFIGS:
        if pipeline not in pipelines:
            continue
        for v in VARIANTS:
            if v.decomposition and pipeline != 16:
                continue
            jobs.append((pipeline, keyspace, v))
    for pipeline, keyspace, v in rotated(jobs, round_no * 5):
        if variant_source(v) is None:
            continue
        server.load(v)
        res = server.benchmark(v.function, pipeline, keyspace, requests[pipeline], v.store, prefill)
        if v.writes_event and res["events"] != requests[pipeline]:
            raise RuntimeError(f"{v.name}: {res['events']} events for {requests[pipeline]} calls")
        res.update(round=round_no, variant=v.name, pipeline=pipeline, keyspace=keyspace, requests=requests[pipeline])
        out.append(res)
        log(f"round {round_no} {config_name(pipeline, keyspace)} {v.name}: {res['rps']:,.0f}/s "
            f"{res['usec_per_call']} us/call, server CPU {res['cpu_us_per_call']:.2f} us/call")
    server.load(None)


# Lua costs in a loop ------------------------------------------------------------------------------

# One EVAL runs a piece N times between two TIME calls: no network, no FCALL, no redis-benchmark, so
# these figures hardly move between runs. The library's validation helpers are copied in from its source.
LUA_LOOP = r"""
local keys = {'{b:0}:sku:000000001234', '{b:0}:events', '{b:0}:idem:000000001234000000005678000000009012'}
local args = {'1', 'bench', '000000001234000000005678000000009012'}
local available, version, a_s, v_s = 1999999999, 12345, '1999999999', '12345'
local n, mode, sink = tonumber(ARGV[1]), ARGV[2], nil
if mode == 'sweep(): one step over a bucket of 64 records (none expired)' then
  for j = 1, 64 do redis.call('HSET', '{b:0}:refs:000', string.format('%016x', j), '9999999999o|1999999999|12345') end
end
local t0 = redis.call('TIME')
if mode == 'baseline' then
  for i = 1, n do sink = keys[1] end
elseif mode == 'baseline key' then
  for i = 1, n do sink = KEYS[1] .. i end
elseif mode == 'bare: sku from key, tonumber(qty)' then
  for i = 1, n do sink = string.match(keys[1], ':sku:(.+)$'); sink = tonumber(args[1]) end
elseif mode == 'full: mutation() + integer()' then
  for i = 1, n do local a, b, c = mutation(keys, args); sink = integer(args[1], 'qty', 1, MAX_QTY) end
elseif mode == 'full: guarded() (pcall)' then
  local g = guarded(function(k, a) return 1 end)
  for i = 1, n do sink = g(keys, args) end
elseif mode == "record string 'o|'..available..'|'..version" then
  for i = 1, n do sink = 'o' .. '|' .. available .. '|' .. version end
elseif mode == 'HSET available, version as numbers' then
  for i = 1, n do redis.call('HSET', KEYS[1], 'available', available, 'version', version) end
elseif mode == 'HSET available, version as strings' then
  for i = 1, n do redis.call('HSET', KEYS[1], 'available', a_s, 'version', v_s) end
elseif mode == 'SET new key' then
  for i = 1, n do redis.call('SET', KEYS[1] .. i, 'o|1999999999|12345') end
elseif mode == 'SET new key EX' then
  for i = 1, n do redis.call('SET', KEYS[1] .. i, 'o|1999999999|12345', 'EX', 172800) end
elseif mode == 'SET new key NX EX (the record)' then
  for i = 1, n do redis.call('SET', KEYS[1] .. i, 'o|1999999999|12345', 'NX', 'EX', 172800) end
elseif mode == 'HSETNX field of one hash (no TTL)' then
  for i = 1, n do redis.call('HSETNX', KEYS[1] .. 'bucket', i, 'o|1999999999|12345') end
elseif mode == 'sweep(): one step over a bucket of 64 records (none expired)' then
  for i = 1, n do
    sweeps['{b:0}'] = {due = 0, due_s = '', bucket = 0, cursor = '0'}
    sweep('{b:0}', {'1796049284', '0'})
  end
elseif mode == 'TIME' then
  for i = 1, n do sink = redis.call('TIME') end
elseif mode == 'ref_slot(): sha1hex, bucket and field names' then
  for i = 1, n do local b, f = ref_slot('{b:0}', KEYS[1] .. i) end
elseif mode == 'HSETNX field of one of 4096 buckets (the 0.5 record)' then
  for i = 1, n do
    redis.call('HSETNX', KEYS[1] .. (i % 4096), i .. 'abcdefabcdef', '1796049284o|1999999999|12345')
  end
end
local t1 = redis.call('TIME')
return (t1[1] - t0[1]) * 1000000 + (t1[2] - t0[2])
"""
LUA_MODES = {  # mode: (key, baseline)
    "bare: sku from key, tonumber(qty)": ("{b:0}:x", "baseline"),
    "full: mutation() + integer()": ("{b:0}:x", "baseline"),
    "full: guarded() (pcall)": ("{b:0}:x", "baseline"),
    "record string 'o|'..available..'|'..version": ("{b:0}:x", "baseline"),
    "HSET available, version as numbers": ("{b:0}:sku:x", "baseline"),
    "HSET available, version as strings": ("{b:0}:sku:x", "baseline"),
    "SET new key": ("{b:0}:idem:", "baseline key"),
    "SET new key EX": ("{b:0}:idem:", "baseline key"),
    "SET new key NX EX (the record)": ("{b:0}:idem:", "baseline key"),
    "HSETNX field of one hash (no TTL)": ("{b:0}:idem:", "baseline key"),
    "TIME": ("{b:0}:x", "baseline"),
    "ref_slot(): sha1hex, bucket and field names": ("{b:0}:idem:", "baseline key"),
    "HSETNX field of one of 4096 buckets (the 0.5 record)": ("{b:0}:refs:", "baseline key"),
    "sweep(): one step over a bucket of 64 records (none expired)": ("{b:0}:x", "baseline"),
}


def lua_costs(quick: bool) -> dict[str, float] | None:
    """us per piece (minimum over repetitions, less the loop's own cost)."""
    src = library_source(TTL_S)
    try:
        helpers = src[src.index("local MAX_QTY"):src.index("-- State, records and events")]
        helpers = src[src.index("local IDEM_TTL_S"):src.index("local MAX_QTY")] + helpers
    except ValueError:
        return None
    script = helpers + LUA_LOOP
    n, reps = (20_000, 2) if quick else (50_000, 5)
    best: dict[str, float] = {}
    with EmbeddedRedis() as srv:
        r = redis.Redis(port=srv.port)
        try:
            if r.eval("local a = redis.call('TIME') for i = 1, 200000 do end local b = redis.call('TIME') "
                      "return (b[1] - a[1]) * 1000000 + (b[2] - a[2])", 0) == 0:
                return None  # this server's TIME stands still inside a script (Valkey): nothing to time with
            for _ in range(reps):
                for mode in ["baseline", "baseline key", *LUA_MODES]:
                    r.flushall()
                    r.hset("{b:0}:sku:x", mapping={"available": 1, "version": 1, "updated_ms": 1, "source": "b"})
                    key = LUA_MODES.get(mode, ("{b:0}:idem:" if mode == "baseline key" else "{b:0}:x",))[0]
                    us = r.eval(script, 1, key, n, mode) / n
                    best[mode] = min(best.get(mode, us), us)
        finally:
            r.close()
    return {mode: best[mode] - best[base] for mode, (_, base) in LUA_MODES.items()}


# PostgreSQL --------------------------------------------------------------------------------------

PG = {"host": os.environ.get("PGHOST", "127.0.0.1"), "port": int(os.environ.get("PGPORT", "5432")),
      "user": os.environ.get("PGUSER", "postgres")}
PG_ADMIN_DB = os.environ.get("PGDATABASE", "test")
ARTICLE_SQL = ("UPDATE inventory SET quantity = quantity - $1, version = version + 1 "
               "WHERE sku_id = $2 AND quantity >= $1 RETURNING quantity, version")
PG_HOT_ID = 0


async def pg_create(dbname: str) -> dict:
    import asyncpg

    admin = await asyncpg.connect(database=PG_ADMIN_DB, **PG)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}"')
        await admin.execute(f'CREATE DATABASE "{dbname}"')
        settings = dict(await admin.fetch(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('synchronous_commit', 'fsync', 'shared_buffers', 'max_connections', 'wal_level')"))
        version = await admin.fetchval("SHOW server_version")
        data_directory = await admin.fetchval("SHOW data_directory")
    finally:
        await admin.close()
    conn = await asyncpg.connect(database=dbname, **PG)
    try:
        # sku_id bigint: cheaper for PostgreSQL than 12-character text keys, so the baseline is generous.
        await conn.execute("CREATE TABLE inventory (sku_id bigint PRIMARY KEY, quantity bigint NOT NULL, "
                           "version bigint NOT NULL)")
        await conn.execute(f"INSERT INTO inventory SELECT g, {STOCK}, 1 FROM generate_series(0, {N_SKUS}) g")
        await conn.execute("VACUUM ANALYZE inventory")
    finally:
        await conn.close()
    return {"version": version, "settings": settings, "database": dbname,
            "postmaster": postmaster_pid(data_directory)}


def postmaster_pid(data_directory: str) -> int | None:
    try:
        with open(os.path.join(data_directory, "postmaster.pid")) as f:
            return int(f.readline())
    except (OSError, ValueError):
        return None  # no server CPU figures for PostgreSQL then


def pg_cpu_s(postmaster: int | None) -> float | None:
    """CPU seconds of the PostgreSQL server: the postmaster, its reaped children (cutime, cstime: the
    backends of connections that ended) and its live children (walwriter, checkpointer, ...)."""
    if not postmaster:
        return None

    def stat(pid):
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()  # [0] is field 3 (state)

    ticks = sum(int(x) for x in stat(postmaster)[11:15])  # utime stime cutime cstime
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                fields = stat(pid)
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


async def pg_drop(dbname: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(database=PG_ADMIN_DB, **PG)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    finally:
        await admin.close()


async def pg_vacuum(dbname: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(database=dbname, **PG)
    try:
        await conn.execute("VACUUM inventory")
    finally:
        await conn.close()


def pgbench(dbname: str, keyspace: str, sync_commit: bool, seconds: float, scripts: dict[str, str],
            postmaster: int | None) -> dict:
    """tps and the server's CPU per transaction (PostgreSQL is shared: other users' work counts too)."""
    env = dict(os.environ)
    if not sync_commit:
        env["PGOPTIONS"] = "-c synchronous_commit=off"
    argv = ["pgbench", "-h", PG["host"], "-p", str(PG["port"]), "-U", PG["user"], "-n", "-c", "50", "-j", "2",
            "-M", "prepared", "-T", str(max(1, round(seconds))), "-f", scripts[keyspace], dbname]
    cpu_before, client_before = pg_cpu_s(postmaster), children_cpu_s()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    client_s = children_cpu_s() - client_before
    time.sleep(0.3)  # let the postmaster reap the backends, so that their CPU is counted
    cpu_after = pg_cpu_s(postmaster)
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", proc.stdout)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"pgbench failed: {proc.stdout[-300:]} {proc.stderr[-500:]}")
    failed = re.search(r"number of failed transactions: (\d+)", proc.stdout)
    if failed and int(failed.group(1)):
        raise RuntimeError(f"pgbench: {failed.group(1)} failed transactions")
    done = re.search(r"number of transactions actually processed: (\d+)", proc.stdout)
    cpu = client = None
    if done and int(done.group(1)):
        client = client_s * 1e6 / int(done.group(1))
        if cpu_before is not None:
            cpu = (cpu_after - cpu_before) * 1e6 / int(done.group(1))
    return {"rps": float(m.group(1)), "cpu_us_per_call": cpu, "client_cpu_us_per_call": client}


def pgbench_scripts(directory: str) -> dict[str, str]:
    body = ("UPDATE inventory SET quantity = quantity - :qty, version = version + 1 "
            "WHERE sku_id = :sku AND quantity >= :qty RETURNING quantity, version;\n")
    paths = {}
    for keyspace, pick in (("10k", f"\\set sku random(1, {N_SKUS})"), ("hot", f"\\set sku {PG_HOT_ID}")):
        path = os.path.join(directory, f"article_{keyspace}.sql")
        with open(path, "w") as f:
            f.write(f"\\set qty 1\n{pick}\n{body}")
        paths[keyspace] = path
    return paths


# Python side -------------------------------------------------------------------------------------

BATCH = 100
TASKS = 64


class PythonSide:
    def __init__(self, url: str, pg_db: str | None) -> None:
        self.settings = Settings(redis_url=url, prefix=PREFIX)
        self.pg_db = pg_db
        self.run_id = uuid.uuid4().hex[:8]
        self.counter = 0

    async def __aenter__(self) -> PythonSide:
        self.store = await StockStore.connect(self.settings)
        self.raw = connection.connect(self.settings)  # the same client settings StockStore uses
        for start in range(0, N_SKUS + 1, 500):
            await asyncio.gather(*(self.store.set(sku, STOCK, source="bench")
                                   for sku in (SKUS + [HOT])[start:start + 500]))
        self.pool = None
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.store.close()
        await self.raw.aclose()

    def refs(self, n: int) -> list[str]:
        start = self.counter
        self.counter += n
        return [f"{self.run_id}-{i}" for i in range(start, start + n)]

    def groups(self) -> list[list[str]]:
        """Variants compared with each other run back to back (the machine's load changes by the second)."""
        groups = [["StockStore decrement_many", "raw redis-py pipeline"], ["StockStore 64 tasks", "raw redis-py 64 tasks"]]
        if self.pg_db:
            groups += [["StockStore 64 tasks", "asyncpg 64 tasks"], ["StockStore 64 tasks, hot SKU", "asyncpg 64 tasks, hot row"]]
        return groups

    def variants(self) -> list[str]:
        return list(dict.fromkeys(name for group in self.groups() for name in group))

    async def run(self, name: str, seconds: float) -> tuple[float, float]:
        """Calls per second of one variant over `seconds`, and this process's CPU us per call (less noisy
        on a shared machine than the rate). Every call must succeed (status ok)."""
        if name.startswith("asyncpg"):
            # Opened per run, so that its 64 connections and pgbench's 50 are never open together.
            import asyncpg

            async with asyncpg.create_pool(database=self.pg_db, min_size=TASKS, max_size=TASKS, **PG) as self.pool:
                return await self._timed(name, seconds)
        return await self._timed(name, seconds)

    async def _timed(self, name: str, seconds: float) -> tuple[float, float]:
        deadline = time.perf_counter() + seconds
        start, cpu_start = time.perf_counter(), time.process_time()
        if "64 tasks" in name:
            worker = {
                "StockStore 64 tasks": self._store_task,
                "raw redis-py 64 tasks": self._raw_task,
                "StockStore 64 tasks, hot SKU": self._store_hot_task,
                "asyncpg 64 tasks": self._pg_task,
                "asyncpg 64 tasks, hot row": self._pg_hot_task,
            }[name]
            counts = await asyncio.gather(*(worker(k, deadline) for k in range(TASKS)))
            done = sum(counts)
        else:
            batch = self._store_batch if name.startswith("StockStore") else self._raw_batch
            done, i = 0, 0
            while time.perf_counter() < deadline:
                done += await batch(i)
                i += BATCH
        return done / (time.perf_counter() - start), (time.process_time() - cpu_start) * 1e6 / done

    async def _store_batch(self, i: int) -> int:
        refs = self.refs(BATCH)
        items = [(SKUS[(i + j) % N_SKUS], 1, refs[j]) for j in range(BATCH)]
        outcomes = await self.store.decrement_many(items, source="bench")
        assert all(o.status == "ok" and not o.replayed for o in outcomes)
        return len(outcomes)

    async def _raw_batch(self, i: int) -> int:
        refs = self.refs(BATCH)
        async with self.raw.pipeline(transaction=False) as pipe:
            for j in range(BATCH):
                sku, ref = SKUS[(i + j) % N_SKUS], refs[j]
                pipe.execute_command("FCALL", "stocksync_decrement", 3, f"{{b:0}}:sku:{sku}", "{b:0}:events",
                                     f"{{b:0}}:idem:{ref}", 1, "bench", ref)
            replies = await pipe.execute()
        assert all(r[0] == "ok" and r[3] == 0 for r in replies)
        return len(replies)

    async def _store_task(self, k: int, deadline: float, hot: bool = False) -> int:
        done, i = 0, k
        while time.perf_counter() < deadline:
            ref = f"{self.run_id}-t{self.counter}"
            self.counter += 1
            out = await self.store.decrement(HOT if hot else SKUS[i % N_SKUS], 1, ref=ref, source="bench")
            assert out.status == "ok" and not out.replayed
            done, i = done + 1, i + TASKS
        return done

    async def _store_hot_task(self, k: int, deadline: float) -> int:
        return await self._store_task(k, deadline, hot=True)

    async def _raw_task(self, k: int, deadline: float) -> int:
        done, i = 0, k
        while time.perf_counter() < deadline:
            ref = f"{self.run_id}-t{self.counter}"
            self.counter += 1
            reply = await self.raw.execute_command("FCALL", "stocksync_decrement", 3,
                                                   f"{{b:0}}:sku:{SKUS[i % N_SKUS]}", "{b:0}:events",
                                                   f"{{b:0}}:idem:{ref}", 1, "bench", ref)
            assert reply[0] == "ok" and reply[3] == 0
            done, i = done + 1, i + TASKS
        return done

    async def _pg_task(self, k: int, deadline: float, hot: bool = False) -> int:
        done, i = 0, k
        async with self.pool.acquire() as conn:
            while time.perf_counter() < deadline:
                row = await conn.fetchrow(ARTICLE_SQL, 1, PG_HOT_ID if hot else 1 + i % N_SKUS)
                assert row is not None
                done, i = done + 1, i + TASKS
        return done

    async def _pg_hot_task(self, k: int, deadline: float) -> int:
        return await self._pg_task(k, deadline, hot=True)


# Run ---------------------------------------------------------------------------------------------


def by(runs: list[dict], **match) -> dict[int, float]:
    """{round: value} of the runs matching every key=value; the value is the run's 'rps' or 'rate'."""
    out = {}
    for r in runs:
        if all(r.get(k) == v for k, v in match.items()):
            out[r["round"]] = r.get("rps", r.get("rate"))
    return out


def paired_ratio(a: dict[int, float], b: dict[int, float]) -> float | None:
    return median(a[k] / b[k] for k in a if k in b and b[k])


def verdict(value: float | None, target: float, higher_is_better: bool = True) -> str:
    if value is None:
        return "not measured"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "NOT met"


PARTS = ("server", "native", "postgres", "python", "lua", "memory")


async def main_async(args) -> dict:
    quick = args.quick
    parts = set(args.parts.split(",")) if args.parts else set(PARTS)
    rounds = args.rounds or (1 if quick else 3)
    requests = {1: 6_000, 16: 12_000} if quick else {1: 20_000, 16: 40_000}
    py_seconds = 0.5 if quick else 1.0
    pg_seconds = 1 if quick else 3
    have_rb = shutil.which("redis-benchmark") is not None
    have_pgbench = shutil.which("pgbench") is not None

    result: dict = {"benchmark": "decrement", "date": today(), "quick": quick, "rounds": rounds,
                    "machine": machine(), "requests_per_run": requests, "python_seconds_per_run": py_seconds,
                    "pgbench_seconds_per_run": pg_seconds, "parts": sorted(parts), "prefill": args.prefill,
                    "notes": []}
    versions = python_versions("redis", "hiredis", "asyncpg", "orjson")
    versions["redis-benchmark"] = tool_version("redis-benchmark", "--version")
    versions["pgbench"] = tool_version("pgbench", "--version")
    result["versions"] = versions

    pg_db = None
    pg_info = None
    try:
        if "postgres" not in parts:
            raise RuntimeError("not asked for (--parts)")
        pg_db = f"stocksync_bench_{os.getpid()}"
        pg_info = await pg_create(pg_db)
        versions["postgresql"] = pg_info["version"]
        result["postgres_settings"] = pg_info["settings"]
    except Exception as e:  # no PostgreSQL here: the rest still runs
        result["notes"].append(f"PostgreSQL skipped: {e}")
        log("PostgreSQL skipped:", e)
        pg_db = None

    server_runs: list[dict] = []
    native_runs: list[dict] = []
    py_runs: list[dict] = []
    tmp = tempfile.mkdtemp(prefix="stocksync-bench-")
    try:
        scripts = pgbench_scripts(tmp)
        aof_args = ["--appendonly", "yes", "--auto-aof-rewrite-percentage", "0", "--appendfsync"]
        with NativeServer() as native, NativeServer(aof_args + ["everysec"]) as aof_everysec, \
                NativeServer(aof_args + ["always"]) as aof_always, EmbeddedRedis() as py_srv:
            versions["server"] = redis_server_version(native.r.info("server"))
            result["server_binary"] = native.srv.binary
            skipped = [v.name for v in VARIANTS if variant_source(v) is None]
            if skipped:
                result["notes"].append(f"variants skipped (library source changed): {skipped}")
            async with (PythonSide(py_srv.url, pg_db) if "python" in parts else contextlib.nullcontext()) as py:
                for name in py.variants() if py else ():  # warm-up: connections, prepared statements
                    await py.run(name, 0.2)
                for rnd in range(rounds):
                    if have_rb and "server" in parts:
                        server_round(native, rnd, requests, server_runs, args.prefill,
                                     tuple(int(p) for p in args.pipelines.split(",")))
                    if have_rb and "native" in parts:
                        # the native comparison with PostgreSQL at -P 1, with the AOF: everysec is as durable as
                        # synchronous_commit=off (up to about a second lost), always as synchronous_commit=on
                        aofs = [("everysec", "10k"), ("everysec", "hot"), ("always", "10k"), ("always", "hot")]
                        for fsync, keyspace in rotated(aofs, rnd):
                            srv = aof_everysec if fsync == "everysec" else aof_always
                            res = srv.benchmark("stocksync_decrement", 1, keyspace, requests[1])
                            res.update(round=rnd, variant=f"full, AOF {fsync}", pipeline=1, keyspace=keyspace)
                            native_runs.append(res)
                            log(f"round {rnd} AOF {fsync} {keyspace}: {res['rps']:,.0f}/s")
                    if pg_db and have_pgbench:
                        await pg_vacuum(pg_db)
                        for keyspace, sync in rotated([("10k", True), ("hot", True), ("10k", False), ("hot", False)], rnd):
                            res = pgbench(pg_db, keyspace, sync, pg_seconds, scripts, pg_info["postmaster"])
                            name = f"pgbench, synchronous_commit={'on' if sync else 'off'}"
                            native_runs.append({"round": rnd, "variant": name, "keyspace": keyspace, **res})
                            log(f"round {rnd} {name} {keyspace}: {res['rps']:,.0f} tps, server CPU "
                                f"{res['cpu_us_per_call'] or 0:.0f} us/transaction")
                    for g, group in enumerate(py.groups() if py else ()):
                        for rep in range(2):
                            for name in rotated(group, rnd + rep):
                                rate, cpu = await py.run(name, py_seconds)
                                py_runs.append({"round": f"{rnd}.{g}.{rep}", "variant": name, "rate": rate,
                                                "cpu_us_per_call": cpu})
                                log(f"round {rnd} {name}: {rate:,.0f}/s, client CPU {cpu:.1f} us/call")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if pg_db:
            await pg_drop(pg_db)

    if "lua" in parts:
        log("Lua costs in a loop")
        result["lua_costs_us"] = lua_costs(quick)
        if result["lua_costs_us"] is None:
            result["notes"].append("Lua loop skipped: TIME does not advance inside a script on this server")
    result["memory"] = memory.run(quick) if "memory" in parts else []
    result["server_runs"] = server_runs
    result["native_runs"] = native_runs
    result["python_runs"] = py_runs
    result["summary"] = summarize(server_runs, native_runs, py_runs, result["memory"])
    result["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def summarize(server_runs, native_runs, py_runs, mem) -> dict:
    s: dict = {"server": {}, "ratios": {}, "python": {}, "native": {}, "targets": {}}
    for pipeline, keyspace in CONFIGS:
        cfg = config_name(pipeline, keyspace)
        rows = {}
        for v in VARIANTS:
            runs = [r for r in server_runs if r["variant"] == v.name and r["pipeline"] == pipeline
                    and r["keyspace"] == keyspace]
            if not runs:
                continue
            nested = defaultdict(list)
            for r in runs:
                for k, val in r["nested"].items():
                    nested[k].append(val)
            rows[v.name] = {"rps": median(r["rps"] for r in runs),
                            "usec_per_call": median(r["usec_per_call"] for r in runs),
                            "cpu_us_per_call": median(r["cpu_us_per_call"] for r in runs),
                            "nested_usec_per_call": {k: median(v) for k, v in nested.items()}}
        s["server"][cfg] = rows

        def us(name, _p=pipeline, _k=keyspace):
            return {r["round"]: r["usec_per_call"] for r in server_runs
                    if r["variant"] == name and r["pipeline"] == _p and r["keyspace"] == _k}

        def cpu(name, _p=pipeline, _k=keyspace):
            return {r["round"]: r["cpu_us_per_call"] for r in server_runs
                    if r["variant"] == name and r["pipeline"] == _p and r["keyspace"] == _k}

        def rps(name, _p=pipeline, _k=keyspace):
            return by(server_runs, variant=name, pipeline=_p, keyspace=_k)

        def higher(a, b):  # a's rate over b's
            return paired_ratio(rps(a), rps(b))

        def cheaper(a, b):  # b's CPU per call over a's: above 1 when a costs less
            return paired_ratio(cpu(b), cpu(a))

        s["ratios"][cfg] = {
            "full/bare, throughput": higher("full", "bare"),
            "full/bare, server CPU": cheaper("full", "bare"),
            "full/bare, commandstats": paired_ratio(us("bare"), us("full")),
            "full 0.4.0/bare, throughput": higher("full 0.4.0", "bare"),
            "full 0.4.0/bare, server CPU": cheaper("full 0.4.0", "bare"),
            "full/full 0.4.0, throughput": higher("full", "full 0.4.0"),
            "full/full 0.4.0, server CPU": cheaper("full", "full 0.4.0"),
            "full, upgrade window/bare, throughput": higher("full, upgrade window", "bare"),
            "full, upgrade window/bare, server CPU": cheaper("full, upgrade window", "bare"),
            "full, upgrade window/full, server CPU": cheaper("full, upgrade window", "full"),
            "(bare+SET EX)/bare, server CPU": cheaper("bare+SET EX", "bare"),
            "(bare+bucket record)/bare, server CPU": cheaper("bare+bucket record", "bare"),
            "full/(bare+SET EX), server CPU": cheaper("full", "bare+SET EX"),
            "full/(bare+bucket record), server CPU": cheaper("full", "bare+bucket record"),
        }

    def pyr(name, key="rate"):
        return {r["round"]: r[key] for r in py_runs if r["variant"] == name}

    for name in {r["variant"] for r in py_runs}:
        s["python"][name] = {"rate": median(pyr(name).values()),
                             "cpu_us_per_call": median(pyr(name, "cpu_us_per_call").values())}
    pairs = {"StockStore/raw, pipelined": ("StockStore decrement_many", "raw redis-py pipeline"),
             "StockStore/raw, 64 tasks": ("StockStore 64 tasks", "raw redis-py 64 tasks"),
             "StockStore/asyncpg, 64 tasks, 10,000": ("StockStore 64 tasks", "asyncpg 64 tasks"),
             "StockStore/asyncpg, 64 tasks, hot": ("StockStore 64 tasks, hot SKU", "asyncpg 64 tasks, hot row")}
    s["python_ratios"] = {name: {"rate": paired_ratio(pyr(a), pyr(b)),
                                 "client CPU": paired_ratio(pyr(b, "cpu_us_per_call"), pyr(a, "cpu_us_per_call"))}
                          for name, (a, b) in pairs.items()}

    native_names = ["full -P 1 (no persistence)", "full -P 1, AOF everysec", "full -P 1, AOF always",
                    "pgbench, synchronous_commit=on", "pgbench, synchronous_commit=off"]
    for keyspace in ("10k", "hot"):
        series = {}
        for name in native_names:
            runs = ([r for r in server_runs if r["variant"] == "full" and r["pipeline"] == 1 and r["keyspace"] == keyspace]
                    if name.startswith("full -P 1 (") else
                    [r for r in native_runs if r["keyspace"] == keyspace and r["variant"] == name.replace(" -P 1", "")])
            series[name] = {key: {r["round"]: r.get(key) for r in runs if r.get(key)}
                            for key in ("rps", "cpu_us_per_call", "client_cpu_us_per_call")}
        cell = {name: {key: median(values.values()) for key, values in v.items()} for name, v in series.items()}
        ratios = {}
        for label, a, b in (("full / pgbench sync on", native_names[0], native_names[3]),
                            ("full AOF everysec / pgbench sync off", native_names[1], native_names[4]),
                            ("full AOF always / pgbench sync on", native_names[2], native_names[3])):
            ratios[label] = {"throughput": paired_ratio(series[a]["rps"], series[b]["rps"]),
                             "server CPU per op": paired_ratio(series[b]["cpu_us_per_call"], series[a]["cpu_us_per_call"])}
        s["native"][keyspace] = {"runs": cell, "ratios": ratios}

    t = s["targets"]
    for cfg, ratios in s["ratios"].items():
        value = ratios["full/bare, throughput"]
        t[f"full/bare {cfg}"] = (value, TARGETS["full_vs_bare"], verdict(value, TARGETS["full_vs_bare"]))
        value = ratios["full/bare, server CPU"]
        t[f"full/bare {cfg}, server CPU"] = (value, TARGETS["full_vs_bare"], verdict(value, TARGETS["full_vs_bare"]))
    for name in ("StockStore/raw, pipelined", "StockStore/raw, 64 tasks"):
        for key in ("rate", "client CPU"):
            value = s["python_ratios"][name][key]
            t[f"{name} ({key})"] = (value, TARGETS["store_vs_raw"], verdict(value, TARGETS["store_vs_raw"]))
    for keyspace, target in (("hot", TARGETS["hot_vs_postgres"]), ("10k", TARGETS["many_vs_postgres"])):
        for key in ("throughput", "server CPU per op"):
            value = s["native"][keyspace]["ratios"]["full / pgbench sync on"][key]
            t[f"stocksync/PostgreSQL {keyspace}, {key}"] = (value, target, verdict(value, target))
    for m in mem:
        if m.get("library", library_version()) != library_version():
            continue
        t[f"bytes per reference ({m['server']}, {m['refs']:,} references)"] = (
            m["bytes_per_ref"], TARGETS["bytes_per_ref"], verdict(m["bytes_per_ref"], TARGETS["bytes_per_ref"], False))
        if m["server"].startswith("Redis 7"):
            # The share of the keyspace's hash table per key depends on the key count: judge at 100,000 only.
            judged = verdict(m["bytes_per_sku"], TARGETS["bytes_per_sku"], False) if m["skus"] == 100_000 else "n/a"
            t[f"bytes per SKU ({m['server']}, {m['skus']:,} SKUs)"] = (m["bytes_per_sku"], TARGETS["bytes_per_sku"],
                                                                       judged)
    return s


def render(result: dict, markdown: bool = False) -> str:
    s = result["summary"]
    parts = []
    cfgs = [config_name(p, k) for p, k in CONFIGS]
    names = [v.name for v in VARIANTS]
    rows = []
    for n in names:
        cells = [s["server"].get(c, {}).get(n) for c in cfgs]
        if not any(cells):
            continue
        rows.append([n] + [fmt(c["rps"]) if c else "-" for c in cells])
    parts.append("Server side, redis-benchmark -c 50: calls/s\n\n" + table(["variant"] + cfgs, rows, markdown))
    for key, title in (("cpu_us_per_call", "server CPU us per call (schedstat of redis-server / calls)"),
                       ("usec_per_call", "server us per FCALL, INFO commandstats usec_per_call (wall clock)")):
        rows = []
        for n in names:
            cells = [s["server"].get(c, {}).get(n) for c in cfgs]
            if any(cells):
                rows.append([n] + [fmt(c[key], 2) if c else "-" for c in cells])
        parts.append(f"Server side: {title}\n\n" + table(["variant"] + cfgs, rows, markdown))

    nested_rows = []
    for n in names:
        c = s["server"].get(config_name(16, "10k"), {}).get(n)
        if c:
            nn = c["nested_usec_per_call"]
            inner = sum(nn.values())
            nested_rows.append([n, fmt(c["cpu_us_per_call"], 2), fmt(c["usec_per_call"], 2)]
                               + [fmt(nn.get(k), 2) for k in ("hmget", "hset", "xadd", "set", "get", "time", "hsetnx",
                                                                "hscan")]
                               + [fmt(c["usec_per_call"] - inner, 2)])
    parts.append("Where the server time goes (-P 16, 10,000 SKUs; us per FCALL; commandstats times each command "
                 "inside the FCALL too (its total time over the FCALLs); 'rest' = FCALL minus those: Lua, argument "
                 "passing, FCALL itself)\n\n" + table(
        ["variant", "server CPU", "FCALL", "HMGET", "HSET", "XADD", "SET", "GET", "TIME", "HSETNX", "HSCAN", "rest"],
        nested_rows, markdown))

    shown = [c for c in cfgs if c in s["ratios"]]
    names_r = list(next(iter(s["ratios"].values()), {}))
    rows = [[n] + [fmt(s["ratios"][c].get(n), 2) for c in shown] for n in names_r]
    parts.append("Ratios (median of per-round ratios; server CPU: the inverse ratio of CPU per call, above 1 when "
                 "the first costs less)\n\n" + table(["ratio"] + shown, rows, markdown))

    rows = [[n, fmt(s["python"][n]["rate"]), fmt(s["python"][n]["cpu_us_per_call"], 1)] for n in [
        "StockStore decrement_many", "raw redis-py pipeline", "StockStore 64 tasks", "raw redis-py 64 tasks",
        "StockStore 64 tasks, hot SKU", "asyncpg 64 tasks", "asyncpg 64 tasks, hot row"] if n in s["python"]]
    rows += [[n, fmt(v["rate"], 2), fmt(v["client CPU"], 2)] for n, v in s["python_ratios"].items()]
    parts.append(f"Python, one process (decrement_many batches of {BATCH}; {TASKS} tasks); ratios of rates, and "
                 "inverse ratios of client CPU per call\n\n"
                 + table(["variant / ratio", "calls/s", "client CPU us/call"], rows, markdown))

    rows = []
    for name in s["native"]["hot"]["runs"]:
        rows.append([name] + [fmt(s["native"][ks]["runs"][name][key], 0 if key == "rps" else 1)
                              for ks in ("hot", "10k") for key in ("rps", "cpu_us_per_call", "client_cpu_us_per_call")])
    for name in s["native"]["hot"]["ratios"]:
        cells = [name]
        for ks in ("hot", "10k"):
            ratios = s["native"][ks]["ratios"][name]
            cells += [fmt(ratios["throughput"], 2), fmt(ratios["server CPU per op"], 2), ""]
        rows.append(cells)
    parts.append("Native load generators, 50 connections (redis-benchmark -P 1; pgbench -c 50 -j 2); server CPU per "
                 "op: redis-server's, or PostgreSQL's postmaster and children; ratios: throughput, and inverse "
                 "ratio of server CPU per op\n\n"
                 + table(["", "hot: ops/s", "hot: server CPU us/op", "hot: load generator CPU us/op", "10,000: ops/s",
                          "10,000: server CPU us/op", "10,000: load generator CPU us/op"], rows, markdown))

    if result.get("lua_costs_us"):
        rows = [[mode, fmt(us, 2)] for mode, us in result["lua_costs_us"].items()]
        parts.append("Lua costs in a loop inside one EVAL (us per piece, minimum of repetitions, loop cost "
                     "subtracted)\n\n" + table(["piece", "us"], rows, markdown))

    parts.append("Memory\n\n" + memory.render(result["memory"], markdown))

    rows = [[name, fmt(v[0], 2), fmt(v[1]) if isinstance(v[1], int) else fmt(v[1], 2), v[2]]
            for name, v in s["targets"].items()]
    parts.append("Targets\n\n" + table(["", "measured", "target", ""], rows, markdown))
    return "\n\n".join(parts)


def describe(result: dict) -> str:
    m, v = result["machine"], result["versions"]
    return (f"{result['date']}; {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, load {m['load_avg_at_start']} "
            f"-> {m.get('load_avg_at_end')}; {v.get('server')}, Python {v['python']}, redis-py {v['redis']}, "
            f"hiredis {v['hiredis']}, asyncpg {v['asyncpg']}, PostgreSQL {v.get('postgresql', '-')}; "
            f"{result['rounds']} rounds{' (quick)' if result['quick'] else ''}"
            + (f"; {result['prefill']} references a bucket remembered before each server run ({result['prefill'] * 4096:,}"
               " keys for 0.4.0)" if result.get("prefill") else ""))


def markdown(result: dict) -> str:
    """The generated part of BENCHMARKS.md's section (rewritten by bench/report.py after `make bench`)."""
    return f"Run: {describe(result)}.\n\n" + render(result, markdown=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="stocksync decrement benchmark (issue 2)")
    parser.add_argument("--quick", action="store_true", help="one short round: a smoke run, not figures")
    parser.add_argument("--rounds", type=int, default=0, help="interleaved rounds (default 3, quick 1)")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("--parts", default="", help=f"comma-separated subset of {','.join(PARTS)} (default: all)")
    parser.add_argument("--out", default="", help="name of the JSON under bench/results (default: decrement, "
                        "-<server> when not Redis, -prefill<N> with --prefill)")
    parser.add_argument("--pipelines", default="1,16", help="server side: the -P values to run (default 1,16)")
    parser.add_argument("--prefill", type=int, default=0,
                        help="server side: references already remembered before each run, per bucket (x 4096 "
                             "keys for 0.4.0): the cost at a deployment's size (writes decrement-prefill<N>.json)")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    # A run on another server (STOCKSYNC_REDIS_SERVER=valkey) does not replace the committed Redis run.
    suffix = "" if str(result["versions"].get("server", "")).startswith("Redis") else "-" + str(
        result["versions"].get("server", "other")).split()[0].lower()
    path = write_json(args.out or "decrement" + suffix + (f"-prefill{args.prefill}" if args.prefill else ""), result)
    print(describe(result))
    print()
    print(render(result, args.markdown))
    for note in result["notes"]:
        print("note:", note)
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
