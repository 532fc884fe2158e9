"""The market benchmark's pure model (stocksync/devtools/market_model.py): the buyers it draws, the warehouse's
truth, the 15-minute polling model, and the overlisted episodes it measures."""

from __future__ import annotations

from collections import Counter

import pytest

from stocksync.devtools.market_model import (
    FLASH_SKU,
    Buyer,
    Demand,
    Listing,
    Scenario,
    StockOp,
    Tally,
    Truth,
    overlisted_ms,
    percentile,
    scenario,
    simulate_polling,
    sku_name,
)

CHANNELS = ("shopify", "amazon", "flipkart")


def test_buyers_are_poisson_per_channel_zipf_over_skus_and_the_flash_sale_is_one_burst():
    d = Demand(seconds=100, rate=50, skus=1_000, flash_buyers=2_000, flash_units=50, flash_window_s=5, flash_at=0.4)
    sc = scenario(d)
    steady = [b for b in sc.buyers if b.sku != FLASH_SKU]
    per_channel = Counter(b.channel for b in steady)
    assert per_channel["shopify"] == pytest.approx(2_000, rel=0.1)  # 40% of 50/s over 100 s
    assert per_channel["flipkart"] == pytest.approx(1_000, rel=0.1)
    popularity = Counter(b.sku for b in steady)
    assert popularity[sku_name(1)] > 5 * popularity[sku_name(20)] > 0  # 1/k: rank 1 sells ~20x rank 20
    flash = [b for b in sc.buyers if b.sku == FLASH_SKU]
    assert len(flash) == 2_000 and sc.stock[FLASH_SKU] == 50
    assert 40 <= min(b.t for b in flash) and max(b.t for b in flash) <= 45
    assert [b.t for b in sc.buyers] == sorted(b.t for b in sc.buyers)
    assert len({b.n for b in sc.buyers}) == len(sc.buyers)
    low = sum(1 for k in range(1, 1_001) if sc.stock[sku_name(k)] <= 3)
    assert low >= 250  # many SKUs at low stock
    assert scenario(d).buyers == sc.buyers  # the seed alone decides
    assert FLASH_SKU not in scenario(Demand(seconds=10, skus=100, flash_buyers=0)).stock


def test_warehouse_writes_are_receipts_and_counts_over_the_run():
    sc = scenario(Demand(seconds=200, rate=1, skus=100, flash_buyers=0, receipts_per_s=1, counts_per_s=0.5))
    kinds = Counter(o.kind for o in sc.ops)
    assert kinds["receipt"] == pytest.approx(200, rel=0.25) and kinds["count"] == pytest.approx(100, rel=0.3)
    assert all(o.units > 0 for o in sc.ops if o.kind == "receipt") and all(0 <= o.t < 200 for o in sc.ops)


def test_truth_takes_covered_orders_only_and_counts_lost_sales_while_units_are_there():
    truth, tally = Truth({"A": 2}), Tally()
    truth.tally(tally, "A", 1, accepted=True)
    truth.tally(tally, "A", 1, accepted=False)  # turned away with 1 unit in the warehouse: a lost sale
    truth.tally(tally, "A", 2, accepted=True)  # 1 unit left: the order of 2 is oversold and takes nothing
    truth.tally(tally, "A", 1, accepted=True)
    truth.tally(tally, "A", 1, accepted=False)  # nothing left: not a lost sale
    assert (tally.orders, tally.units_sold, tally.oversold_units, tally.turned_away_in_stock_units, tally.refused) == (3, 4, 2, 1, 2)
    assert truth.units["A"] == 0
    truth.settle_lost({"shopify": tally})
    assert tally.lost_sales_units == 0  # the unit turned away was sold later: nothing was lost
    assert truth.apply(StockOp(0, "count", "A", -3)) == 0 and truth.apply(StockOp(0, "receipt", "A", 5)) == 5


def test_lost_sales_are_units_turned_away_that_stayed_unsold():
    truth = Truth({"A": 3, "B": 2})
    shop, amazon = Tally(), Tally()
    for _ in range(5):  # five buyers turned away at each channel while A had 3 units and B 2
        truth.tally(shop, "A", 1, accepted=False)
        truth.tally(amazon, "A", 1, accepted=False)
        truth.tally(amazon, "B", 1, accepted=False)
    truth.tally(shop, "A", 1, accepted=True)  # one of A's units sold after all
    truth.settle_lost({"shopify": shop, "amazon": amazon})
    assert (shop.turned_away_in_stock_units, amazon.turned_away_in_stock_units) == (5, 10)
    assert (shop.lost_sales_units, amazon.lost_sales_units) == (2, 2)  # A's 2 unsold units, then B's 2


def test_polling_oversells_between_syncs_and_a_sync_stops_it():
    stock = {"A": 5}
    buyers = [Buyer(t, ch, "A", 1, i) for i, (t, ch) in enumerate([(1, "shopify")] * 5 + [(2, "amazon")] * 5)]
    no_sync = simulate_polling(Scenario(stock, buyers, []), ("shopify", "amazon"), last_sync_s=-60)
    assert no_sync["amazon"].oversold_units == 5 and no_sync["shopify"].oversold_units == 0
    synced = simulate_polling(Scenario(stock, buyers, []), ("shopify", "amazon"), interval_s=900, last_sync_s=-898.5)
    assert synced["amazon"].oversold_units == 0 and synced["amazon"].refused == 5  # the sync at 1.5 s listed 0
    assert synced["amazon"].lost_sales_units == 0


def test_polling_receipts_wait_for_the_next_sync_and_the_wait_loses_sales():
    sc = Scenario({"A": 0}, [Buyer(2, "shopify", "A", 1, 0), Buyer(20, "shopify", "A", 1, 1)],
                  [StockOp(1, "receipt", "A", 3)])
    tallies = simulate_polling(sc, CHANNELS, interval_s=10, last_sync_s=0)
    assert tallies["shopify"].lost_sales_units == 1  # at 2 s the channel still counts 0 of the 3 received
    assert tallies["shopify"].units_sold == 1  # after the sync at 10 s it sells


def test_overlisted_episodes_open_when_the_canonical_drops_and_close_when_a_push_lands():
    canonical = {"A": [(100, 2), (500, 0)], "B": [(100, 1)]}
    listings = {
        "A": Listing([(350, "push", 2), (600, "sale", 1), (900, "push", 0)]),  # 100-350, 500-900
        "B": Listing([(150, "sale", 4)]),  # sold down below the canonical: closes at 150
    }
    spans = overlisted_ms(canonical, listings, {"A": 5, "B": 5, "C": 3}, end_ms=2_000)
    assert sorted(spans) == [50, 250, 400]
    still = overlisted_ms({"A": [(100, 0)]}, {}, {"A": 5}, end_ms=1_100)  # never pushed: open until the end
    assert still == [1_000]
    same_ms = overlisted_ms({"A": [(100, 4)]}, {"A": Listing([(100, "push", 4)])}, {"A": 5}, end_ms=200)
    assert same_ms == [0]


def test_percentile_is_the_nearest_rank():
    values = list(range(1, 101))
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile([7], 0.99)) == (50, 99, 7)
    assert percentile([], 0.5) is None
