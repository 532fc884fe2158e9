"""Local simulators of the marketplace APIs that stocksync pushes to.

No real marketplace is reachable from tests, the demo or the benchmarks, so each channel adapter
talks to one of these instead: Starlette apps that speak the marketplace's request and response
shapes, keep the listed quantity per SKU, inject faults on demand (latency, rate limits, 5xx,
outages, SKUs rejected for good) and record every call. See ``base`` for the shared machinery and
each module's docstring for its API's shapes.

    sim = AmazonSim()
    with serve(sim) as url:
        ...  # point the adapter at url; then look at sim.calls, sim.quantities, sim.history(sku)

The Shopify, Amazon and Flipkart simulators also sell (``market``): ``POST /_sim/orders`` places an
order that the listed quantity must cover, lowers the listing and sends the marketplace's signed order
webhook to the receiver set with ``POST /_sim/webhooks`` (delivered, dropped, late or twice); orders
can be cancelled and refunded, and read back through each marketplace's own order-list API (Shopify's
GraphQL ``orders``, SP-API Orders v0, Flipkart's v3 shipment search) with its pagination and rate
limits. See ``market`` for the control endpoints and ``<marketplace>_orders`` for the shapes.

``python -m stocksync.devtools.simulators shopify|amazon|flipkart|webhook|all --port N`` serves them by hand.
"""

from stocksync.channels import by_kind

from .amazon import AmazonSim
from .base import Call, Faults, Simulator, aserve, serve
from .flipkart import FlipkartSim
from .shopify import ShopifySim, inventory_item_gid
from .webhook import WebhookSim, sign

# One simulator per channel kind, checked against the registry (a kind cannot be half added).
SIMULATORS: dict[str, type[Simulator]] = by_kind((ShopifySim, AmazonSim, FlipkartSim, WebhookSim), "simulator")

__all__ = [
    "SIMULATORS",
    "AmazonSim",
    "Call",
    "Faults",
    "FlipkartSim",
    "ShopifySim",
    "Simulator",
    "WebhookSim",
    "aserve",
    "inventory_item_gid",
    "serve",
    "sign",
]
