"""The push cycle: one batch of SKUs pushed to a channel, the same way for every pusher.

The worker's pushes of what changed, `stocksync resync`, a worker's initial sync and `stocksync dlq
replay` all push through PushCycle.run:

1. claim (stocksync_push_claim, through a ledger.LedgerBatcher): lease each SKU under the cycle's owner and
   read its current quantity and the version the channel has, in one call per partition. A SKU whose
   lease another owner holds is BUSY (pushes of one SKU never overlap, across processes); one that no
   longer exists is GONE; one the channel has at the version the push must cover (the newest entry held,
   or else the current version) is CURRENT, and needs no call, unless the push is forced (a recheck,
   `resync` without --missing);
2. the adapter call with the others: the channel's view of the current quantity (its rules) under its
   channel SKU (skumap.ChannelSkus), at the push's rank (consumers/ranks.py), ending before the lease
   does. Per SKU the answer is ACCEPTED, REFUSED (for good), FAILED (for now), THROTTLED (the call got a
   429: the channel's pace, not this SKU's failure) or UNANSWERED (sent, no answer: the channel may still
   apply it, after a newer push);
3. `decide(round)`, the pusher's own say on what a failure means (the worker backs off or dead-letters;
   a command reports it); it may mark a push as repaying the recheck owed for its SKU;
4. rechecks: a push of the current quantity is owed for each UNANSWERED SKU recheck_s from now, even if
   the channel has that version then (stocksync_recheck): the abandoned request may land after a newer
   push. The debt is kept in Redis, so a worker pays it if this pusher goes away (housekeeping pushes
   what is owed reclaim_idle_ms past its time). Recorded before any entry of those SKUs can be
   acknowledged; a repaid recheck is settled with the time it was owed (a later debt stays);
5. done (stocksync_push_done): record the versions the channel accepted (never lowering them), acknowledge
   the entries the channel now covers, release the leases. The worker keeps the lease of an UNANSWERED
   push (it covers the abandoned request until it expires; the worker's own retries renew it); a command,
   which ends, releases it and leaves the recheck to the workers.

Lease owners: each pusher leases under an owner of its own (the worker under its consumer name, a command
or an initial sync under owner_name()): the library renews a lease for its own owner, so two pushers
sharing an owner could push one SKU at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from redis.exceptions import RedisError

from stocksync import library
from stocksync.channels import ChannelConfig
from stocksync.connection import AnyRedis
from stocksync.inventory_rules import ChannelRules
from stocksync.keys import Keys
from stocksync.library import Claim

from .adapters import Adapter, PushError, Result, TransientError, Update, make_adapter
from .ledger import LedgerBatcher
from .ranks import NORMAL
from .skumap import ChannelSkus

log = logging.getLogger(__name__)

LEASE_MARGIN_S = 0.25  # a call must end this long before the lease does

# What became of one SKU of a push (Pushed.status)
BUSY = "busy"  # another owner holds its lease: it is being pushed right now
GONE = "gone"  # the SKU no longer exists: nothing to list
CURRENT = "current"  # the channel has the version the push must cover: no call
CALLING = "calling"  # (in the call; one of the five below once it answered)
ACCEPTED = "accepted"
REFUSED = "refused"  # for good (an unknown listing, a malformed value)
FAILED = "failed"  # for now (5xx, a timeout before sending, no answer for this SKU)
THROTTLED = "throttled"  # the call got a 429
UNANSWERED = "unanswered"  # sent without an answer: it may still be applied


def recheck_delay_s(recheck_ms: int, timeout_s: float) -> float:
    """How long after a push that got no answer the current quantity is pushed again: worker.recheck_ms,
    or by default 4 x the adapter's timeout (by then the abandoned request has landed, or never will)."""
    return recheck_ms / 1000 if recheck_ms else 4 * timeout_s


def owner_name(kind: str) -> str:
    """A lease owner of its own for one run (<kind>-host-pid-uuid): two runs at once never share a lease."""
    return f"{kind}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


