"""Each adapter against its simulator over loopback HTTP: request shapes, per-SKU results, errors."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from consumers.adapters import PermanentError, TransientError, Update, check_options, make_adapter
from consumers.adapters.base import RateLimiter, retry_after_s
from consumers.ranks import NORMAL, ZERO
from consumers.runner import run_workers
from stocksync.devtools.testing import (
    SIMULATOR_ENV,
    config,
    wait_for,
)
from stocksync.settings import Settings, SettingsError


@pytest.fixture
def sim_of(sims):
    for sim, _ in sims.values():
        sim.reset()

    def get(name, **options):
        sim, url = sims[name]
        return sim, make_adapter(config(name, url, **options))

    return get


def up(sku, q, v=1):
    return Update(sku, sku, q, v)


async def test_shopify_sets_quantities_with_compare_and_swap(sim_of):
    sim, adapter = sim_of("shopify")
    async with adapter:
        results = await adapter.push([up("A", 5), up("B", 7), up("C", 0)])
        assert all(r.ok for r in results) and sim.quantities == {"A": 5, "B": 7, "C": 0}
        mutation = [c for c in sim.calls if any("change_from" in i for i in c.items)][-1]
        assert [i["change_from"] for i in mutation.items] == [0, 0, 0]  # read first, then swapped
        sim.seed({"A": 4})  # Shopify sold one meanwhile: our compare value is stale
        results = await adapter.push([up("A", 9, 2), up("B", 6, 2)])
        assert all(r.ok for r in results) and sim.quantities["A"] == 9 and sim.quantities["B"] == 6
        assert any(i.get("result") == "CHANGE_FROM_QUANTITY_STALE" for c in sim.calls for i in c.items)
        sim.set_faults(reject_skus={"B"})
        results = {r.sku: r for r in await adapter.push([up("A", 1, 3), up("B", 1, 3)])}
        assert results["A"].ok and results["B"].permanent and "NON_MUTABLE" in results["B"].error
        assert sim.quantities["A"] == 1
        with pytest.raises(ValueError):
            await adapter.push([up(f"X{i}", 1) for i in range(251)])


async def test_shopify_batches_up_to_250_and_reports_throttling(sim_of):
    sim, adapter = sim_of("shopify")
    async with adapter:
        results = await adapter.push([up(f"S{i}", i) for i in range(250)])
        assert all(r.ok for r in results) and len(sim.quantities) == 250
        sim.set_faults(rate_limit=1, burst=10)
        await adapter.push([up("S1", 3, 2)])  # empties the bucket
        with pytest.raises(TransientError) as e:
            await adapter.push([up("S1", 4, 3)])
        assert e.value.throttled and e.value.retry_after > 0


async def test_shopify_retry_after_a_timeout_reuses_the_key_and_a_failed_attempt_gets_a_fresh_one(sim_of):
    sim, adapter = sim_of("shopify", timeout_s=0.3)
    sim.seed({"K": 1})
    async with adapter:
        assert (await adapter.push([up("K", 1, 1)]))[0].ok
        sim.set_faults(latency_ms=600)
        answered = len(sim.calls)
        with pytest.raises(TransientError) as e:  # sent, no answer: Shopify applies it meanwhile
            await adapter.push([up("K", 0, 2)])
        assert e.value.ambiguous
        await wait_for(lambda: len(sim.calls) > answered, what="the abandoned call to be applied")
        sim.set_faults(latency_ms=0)
        assert (await adapter.push([up("K", 0, 2)]))[0].ok  # the retry: same input, same key
        assert sim.calls[-1].items[0]["result"] == "replayed" and sim.quantities["K"] == 0
        # an attempt that failed under its key: the retry hears IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED and sends
        # again under a fresh key instead of dead-lettering the batch
        sim.set_faults(latency_ms=600, reject_skus={"K"})
        answered = len(sim.calls)
        with pytest.raises(TransientError):
            await adapter.push([up("K", 5, 3)])
        await wait_for(lambda: len(sim.calls) > answered, what="the abandoned call to fail")
        sim.set_faults(latency_ms=0, reject_skus=set())
        [res] = await adapter.push([up("K", 5, 3)])
        assert res.ok and sim.quantities["K"] == 5


async def test_amazon_patches_fulfillment_availability_one_sku_a_call(sim_of):
    sim, adapter = sim_of("amazon", rate_limit=100, burst=10)
    async with adapter:
        (r,) = await adapter.push([up("AMZ/1", 3)])
        assert r.ok and sim.quantities == {"AMZ/1": 3}
        sim.set_faults(reject_skus={"AMZ/1"})
        (r,) = await adapter.push([up("AMZ/1", 2, 2)])
        assert r.permanent and "INVALID" in r.error
        sim.set_faults(reject_skus=set(), rate_limit=1, burst=1)
        await adapter.push([up("AMZ/2", 1)])
        with pytest.raises(TransientError) as e:
            await adapter.push([up("AMZ/2", 2, 2)])
        assert e.value.status == 429 and e.value.retry_after >= 1
        sim.set_faults(rate_limit=None)
        sim.outage(True)
        with pytest.raises(TransientError) as e:
            await adapter.push([up("AMZ/2", 2, 2)])
        assert e.value.status == 503


async def test_amazon_client_side_rate_limit(sim_of):
    sim, adapter = sim_of("amazon", rate_limit=20, burst=2)
    async with adapter:
        for i in range(12):
            await adapter.push([up(f"R{i}", i)])
    assert sim.max_rate() <= 22
    span = sim.calls[-1].t - sim.calls[0].t
    assert span >= (12 - 2) / 20 * 0.9


async def test_flipkart_batches_of_ten_with_a_status_per_sku(sim_of):
    sim, adapter = sim_of("flipkart")
    async with adapter:
        assert adapter.batch_size == 10
        sim.set_faults(reject_skus={"F3"})
        results = {r.sku: r for r in await adapter.push([up(f"F{i}", i) for i in range(10)])}
        assert [s for s, r in results.items() if not r.ok] == ["F3"] and results["F3"].permanent
        assert len(sim.quantities) == 9 and len(sim.calls) == 1
    _, bare = sim_of("flipkart", product_id_format=None)
    async with bare:
        (r,) = await bare.push([up("NOFSN", 1)])
        assert r.permanent and "product_id" in r.error


async def test_webhook_signs_and_treats_stale_as_delivered(sim_of):
    sim, adapter = sim_of("webhook")
    async with adapter:
        assert all(r.ok for r in await adapter.push([up("W1", 5, 3), up("W2", 1, 1)]))
        (r,) = await adapter.push([up("W1", 9, 2)])  # the receiver has version 3 already
        assert r.ok and sim.quantities["W1"] == 5
        sim.set_faults(reject_skus={"W2"})
        (r,) = await adapter.push([up("W2", 2, 2)])
        assert r.permanent


async def test_credentials_never_appear_in_logs_errors_or_reprs(sim_of, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("TEST_AMAZON_TOKEN", "Atza|wrong-token-value")
    sim, adapter = sim_of("amazon")
    async with adapter:
        with pytest.raises(TransientError) as e:  # a 401 is the channel's problem, not the SKU's
            await adapter.push([up("Z", 1)])
        assert e.value.status == 401
    text = caplog.text + str(e.value) + repr(adapter) + repr(adapter.config)
    for secret in [*SIMULATOR_ENV.values(), "Atza|wrong-token-value"]:
        assert secret not in text
    assert all(c.headers.get("x-amz-access-token") == "<redacted>" for c in sim.calls)
    monkeypatch.delenv("TEST_AMAZON_TOKEN")
    _, adapter = sim_of("amazon")
    async with adapter:
        with pytest.raises(Exception, match="TEST_AMAZON_TOKEN"):
            await adapter.push([up("Z", 1)])
    assert os.environ.get("TEST_SHOPIFY_TOKEN")


async def test_timeouts_are_transient(sim_of):
    sim, adapter = sim_of("flipkart", timeout_s=0.2)
    sim.set_faults(latency_ms=600)
    async with adapter:
        with pytest.raises(TransientError, match="timed out"):
            await adapter.push([up("T", 1)])


def test_retry_after_forms():
    assert retry_after_s("3") == 3.0
    assert retry_after_s(None) is None and retry_after_s("soon") is None
    assert 0 <= retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") <= 0.0 + 1e-9


def test_permanent_errors_are_not_transient():
    assert PermanentError("x").permanent and not TransientError("x").permanent


async def test_the_rate_limiter_serves_a_drop_to_zero_before_calls_waiting_longer():
    """Calls waiting for the rate limit go by push rank, then arrival: a drop to 0 handed to the adapter
    after ordinary pushes does not queue behind them (a backlog of 4 at 20/s is 0.2 s it need not wait)."""
    limiter = RateLimiter(rate=20, burst=1)
    order: list[str] = []

    async def call(name: str, rank: int) -> None:
        await limiter.acquire(rank=rank)
        order.append(name)

    ordinary = [asyncio.create_task(call(f"normal-{i}", NORMAL)) for i in range(5)]
    await wait_for(lambda: limiter.waiting == 4, 5, "four ordinary calls waiting")
    await asyncio.create_task(call("drop-to-0", ZERO))
    await asyncio.gather(*ordinary)
    assert order[:2] == ["normal-0", "drop-to-0"], order
    assert order[2:] == [f"normal-{i}" for i in range(1, 5)]


# ----- the options table ----------------------------------------------------------------------------------


# every option each kind of channel reads (docs/channels/<kind>.md), its adapter's and the webhook intake's
KNOWN_OPTIONS = {
    "shopify": {"location_id": "gid://shopify/Location/1", "api_version": "2026-04", "reason": "correction",
                "restock": "refund"},
    "amazon": {"seller_id": "A2SIMSELLER000", "marketplace_id": "ATVPDKIKX0DER", "product_type": "PRODUCT",
               "fulfillment_channel_code": "DEFAULT", "token_header": "x-stocksync-token", "include_afn": False},
    "flipkart": {"location_id": "LOC1", "product_ids": {"RED-M": "TSHFDG3VACEXZEYZ"}, "product_id_format": "{sha}",
                 "notification_url": "https://stock.example.com/webhooks/flipkart", "max_skew_s": 900},
    "webhook": {"path": "/stocksync"},
}
COMMON = {"timeout_s": 2.5, "batch_size": 5, "max_in_flight": 3, "rate_limit": 0, "burst": 2}


@pytest.mark.parametrize("kind", sorted(KNOWN_OPTIONS))
def test_every_option_a_channel_reads_is_accepted(kind):
    adapter = make_adapter(config(kind, "http://127.0.0.1:9", **KNOWN_OPTIONS[kind], **COMMON))
    assert (adapter.timeout_s, adapter.max_in_flight, adapter.limiter) == (2.5, 3, None)
    assert adapter.batch_size == min(5, adapter.max_batch)


@pytest.mark.parametrize("kind, typo", [("shopify", "locaton_id"), ("amazon", "rate_limt"), ("flipkart", "restock"),
                                        ("webhook", "location_id")])
def test_an_option_the_channel_does_not_read_is_refused_naming_channel_and_key(kind, typo):
    cfg = config(kind, "http://127.0.0.1:9", **{typo: "x"})
    with pytest.raises(SettingsError, match=rf"^channels\.{kind}\.options: unknown option\(s\) {typo} "):
        check_options(cfg)
    with pytest.raises(SettingsError, match=typo):
        make_adapter(cfg)


@pytest.mark.parametrize("name, value", [("timeout_s", 0), ("timeout_s", "5"), ("batch_size", 2.5), ("batch_size", 0),
                                         ("max_in_flight", True), ("rate_limit", -1), ("burst", "10")])
def test_a_malformed_common_option_is_refused(name, value):
    with pytest.raises(SettingsError, match=rf"^channels\.amazon\.options\.{name} must be "):
        make_adapter(config("amazon", "http://127.0.0.1:9", **{name: value}))


def test_a_required_option_missing_is_a_settings_error():
    cfg = config("shopify", "http://127.0.0.1:9")
    cfg.options.pop("location_id")
    with pytest.raises(SettingsError, match=r"channels\.shopify\.options\.location_id .*required"):
        make_adapter(cfg)


async def test_the_worker_refuses_an_unknown_option_before_it_connects():
    table = {"kind": "amazon", "url": "http://127.0.0.1:9", "options": {"seller_id": "A1", "timeout": 3}}
    settings = Settings(redis_url="redis://127.0.0.1:9/0", sections={"channels": {"amazon": table}})  # no Redis there
    with pytest.raises(SettingsError, match=r"channels\.amazon\.options: unknown option\(s\) timeout "):
        await run_workers(settings)
