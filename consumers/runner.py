"""Running the workers of one process: `stocksync worker` (one or several channels, until SIGTERM/SIGINT)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterable
from pathlib import Path

import orjson

from stocksync.channels import load_channels
from stocksync.settings import Settings, SettingsError
from stocksync.store import StockStore

from .options import WorkerOptions
from .worker import Accepted, ChannelWorker

log = logging.getLogger(__name__)


async def run_workers(settings: Settings, channels: Iterable[str] | None = None, options: WorkerOptions | None = None,
                      *, lag_file: str | None = None, ready: asyncio.Event | None = None) -> None:
    """Run one ChannelWorker per channel (all configured ones by default) until SIGTERM or SIGINT.

    lag_file: at exit, write {channel: [[commit_ms, accepted_ms, urgent], ...]} for every entry the
    channel accepted (used by bench/propagation.py)."""
    configs = load_channels(settings)
    names = list(channels) if channels else list(configs)
    missing = [n for n in names if n not in configs]
    if missing or not names:
        raise SettingsError(f"no channel configured named {', '.join(missing)}" if missing else "no channel configured")
    options = options or WorkerOptions.from_settings(settings)
    lags: dict[str, list[tuple[int, int, bool]]] = {n: [] for n in names}

    def on_accept(a: Accepted) -> None:
        lags[a.channel].extend((ts, a.accepted_ms, urgent) for ts, urgent in a.entries)

    store = await StockStore.connect(settings)
    workers = [ChannelWorker(store.redis, store.keys, configs[n], options, on_accept=on_accept if lag_file else None)
               for n in names]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: [w.stop() for w in workers])
    try:
        tasks = [asyncio.create_task(w.run()) for w in workers]
        if ready is not None:
            await asyncio.gather(*(w.started.wait() for w in workers))
            ready.set()
        await asyncio.gather(*tasks)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await store.close()
        if lag_file:
            await asyncio.to_thread(Path(lag_file).write_bytes, orjson.dumps(lags))
