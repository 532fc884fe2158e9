"""The coalescer and the push order, on their own (no Redis): ranks, one push per SKU at a time, linger,
rechecks."""

from __future__ import annotations

import time

import pytest

from consumers.coalescer import Coalescer, Entry
from consumers.ranks import NORMAL, URGENT, ZERO, PushOrder
from stocksync.channels import Rules

LOW_STOCK = 5


def entry(sku: str, version: int, available: int, delta: int, n: int | None = None) -> Entry:
    return Entry(f"{1000 + (n if n is not None else version)}-0", 0, sku, version, available, delta)


@pytest.fixture
def coalescer() -> Coalescer:
    return Coalescer(PushOrder(lambda sku, available: Rules().listed(available), LOW_STOCK))


@pytest.mark.parametrize("available, delta, rules, rank", [
    (0, -3, Rules(), ZERO),  # a drop to 0
    (2, -3, Rules(buffer=2), ZERO),  # listed 0 on this channel: a drop to 0 there
    (0, 0, Rules(), URGENT),  # 0 already (no drop): low stock
    (5, -1, Rules(), URGENT),  # at the low-stock mark
    (50, -50, Rules(), URGENT),  # a sharp drop: half of what was there
    (51, -49, Rules(), NORMAL),  # less than half
    (40, 40, Rules(), NORMAL),  # a restock
    (7, -1, Rules(buffer=2), URGENT),  # listed 5 on this channel
])
def test_the_push_order_rule(available, delta, rules, rank):
    assert PushOrder(lambda sku, a: rules.listed(a), LOW_STOCK)(entry("A", 1, available, delta)) == rank


def test_skus_are_handed_out_by_rank_then_age(coalescer):
    coalescer.add(entry("OLD-NORMAL", 1, 100, -1, n=1))
    coalescer.add(entry("NEW-NORMAL", 1, 100, -1, n=2))
    coalescer.add(entry("LOW", 1, 3, -1, n=3))
    coalescer.add(entry("ZERO", 1, 0, -3, n=4))
    assert [w.sku for w in coalescer.take(10)] == ["ZERO", "LOW", "OLD-NORMAL", "NEW-NORMAL"]
    assert [w.urgency for w in coalescer.work.values()] == [NORMAL, NORMAL, URGENT, ZERO]


def test_a_sku_takes_the_rank_of_its_most_urgent_entry(coalescer):
    coalescer.add(entry("A", 1, 100, -1, n=1))
    coalescer.add(entry("B", 1, 100, -1, n=2))
    coalescer.add(entry("B", 2, 0, -100, n=3))  # B drops to 0: it jumps ahead of A
    assert coalescer.is_urgent("B") and not coalescer.is_urgent("A")
    assert [w.sku for w in coalescer.take(2)] == ["B", "A"]


def test_a_sku_is_handed_out_once_until_settled(coalescer):
    assert coalescer.add(entry("A", 1, 10, -1))
    assert not coalescer.add(entry("A", 1, 10, -1))  # the same entry again: held once
    (w,) = coalescer.take(5)
    assert w.busy and w.version == 1
    coalescer.add(entry("A", 2, 9, -1))  # a newer change while its push is in flight
    assert coalescer.take(5) == [] and not coalescer.has_ready()
    gone = coalescer.settle(w, covered=1)  # the channel accepted version 1
    assert [e.version for e in gone] == [1] and (0, "1001-0") not in coalescer
    (again,) = coalescer.take(5)  # handed out again for version 2
    assert again is w and again.version == 2
    assert [e.version for e in coalescer.settle(again, covered=2)] == [2]
    assert len(coalescer) == 0 and "A" not in coalescer.work  # nothing held: forgotten


def test_a_failed_push_waits_until_its_retry_time(coalescer):
    coalescer.add(entry("A", 1, 10, -1))
    (w,) = coalescer.take(1)
    later = time.monotonic() + 60
    assert coalescer.settle(w, None, retry_at=later) == []
    assert len(coalescer) == 1 and not coalescer.has_ready() and coalescer.take(1) == []
    assert coalescer.next_due() == later
    coalescer.settle(w, None, retry_at=time.monotonic() - 1)  # (as if the time had come)
    assert [x.sku for x in coalescer.take(1)] == ["A"]


def test_entries_dropped_at_settle_are_forgotten(coalescer):
    coalescer.add(entry("A", 1, 10, -1))
    coalescer.add(entry("A", 2, 9, -1))
    (w,) = coalescer.take(1)
    gone = coalescer.settle(w, None, drop=["1001-0"])  # e.g. dead-lettered
    assert [e.id for e in gone] == ["1001-0"] and list(w.entries) == ["1002-0"]


def test_a_partial_batch_lingers_unless_urgent_or_waited_long_enough(coalescer):
    coalescer.add(entry("A", 1, 100, -1))
    until = coalescer.linger_until(10, 60.0)
    assert until is not None and until > time.monotonic()  # one SKU of 10: wait for more
    assert coalescer.linger_until(10, 0.0) is None  # waited long enough (linger 0)
    assert coalescer.linger_until(1, 60.0) is None  # a full batch: go
    coalescer.add(entry("B", 1, 0, -1, n=2))  # a drop to 0 is ready: never waits
    assert coalescer.linger_until(10, 60.0) is None


def test_a_recheck_pushes_the_sku_at_its_time_even_without_entries(coalescer):
    now = time.monotonic()
    coalescer.recheck("R", 0, now + 60, owed_ms=123)
    assert coalescer.take(5) == [] and coalescer.next_due() == pytest.approx(now + 60)
    coalescer.recheck("R", 0, now - 1, owed_ms=456)  # an earlier time does not bring it forward
    assert coalescer.take(5) == []
    coalescer.recheck("S", 0, now - 1, owed_ms=789)
    (w,) = coalescer.take(5)
    assert (w.sku, w.forced, w.owed_ms, w.version) == ("S", True, 789, 0)  # forced: pushed whatever the channel has
    coalescer.settle(w, None)
    assert "S" in coalescer.work  # still owed: held until repaid
    (w,) = coalescer.take(5)
    coalescer.repaid(w)
    coalescer.settle(w, None)
    assert "S" not in coalescer.work


def test_a_recheck_of_a_sku_with_entries_waits_for_its_time(coalescer):
    coalescer.recheck("A", 0, time.monotonic() + 60, owed_ms=1)
    coalescer.add(entry("A", 1, 50, -1))
    (w,) = coalescer.take(5)  # the entry is pushed now; the recheck is not due yet
    assert not w.forced and w.recheck_at
    coalescer.settle(w, covered=1)
    assert "A" in coalescer.work and coalescer.take(5) == []  # held for its recheck


def test_entries_of_two_partitions_with_the_same_id_are_both_held(coalescer):
    """Stream IDs are per stream: two changes in the same millisecond on two partitions' streams share an ID
    ("<ms>-0"). Both are held and both SKUs pushed (the second used to be taken as held already)."""
    a, b = Entry("1700000000000-0", 4, "A", 2, 7, -8), Entry("1700000000000-0", 11, "B", 2, 7, -8)
    assert coalescer.add(a) and coalescer.add(b)
    assert len(coalescer) == 2 and (4, a.id) in coalescer and (11, b.id) in coalescer
    assert sorted(w.sku for w in coalescer.take(5)) == ["A", "B"]
