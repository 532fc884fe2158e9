"""`make demo`: a short walk-through of the core on an embedded Redis (or REDIS_URL when set).

The article's scenario (10 units; Amazon sells 10, then Shopify 3, then Flipkart 2), a redelivered
webhook, an all-or-nothing order, and a flash sale of 300 concurrent buyers for 25 units, each followed by
what the events stream recorded. It cleans up its keys and leaves nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid

from .events import read_range
from .settings import Settings
from .store import StockStore


def say(text: str = "") -> None:
    print(text, flush=True)


async def _walkthrough(settings: Settings) -> int:
    store = await StockStore.connect(settings)
    try:
        return await _scenes(store)
    finally:
        await _cleanup(store)
        await store.close()


async def _scenes(store: StockStore) -> int:
    say("1. The article's scenario: 10 units, Amazon sells 10, then Shopify 3, then Flipkart 2")
    await store.set("MUG-BLUE", 10, source="warehouse", ref="demo-import-1")
    for channel, qty, order in (("amazon", 10, "A-1001"), ("shopify", 3, "S-2001"), ("flipkart", 2, "F-3001")):
        o = await store.decrement("MUG-BLUE", qty, ref=f"{channel}:{order}:1", source=channel)
        verdict = "sold" if o.ok else "REFUSED, flagged for cancellation"
        say(f"   {channel:<9} order {order} wants {qty:>2}: {o.status:<12} -> available {o.available} ({verdict})")

    say("\n2. The same Amazon notification delivered again: replayed, nothing changes")
    o = await store.decrement("MUG-BLUE", 10, ref="amazon:A-1001:1", source="amazon")
    say(f"   {o.status}, available {o.available}, version {o.version}, replayed={o.replayed}")

    say("\n3. A two-line Shopify order, all or nothing")
    await store.set("TEE-M", 5, source="warehouse", ref="demo-import-2")
    await store.set("TEE-L", 1, source="warehouse", ref="demo-import-3")
    o = await store.order({"TEE-M": 2, "TEE-L": 2}, ref="shopify:S-2002", source="shopify")
    say(f"   TEE-M x2 + TEE-L x2: {o.status}; short lines: {[line.sku for line in o.short_lines]}")
    o = await store.order({"TEE-M": 2, "TEE-L": 1}, ref="shopify:S-2003", source="shopify")
    say(f"   TEE-M x2 + TEE-L x1: {o.status}; now {[(line.sku, line.available) for line in o.lines]}")

    say("\n4. Flash sale: 300 buyers on three channels at once for 25 units")
    await store.set("SNEAKER-42", 25, source="warehouse", ref="demo-import-4")
    started = time.perf_counter()
    channels = ("amazon", "shopify", "flipkart")
    outcomes = await asyncio.gather(*(
        store.decrement("SNEAKER-42", 1, ref=f"flash-{i}", source=channels[i % 3]) for i in range(300)
    ))
    elapsed_ms = (time.perf_counter() - started) * 1000
    sold = sum(o.ok for o in outcomes)
    stock = await store.get("SNEAKER-42")
    say(f"   sold {sold}, refused {300 - sold}, left {stock.available}, oversold {max(0, sold - 25)} "
        f"({elapsed_ms:.0f} ms for 300 orders)")

    p = store.keys.partition("MUG-BLUE")
    events = await read_range(store.redis, store.keys, p)
    say(f"\n5. The events stream ({store.keys.events(p)}), first 8 of {len(events)}:")
    for e in events[:8]:
        say("   " + e.line())
    say("\nEvery change above was one FCALL: check, change, version + 1 and event in one atomic step.")
    return 0 if sold == 25 and stock.available == 0 else 1


async def _cleanup(store: StockStore) -> None:
    keys = [store.keys.meta]
    async for key in store.redis.scan_iter(match=f"\\{{{store.keys.prefix}:*", count=1000):
        keys.append(key)
    for i in range(0, len(keys), 500):
        await store.redis.delete(*keys[i : i + 500])


def main(settings: Settings) -> int:
    # A private prefix: the demo may run against a real Redis named by REDIS_URL.
    settings = settings.with_(prefix=f"demo-{uuid.uuid4().hex[:8]}")
    with contextlib.ExitStack() as stack:
        if not os.environ.get("REDIS_URL"):
            from .embedded import EmbeddedRedis

            say("starting an embedded Redis ...")
            server = stack.enter_context(EmbeddedRedis())
            settings = settings.with_(redis_url=server.url)
            say(f"   {server.binary} on {server.url}\n")
        return asyncio.run(_walkthrough(settings))
