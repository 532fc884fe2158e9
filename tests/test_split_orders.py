"""All-or-nothing orders across partitions on a Redis Cluster (stocksync/split_orders.py), with the caller
process SIGKILLed at each step: no unit stays held past the expiry, none is taken twice, and a retry of
the same order (same reference) leaves it taken whole or not at all."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

import pytest

from stocksync.keys import crc16
from stocksync.reservations import expire_due
from stocksync.settings import Settings
from stocksync.split_orders import SplitOrders
from stocksync.store import StockStore

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parent.parent
PARTITIONS, STOCK, TTL_MS = 12, 5, 800
CHILD = """
import asyncio, os, signal, sys
from stocksync.settings import Settings
from stocksync.store import StockStore
from stocksync.split_orders import SplitOrders
url, prefix, crash_at, ref, ttl = sys.argv[1:6]
lines = {sys.argv[i]: int(sys.argv[i + 1]) for i in range(6, len(sys.argv), 2)}

def step(name):
    if name == crash_at:
        os.kill(os.getpid(), signal.SIGKILL)

async def main():
    store = await StockStore.connect(Settings(redis_url=url, cluster=True, prefix=prefix, partitions=12))
    print((await SplitOrders(store, on_step=step).place(lines, ref=ref, source="shop", ttl_ms=int(ttl))).status)

asyncio.run(main())
"""


@pytest.fixture
async def cstore(cluster):
    store = await StockStore.connect(Settings(redis_url=cluster.url, cluster=True, prefix=f"x{uuid.uuid4().hex[:10]}",
                                              partitions=PARTITIONS))
    yield store
    await store.close()


def lines_on_three_primaries(store: StockStore) -> dict[str, int]:
    """One SKU per primary (slots split evenly over three), 1, 2 and 3 units."""
    found: dict[int, str] = {}
    for i in range(500):
        sku = f"X-{i}"
        slot = crc16(store.keys.tag(store.keys.partition(sku))[1:-1].encode()) % 16384
        found.setdefault(min(slot // (16384 // 3), 2), sku)
        if len(found) == 3:
            break
    return {found[k]: k + 1 for k in range(3)}


async def run_caller(store: StockStore, crash_at: str, ref: str, lines: dict[str, int], ttl_ms: int) -> tuple[int, str]:
    args = [store.settings.redis_url, store.keys.prefix, crash_at, ref, str(ttl_ms)]
    args += [str(x) for sku, qty in lines.items() for x in (sku, qty)]
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, *args, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, (out + err).decode()


async def state(store: StockStore, lines: dict[str, int]) -> dict[str, tuple[int, int, int]]:
    """sku -> (available, committed, reserved)."""
    out = {}
    for sku in lines:
        q = await store.quantities(sku)
        out[sku] = (q.available, q.committed, q.reserved)
    return out


async def after_expiry(store: StockStore, lines: dict[str, int]) -> dict[str, tuple[int, int, int]]:
    """The state once every hold has expired and been swept (waited for, with a deadline)."""
    deadline = time.monotonic() + 10
    while True:
        await expire_due(store.redis, store.keys)
        now = await state(store, lines)
        if all(r == 0 for _, _, r in now.values()):
            return now
        assert time.monotonic() < deadline, f"holds still there after their expiry: {now}"
        await asyncio.sleep(0.05)


STEPS = ["held:{0}", "held:{1}", "decided", "committed:{0}", "committed:{1}"]


@pytest.mark.parametrize("step", STEPS)
async def test_a_caller_killed_at_each_step(cstore, step):
    lines = lines_on_three_primaries(cstore)
    parts = sorted({cstore.keys.partition(s) for s in lines})
    assert len(parts) == 3
    for sku in lines:
        await cstore.set(sku, STOCK, ref=f"init-{sku}")
    ref = f"shop:{uuid.uuid4().hex[:8]}"
    code, out = await run_caller(cstore, step.format(*parts), ref, lines, TTL_MS)
    assert code == -9, out  # killed where asked
    # nothing held past the expiry; what is committed is whole lines, each once
    settled = await after_expiry(cstore, lines)
    for sku, qty in lines.items():
        available, committed, _ = settled[sku]
        assert committed in (0, qty) and available + committed == STOCK, (step, settled)
    # the retry (same reference) finishes the order: all of it or none of it, each line once
    outcome = await SplitOrders(cstore).place(lines, ref=ref, source="shop", ttl_ms=TTL_MS)
    again = await SplitOrders(cstore).place(lines, ref=ref, source="shop", ttl_ms=TTL_MS)
    final = await state(cstore, lines)
    taken = {sku: final[sku][1] for sku in lines}
    assert set(taken.values()) == {0} or taken == lines, (step, outcome, final)
    assert outcome.status == again.status and (outcome.status == "ok") == (taken == lines), (outcome, final)
    assert all(a + c == STOCK and r == 0 for a, c, r in final.values()), final
    if step.startswith("committed"):  # decided commit, then a hold expired: undone, answered expired
        assert outcome.status == "expired" and set(taken.values()) == {0}


async def test_a_retry_before_the_expiry_completes_the_order(cstore):
    lines = lines_on_three_primaries(cstore)
    first = sorted({cstore.keys.partition(s) for s in lines})[0]
    for sku in lines:
        await cstore.set(sku, STOCK, ref=f"init-{sku}")
    ref = f"shop:{uuid.uuid4().hex[:8]}"
    code, out = await run_caller(cstore, f"committed:{first}", ref, lines, 60_000)
    assert code == -9, out
    outcome = await SplitOrders(cstore).place(lines, ref=ref, source="shop", ttl_ms=60_000)
    assert outcome.status == "ok" and outcome.replayed, outcome  # (the killed caller had decided)
    assert await state(cstore, lines) == {sku: (STOCK - q, q, 0) for sku, q in lines.items()}


async def test_a_short_line_releases_every_hold(cstore):
    lines = lines_on_three_primaries(cstore)
    skus = list(lines)
    for sku in skus:
        await cstore.set(sku, STOCK if sku != skus[2] else 1, ref=f"init-{sku}")
    code, out = await run_caller(cstore, "never", "shop:short", lines, 60_000)
    assert code == 0 and out.strip() == "insufficient", out
    assert await state(cstore, lines) == {skus[0]: (STOCK, 0, 0), skus[1]: (STOCK, 0, 0), skus[2]: (1, 0, 0)}
    again = await SplitOrders(cstore).place(lines, ref="shop:short", source="shop")
    assert again.status == "insufficient" and again.replayed, again


async def test_one_partition_orders_still_use_the_single_call(cstore):
    with pytest.raises(Exception, match="span partitions"):
        await cstore.order(lines_on_three_primaries(cstore), ref="o-1", source="shop")
