"""The order pollers of one worker process: one task per channel with poll_s set, beside its ChannelWorker.

    pollers = OrderPollers(settings, configs)   # checks every poller's settings: refused at start
    pollers.start(store)                        # once the store is open, inside the running loop
    ...
    await pollers.stop()                        # lets a page under way finish (up to stop_s), then cancels

The pollers share one Intake, with the line record TTLs of the API's intake ([api] line_ttl_days), so a
line taken by a poller is remembered as long as one taken by a webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from stocksync.channels import ChannelConfig
from stocksync.metrics import Metrics
from stocksync.orders.intake import Intake, IntakeSettings
from stocksync.settings import Settings
from stocksync.store import StockStore

from .options import PollOptions
from .poller import READERS, OrderPoller


class OrderPollers:
    stop_s = 10.0

    def __init__(self, settings: Settings, configs: Iterable[ChannelConfig]) -> None:
        self.configs = [c for c in configs if c.poll_s]
        self.options = {c.name: PollOptions.from_config(c, settings.idem_ttl_s) for c in self.configs}
        # Readers check their marketplace's own options now; they get the store once it is open.
        self.readers = {c.name: READERS[c.kind](c, None, self.options[c.name]) for c in self.configs}
        self.intake_settings = IntakeSettings.from_settings(settings) if self.configs else None
        self.pollers: list[OrderPoller] = []
        self.tasks: list[asyncio.Task] = []
        self._stop = asyncio.Event()

    def start(self, store: StockStore) -> None:
        if not self.configs:
            return
        intake = Intake(store, Metrics(), self.intake_settings)
        for reader in self.readers.values():
            reader.store = store
        self.pollers = [OrderPoller(store, c, intake, self.options[c.name], reader=self.readers[c.name])
                        for c in self.configs]
        self.tasks = [asyncio.create_task(p.run(self._stop), name=f"order-poller-{p.name}") for p in self.pollers]

    async def stop(self) -> None:
        self._stop.set()
        if not self.tasks:
            return
        _, pending = await asyncio.wait(self.tasks, timeout=self.stop_s)
        for task in pending:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