class Held(Protocol):
    """An entry held for a SKU (coalescer.Entry): acknowledged once the channel has its version."""

    id: str
    version: int


class Job(Protocol):
    """One SKU to push (coalescer.SkuWork for the worker, Want for the others)."""

    sku: str
    partition: int
    forced: bool  # push even if the channel has the version to cover (a recheck)
    owed_ms: int  # when the recheck it may repay was owed (0: none)
    entries: Mapping[str, Held]  # entries to acknowledge once covered (none outside the stream)

    @property
    def version(self) -> int:  # the version the push must cover (0: the current one)
        ...


@dataclass(slots=True)
class Want:
    """A push of a SKU's current quantity outside the stream: nothing held, nothing owed."""

    sku: str
    partition: int
    forced: bool = False
    owed_ms: int = 0
    version: int = 0
    entries: Mapping[str, Held] = field(default_factory=dict)


class Rechecks(Protocol):
    """Where a worker holds the rechecks it owes (coalescer.Coalescer), beside Redis."""

    def recheck(self, sku: str, partition: int, at: float, owed_ms: int) -> None: ...

    def repaid(self, job) -> None: ...


@dataclass(slots=True)
class Pushed:
    """What became of one SKU of a push."""

    job: Job
    status: str
    version: int = 0  # ACCEPTED: the version pushed; CURRENT: the version the channel has
    update: Update | None = None  # what was sent (CALLING and after)
    result: Result | None = None  # the channel's answer (after the call)
    leased: bool = True
    repays: bool = False  # set by `decide`: this push settles the recheck owed for the SKU
    acks: Sequence[str] = ()  # entries acknowledged by done

    @property
    def error(self) -> str:
        return self.result.error if self.result is not None else ""


@dataclass(slots=True)
class Round:
    """One push: each SKU's fate (those without a call first), and the call's error if it failed whole."""

    pushed: list[Pushed]
    updates: list[Update]
    claimed_at: float  # when the claims were answered (time.monotonic())
    claimed_ms: int  # the same, wall-clock ms
    error: PushError | None = None

    @property
    def called(self) -> bool:
        return bool(self.updates)


Decide = Callable[[Round], Awaitable[None]]


