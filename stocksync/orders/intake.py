"""Applying a delivery of orders (a verified webhook, or what the order poller read): map SKUs, take or restock each line exactly once, report the rest.

The stock changes only through the library's functions; the reference of each line is
`<channel>:<marketplace order id>:<line id>` (restocks add a suffix), so the library's exactly-once
record makes every redelivery, under any webhook id, change nothing. What this module keeps besides:

    <prefix>:wh:seen:<channel>:<delivery id>   a delivery already processed (a shortcut, not the guarantee)
    <prefix>:wh:line:<channel>:<line key>      "state|qty|sku" of a line (stocksync.orders.records)
    <prefix>:wh:line:<channel>:<line key>:restocks    hash restock id -> p<units> reserved / d<units>
                                               applied, kept by the library's stocksync_restock_claim, so
                                               that the restocks of a line never exceed what was taken
                                               (before 0.3 a counter, <line>:restocked, still counted, no
                                               longer written)

A delivery is applied in three phases, a round trip each for an order:
  read    whether the delivery was seen, the SKU map of its channel SKUs, every line's record;
  apply   cancellation markers first (a cancellation), then the takes, the restocks and the shipments
          through the library (stocksync.orders.shipping);
  record  the line records, the rejections, the delivery id, in one last round trip.

Since library 0.6 a take moves its units into committed (its record says so: stocksync.orders.records):
a shipment takes them out of committed and on_hand, a cancellation (or a refund of units not shipped)
puts them back with stocksync_cancel, a return of shipped units with stocksync_adjust; the line's ledger
(stocksync_restock_claim with kind cancel | return) decides which units are which. Lines taken before
0.6 are restocked as before and their shipments change nothing.

A line record in state t or r is settled: a later delivery of that line (another status change of the
order, weeks later) is answered from it and changes nothing, though the library's reference (48 h) has
expired. A cancellation marks lines not taken yet (c) before it looks for their take, and a take writes
its record with SET ... GET: if it replaced a marker, the take restocks under the cancellation's own
reference, so a cancellation racing its order restocks the line once, whichever finishes first.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from stocksync import library
from stocksync.channels import ChannelConfig
from stocksync.errors import InvalidArgument
from stocksync.library import Outcome, RestockStatus, Status
from stocksync.limits import MAX_REF_BYTES, MAX_RESTOCK_ID_BYTES, MAX_SKU_BYTES, fit
from stocksync.metrics import Metrics
from stocksync.settings import Settings, SettingsError
from stocksync.store import StockStore

from .batcher import Batcher
from .records import LineRecord, LineResult, LineState, RestockItem
from .rejections import Rejections
from .shipping import Shipping
from .webhooks import Delivery, Line, Restock, Ship

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IntakeSettings:
    seen_ttl_s: int = 7 * 86400
    line_ttl_s: int = 120 * 86400

    @classmethod
    def from_settings(cls, settings: Settings) -> IntakeSettings:
        """[api] webhook_seen_ttl_s and line_ttl_days: the webhook endpoint and the order pollers apply
        orders alike, so a line a poller took is remembered as long as one a webhook took."""
        table = settings.section("api")
        values = {"webhook_seen_ttl_s": table.get("webhook_seen_ttl_s", cls.seen_ttl_s),
                  "line_ttl_days": table.get("line_ttl_days", cls.line_ttl_s // 86400)}
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise SettingsError(f"api.{name} must be a number > 0, got {value!r}")
        return cls(int(values["webhook_seen_ttl_s"]), int(values["line_ttl_days"]) * 86400)


@dataclass
class Read:
    """What the read phase learned of a delivery."""

    duplicate: bool
    mapped: Mapping[str, str | None]  # channel SKU -> canonical SKU edited through the admin API
    records: dict[str, LineRecord | None]  # line key -> its record
    restocked_before: dict[str, int]  # line key -> units restocked by versions before 0.3
    writes: list[tuple] = field(default_factory=list)  # commands of the record phase
    checks: list[tuple[int, LineResult, Line, str]] = field(default_factory=list)  # takes recorded over a marker?


def order_line_key(config: ChannelConfig, order_id: str, line_id: str) -> str:
    """A line's key as the webhooks build it (for rejections listed before they kept it)."""
    return line_id if config.kind == "flipkart" else f"{order_id}:{line_id}"


