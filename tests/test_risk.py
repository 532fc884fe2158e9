"""The oversell risk model (consumers/risk.py): its arithmetic, the order it gives pushes, the auto buffer."""

from __future__ import annotations

import math

import pytest

from consumers.coalescer import Coalescer, Entry
from consumers.ranks import PushOrder
from consumers.risk import RiskModel, expected_min, quantile
from stocksync.channels import Rules, parse_channel
from stocksync.settings import SettingsError


def exact_expected_min(mean: float, n: int) -> float:
    return sum(1 - sum(math.exp(-mean) * mean**j / math.factorial(j) for j in range(k)) for k in range(1, n + 1))


@pytest.mark.parametrize("mean,n", [(0.2, 1), (1.5, 3), (8, 5), (30, 40), (60, 50), (60, 70), (300, 250)])
def test_expected_min_matches_the_poisson_sum(mean, n):
    exact = exact_expected_min(mean, n) if mean < 100 else None
    got = expected_min(mean, n)
    assert 0 <= got <= min(mean, n)
    if exact is not None:
        assert got == pytest.approx(exact, abs=0.05 * max(1.0, exact) if mean > 50 else 1e-9)


def test_quantile_is_the_smallest_buffer_within_the_tail():
    def sf(mean: float, x: int) -> float:
        return 1 - sum(math.exp(-mean) * mean**j / math.factorial(j) for j in range(x + 1))

    for mean, tail in [(0.5, 0.01), (3, 0.001), (20, 1e-4)]:
        b = quantile(mean, tail)
        assert sf(mean, b) <= tail and (b == 0 or sf(mean, b - 1) > tail)
    assert quantile(0, 1e-4) == 0


def model(rules: Rules | None = None, land_s: float = 2.0) -> RiskModel:
    return RiskModel("amazon", rules or Rules(), land_s=land_s, prior_per_s=0.0)


def test_risk_is_the_units_sold_past_what_the_channel_should_list():
    m = model()
    for _ in range(60):  # 1 unit a second for a minute, on this channel
        m.saw("HOT", -1, "amazon")
    assert m.risk("COLD", 0, -3) == 0.0  # no demand: a stale listing sells nothing
    hot = m.risk("HOT", 0, -3)  # listed 3, should list 0, ~0.6 units/s over 2 s
    assert 0.5 < hot < 3
    assert m.risk("HOT", 5, 2) == 0.0  # a restock: the channel lists less than it may
    m.landed("HOT", 1, 0, 2000)  # the channel now lists 1
    assert m.risk("HOT", 0, -1) < hot


def test_an_overlisted_hot_sku_goes_ahead_of_a_merely_stale_cold_drop():
    m = model()
    for _ in range(120):
        m.saw("HOT", -1, "amazon")
    order = PushOrder(m.listed, low_stock=5)
    coalescer = Coalescer(order, lambda e: m.risk(e.sku, e.available, e.delta))
    coalescer.add(Entry("1-0", 0, "COLD", 2, 0, -1))  # a drop to 0 (rank ZERO), no demand
    coalescer.add(Entry("2-0", 0, "HOT", 2, 2, -6))  # listed 8, should list 2 (rank URGENT), ~4 sold meanwhile
    assert [w.sku for w in coalescer.take(2)] == ["HOT", "COLD"]
    assert coalescer.total_risk() > 0.5


def test_auto_buffer_covers_other_channels_demand_during_the_time_to_land():
    m = model(Rules(buffer="auto", oversell_target=1.0), land_s=3.0)
    assert m.buffer("HOT") == 0 and m.listed("HOT", 10) == 10
    for _ in range(300):  # others sell ~5 units/s
        m.saw("HOT", -1, "shopify")
    b = m.buffer("HOT")
    assert b == quantile(m.others["HOT"].at(m.others["HOT"].stamp, 60.0) * 3.0, 1e-4) and b > 5
    assert m.listed("HOT", 100) == 100 - b and m.listed("HOT", b) == 0
    assert model(Rules(buffer=2)).buffer("HOT") == 0  # a fixed buffer stays as configured


def test_rules_take_auto_and_a_target_and_refuse_nonsense():
    channel = parse_channel("amazon", {"kind": "amazon", "url": "http://x", "buffer": "auto", "oversell_target": 0.5})
    assert channel.rules.buffer == "auto" and channel.rules.oversell_target == 0.5
    assert channel.rules.listed(10, auto_buffer=3) == 7 and Rules(buffer=2).listed(10, auto_buffer=3) == 8
    for bad in ({"buffer": "some"}, {"buffer": -1}, {"oversell_target": 0}, {"oversell_target": "low"}):
        with pytest.raises(SettingsError):
            parse_channel("amazon", {"kind": "amazon", "url": "http://x", **bad})


def test_the_buffer_and_the_risk_use_the_risk_weighted_time_to_land_not_the_backlogs():
    """Under a rate limit the merely stale SKUs queue for minutes while the risky ones land within seconds
    (market benchmark: Amazon's mean lag 66-100 s); a buffer sized on the backlog held back sellable units."""
    m = model(Rules(buffer="auto", oversell_target=1.0), land_s=1.0)
    for _ in range(120):  # others sell ~2 units/s
        m.saw("HOT", -1, "shopify")
    for _ in range(200):  # the backlog (no risk, or a hint of it) lands after 100 s; the risky pushes after 0.5 s
        m.landed("STALE", 5, 0, 100_000)
        m.landed("STALE", 5, 0, 100_000, risk=0.001)
        m.landed("HOT", 3, 0, 500, risk=0.8)
    assert m.land_s > 40 and 0.5 <= m.land_risky_s < 1.0
    rate = m.others["HOT"].at(m.others["HOT"].stamp, 60.0)
    assert m.buffer("HOT") == quantile(rate * m.land_risky_s, 1e-4) < quantile(rate * m.land_s, 1e-4) / 5
    for _ in range(60):
        m.saw("HOT", -1, "amazon")
    m.listed_now.pop("HOT")
    slow = model(land_s=100.0)
    for _ in range(60):
        slow.saw("HOT", -1, "amazon")
    assert 0 < m.risk("HOT", 0, -3) < slow.risk("HOT", 0, -3)


def test_a_channel_whose_pushes_carry_little_risk_keeps_its_plain_time_to_land():
    m = model(land_s=1.0)  # (1 s: the value before anything is measured)
    for _ in range(150):  # a fast batch channel: 30 ms a push, hardly any risk
        m.landed("SKU", 1, 0, 30, risk=0.001)
    assert m.land_s == pytest.approx(0.03, abs=0.01) and m.land_risky_s == pytest.approx(0.03, abs=0.01)
