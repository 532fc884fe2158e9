"""Per channel: lag, pending, dead letters, last push, circuit state, oversell risk (for `stocksync status`,
the API's /v1/channels, and its /metrics through `metric_families`).

Lag is the number of entries after the group's last-delivered-id (counted, see group_lag: XINFO GROUPS'
own `lag` is wrong after a restart), pending comes from the consumer groups (delivered but not
acknowledged), dead letters from the dead-letter streams, and the rest from the heartbeats the workers
write every heartbeat_ms to `<prefix>:status:<channel>` (a heartbeat older than three beats plus a
second counts as a worker that is not alive; one older than STALE_BEATS beats and STALE_MIN_S is a
worker gone for good: not listed, and removed by the channel's live workers; a stopped worker removes
its own).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson
from prometheus_client.core import GaugeMetricFamily
from redis.exceptions import ResponseError

from stocksync.connection import AnyRedis
from stocksync.keys import Keys

SEVERITY = {"open": 3, "half_open": 2, "throttled": 1, "closed": 0}
CIRCUIT_STATES = ("closed", "throttled", "half_open", "open", "no_worker")


LAG_EXACT_UP_TO = 1000  # undelivered entries counted one by one; past it, Redis's own estimate
STALE_BEATS, STALE_MIN_S = 10, 60  # a heartbeat older than both is a worker gone for good: not listed, removed


async def channel_status(redis: AnyRedis, keys: Keys, channels: Iterable[str]) -> dict[str, dict[str, Any]]:
    now_ms = int(time.time() * 1000)
    out: dict[str, dict[str, Any]] = {}
    for channel in channels:
        numbers = await _group_numbers(redis, keys, channel)
        beats = await redis.hgetall(keys.channel_status(channel))
        workers = _workers(beats, now_ms)
        alive = [w for w in workers if w["alive"]]
        circuit = max((w.get("circuit", "closed") for w in alive), key=lambda s: SEVERITY.get(s, 0),
                      default="no worker")
        oldest = numbers.pop("oldest")
        out[channel] = {
            **numbers,
            "oldest_pending_age_ms": None if oldest is None else max(now_ms - oldest, 0),
            # (from every heartbeat, those of workers gone included: the channel's last accepted call)
            "last_push_ms": max((int(read_beat(raw).get("last_push_ms", 0)) for raw in beats.values()), default=0) or None,
            "circuit": circuit,
            # expected units the channel sells that are not there, before its held pushes land (risk.py)
            "oversell_risk_units": round(sum(float(w.get("oversell_risk_units", 0)) for w in alive), 3),
            "workers": sorted(workers, key=lambda w: w["consumer"]),
        }
    return out


async def _group_numbers(redis: AnyRedis, keys: Keys, channel: str) -> dict[str, Any]:
    """group (found), lag, pending, oldest (ms of the oldest pending entry), dead_letters, over every partition."""
    lag: int | None = 0
    pending = dead = 0
    oldest: int | None = None
    group_found = False
    for p in range(keys.partitions):
        stream = keys.events(p)
        try:
            groups = await redis.xinfo_groups(stream)
        except ResponseError:  # no stream yet
            groups = []
        for g in groups:
            if g["name"] != channel:
                continue
            group_found = True
            pending += int(g["pending"])
            behind = await group_lag(redis, stream, g)
            lag = None if lag is None or behind is None else lag + behind
            if int(g["pending"]):
                first = (await redis.xpending(stream, channel))["min"]
                if first is not None:  # (acknowledged between XINFO and XPENDING)
                    ms = int(str(first).split("-")[0])
                    oldest = ms if oldest is None else min(oldest, ms)
        dead += await redis.xlen(keys.dlq(p, channel))
    return {"group": group_found, "lag": lag if group_found else None, "pending": pending, "oldest": oldest,
            "dead_letters": dead}


async def group_lag(redis: AnyRedis, stream: str, group: dict) -> int | None:
    """Entries of the stream after the group's last-delivered-id: counted (up to LAG_EXACT_UP_TO), not read
    from XINFO GROUPS' `lag`. That one is entries-added - entries-read, and entries-read is wrong after an
    AOF rewrite and a restart (the reads replayed from the file do not count): a group that has read
    everything showed a lag of thousands for ever. last-delivered-id survives a restart, so a group that
    is caught up is always 0 here. Past the bound, the larger of the bound and Redis's estimate.
    An estimate of 0 is taken as it is (no read: a scrape of a caught-up system costs nothing): the known
    error only undercounts entries-read, so it makes the estimate too high, never too low."""
    if group.get("lag") is not None and int(group["lag"]) == 0:
        return 0
    after = await redis.xrange(stream, min="(" + str(group["last-delivered-id"]), count=LAG_EXACT_UP_TO + 1)
    if len(after) <= LAG_EXACT_UP_TO:
        return len(after)
    estimate = group.get("lag")
    return max(int(estimate), len(after)) if estimate is not None else len(after)


def read_beat(raw: str) -> dict:
    """A heartbeat's JSON, or {} when it is unreadable."""
    try:
        beat = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return beat if isinstance(beat, dict) else {}


