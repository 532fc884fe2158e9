"""Local simulators of the marketplace APIs that stocksync pushes to.

No real marketplace is reachable from tests, the demo or the benchmarks, so each channel adapter
talks to one of these instead: Starlette apps that speak the marketplace's request and response
shapes, keep the listed quantity per SKU, inject faults on demand (latency, rate limits, 5xx,
outages, SKUs rejected for good) and record every call. See ``base`` for the shared machinery and
each module's docstring for its API's shapes.

    sim = AmazonSim()
    with serve(sim) as url:
        ...  # point the adapter at url; then look at sim.calls, sim.quantities, sim.history(sku)

``python -m stocksync.devtools.simulators shopify|amazon|flipkart|webhook|all --port N`` serves them by hand.
"""

from .amazon import AmazonSim
from .base import Call, Faults, Simulator, aserve, serve
from .flipkart import FlipkartSim
from .shopify import ShopifySim, inventory_item_gid
from .webhook import WebhookSim, sign

SIMULATORS: dict[str, type[Simulator]] = {
    "shopify": ShopifySim,
    "amazon": AmazonSim,
    "flipkart": FlipkartSim,
    "webhook": WebhookSim,
}

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