def _has_sku(sku: str | None) -> bool:
    return sku is not None and len(sku.encode()) <= MAX_SKU_BYTES


class Intake:
    def __init__(self, store: StockStore, metrics: Metrics, settings: IntakeSettings | None = None) -> None:
        self.store, self.redis, self.keys = store, store.redis, store.keys
        self.metrics = metrics
        self.settings = settings or IntakeSettings()
        self.batcher = Batcher(store.redis, durability=store.durability)
        self.rejections = Rejections(store.redis, store.keys, metrics)
        self.shipping = Shipping(store.keys, metrics, self._call, self._outcomes, self.settings.line_ttl_s,
                                 self.restock_ref, self._restock_id)

    # Keys and references ----------------------------------------------------------------------------------

    def seen_key(self, channel: str, delivery_id: str) -> str:
        return self.keys.webhook_seen(channel) + ":" + fit(delivery_id, 200, "h")

    def line_key(self, channel: str, line: Line) -> str:
        return self.keys.webhook_line(channel) + ":" + line.key

    @staticmethod
    def take_ref(channel: str, line: Line) -> str:
        return fit(f"{channel}:{line.key}", MAX_REF_BYTES, channel)

    @staticmethod
    def restock_ref(channel: str, restock: Restock | Ship) -> str:
        return fit(f"{channel}:{restock.line.key}:{restock.suffix}", MAX_REF_BYTES, channel)

    # Applying a delivery ----------------------------------------------------------------------------------

    async def apply(self, config: ChannelConfig, delivery: Delivery) -> dict:
        """Apply a delivery of the channel's orders (a webhook's, or a page the order poller read).

        Read, apply, record: three round trips for an order. A cancellation adds one (its markers go
        first, see _cancel), a restock two or three (reserve, adjust; its record rides with the last)."""
        channel = config.name
        if delivery.ignored:
            self.metrics.child(self.metrics.deliveries, channel, "ignored").inc()
            return {"status": "ignored", "event": delivery.kind, "reason": delivery.ignored}
        seen = self.seen_key(channel, delivery.delivery_id) if delivery.delivery_id else None
        read = await self._read(channel, delivery, seen)
        if read.duplicate:
            self.metrics.child(self.metrics.deliveries, channel, "duplicate").inc()
            return {"status": "duplicate", "event": delivery.kind}

        def canonical(line: Line) -> str | None:
            if not line.channel_sku:
                return None
            return read.mapped.get(line.channel_sku) or config.sku_map.get(line.channel_sku) or line.channel_sku

        if delivery.cancels:
            await self._cancel(channel, delivery.cancels, read, canonical)
        results = await self._take(channel, delivery.takes, read, canonical)
        results += await self._restock(channel, delivery.restocks, read, canonical)
        results += await self._ship(channel, delivery.ships, read, canonical)
        await self._record(channel, results, read, seen)
        self.metrics.child(self.metrics.deliveries, channel, "applied").inc()
        return {"status": "applied", "event": delivery.kind, "lines": [r.to_json() for r in results]}

    async def apply_rejected(self, config: ChannelConfig, order_id: str) -> list[dict] | None:
        """Take again the listed lines of an order whose action is fix_map (the SKU map was fixed, or the
        SKU created), under their first references; None when the order is not listed. A line taken now
        leaves the list; the others stay with their new outcome."""
        listed = await self.rejections.lines(config.name, order_id)
        if not listed:
            return None
        takes = [Line(doc.get("line") or order_line_key(config, order_id, doc["line_id"]), order_id, doc["line_id"],
                      doc.get("channel_sku"), doc["qty"]) for doc in listed if doc["action"] == "fix_map"]
        reply = await self.apply(config, Delivery(None, "rejection apply", takes=takes))
        applied = [r for r in reply["lines"] if r["op"] == "take" and r["status"] == Status.OK]
        if applied:
            await self._call([self.rejections.forget(config.name, order_id, r["line_id"]) for r in applied])
        return reply["lines"]

    async def _call(self, commands: list[tuple]) -> list:
        """The replies of `commands`, sent with the other requests' (any error raised)."""
        replies = await self.batcher.call(commands)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def _read(self, channel: str, delivery: Delivery, seen: str | None) -> Read:
        """Every line's record is read in the round trip that checks the delivery id: a line taken or
        refused before is settled whatever the library still remembers (see _take)."""
        lines: dict[str, Line] = {}
        for line in [*delivery.takes, *(r.line for r in delivery.restocks), *delivery.cancels,
                     *(r.line for r in delivery.ships)]:
            lines.setdefault(line.key, line)
        restocked = list(dict.fromkeys(r.line.key for r in delivery.restocks))
        skus = sorted({line.channel_sku for line in lines.values() if line.channel_sku})
        reads: list[tuple] = [("EXISTS", seen)] if seen else []
        if skus:
            reads.append(("HMGET", self.keys.sku_map(channel), *skus))
        reads += [("GET", self.line_key(channel, line)) for line in lines.values()]
        reads += [("GET", self.keys.webhook_line(channel) + ":" + key + ":restocked") for key in restocked]
        replies = await self._call(reads)
        duplicate = bool(seen and replies.pop(0))
        mapped = dict(zip(skus, replies.pop(0), strict=True)) if skus else {}
        records = {key: LineRecord.parse(v) for key, v in zip(lines, replies[: len(lines)], strict=True)}
        before = {key: int(v or 0) for key, v in zip(restocked, replies[len(lines):], strict=True)}
        return Read(duplicate, mapped, records, before)

    async def _record(self, channel: str, results: list[LineResult], read: Read, seen: str | None) -> None:
        """The last round trip: line records, rejections, the delivery id. A take whose record replaced a
        cancellation marker is put back (_put_back); one that replaced a marker of restocks that came
        before it (or an unknown SKU's record: restocks may wait for it too) applies them (_apply_waiting)."""
        writes = read.writes + self.rejections.writes(channel, results)
        if seen:
            writes.append(("SET", seen, "1", "EX", self.settings.seen_ttl_s))
        replies = await self._call(writes)
        late, waited = [], []
        for index, result, line, sku in read.checks:
            before = LineRecord.parse(replies[index])
            if before and before.state == LineState.CANCELLED:
                late.append((result, line, sku))
            elif before and before.state in (LineState.WAITING, LineState.UNKNOWN):
                waited.append((result, line, sku))
            elif replies[index] == writes[index][2]:
                # Our own value: the SET was sent again after a lost reply (batcher) and what it replaced is
                # not known. Restocks that waited for this take are applied by their ids, so looking for them
                # is harmless and finds them (a cancellation marker lost this way is not: Intake._cancel).
                waited.append((result, line, sku))
        if late:
            await self._put_back(channel, late)
        if waited:
            results += await self._apply_waiting(channel, waited)

    async def _cancel(self, channel: str, cancels: list[Line], read: Read, canonical) -> None:
        """Mark the lines of a cancelled order not taken yet (state c), so that a late take takes nothing.

        The markers are written before the cancellation looks for a take (the library's record of the
        take's reference, in _restock): a take that decremented meanwhile but had not written its line
        record yet finds the marker when it does (SET ... GET) and restocks under the cancellation's own
        reference (_put_back), so whichever of the two runs second is a no-op and the line is restocked
        once. What the marker replaced becomes the line's record for the restocks of this delivery.
        """
        commands, marked, ttl = [], [], self.settings.line_ttl_s
        for line in cancels:
            sku, record = canonical(line), read.records.get(line.key)
            if not _has_sku(sku) or (record and record.state != LineState.UNKNOWN):
                continue
            value = LineRecord(LineState.CANCELLED, line.qty, sku).value()
            # (over u: nothing was taken, the SKU was unknown; a later take must not take it either)
            nx = () if record else ("NX",)
            commands.append(("SET", self.line_key(channel, line), value, *nx, "GET", "EX", ttl))
            marked.append(line)
        for line, reply in zip(marked, await self._call(commands), strict=True):
            # marked now (the marker is the record), or what was there: taken in between, restocks waiting
            before = LineRecord.parse(reply)
            marked_now = before is None or before.state == LineState.UNKNOWN
            read.records[line.key] = LineRecord(LineState.CANCELLED, line.qty, canonical(line)) if marked_now else before

    async def _take(self, channel: str, takes: list[Line], read: Read, canonical) -> list[LineResult]:
        results, calls = [], []
        for line in takes:
            sku, record = canonical(line), read.records.get(line.key)
            result = LineResult.of(line, "take", sku=sku, qty=line.qty)
            results.append(result)
            if record and record.state == LineState.CANCELLED:
                result.status = "cancelled"  # the order was cancelled before we saw it taken
            elif record and record.state.settled:
                # Settled: taken (or refused) before. The record outlives the library's reference (48 h),
                # so a later notification of the same line (Amazon's Shipped, days later) takes nothing.
                status = Status.OK if record.state == LineState.TAKEN else Status.INSUFFICIENT
                result.sku, result.qty, result.status = record.sku, record.qty, status
                result.available = result.version = None
                result.replayed = True
                self.metrics.outcome("decrement", status, True)
            elif not _has_sku(sku):
                result.status = "no_sku" if sku is None else "invalid_sku"
                # (a record as for an unknown SKU: a fixed map can take it later, see rejections)
                read.writes.append(("SET", self.line_key(channel, line), LineRecord(LineState.UNKNOWN, line.qty, "").value(),
                                    "NX", "EX", self.settings.line_ttl_s))
            else:
                calls.append((result, line, sku))
        if calls:
            outcomes = await self._outcomes([library.decrement(self.keys, sku, line.qty, channel,
                                                               self.take_ref(channel, line)) for _, line, sku in calls])
            for (result, line, sku), outcome in zip(calls, outcomes, strict=True):
                self._took(channel, result, line, sku, outcome, read)
        return results

    def _took(self, channel: str, result: LineResult, line: Line, sku: str, outcome: Outcome | InvalidArgument,
              read: Read) -> None:
        """Note a take's outcome and queue its line record."""
        if isinstance(outcome, Exception):
            result.status, result.reason = "invalid", str(outcome)
            return
        self.metrics.outcome("decrement", outcome.status, outcome.replayed)
        result.merge(outcome)
        state = {Status.OK: LineState.TAKEN, Status.INSUFFICIENT: LineState.REFUSED}.get(outcome.status,
                                                                                        LineState.UNKNOWN)
        key, value = self.line_key(channel, line), LineRecord(state, line.qty, sku, state == LineState.TAKEN).value()
        ttl = self.settings.line_ttl_s
        if outcome.replayed or state == LineState.UNKNOWN:
            # Never over the record of the first outcome (its quantity is what was taken) nor over a
            # cancellation marker (an unknown SKU took nothing).
            read.writes.append(("SET", key, value, "NX", "GET", "EX", ttl))
        else:
            read.writes.append(("SET", key, value, "GET", "EX", ttl))  # the first outcome: over u, and c (_record)
        if state == LineState.TAKEN:
            read.checks.append((len(read.writes) - 1, result, line, sku))
            before = read.records.get(line.key)
            if before is None:  # (for this delivery's shipments: an Amazon Shipped takes and ships)
                read.records[line.key] = LineRecord(LineState.TAKEN, line.qty, sku, True)
            if before and before.state == LineState.UNKNOWN:  # listed as a rejection until now
                read.writes.append(self.rejections.forget(channel, line.order_id, line.line_id))

    async def _outcomes(self, calls: list[library.Call[Outcome]]) -> list[Outcome | InvalidArgument]:
        """The replies of stocksync_decrement/adjust calls as Outcomes (a stocksync: error as InvalidArgument)."""
        replies = await self.batcher.call([call.command for call in calls])
        outcomes = [call.result(reply) for call, reply in zip(calls, replies, strict=True)]
        for outcome in outcomes:
            if isinstance(outcome, Exception) and not isinstance(outcome, InvalidArgument):
                raise outcome
        return outcomes

    async def _put_back(self, channel: str, late: list[tuple[LineResult, Line, str]]) -> None:
        """Takes that found a cancellation marker: restock them under the cancellation's own reference."""
        items = [RestockItem(LineResult.of(line, "restock"), Restock(line, "cancel"), sku, line.qty)
                 for _, line, sku in late]
        writes: list[tuple] = []
        await self._reserve_and_adjust(channel, items, writes)
        await self._call(writes)
        for (result, _, _), item in zip(late, items, strict=True):
            restock = item.result
            log.info("line %s of %s was cancelled while it was taken: restock %s", result.line, channel,
                     restock.known("status"))
            result.status = "cancelled"
            result.restocked = restock.qty if restock.known("status") == Status.OK else 0
            if restock.known("available") is not None:
                result.available, result.version = restock.available, restock.version

    async def _restock(self, channel: str, restocks: list[Restock], read: Read, canonical) -> list[LineResult]:
        """Restock what was taken; a restock of a line not taken yet waits for its take (_wait)."""
        results, items, pending = [], [], []
        for restock in restocks:
            line, record = restock.line, read.records.get(restock.line.key)
            result = LineResult.of(line, "restock")
            results.append(result)
            before = read.restocked_before.get(line.key, 0)
            if record and record.state == LineState.TAKEN:
                items.append(RestockItem(result, restock, record.sku, record.qty, before, record.committed))
                continue
            sku = (record.sku if record and record.state == LineState.UNKNOWN else None) or canonical(line)
            result.sku, result.qty, result.status = sku, line.qty, "not_taken"
            # refused or cancelled before it was taken: nothing was taken, nothing will be
            if not (record and record.state in (LineState.REFUSED, LineState.CANCELLED)):
                pending.append(RestockItem(result, restock, sku or "", 0, before))
        items += await self._wait(channel, pending)
        await self._reserve_and_adjust(channel, items, read.writes)
        return results

    async def _wait(self, channel: str, pending: list[RestockItem]) -> list[RestockItem]:
        """Keep restocks of lines not taken yet for their take: it applies them when it comes (its record
        replaces the marker written here, see _record). Answers those whose take was recorded meanwhile."""
        if not pending:
            return []
        ttl, commands = self.settings.line_ttl_s, []
        for item in pending:
            line = item.restock.line
            waiting = self.keys.webhook_line_waiting(channel, line.key)
            marker = LineRecord(LineState.WAITING, 0, item.sku or "-").value()
            commands += [("HSET", waiting, self._restock_id(item.restock), "all" if item.restock.full else line.qty),
                         ("EXPIRE", waiting, ttl), ("SET", self.line_key(channel, line), marker, "NX", "GET", "EX", ttl)]
        replies = await self._call(commands)
        now = []
        for i, item in enumerate(pending):
            record = LineRecord.parse(replies[3 * i + 2])
            if record and record.state == LineState.TAKEN:  # taken in between: restock now
                item.sku, item.taken = record.sku, record.qty
                now.append(item)
            else:
                item.result.status = "waiting"  # for the line's take
        return now

    async def _apply_waiting(self, channel: str, taken: list[tuple[LineResult, Line, str]]) -> list[LineResult]:
        """The restocks that waited for these takes, applied now (each once: by its restock id)."""
        waiting = await self._call([("HGETALL", self.keys.webhook_line_waiting(channel, line.key))
                                    for _, line, _ in taken])
        items, ships, writes = [], [], []
        for (result, line, sku), found in zip(taken, waiting, strict=True):
            if result.status != Status.OK:
                continue
            writes.append(("SET", self.line_key(channel, line),
                           LineRecord(LineState.TAKEN, result.qty, sku, True).value(),
                           "XX", "EX", self.settings.line_ttl_s))  # (over the marker a replayed take kept)
            for restock_id, units in found.items():
                waited = Line(line.key, line.order_id, line.line_id, line.channel_sku,
                              result.qty if units == "all" else int(units))
                if restock_id.startswith("ship:"):
                    ships.append(RestockItem(LineResult.of(line, "ship"), Ship(waited, restock_id, units == "all"),
                                             sku, result.qty, committed=True))
                else:
                    items.append(RestockItem(LineResult.of(line, "restock"), Restock(waited, restock_id, units == "all"),
                                             sku, result.qty, committed=True))
                writes.append(("HDEL", self.keys.webhook_line_waiting(channel, line.key), restock_id))
        await self._reserve_and_adjust(channel, items, writes)
        await self.shipping.ship(channel, ships, writes)
        await self._call(writes)
        return [item.result for item in items + ships]

    @staticmethod
    def _restock_id(restock: Restock | Ship) -> str:
        return fit(restock.suffix, MAX_RESTOCK_ID_BYTES, "h")

    async def _reserve_and_adjust(self, channel: str, items: list[RestockItem], writes: list) -> None:
        """Restock the items, never beyond what was taken.

        Each restock first reserves its units against what was taken (stocksync_restock_claim, atomic per
        line, once per restock id; for a line taken into committed it also says how many of them a
        cancellation takes back from committed, the rest being returns of shipped units), then applies
        them with its own reference, derived from the marketplace's ids (a retry of the same restock is
        applied once): stocksync_cancel for the units from committed, stocksync_adjust for the others.
        Its reservation is marked applied with this delivery's last writes.
        """
        if not items:
            return
        ttl = self.settings.line_ttl_s
        claims = [library.restock_claim(self.keys, channel, item.restock.line.key, self._restock_id(item.restock),
                                        item.wanted, max(0, item.taken), ttl, item.before, item.kind) for item in items]
        reserved = []
        for item, claim, reply in zip(items, claims, await self._call([c.command for c in claims]), strict=True):
            got, result = claim.parse(reply), item.result
            result.sku, result.qty = item.sku, got.units
            if got.status == RestockStatus.RESERVED:
                item.units, item.from_committed = got.units, got.from_committed
                reserved.append(item)
            elif got.status == RestockStatus.DONE:  # applied before (the library may have forgotten its reference)
                result.status, result.available, result.version, result.replayed = Status.OK, None, None, True
                self.metrics.outcome("restock", "ok", True)
            else:  # everything taken was restocked already, by other restocks of this line
                result.status, result.replayed = "restocked_already", got.replayed
        if reserved:
            await self._apply_restocks(channel, reserved, writes)

    async def _apply_restocks(self, channel: str, items: list[RestockItem], writes: list) -> None:
        calls, owners = [], []
        for item in items:
            ref, back = self.restock_ref(channel, item.restock), item.from_committed
            if back:
                calls.append(library.cancel(self.keys, item.sku, back, channel, ref))
                owners.append(item)
            if item.units > back:
                calls.append(library.adjust(self.keys, item.sku, item.units - back, channel, ref + ":ret" if back else ref))
                owners.append(item)
        failed = set()
        for item, outcome in zip(owners, await self._outcomes(calls), strict=True):
            if isinstance(outcome, Exception):
                item.result.status, item.result.reason = "invalid", str(outcome)
                failed.add(id(item))
                continue
            self.metrics.outcome("restock", outcome.status, outcome.replayed)
            item.result.merge(outcome)
            failed |= set() if outcome.ok else {id(item)}
        for item in items:
            if id(item) not in failed:
                key, c = self.keys.webhook_line_restocks(channel, item.restock.line.key), item.from_committed
                writes += [("HSET", key, self._restock_id(item.restock), f"d{item.units}" + (f"c{c}" if c else "")),
                           ("EXPIRE", key, self.settings.line_ttl_s)]

    async def _ship(self, channel: str, ships: list[Ship], read: Read, canonical) -> list[LineResult]:
        """Ship what was taken into committed; a line taken before 0.6 ships nothing more (its units left
        on_hand when taken); a shipment of a line not taken yet waits for its take (_wait)."""
        results, items, pending = [], [], []
        for ship in ships:
            line, record = ship.line, read.records.get(ship.line.key)
            result = LineResult.of(line, "ship")
            results.append(result)
            if record and record.state == LineState.TAKEN:
                if record.committed:
                    items.append(RestockItem(result, ship, record.sku, record.qty, committed=True))
                else:
                    result.sku, result.qty, result.status, result.shipped = record.sku, line.qty, "taken_before_0.6", 0
                continue
            sku = (record.sku if record and record.state == LineState.UNKNOWN else None) or canonical(line)
            result.sku, result.qty, result.status = sku, line.qty, "not_taken"
            if not (record and record.state in (LineState.REFUSED, LineState.CANCELLED)):
                pending.append(RestockItem(result, ship, sku or "", 0, committed=True))
        items += await self._wait(channel, pending)
        await self.shipping.ship(channel, items, read.writes)
        return results
