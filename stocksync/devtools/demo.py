"""`make demo` / `stocksync demo [--keep] [--cluster]`: the whole system on this machine, and four replays.

It starts Redis (embedded, or REDIS_URL), three marketplace simulators, the API and one worker per channel
(stocksync.devtools.sandbox), then replays:

1. the article's scenario: 10 units; Amazon sells 10, then Shopify 3, then Flipkart 2, as signed
   marketplace webhooks into the API, on a compressed clock (one minute = MINUTE_S real seconds);
2. a flash sale: BUYERS buyers on the three channels within FLASH_WINDOW_S real seconds for FLASH_STOCK
   units. A buyer orders only if the channel still shows enough (what the simulator was last told, minus
   what that channel sold since), as a marketplace would;
3. a lost webhook (stocksync.devtools.demo_lost_webhook): Shopify's webhook for an order is dropped and
   the Shopify worker's order poller finds the order;
4. bundles: a mug listed alone, as a 2-pack and in a gift set with a plate sells its last units through
   the bundles; every channel lists each bundle's derived quantity, down to 0 when its components run out.

For each: a timeline, what stocksync did (sold, orders flagged for cancellation, oversold units, how long
until every simulator listed the final quantity, from the simulators' own call records), and the same
buyers under a 15-minute polling sync (stocksync.devtools.polling). Oversold units are counted where they
happen, at the marketplaces: units a marketplace sold from what it listed that were already gone (in the
flash sale, the units of the orders stocksync flagged). Exit code 0 only if the stock never went below 0,
every channel converged, and stocksync oversold fewer units than polling did on the same buyers (none where
polling oversold none). With --keep everything stays up, with what to try, until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import os
import random
import shlex
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import redis.asyncio

from stocksync.orders.webhooks import flipkart_authorization, shopify_signature
from stocksync.settings import Settings

from .demo_lost_webhook import lost_webhook
from .polling import Buyer, simulate
from .sandbox import CHANNELS, Sandbox, SandboxError
from .simulators import Simulator

ARTICLE_SKU, ARTICLE_STOCK = "MUG-BLUE", 10
ARTICLE_ORDERS = ((0, "amazon", 10), (2, "shopify", 3), (5, "flipkart", 2))  # (minute, channel, units)
MINUTE_S = 0.25
FLASH_SKU, FLASH_STOCK, BUYERS, FLASH_WINDOW_S = "SNEAKER-42", 50, 300, 3.0
CONVERGE_S = 15.0
APPLIED = ("applied", "SUCCESS")  # a simulator's result for an item it listed
_ids = itertools.count(1001)


def say(text: str = "") -> None:
    print(text, flush=True)


def now_ms() -> int:
    return int(time.time() * 1000)


# ----- talking to the API as the marketplaces and the warehouse do ---------------------------------------


class Api:
    def __init__(self, box: Sandbox, http: aiohttp.ClientSession) -> None:
        self.box, self.http, self.url = box, http, box.api_url
        self.auth = {"Authorization": f"Bearer {box.token}"}

    async def set_stock(self, sku: str, available: int) -> dict:
        headers = {**self.auth, "Idempotency-Key": f"demo-{uuid.uuid4().hex}"}
        async with self.http.put(f"{self.url}/v1/skus/{sku}", json={"available": available}, headers=headers) as r:
            r.raise_for_status()
            return await r.json()

    async def put_bundle(self, sku: str, components: dict[str, int]) -> dict:
        headers = {**self.auth, "Idempotency-Key": f"demo-{uuid.uuid4().hex}"}
        async with self.http.put(f"{self.url}/v1/bundles/{sku}", json={"components": components}, headers=headers) as r:
            r.raise_for_status()
            return await r.json()

    async def quantities(self, sku: str) -> dict:
        async with self.http.get(f"{self.url}/v1/skus/{sku}", headers=self.auth) as r:
            r.raise_for_status()
            return await r.json()

    async def available(self, sku: str) -> int:
        async with self.http.get(f"{self.url}/v1/skus/{sku}", headers=self.auth) as r:
            r.raise_for_status()
            return (await r.json())["available"]

    async def rejections(self) -> int:
        async with self.http.get(f"{self.url}/v1/rejections", params={"limit": "1000"}, headers=self.auth) as r:
            r.raise_for_status()
            return len((await r.json())["rejections"])

    async def order(self, channel: str, sku: str, qty: int) -> tuple[str, str, int]:
        """Post one marketplace's order webhook for `qty` x `sku`: (order id, line status, available)."""
        n = next(_ids)
        secrets = self.box.webhook_secrets
        if channel == "shopify":
            order_id = f"#{n}"
            body = orjson.dumps({"id": 5_000_000 + n, "name": order_id, "line_items": [
                {"id": 9_000_000 + n, "sku": sku, "quantity": qty, "gift_card": False}]})
            headers = {"X-Shopify-Topic": "orders/create", "X-Shopify-Webhook-Id": str(uuid.uuid4()),
                       "X-Shopify-Hmac-Sha256": shopify_signature(body, secrets["shopify"])}
        elif channel == "amazon":
            order_id = f"114-{n:07d}-0000001"
            body = orjson.dumps({
                "NotificationType": "ORDER_CHANGE", "NotificationVersion": "1.0",
                "NotificationMetadata": {"NotificationId": str(uuid.uuid4())},
                "Payload": {"OrderChangeNotification": {
                    "AmazonOrderId": order_id, "OrderChangeType": "OrderStatusChange",
                    "Summary": {"OrderStatus": "Unshipped", "FulfillmentType": "MFN", "OrderItems": [
                        {"OrderItemId": f"{n:014d}", "SellerSKU": sku, "Quantity": qty}]}}}})
            headers = {"x-stocksync-token": secrets["amazon"]}
        else:
            order_id = f"OD{n:018d}"
            body = orjson.dumps({"eventType": "shipment_created", "source": "flipkart", "version": "v3",
                                 "shipmentId": f"s-{n}", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
                                 "attributes": {"orderItems": [{"orderItemId": f"{n:016d}", "orderId": order_id,
                                                                "sku": sku, "quantity": qty, "status": "APPROVED"}]}})
            date = email.utils.formatdate(usegmt=True)
            auth = flipkart_authorization(secrets["flipkart_app_id"], secrets["flipkart_app_secret"], date,
                                          f"{self.url}/webhooks/flipkart")
            headers = {"X_Date": date, "X_Authorization": auth}
        headers["Content-Type"] = "application/json"
        async with self.http.post(f"{self.url}/webhooks/{channel}", data=body, headers=headers) as r:
            if r.status != 200:
                raise SandboxError(f"{channel} webhook answered {r.status}: {await r.text()}")
            line = (await r.json())["lines"][0]
        return order_id, line["status"], line.get("available", 0)