class PushCycle:
    """claim -> adapter call -> decide -> rechecks -> done, for one channel under one lease owner."""

    def __init__(self, redis: AnyRedis, keys: Keys, config: ChannelConfig, adapter: Adapter, names: ChannelSkus,
                 ledger: LedgerBatcher, *, recheck_s: float, rechecks: Rechecks | None = None,
                 hold_unanswered: bool = False, contain_adapter_errors: bool = False,
                 listed: Callable[[str, int], int] | None = None) -> None:
        self.redis, self.keys, self.config, self.adapter, self.names = redis, keys, config, adapter, names
        self.channel, self.ledger, self.recheck_s, self.rechecks = config.name, ledger, recheck_s, rechecks
        self.hold_unanswered = hold_unanswered  # the worker: keep the lease of an unanswered push
        self.contain_adapter_errors = contain_adapter_errors  # the worker: an adapter bug fails the call, for now
        # what the channel lists of a SKU: its rules, and the worker's auto buffer (consumers/risk.py)
        self.listed = listed or (lambda sku, available: config.rules.listed(available))

    async def run(self, jobs: Sequence[Job], *, rank: int = NORMAL, decide: Decide | None = None) -> Round:
        """Push the jobs (any partitions, at most the adapter's batch size). Leases are released if the
        call or `decide` raises (what was accepted is recorded, nothing is acknowledged)."""
        deadline = time.monotonic() + self.ledger.lease_ms / 1000 - LEASE_MARGIN_S
        rnd = await self._claim(jobs)
        try:
            if rnd.updates:
                await self._call(rnd, deadline, rank)
            if decide is not None:
                await decide(rnd)
        except Exception:
            await self._release(rnd)
            raise
        owed, repaid = _debts(rnd)
        if owed or repaid:
            await self._rechecks(owed, repaid)
        await self._done(rnd)
        return rnd

    async def owe(self, partition: int, skus: list[str], delay_s: float) -> None:
        """A push of each SKU's current quantity is owed delay_s from now, whatever version the channel has:
        held by the worker (rechecks), and in Redis so that another worker pays it if this one dies."""
        due_ms = int(time.time() * 1000 + delay_s * 1000)
        if self.rechecks is not None:
            at = time.monotonic() + delay_s
            for sku in skus:
                self.rechecks.recheck(sku, partition, at, due_ms)
        await library.recheck(self.keys, partition, self.channel, "due", due_ms, skus).run(self.redis)

    # ----- the steps ---------------------------------------------------------------------------------

    async def _claim(self, jobs: Sequence[Job]) -> Round:
        by_sku = {j.sku: j for j in jobs}
        parts: dict[int, list[str]] = defaultdict(list)
        for j in jobs:
            parts[j.partition].append(j.sku)
        if len(parts) == 1:
            ((p, skus),) = parts.items()
            claims = [await self.ledger.claim(p, skus)]
        else:
            claims = await asyncio.gather(*(self.ledger.claim(p, skus) for p, skus in parts.items()))
        skipped: list[Pushed] = []
        calling: list[Pushed] = []
        updates: list[Update] = []
        for c in (c for part in claims for c in part):
            pushed = self._classify(by_sku[c.sku], c)
            if pushed.update is None:
                skipped.append(pushed)
            else:
                calling.append(pushed)
                updates.append(pushed.update)
        return Round(skipped + calling, updates, time.monotonic(), int(time.time() * 1000))

    def _classify(self, job: Job, c: Claim) -> Pushed:
        if not c.leased:
            return Pushed(job, BUSY, leased=False)
        if c.version is None:
            return Pushed(job, GONE)
        if c.pushed >= (job.version or c.version) and not job.forced:
            return Pushed(job, CURRENT, c.pushed)
        return Pushed(job, CALLING, update=Update(c.sku, self.names.channel_sku(c.sku), self.listed(c.sku, c.available),
                                                  c.version))

    async def _call(self, rnd: Round, deadline: float, rank: int) -> None:
        updates = rnd.updates
        try:
            results = {r.sku: r for r in await self.adapter.push(updates, deadline, rank=rank)}
        except PushError as e:
            rnd.error = e
        except Exception as e:
            if not self.contain_adapter_errors:
                raise
            log.exception("%s: adapter error", self.channel)  # a bug or an unexpected reply: for now
            rnd.error = TransientError(f"{type(e).__name__}: {e}")
        error = rnd.error
        if error is not None:
            results = {u.sku: Result.failed(u.sku, str(error), permanent=error.permanent,
                                            retry_after=error.retry_after, ambiguous=error.ambiguous)
                       for u in updates}
        throttled = isinstance(error, TransientError) and error.throttled
        for p in rnd.pushed:
            if p.update is not None:
                r = results.get(p.job.sku) or Result.failed(p.job.sku, "the channel did not answer for this SKU",
                                                            permanent=False)
                p.result = r
                p.status = _answer(r, throttled)
                if r.ok:
                    p.version = p.update.version

    async def _rechecks(self, owed: dict[int, list[str]], repaid: list[Pushed]) -> None:
        """Owe a recheck for each unanswered SKU, then settle those this push repaid (in that order: a
        recheck given up on after an unanswered push settles the new debt too)."""
        for partition, skus in owed.items():
            await self.owe(partition, skus, self.recheck_s)
        if repaid:
            await self._repay(repaid)

    async def _repay(self, repaid: list[Pushed]) -> None:
        now_ms = int(time.time() * 1000)
        done: dict[tuple[int, int], list[str]] = defaultdict(list)
        for p in repaid:
            done[(p.job.partition, p.job.owed_ms or now_ms)].append(p.job.sku)
            if self.rechecks is not None:
                self.rechecks.repaid(p.job)
        for (partition, ms), skus in done.items():
            await library.recheck(self.keys, partition, self.channel, "done", ms, skus).run(self.redis)

    async def _done(self, rnd: Round) -> None:
        accepted: dict[int, dict[str, int]] = defaultdict(dict)
        acks: dict[int, list[str]] = defaultdict(list)
        release: dict[int, list[str]] = defaultdict(list)
        for p in rnd.pushed:
            part, status = p.job.partition, p.status
            if p.leased and not (status == UNANSWERED and self.hold_unanswered):
                release[part].append(p.job.sku)
            if status == ACCEPTED or status == CURRENT:
                if status == ACCEPTED:
                    accepted[part][p.job.sku] = p.version
                p.acks = [e.id for e in p.job.entries.values() if e.version <= p.version]
            elif status == GONE:
                p.acks = list(p.job.entries)
            acks[part] += p.acks
        touched = set(release) | set(acks)
        if len(touched) == 1:
            (part,) = touched
            await self.ledger.done(part, accepted[part], acks[part], release[part])
        elif touched:
            await asyncio.gather(*(self.ledger.done(part, accepted[part], acks[part], release[part])
                                   for part in touched))

    async def _release(self, rnd: Round) -> None:
        """After a failure mid-push: record what was accepted and release the leases (best effort)."""
        accepted: dict[int, dict[str, int]] = defaultdict(dict)
        release: dict[int, list[str]] = defaultdict(list)
        for p in rnd.pushed:
            if p.status == ACCEPTED:
                accepted[p.job.partition][p.job.sku] = p.version
            if p.leased and not (p.status == UNANSWERED and self.hold_unanswered):
                release[p.job.partition].append(p.job.sku)
        for part, skus in release.items():
            with contextlib.suppress(RedisError):
                await self.ledger.done(part, accepted[part], [], skus)


