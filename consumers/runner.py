"""Running the workers of one process: `stocksync worker` (one or several channels, until SIGTERM/SIGINT)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import warnings
from collections.abc import Iterable
from pathlib import Path

import orjson

from stocksync.channels import known, load_channels
from stocksync.orders.pollers.service import OrderPollers
from stocksync.settings import Settings, SettingsError
from stocksync.store import StockStore

from .adapters import check_credentials, check_options
from .options import WorkerOptions
from .worker import Accepted, ChannelWorker

log = logging.getLogger(__name__)
LOOP_ENV = "STOCKSYNC_LOOP"  # auto (default: uvloop when importable), uvloop or asyncio


def use_event_loop(choice: str | None = None) -> str:
    """Make this process's asyncio.run() use uvloop when it is importable (and `choice`, default
    $STOCKSYNC_LOOP, is not 'asyncio'); answer the loop chosen, 'uvloop' or 'asyncio'. Called where a
    worker process starts (`python -m consumers`), before its loop exists. uvloop is not a dependency
    (installed, it would also become the API server's loop under `stocksync serve --loop auto`); with it a
    worker spends about 4-8% less CPU a call (BENCHMARKS.md, Propagation). 'uvloop' when it is not
    installed is an error."""
    choice = (choice or os.environ.get(LOOP_ENV) or "auto").lower()
    if choice not in ("auto", "uvloop", "asyncio"):
        raise SettingsError(f"{LOOP_ENV} must be auto, uvloop or asyncio, not {choice!r}")
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SettingsError(f"{LOOP_ENV}=uvloop but uvloop is not installed") from None
        return "asyncio"
    with warnings.catch_warnings():  # the policy API is deprecated from Python 3.14 on; still works
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def channels_to_run(settings: Settings, channels: Iterable[str] | None = None) -> tuple[dict, list[str]]:
    """The configured channels and the names of those to run (all by default), refused (SettingsError,
    naming what to fix) before anything connects: an unknown channel, an option its kind does not read,
    a credential its pushes need that is not set."""
    configs = load_channels(settings)
    names = known(configs, channels) if channels else list(configs)
    if not names:
        raise SettingsError("no channel configured")
    for name in names:
        check_options(configs[name])
        check_credentials(configs[name])
    return configs, names


async def run_workers(settings: Settings, channels: Iterable[str] | None = None, options: WorkerOptions | None = None,
                      *, lag_file: str | None = None, ready: asyncio.Event | None = None) -> None:
    """Run one ChannelWorker per channel (all configured ones by default) until SIGTERM or SIGINT.

    lag_file: at exit, write {channel: [[commit_ms, accepted_ms, rank], ...]} for every entry the
    channel accepted (used by bench/propagation.py)."""
    configs, names = channels_to_run(settings, channels)
    options = options or WorkerOptions.from_settings(settings)
    lags: dict[str, list[tuple[int, int, int]]] = {n: [] for n in names}

    def on_accept(a: Accepted) -> None:
        lags[a.channel].extend((ts, a.accepted_ms, rank) for ts, rank in a.entries)

    pollers = OrderPollers(settings, [configs[n] for n in names])  # channels with poll_s: checked before starting
    store = await StockStore.connect(settings)
    workers = [ChannelWorker(store.redis, store.keys, configs[n], options, on_accept=on_accept if lag_file else None)
               for n in names]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: [w.stop() for w in workers])
    try:
        pollers.start(store)
        tasks = [asyncio.create_task(w.run()) for w in workers]
        if ready is not None:
            await asyncio.gather(*(w.started.wait() for w in workers))
            ready.set()
        await asyncio.gather(*tasks)
    finally:
        await pollers.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await store.close()
        if lag_file:
            await asyncio.to_thread(Path(lag_file).write_bytes, orjson.dumps(lags))