# ----- what the simulators were told -----------------------------------------------------------------------


def applied(sim: Simulator, sku: str) -> list[tuple[int, int]]:
    """(wall ms, quantity) of every update of `sku` that `sim` applied, in order."""
    return [(c.wall_ms, item["quantity"]) for c in sim.calls for item in c.items
            if item.get("sku") == sku and item.get("result") in APPLIED]


def listed_after(sim: Simulator, sku: str, qty: int, since_ms: int) -> int | None:
    """Ms after since_ms when `sim` first applied `qty` for `sku` (at or after since_ms), None if never."""
    return next((ms - since_ms for ms, q in applied(sim, sku) if ms >= since_ms and q == qty), None)


def settled_at(sim: Simulator, sku: str, final: int) -> int | None:
    """Wall ms of the update from which `sim` has listed `final` ever since; None if it does not now."""
    at = None
    for ms, q in applied(sim, sku):
        at = (at or ms) if q == final else None
    return at


async def wait_listed(box: Sandbox, sku: str, qty: int, seconds: float = CONVERGE_S) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(sim.quantities.get(sku) == qty and applied(sim, sku) for sim in box.sims.values()):
            return True
        await asyncio.sleep(0.005)
    return False


class Storefront:
    """What a marketplace shows a buyer: the quantity stocksync last pushed, minus what it sold since."""

    def __init__(self, sim: Simulator, sku: str) -> None:
        self.sim, self.sku = sim, sku
        self.pushes, self.sold_since = 0, 0

    def shows(self) -> int:
        history = self.sim.history(self.sku)
        if len(history) != self.pushes:
            self.pushes, self.sold_since = len(history), 0
        return (history[-1] if history else 0) - self.sold_since

    def sell(self, qty: int) -> bool:
        if self.shows() < qty:
            return False
        self.sold_since += qty
        return True


