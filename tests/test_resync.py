"""Pushing current quantities outside the stream: a channel added after the stream was trimmed (the
worker's initial sync), and `stocksync resync` after listings were edited by hand on the marketplace."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis.exceptions

from consumers import groups
from consumers.resync import SAMPLE, PushReport, ResyncReport, resync
from consumers.worker import ChannelWorker
from stocksync import library
from stocksync.channels import Rules
from stocksync.devtools.testing import config, toml_channel, wait_for

from .helpers import worker_options

ROOT = Path(__file__).resolve().parent.parent
SKUS = [f"R-{i}" for i in range(30)]
RULES = Rules(buffer=1)


@pytest.fixture
def shopify(sims):
    sim, url = sims["shopify"]
    sim.reset()
    return sim, config("shopify", url, rules=RULES)


async def seed(store, skus=SKUS) -> None:
    for i, sku in enumerate(skus):
        await store.set(sku, 10 + i)


async def seed_then_trim(store, skus=SKUS) -> None:
    await seed(store, skus)
    await store.redis.xtrim(store.keys.events(0), maxlen=0, approximate=False)


async def synced(store, sim, what: str) -> None:
    await wait_for(lambda: lists_current(store, sim), 20, what)
    await wait_for(lambda: _gone(store, "shopify"), 5, "the initial sync's mark removed")


async def lists_current(store, sim, skus=SKUS) -> bool:
    listed = sim.quantities
    for sku in skus:
        if listed.get(sku) != RULES.listed((await store.get(sku)).available):
            return False
    return True


@contextlib.asynccontextmanager
async def running(store, cfg, options=None):
    worker = ChannelWorker(store.redis, store.keys, cfg, options or worker_options())
    worker.task = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: worker.started.is_set() or worker.task.done(), 10, "the worker to start")
        yield worker
    finally:
        worker.stop()
        await worker.task


async def test_a_group_needs_an_initial_sync_only_where_the_stream_lost_changes(store):
    keys, r = store.keys, store.redis
    assert await groups.ensure_groups(r, keys, "fresh") == []  # no stream yet: nothing to miss
    await seed(store, SKUS[:3])
    assert await groups.ensure_groups(r, keys, "full") == []  # the whole history is there
    assert await groups.ensure_groups(r, keys, "tail", start_id="$") == [0]  # skips the history
    await r.xtrim(keys.events(0), maxlen=1, approximate=False)
    assert await groups.ensure_groups(r, keys, "late") == [0]  # trimmed: SKUs 0 and 1 never heard of
    assert await groups.ensure_groups(r, keys, "full") == []  # an existing group is not marked afterwards
    assert await r.exists(keys.resync(0, "late")) and not await r.exists(keys.resync(0, "full"))


async def test_a_channel_added_after_trimming_gets_every_skus_current_quantity(store, shopify):
    sim, cfg = shopify
    await seed_then_trim(store)  # weeks later, the history is gone
    async with running(store, cfg):
        await synced(store, sim, "every SKU listed on the new channel")
        await store.decrement(SKUS[0], 3, ref="after-sync", source="amazon")  # changes still flow
        await wait_for(lambda: lists_current(store, sim), 10, "the change after the sync")
    assert all(len(sim.history(s)) <= 2 for s in SKUS)  # each SKU pushed once by the sync, SKU 0 once more


async def test_an_unfinished_initial_sync_is_finished_by_the_next_worker(store, shopify):
    sim, cfg = shopify
    await seed_then_trim(store)
    # a worker created the group and marked the partition, then died before pushing anything
    assert await groups.ensure_groups(store.redis, store.keys, "shopify") == [0]
    assert sim.quantities == {}
    async with running(store, cfg):
        await synced(store, sim, "every SKU listed by the next worker")


async def test_the_initial_sync_goes_over_a_partition_again_until_every_sku_is_taken(store, shopify):
    sim, cfg = shopify
    await seed_then_trim(store)
    sim.outage(True)
    async with running(store, cfg):
        await wait_for(lambda: sim.calls, 10, "a sync call during the outage")
        assert await store.redis.exists(store.keys.resync(0, "shopify"))  # not done while the channel is down
        sim.outage(False)
        await synced(store, sim, "every SKU listed after the outage")


async def test_the_initial_sync_waits_for_a_sku_another_consumer_is_pushing(store, shopify):
    """A SKU leased by another consumer during the pass is not taken as done: that push may fail."""
    sim, cfg = shopify
    await seed_then_trim(store)
    held = SKUS[3]
    (claim,) = await library.push_claim(store.keys, 0, "shopify", "someone-else", [held], 60_000).run(store.redis)
    assert claim.leased
    async with running(store, cfg):
        await wait_for(lambda: lists_current(store, sim, [s for s in SKUS if s != held]), 20, "the other SKUs")
        assert held not in sim.quantities and await store.redis.exists(store.keys.resync(0, "shopify"))
        await library.push_done(store.keys, 0, "shopify", "someone-else", {}, [], [held]).run(store.redis)  # that push failed
        await synced(store, sim, "the SKU listed once its lease was free")


async def test_resync_puts_back_hand_edited_listings_and_missing_only_pushes_what_is_not_current(store, shopify):
    sim, cfg = shopify
    await seed(store)
    report = await resync(store.redis, store.keys, cfg)
    assert report.ok and report.pushed == len(SKUS) and await lists_current(store, sim)
    sim.seed({SKUS[1]: 500, SKUS[2]: 0})  # someone edited two listings in the marketplace's admin
    missing = await resync(store.redis, store.keys, cfg, force=False)
    assert missing.pushed == 0 and missing.current == len(SKUS)  # the record says the channel is current
    assert sim.quantities[SKUS[1]] == 500
    forced = await resync(store.redis, store.keys, cfg, skus=[SKUS[1], SKUS[2]])
    assert forced.pushed == 2 and await lists_current(store, sim)


def test_the_resync_command(tmp_path, settings, sims):
    sim, url = sims["flipkart"]
    sim.reset()
    cfg = config("flipkart", url)
    path = tmp_path / "stocksync.toml"
    path.write_text(f'redis_url = "{settings.redis_url}"\nprefix = "{settings.prefix}"\n\n' + toml_channel(cfg))

    def run(*args):
        return subprocess.run([sys.executable, "-m", "stocksync", "--config", str(path), "resync", *args],
                              capture_output=True, text=True, cwd=ROOT, env={**os.environ}, timeout=60)

    for i, sku in enumerate(SKUS[:12]):
        assert subprocess.run([sys.executable, "-m", "stocksync", "--config", str(path), "sku", "set", sku,
                               str(5 + i)], capture_output=True, cwd=ROOT, timeout=30).returncode == 0
    out = run("flipkart")
    assert out.returncode == 0, out.stderr
    assert "12 pushed, 0 current already" in out.stdout
    assert sim.quantities == {s: 5 + i for i, s in enumerate(SKUS[:12])}
    assert "0 pushed, 12 current already" in run("flipkart", "--missing").stdout
    unknown = run("flipkart", "--sku", "NOPE")
    assert unknown.returncode == 1 and "unknown SKU 'NOPE'" in unknown.stderr
    bad = run("ebay")
    assert bad.returncode == 2 and "no channel named 'ebay'" in bad.stderr


# ----- found in review (each failed before its fix; the comment says how) -------------------------------


# ----- 1. resync: a push that got no answer releases its lease and owes nothing (G4) ---------------------


# Was (resync's own push, before the push cycle of consumers/cycle.py): a push that got no answer (an
# ambiguous TransientError: a timeout) is only reported as failed; the push releases the SKU's lease at once
# and records no recheck (stocksync_recheck), unlike the worker, which keeps the lease and owes the current
# quantity. A worker then pushes a newer version, the abandoned resync/initial-sync/dlq-replay request lands
# after it, and the channel is left listing the older quantity for good (its pushed record says it is current)
async def test_a_resync_push_without_an_answer_is_followed_by_the_current_quantity(store, sims):
    sim, url = sims["amazon"]
    sim.reset()
    await store.set("L", 10, source="test")
    cfg = config("amazon", url, timeout_s=0.3)
    async with running(store, cfg):
        await wait_for(lambda: sim.quantities.get("L") == 10, 10, "the first push")
        sim.set_faults(latency_ms=1500)
        arrived = sim.arrivals
        report = await resync(store.redis, store.keys, cfg, skus=["L"])  # an operator's resync: no answer
        assert report.failed == 1 and "L" in report.failures, report
        await wait_for(lambda: sim.arrivals > arrived, 5, "the resync's push of 10 to reach the API")
        sim.set_faults(latency_ms=0)
        before = len(sim.history("L"))
        await store.decrement("L", 1, ref="o-1", source="amazon")  # v2: 9, pushed by the worker at once

        def late_10_then_9():
            after = sim.history("L")[before:]
            return 10 in after and 9 in after[after.index(10) + 1:] and after[-1] == 9

        # the abandoned 10 lands about 1.5 s after it arrived: the channel must hear 9 after it
        await wait_for(late_10_then_9, 10, "the late 10, then 9 again")


# ----- 2. Initial sync: a SKU the channel refuses for good keeps the sync (and its mark) alive forever -----


# Was (the initial sync, now consumers/initial_sync.py): any failed SKU, permanent ones included (no such listing on this
# channel, common for a channel that lists only part of the catalogue), makes the whole partition be gone
# over again, forever (1 s doubling to 60 s, a full SCAN each time); the resync mark is never deleted and
# the SKU is neither dead-lettered nor reported anywhere but the log, where the worker's own pushes dead-
# letter a permanent failure
async def test_the_initial_sync_ends_when_a_sku_is_refused_for_good(store, sims):
    sim, url = sims["flipkart"]
    sim.reset()
    skus = [f"F-{i}" for i in range(6)]
    await seed_then_trim(store, skus)
    sim.set_faults(reject_skus={skus[0]})
    cfg = config("flipkart", url)
    async with running(store, cfg):
        await wait_for(lambda: all(s in sim.quantities for s in skus[1:]), 10, "the other SKUs listed")
        await wait_for(lambda: _gone(store, "flipkart"), 8, "the initial sync to finish (mark deleted)")


# ----- 3. Initial sync: a Redis error deleting the mark ends the sync task silently -----------------------


# Was (the initial sync, now consumers/initial_sync.py): `await self.redis.delete(keys.resync(...))` is
# outside the try; a Redis error there (a failover, a dropped connection) kills the sync task, which run()
# never watches (it is not among the tasks it waits on), so nothing logs it at the time, nothing retries it
# and the mark stays until the worker restarts (status shows nothing either)
async def test_the_initial_sync_deletes_its_mark_after_a_redis_error(store, sims):
    sim, url = sims["shopify"]
    sim.reset()
    skus = [f"S-{i}" for i in range(5)]
    await seed_then_trim(store, skus)
    real_delete = store.redis.delete
    failed: list = []

    async def flaky_delete(*names):
        if not failed and any(":resync:" in str(n) for n in names):
            failed.append(names)
            raise redis.exceptions.ConnectionError("injected: connection lost")
        return await real_delete(*names)

    store.redis.delete = flaky_delete
    try:
        async with running(store, config("shopify", url)) as worker:
            await wait_for(lambda: failed, 10, "the sync to try deleting its mark")
            await wait_for(lambda: _gone(store, "shopify"), 8, "the mark deleted after the Redis error")
            assert not worker.task.done()
    finally:
        del store.redis.delete


# ----- 4. SKU map refresh: a Redis error recording the recheck loses the push under the new name ----------


# Was (the SKU map refresh, now consumers/housekeeping.py): skus.refresh() commits the new map before the loop that records
# each changed SKU's recheck (ledger.recheck, then coalescer.recheck) and adds the old names to _orphans; a
# Redis error in that loop is caught by housekeeping, and the next refresh sees no change, so the SKUs after
# the failure are never pushed under their new name (nor the old name retired) until a sale changes them
async def test_a_remapped_sku_is_pushed_under_its_new_name_after_a_redis_error(store, sims):
    sim, url = sims["shopify"]
    sim.reset()
    await store.set("A", 5, source="test")
    real = store.redis.execute_command
    failed: list = []

    async def flaky(*args, **kwargs):
        if not failed and args[:2] == ("FCALL", "stocksync_recheck") and "due" in args:
            failed.append(args)
            raise redis.exceptions.ConnectionError("injected: connection lost")
        return await real(*args, **kwargs)

    async with running(store, config("shopify", url), worker_options(sku_map_refresh_ms=100)):
        await wait_for(lambda: sim.quantities.get("A") == 5, 10, "A listed under its own name")
        store.redis.execute_command = flaky
        try:
            await store.redis.hset(store.keys.sku_map("shopify"), "A-NEW", "A")  # PUT .../sku-map/A-NEW
            await wait_for(lambda: failed, 10, "the refresh to record the recheck")
            await wait_for(lambda: sim.quantities.get("A-NEW") == 5, 8, "A pushed under its new name A-NEW")
        finally:
            del store.redis.execute_command


# ----- 5. ensure_groups: a trim between the check and XGROUP CREATE leaves a group without its mark ------


# Was: consumers/groups.py ensure_groups: _needs_sync reads XINFO STREAM, then XGROUP CREATE runs in a
# separate call; a trimmer (any worker's stocksync_trim, which only looks at the groups that exist) that
# trims in between leaves the new group starting on a stream that lost changes with no resync mark, so the
# SKUs of the trimmed entries are never pushed to the new channel (the check and the create are not one
# step, and nothing looks again after the create)
async def test_a_group_created_while_the_stream_is_trimmed_is_marked(store):
    r, keys = store.redis, store.keys
    for sku in ("T-1", "T-2", "T-3"):
        await store.set(sku, 4, source="test")
    real_create = r.xgroup_create

    async def create_after_a_trim(name, groupname, *args, **kwargs):
        await r.xtrim(name, maxlen=0, approximate=False)  # the trimmer of another channel's worker, meanwhile
        return await real_create(name, groupname, *args, **kwargs)

    r.xgroup_create = create_after_a_trim
    try:
        unsynced = await groups.ensure_groups(r, keys, "late")
    finally:
        del r.xgroup_create
    info = await r.xinfo_stream(keys.events(0))
    assert info["length"] < info["entries-added"]  # the group starts on a stream that lost changes
    assert unsynced == [0] and await r.exists(keys.resync(0, "late"))


# ----- 6. stocksync resync: a bad --sku reaches Lua and ends in a traceback (G6) ---------------------------


# Was: consumers/cli.py cmd_resync: --sku is not checked before it reaches stocksync_push_claim; a SKU
# longer than the library's 255 bytes gets the Lua error as an uncaught redis ResponseError (a Python
# traceback, exit 1 as if Redis were unreachable) instead of a clear message and exit 2 (bad input), as
# README's exit codes and G6 promise
def test_the_resync_command_refuses_a_bad_sku_clearly(tmp_path, settings, sims):
    sim, url = sims["flipkart"]
    sim.reset()
    path = tmp_path / "stocksync.toml"
    path.write_text(f'redis_url = "{settings.redis_url}"\nprefix = "{settings.prefix}"\n\n'
                    + toml_channel(config("flipkart", url)))
    out = subprocess.run([sys.executable, "-m", "stocksync", "--config", str(path), "resync", "flipkart",
                          "--sku", "X" * 300], capture_output=True, text=True, cwd=ROOT, env={**os.environ},
                         timeout=60)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 2 and "sku" in out.stderr.lower(), (out.returncode, out.stderr)


async def _gone(store, channel) -> bool:
    return not await store.redis.exists(store.keys.resync(0, channel))


def test_a_resync_report_counts_everything_and_names_a_sample():
    """A pass over a large catalogue keeps counts, not every SKU's name (the worker holds it in memory)."""
    report = ResyncReport()
    for i in range(3):
        report.add(PushReport(pushed={f"P{i}-{n}": 1 for n in range(1000)},
                              failed={f"F{i}-{n}": "HTTP 503" for n in range(60)}, gone=[f"G{i}-{n}" for n in range(60)]))
    assert (report.pushed, report.failed, report.gone) == (3000, 180, 180)
    assert len(report.failures) == SAMPLE and len(report.gone_skus) == SAMPLE and not report.ok