def _debts(rnd: Round) -> tuple[dict[int, list[str]], list[Pushed]]:
    """The SKUs owed a recheck (unanswered), per partition, and the pushes that repay one."""
    owed: dict[int, list[str]] = {}
    repaid: list[Pushed] = []
    for p in rnd.pushed:
        if p.status == UNANSWERED:
            owed.setdefault(p.job.partition, []).append(p.job.sku)
        if p.repays:
            repaid.append(p)
    return owed, repaid


def _answer(r: Result, throttled: bool) -> str:
    if r.ok:
        return ACCEPTED
    if r.ambiguous:
        return UNANSWERED
    if throttled:
        return THROTTLED
    return REFUSED if r.permanent else FAILED


@contextlib.asynccontextmanager
async def standalone(redis: AnyRedis, keys: Keys, config: ChannelConfig, *, owner: str, adapter: Adapter | None = None,
                     lease_ms: int = 15000, recheck_ms: int = 0) -> AsyncIterator[PushCycle]:
    """A push cycle for a command (resync, dead-letter replay): leases under `owner`, the channel's SKU
    names and per-SKU rules as stored now, the channel's adapter unless one is given (then closed at the
    end)."""
    own = adapter is None
    adapter = adapter or make_adapter(config)
    try:
        names = ChannelSkus(redis, keys, config)  # channel SKUs as the worker pushes them
        await names.refresh()
        rules = ChannelRules(redis, keys, config)
        await rules.refresh()
        ledger = LedgerBatcher(redis, keys, config.name, owner, lease_ms)
        yield PushCycle(redis, keys, config, adapter, names, ledger,
                        recheck_s=recheck_delay_s(recheck_ms, adapter.timeout_s),
                        listed=lambda sku, available: rules.rules_for(sku).listed(available))
    finally:
        if own:
            await adapter.close()