# ----- the two replays ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    sold: int = 0
    flagged_orders: int = 0
    flagged_units: int = 0
    oversold: int = 0  # units the marketplaces sold from their listings that were gone (see finish)
    overdrawn: bool = False  # the canonical stock went below 0 or lost a sale: G1 broken
    converged_ms: int | None = None  # last sale -> every simulator listing the final quantity
    per_channel: str = ""
    polling_oversold: int = 0

    @property
    def ok(self) -> bool:
        beaten = self.oversold < self.polling_oversold or self.oversold == self.polling_oversold == 0
        return not self.overdrawn and self.converged_ms is not None and beaten


def clock(minute: float) -> str:
    sign = "-" if minute < 0 else " "
    m = abs(minute)
    return f"{sign}{int(m)}:{round((m % 1) * 60):02d}"


def lags(box: Sandbox, sku: str, qty: int, since_ms: int) -> str:
    parts = []
    for name, sim in box.sims.items():
        ms = listed_after(sim, sku, qty, since_ms)
        parts.append(f"{name} {ms} ms" if ms is not None else f"{name} not yet")
    return ", ".join(parts)


async def finish(api: Api, box: Sandbox, sku: str, stock: int, out: Outcome, last_sale_ms: int,
                 listed: bool = True) -> int:
    """Check the stock, wait for every channel to list it, and measure how long that took. `listed`: the
    buyers bought only what their marketplace listed, so every flagged order's units were sold there and
    were already gone: oversold (the article's orders are sent past a listing of 0 on purpose: not)."""
    available = await api.available(sku)
    out.overdrawn = out.sold > stock or available < 0 or available != stock - out.sold
    if available != stock - out.sold:
        say(f"  !! stock is {available}, expected {stock - out.sold}")
    out.oversold = max(out.sold - stock, 0) + (out.flagged_units if listed else 0)
    if await wait_listed(box, sku, available):
        times = {name: max(settled_at(sim, sku, available) - last_sale_ms, 0) for name, sim in box.sims.items()}
        out.converged_ms = max(times.values())
        out.per_channel = ", ".join(f"{name} {ms} ms" for name, ms in times.items())
    return available


async def article(api: Api, box: Sandbox) -> bool:
    sku, stock = ARTICLE_SKU, ARTICLE_STOCK
    say(f"\n== 1. The article's scenario: {stock} units of {sku}; Amazon sells 10, then Shopify 3, then Flipkart 2 ==")
    say(f"   Orders arrive as signed marketplace webhooks; the clock is compressed (1 minute = {MINUTE_S} s).\n")
    started_ms = now_ms()
    await api.set_stock(sku, stock)
    if not await wait_listed(box, sku, stock):
        say("  !! the channels did not list the initial stock")
        return False
    say(f"  {clock(-1)}  warehouse sets {sku} to {stock} (PUT /v1/skus/{sku})")
    say(f"         listed {stock}: {lags(box, sku, stock, started_ms)}")
    out, last_sale_ms, start = Outcome(), started_ms, time.monotonic()
    for minute, channel, qty in ARTICLE_ORDERS:
        await asyncio.sleep(max(0.0, start + minute * MINUTE_S - time.monotonic()))
        sent_ms = now_ms()
        order_id, status, available = await api.order(channel, sku, qty)
        if status == "ok":
            out.sold += qty
            last_sale_ms = sent_ms
            say(f"  {clock(minute)}  {channel:8} order {order_id}: {qty} x {sku} -> sold, {available} left")
            await wait_listed(box, sku, available)
            say(f"         listed {available}: {lags(box, sku, available, sent_ms)} after the webhook")
        else:
            out.flagged_orders += 1
            out.flagged_units += qty
            say(f"  {clock(minute)}  {channel:8} order {order_id}: {qty} x {sku} -> REFUSED ({status}): "
                f"flagged for cancellation at once")
    await finish(api, box, sku, stock, out, last_sale_ms, listed=False)
    say("\n  Shopify and Flipkart listed 0 within milliseconds of Amazon's sale, so their buyers would have seen")
    say("  'sold out'; the demo sends the article's two orders anyway, to show what happens to an order that")
    say("  cannot be covered: it is answered 200 (the marketplace took it), refused, and flagged.")
    buyers = [Buyer(minute * 60.0, channel, qty, f"{channel}-{minute}") for minute, channel, qty in ARTICLE_ORDERS]
    report(out, stock, buyers)
    return out.ok


