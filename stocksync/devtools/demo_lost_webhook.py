"""The demo's third scenario: an order whose webhook never arrives, found by the order poller.

Shopify sells 3 of a lamp's 4 units, and its orders/create webhook is lost (the simulator drops it, as
Shopify's own docs say can happen). Nothing tells stocksync: Amazon and Flipkart still list 4. The Shopify
worker's order poller reads Shopify's orders back every second (the demo's `poll_s`; a deployment would
poll every minute or so), finds the order, and takes its 3 units under the reference its webhook would
have used, so a late webhook would change nothing. Then an Amazon buyer wants 2: Amazon lists 1 by then,
so the marketplace refuses the second unit. Beside it, the 15-minute polling model on the same buyers.
"""

from __future__ import annotations

import asyncio
import time

from .polling import Buyer, simulate
from .sandbox import CHANNELS, Sandbox

SKU, STOCK, LOST_QTY, LATE_QTY = "LAMP-7", 4, 3, 2
FIND_S = 15.0  # how long the poller may take to find the order before the scenario fails


async def lost_webhook(api, box: Sandbox, say, wait_listed, now_ms) -> tuple[bool, str]:
    """Answers (ok, a one-line summary)."""
    say("\n== 3. A lost webhook: Shopify sells 3 of 4 lamps; the webhook never arrives ==")
    shop, amazon = box.sims["shopify"], box.sims["amazon"]
    await api.set_stock(SKU, STOCK)
    if not await wait_listed(box, SKU, STOCK):
        return False, "the channels did not list the initial stock"
    shop.set_webhook(f"{box.api_url}/webhooks/shopify", box.webhook_secrets["shopify"])
    sold_ms = now_ms()
    placed = shop.place_order([(SKU, LOST_QTY)], webhook="drop")
    say(f"  Shopify took order {placed['order_id']} for {LOST_QTY}; its webhook was dropped. "
        f"Amazon still lists {amazon.quantities.get(SKU)}.")
    found_ms = await _until(lambda: api.available(SKU), STOCK - LOST_QTY)
    if found_ms is None:
        return False, f"the order poller did not find the order within {FIND_S:g} s"
    say(f"  The Shopify order poller found it {found_ms - sold_ms} ms later and took {LOST_QTY}: "
        f"available {STOCK - LOST_QTY}.")
    if not await wait_listed(box, SKU, STOCK - LOST_QTY):
        return False, "the channels did not list the new quantity"
    listed_ms = now_ms()
    late = amazon.place_order([(SKU, LATE_QTY)], webhook="drop")
    refused = not late["accepted"]
    say(f"  Every channel listed {STOCK - LOST_QTY} {listed_ms - sold_ms} ms after the sale. An Amazon buyer "
        f"wants {LATE_QTY}: {'refused by Amazon (it lists 1): nothing oversold' if refused else 'ACCEPTED'}.")
    poll = simulate(STOCK, [Buyer(0.0, "shopify", LOST_QTY, "s-1"), Buyer(120.0, "amazon", LATE_QTY, "a-1")],
                    CHANNELS)
    say(f"  15-minute polling on the same buyers: sold {poll.sold} of {STOCK}, oversold {poll.oversold}.")
    return refused, f"found by the poller in {found_ms - sold_ms} ms, oversold 0 (polling: {poll.oversold})"


async def _until(read, value: int) -> int | None:
    """The time (ms) read() first answered value, within FIND_S; None if it never did."""
    deadline = time.monotonic() + FIND_S
    while time.monotonic() < deadline:
        if await read() == value:
            return int(time.time() * 1000)
        await asyncio.sleep(0.05)
    return None