def _stale(beat: dict, now_ms: int) -> bool:
    every = int(beat.get("heartbeat_ms", 1000))
    return now_ms - int(beat.get("ts_ms", 0)) > max(STALE_BEATS * every, STALE_MIN_S * 1000)


def stale_beats(beats: dict[str, str], now_ms: int, keep: str = "") -> list[str]:
    """The consumers whose heartbeat says they are gone for good (or is unreadable), `keep` apart."""
    return [name for name, raw in beats.items() if name != keep and (not read_beat(raw) or _stale(read_beat(raw), now_ms))]


def _workers(beats: dict[str, str], now_ms: int) -> list[dict]:
    """The heartbeats of workers alive or lately gone (`alive`: younger than three beats and a second);
    those gone for good are not listed (a live worker of the channel removes them)."""
    workers = []
    for name, raw in beats.items():
        beat = read_beat(raw)
        if not beat or _stale(beat, now_ms):
            continue
        beat["consumer"] = name
        beat["alive"] = now_ms - int(beat.get("ts_ms", 0)) <= 3 * int(beat.get("heartbeat_ms", 1000)) + 1000
        workers.append(beat)
    return workers


def format_table(status: dict[str, dict[str, Any]]) -> str:
    now_ms = int(time.time() * 1000)
    lines = [f"{'channel':<16} {'lag':>8} {'pending':>8} {'oldest':>9} {'dead':>6} {'last push':>10} "
             f"{'circuit':<10} {'risk':>7} workers"]
    for channel, s in status.items():
        oldest = "-" if s["oldest_pending_age_ms"] is None else f"{s['oldest_pending_age_ms'] / 1000:.1f}s"
        last = "-" if not s["last_push_ms"] else f"{(now_ms - s['last_push_ms']) / 1000:.1f}s ago"
        lag = "-" if s["lag"] is None else str(s["lag"])
        alive = sum(1 for w in s["workers"] if w["alive"])
        lines.append(f"{channel:<16} {lag:>8} {s['pending']:>8} {oldest:>9} {s['dead_letters']:>6} {last:>10} "
                     f"{s['circuit']:<10} {s['oversell_risk_units']:>7.2f} {alive}")
    return "\n".join(lines)


def metric_families(status: dict[str, dict[str, Any]]) -> list[GaugeMetricFamily]:
    """The same numbers as Prometheus gauges (read from Redis at each scrape, so every API process answers
    the same; the workers' own counters are on their endpoints, consumers/metrics.py):

        stocksync_channel_lag_entries{channel}                  entries not yet delivered to the group
        stocksync_channel_pending_entries{channel}              delivered, not yet acknowledged
        stocksync_channel_oldest_pending_age_seconds{channel}   age of the oldest of them (0: none)
        stocksync_channel_dead_letters{channel}                 entries in the dead-letter streams
        stocksync_channel_circuit_state{channel,state}          1 for the worst state among live workers
                                                                (no_worker: none alive)
        stocksync_channel_workers{channel}                      workers with a live heartbeat
        stocksync_channel_last_push_timestamp_seconds{channel}  the last call the channel accepted
        stocksync_oversell_risk_units{channel}                  expected units the channel sells that are
                                                                not there before its held pushes land
                                                                (live workers' sum; consumers/risk.py)
    """
    def gauge(name: str, text: str, labels=("channel",)) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, text, labels=list(labels))

    lag = gauge("stocksync_channel_lag_entries", "Entries of the events streams not yet delivered to the channel")
    pending = gauge("stocksync_channel_pending_entries", "Entries delivered to a worker, not yet acknowledged")
    oldest = gauge("stocksync_channel_oldest_pending_age_seconds", "Age of the oldest pending entry (0: none)")
    dead = gauge("stocksync_channel_dead_letters", "Entries in the channel's dead-letter streams")
    circuit = gauge("stocksync_channel_circuit_state", "1 for the channel's circuit state (the worst among live "
                    "workers; no_worker when none is alive)", ("channel", "state"))
    workers = gauge("stocksync_channel_workers", "Workers of the channel with a live heartbeat")
    last = gauge("stocksync_channel_last_push_timestamp_seconds", "When the channel last accepted a call (Unix time)")
    risk = gauge("stocksync_oversell_risk_units", "Expected units the channel sells that are not there, before "
                 "the pushes its workers hold land (docs/oversell-risk.md)")
    for channel, s in status.items():
        if s["lag"] is not None:
            lag.add_metric([channel], s["lag"])
        pending.add_metric([channel], s["pending"])
        oldest.add_metric([channel], (s["oldest_pending_age_ms"] or 0) / 1000)
        dead.add_metric([channel], s["dead_letters"])
        state = s["circuit"].replace(" ", "_")
        for name in CIRCUIT_STATES:
            circuit.add_metric([channel, name], 1.0 if name == state else 0.0)
        workers.add_metric([channel], sum(1 for w in s["workers"] if w["alive"]))
        if s["last_push_ms"]:
            last.add_metric([channel], s["last_push_ms"] / 1000)
        risk.add_metric([channel], s["oversell_risk_units"])
    return [lag, pending, oldest, dead, circuit, workers, last, risk]