async def cancel_all(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def flash_buyers(rng: random.Random) -> list[Buyer]:
    """BUYERS buyers over FLASH_WINDOW_S on random channels, one in ten buying 2, by arrival time."""
    return sorted((Buyer(rng.uniform(0, FLASH_WINDOW_S), rng.choice(CHANNELS), 2 if rng.random() < 0.1 else 1,
                         f"b{i}") for i in range(BUYERS)), key=lambda b: b.t)


def buying(api: Api, sku: str, out: Outcome, state: dict):
    """A buyer's order sent as its marketplace's webhook; what stocksync answered counted in out/state."""

    async def buy(b: Buyer, sent_ms: int) -> None:
        _, status, available = await api.order(b.channel, sku, b.qty)
        state["left"] = min(state["left"], available)
        mine = state["by_channel"].setdefault(b.channel, [0, 0])  # [units sold, orders flagged]
        if status == "ok":
            out.sold += b.qty
            mine[0] += b.qty
            state["last_sale_ms"] = max(state["last_sale_ms"], sent_ms)
        else:
            out.flagged_orders += 1
            out.flagged_units += b.qty
            mine[1] += 1

    return buy


async def flash_sale(api: Api, box: Sandbox) -> bool:
    sku, stock = FLASH_SKU, FLASH_STOCK
    say(f"\n== 2. Flash sale: {BUYERS} buyers on three channels within {FLASH_WINDOW_S:g} s for {stock} units of {sku} ==\n"
        "   A buyer orders only if their channel still shows stock; real time, no compression.\n")
    buyers = flash_buyers(random.Random(42))
    await api.set_stock(sku, stock)
    if not await wait_listed(box, sku, stock):
        say("  !! the channels did not list the initial stock")
        return False
    fronts = {name: Storefront(sim, sku) for name, sim in box.sims.items()}
    out, state = Outcome(), {"left": stock, "last_sale_ms": now_ms(), "orders": 0, "sold_out": 0, "by_channel": {}}

    buy = buying(api, sku, out, state)
    say(f"{'':50}what each channel shows\n   time   buyers  orders  sold  flagged  stock   "
        + "  ".join(f"{c:>8}" for c in CHANNELS))
    tasks, start, step, seen = [], time.monotonic(), 0.1, 0
    risk = asyncio.create_task(peak_risk(box))
    last_row: list = []

    def row(t: float, always: bool = False) -> None:
        shows = "  ".join(f"{max(f.shows(), 0):>8}" for f in fronts.values())
        now = [state["orders"], state["left"], out.flagged_orders, shows]
        if now == last_row and not always:  # nothing moved: sold out everywhere
            return
        last_row[:] = now
        say(f"  {t:4.2f} s  {seen:6}  {state['orders']:6}  {stock - state['left']:4}  {out.flagged_orders:7}  {state['left']:5}"
            f"   {shows}")

    next_row = step
    try:
        for b in buyers:
            while b.t >= next_row:
                row(next_row)
                next_row += step
            await asyncio.sleep(max(0.0, start + b.t - time.monotonic()))
            seen += 1
            sold = fronts[b.channel].sell(b.qty)
            state["orders" if sold else "sold_out"] += 1
            if sold:
                tasks.append(asyncio.create_task(buy(b, now_ms())))
        await asyncio.gather(*tasks)
    finally:  # interrupted: no order left in flight
        await cancel_all(tasks)
    row(FLASH_WINDOW_S, always=True)
    await finish(api, box, sku, stock, out, state["last_sale_ms"])
    await say_peak_risk(risk, state["by_channel"])
    say(f"\n  {state['orders']} orders were taken by the marketplaces; {state['sold_out']} buyers saw 'sold out'.\n"
        "  Amazon takes one SKU a call at about 5 calls a second, so under a burst its listing trails the others;\n"
        "  the workers push first the SKUs where an oversell is likeliest.\n"
        f"  API: GET /v1/rejections lists {await api.rejections()} orders to cancel (both scenarios).")
    report(out, stock, buyers)
    return out.ok


async def say_peak_risk(task: asyncio.Task, by_channel: dict[str, list[int]]) -> None:
    """Each channel's peak estimated risk, beside what happened there (units sold, orders refused)."""
    task.cancel()
    peaks = (await asyncio.gather(task, return_exceptions=True))[0]
    if isinstance(peaks, dict):
        say("  Oversell risk the workers estimated during the sale (peak expected units a channel sells that are "
            "not there): " + ", ".join(f"{c} {v:.2f}" for c, v in peaks.items()))
        for c, v in peaks.items():
            sold, flagged = by_channel.get(c, [0, 0])
            say(f"    {c:8}  peak risk {v:5.2f} units   outcome: sold {sold} units, {flagged} orders could not be "
                f"covered (oversold)")


async def peak_risk(box: Sandbox) -> dict[str, float]:
    """Each channel's highest oversell risk in its workers' heartbeats, until cancelled (then answered)."""
    peaks = dict.fromkeys(CHANNELS, 0.0)
    client = (redis.asyncio.RedisCluster if box.settings.cluster else redis.asyncio.Redis).from_url(
        box.redis_url, decode_responses=True)
    try:
        while True:
            for channel in CHANNELS:
                for beat in (await client.hgetall(box.keys.channel_status(channel))).values():
                    peaks[channel] = max(peaks[channel], float(orjson.loads(beat).get("oversell_risk_units", 0)))
            await asyncio.sleep(0.2)
    except asyncio.CancelledError:
        return peaks
    finally:
        await client.aclose()


def report(out: Outcome, stock: int, buyers: list[Buyer]) -> None:
    poll = simulate(stock, buyers, CHANNELS)
    out.polling_oversold = poll.oversold
    converged = f"{out.converged_ms} ms" if out.converged_ms is not None else "NOT within 15 s"
    say(f"\n  stocksync: sold {out.sold} of {stock}, {out.flagged_orders} orders ({out.flagged_units} units) "
        f"flagged for cancellation, oversold {out.oversold} at the marketplaces; the stock "
        + ("WENT WRONG" if out.overdrawn else "never went below 0"))
    say(f"             every channel listed the final quantity {converged} after the last sale ({out.per_channel})")
    found = f"found at the sync at {clock(poll.found_at / 60).strip()}" if poll.found_at is not None else "nothing to find"
    say(f"  15-minute polling (each channel sells from its own count; last sync 1 minute before): sold {poll.sold} of {stock}, oversold {poll.oversold} "
        f"({len(poll.cancel)} orders to cancel), {found}")


# ----- the command --------------------------------------------------------------------------------------


# A bundle and its components share a partition: the {red} pin keeps them together on a cluster too
KIT_STOCK = {"MUG{red}": 3, "PLATE{red}": 1}
KIT_BUNDLES = {"MUG-2PACK{red}": {"MUG{red}": 2}, "GIFT{red}": {"MUG{red}": 1, "PLATE{red}": 1}}
KIT_ORDERS = (("shopify", "GIFT{red}"), ("amazon", "MUG-2PACK{red}"), ("flipkart", "GIFT{red}"))


async def kit_listed(api: Api, box: Sandbox) -> tuple[dict[str, int], bool]:
    """Every kit SKU's quantity now, and whether every channel lists it."""
    now = {sku: (await api.quantities(sku))["available"] for sku in [*KIT_STOCK, *KIT_BUNDLES]}
    listed = [await wait_listed(box, sku, qty) for sku, qty in now.items()]
    return now, all(listed)


async def bundles(api: Api, box: Sandbox) -> bool:
    say("\n== 4. Bundles: 3 red mugs and 1 plate, listed alone, as a 2-pack and as a gift set (mug + plate) ==")
    say("   A bundle has no stock of its own: each channel lists the fewest whole bundles its components make.\n")
    for sku, qty in KIT_STOCK.items():
        await api.set_stock(sku, qty)
    for sku, parts in KIT_BUNDLES.items():
        await api.put_bundle(sku, parts)
    now, ok = await kit_listed(api, box)
    say("  " + ", ".join(f"{sku} {q}" for sku, q in now.items()) + ("  (listed everywhere)" if ok else "  !! not listed"))
    sold = 0
    for channel, sku in KIT_ORDERS:
        sent_ms = now_ms()
        order_id, status, _ = await api.order(channel, sku, 1)
        sold += status == "ok"
        now, listed = await kit_listed(api, box)
        ok = ok and listed
        verdict = "sold" if status == "ok" else f"REFUSED ({status}): its components are gone, flagged for cancellation"
        say(f"  {channel:8} order {order_id}: 1 x {sku} -> {verdict}")
        say("           now " + ", ".join(f"{s} {q}" for s, q in now.items())
            + f"; every channel listed it {now_ms() - sent_ms} ms after the webhook")
    mug = await api.quantities("MUG{red}")
    units_ok = (mug["available"], mug["committed"], mug["on_hand"]) == (0, 3, 3)
    say(f"\n  The mug's last units went through its bundles: available {mug['available']}, committed {mug['committed']}"
        f" (to ship), on_hand {mug['on_hand']}; {sold} of {len(KIT_ORDERS)} bundle orders taken, oversold 0.")
    return ok and units_ok and sold == 2 and all(q == 0 for q in now.values())


async def replay(box: Sandbox) -> bool:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        api = Api(box, http)
        first = await article(api, box)
        second = await flash_sale(api, box)
        third, summary = await lost_webhook(api, box, say, wait_listed, now_ms)
        say(f"  {'ok' if third else 'FAILED'}: {summary}")
        fourth = await bundles(api, box)
    return first and second and third and fourth


def try_this(box: Sandbox) -> None:
    p = box.keys.partition(ARTICLE_SKU)
    events, sku_key = box.keys.events(p), box.keys.sku(ARTICLE_SKU)
    cli = f"redis-cli -c -u {box.redis_url}" if box.settings.cluster else f"redis-cli -u {box.redis_url}"
    auth = f"-H {shlex.quote('Authorization: Bearer ' + box.token)}"
    script = Path(sys.executable).with_name("stocksync")  # the venv's, whether or not it is on PATH
    command = os.path.relpath(script) if script.exists() and not os.path.relpath(script).startswith("..") else (
        str(script) if script.exists() else f"{sys.executable} -m stocksync")
    env = command
    say(f"""
The system stays up. Things to try (Ctrl-C stops everything):

  Redis (every change is one entry in the events stream; each channel is a consumer group on it)
    {cli} XRANGE {shlex.quote(events)} - + COUNT 5
    {cli} XREAD BLOCK 0 STREAMS {shlex.quote(events)} '$'        # tail: waits for the next change
    {cli} XINFO GROUPS {shlex.quote(events)}                     # per channel: lag, pending
    {cli} XPENDING {shlex.quote(events)} amazon
    {cli} HGETALL {shlex.quote(sku_key)}
    {cli} FCALL_RO stocksync_get 1 {shlex.quote(sku_key)}

  The API (token {box.token})
    curl -s {auth} {box.api_url}/v1/skus/{ARTICLE_SKU}
    curl -s -X POST {auth} -H 'Idempotency-Key: try-1' -H 'Content-Type: application/json' -d '{{"delta": 5}}' {box.api_url}/v1/skus/{ARTICLE_SKU}/adjust
    curl -s {auth} {box.api_url}/v1/rejections
    curl -s {box.api_url}/metrics | grep stocksync_

  The marketplace simulators (what each channel lists, and every call it received)
""" + "\n".join(f"    curl -s {url}/_sim/state      # {name}" for name, url in box.sim_urls.items()) + f"""

  The CLI (load the demo's settings and simulator credentials into your shell first)
    set -a; . {box.env_path}; set +a
    {env} status
    {env} tail --from 0
    {env} dlq list amazon
    {env} dlq replay amazon
""")


def main(settings: Settings, keep: bool = False, cluster: bool = False) -> int:
    where = "a Redis Cluster (3 primaries, 3 replicas)" if cluster else "Redis"
    say(f"stocksync demo: {where}, three marketplace simulators, the API and a worker per channel, on this machine\n")
    # Ctrl-C (and SIGTERM, like it) stops it cleanly, also when started from a shell that ignores SIGINT in
    # its background jobs (Python keeps an ignored SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    box = Sandbox(settings, say, cluster=cluster)
    started = time.monotonic()
    ok = False
    try:
        box.start()
        ok = asyncio.run(replay(box))
        say("\nOK: the stock never went below 0, stocksync oversold fewer units than polling, and every channel "
            "converged" if ok else "\nFAILED: the stock went wrong, stocksync oversold as much as polling, or a channel "
            "did not converge (see above)")
        say(f"(replays done in {time.monotonic() - started:.1f} s)")
        if keep:
            try_this(box)
            while True:
                time.sleep(3600)
        return 0 if ok else 1
    except KeyboardInterrupt:  # with --keep, Ctrl-C is how it ends
        return (0 if ok else 1) if keep and ok is not None and box.procs else 130
    except SandboxError as e:
        say(f"\nstocksync demo: {e}")
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say("stopping: workers, API, simulators, Redis ...")
        box.stop()
        say("stopped; nothing left running.")
