"""Helpers for testing channels against the bundled simulators (stocksync's own tests use them).

`config(name, url)` builds a ChannelConfig for the simulator of that kind, with credentials read from the
variables of SIMULATOR_ENV (the simulators' default secrets): call `use_simulator_credentials()` first.
`wait_for` polls a condition with a deadline (tests wait for conditions, never for fixed times).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator

from stocksync.channels import ChannelConfig, Rules
from stocksync.devtools.simulators import SIMULATORS, serve

SIMULATOR_ENV = {
    "TEST_SHOPIFY_TOKEN": "shpat_stocksync_simulator",
    "TEST_AMAZON_TOKEN": "Atza|stocksync-simulator",
    "TEST_FLIPKART_TOKEN": "flipkart-stocksync-simulator",
    "TEST_WEBHOOK_SECRET": "stocksync-webhook-secret",
}


@contextlib.contextmanager
def serving_simulators() -> Iterator[dict[str, tuple]]:
    """Every simulator, served on loopback with its default credentials: {name: (simulator, url)}."""
    use_simulator_credentials()
    with contextlib.ExitStack() as stack:
        yield {name: (sim, stack.enter_context(serve(sim))) for name, sim in
               ((name, cls()) for name, cls in SIMULATORS.items())}


def use_simulator_credentials(env=os.environ) -> dict[str, str]:
    env.update(SIMULATOR_ENV)
    return dict(SIMULATOR_ENV)



def config(name: str, url: str, rules: Rules | None = None, **options) -> ChannelConfig:
    kind = name.rstrip("0123456789_")
    if kind == "shopify":
        opts, creds = {"location_id": "gid://shopify/Location/1"}, {"token": "TEST_SHOPIFY_TOKEN"}
    elif kind == "amazon":
        opts, creds = {"seller_id": "A2SIMSELLER000"}, {"access_token": "TEST_AMAZON_TOKEN"}
    elif kind == "flipkart":
        opts = {"location_id": "LOC0123456789abcdef0123456789abcdef", "product_id_format": "{sha}"}
        creds = {"access_token": "TEST_FLIPKART_TOKEN"}
    else:
        opts, creds = {}, {"secret": "TEST_WEBHOOK_SECRET"}
    opts.update(options)
    return ChannelConfig(name, kind, url, rules or Rules(), creds, {}, opts)


def toml_channel(cfg: ChannelConfig) -> str:
    """The [channels.<name>] table of cfg, for worker processes."""
    lines = [f"[channels.{cfg.name}]", f'kind = "{cfg.kind}"', f'url = "{cfg.url}"']
    for k in ("buffer", "share", "max_listed", "end_when"):
        lines.append(f"{k} = {getattr(cfg.rules, k)}")
    lines.append("credentials = { " + ", ".join(f'{k} = "{v}"' for k, v in cfg.credentials.items()) + " }")
    opts = ", ".join(f"{k} = {v!r}".replace("'", '"') if isinstance(v, str) else f"{k} = {v}"
                     for k, v in cfg.options.items())
    lines.append("options = { " + opts + " }")
    return "\n".join(lines) + "\n"


async def wait_for(condition: Callable[[], object], seconds: float = 15.0, what: str = "condition",
                   interval: float = 0.02):
    """Poll an (async or sync) condition until it is truthy; fail after the deadline."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(interval)


def in_version_order(history, sequence) -> bool:
    """history (quantities a channel accepted) is a subsequence of sequence (the listed quantity at each
    version, in version order): no push carried an older version after a newer one."""
    i = 0
    for q in history:
        while i < len(sequence) and sequence[i] != q:
            i += 1
        if i == len(sequence):
            return False
    return True
