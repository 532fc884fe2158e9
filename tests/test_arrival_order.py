"""Arrival order does not matter: for every order in which an order's create, cancellation and refund (and
their redeliveries) arrive, the final stock is the stock of in-order processing (docs/channels/shopify.md
states the rule). A restock that comes before its take waits for it and is applied when it comes."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import pytest

from stocksync.orders.webhooks import flipkart_authorization
from tests.apihelp import (
    FK_APP,
    FK_SECRET,
    FK_URL,
    amazon_notification,
    api_settings,
    flipkart_headers,
    post_amazon,
    post_flipkart,
    post_shopify,
    running,
    shopify_order,
)

pytestmark = pytest.mark.usefixtures("api_env")


def orderings(events: list[str]) -> list[tuple[str, ...]]:
    """Every distinct arrival order of the events, each delivered twice (a marketplace's redelivery)."""
    return sorted(set(itertools.permutations(events * 2)))


async def stock(store, skus: list[str]) -> list[int]:
    return [(await store.get(sku)).available for sku in skus]


# Shopify ----------------------------------------------------------------------------------------------


def shopify_events(order_id: int, a: str, b: str, restock_on_cancel: bool) -> dict[str, tuple[str, dict]]:
    """An order of 3 x a and 2 x b; a return of 1 x a (refunds/create, embedded again in the cancellation);
    the cancellation's own refund of the rest, restocked or not by the merchant."""
    kind = "cancel" if restock_on_cancel else "no_restock"
    ret = {"id": order_id * 10 + 1, "order_id": order_id, "refund_line_items": [
        {"id": order_id * 100 + 1, "line_item_id": 1, "quantity": 1, "restock_type": "return",
         "line_item": {"id": 1, "sku": a}}]}
    cancel = {"id": order_id * 10 + 2, "order_id": order_id, "refund_line_items": [
        {"id": order_id * 100 + 2, "line_item_id": 1, "quantity": 2, "restock_type": kind, "line_item": {"id": 1, "sku": a}},
        {"id": order_id * 100 + 3, "line_item_id": 2, "quantity": 2, "restock_type": kind, "line_item": {"id": 2, "sku": b}}]}
    order = shopify_order(order_id, [(1, a, 3), (2, b, 2)])
    return {"create": ("orders/create", order),
            "refund": ("refunds/create", ret),
            "cancel": ("orders/cancelled", {**order, "cancelled_at": "2025-01-01T00:00:00Z", "refunds": [ret, cancel]})}


@pytest.mark.parametrize("restock_on_cancel", [True, False], ids=["cancel-restocks", "cancel-keeps"])
async def test_shopify_final_stock_is_the_in_order_stock_for_every_arrival_order(settings, store, restock_on_cancel):
    async with running(api_settings(settings, restock="refund")) as client:
        results = set()
        for n, ordering in enumerate(orderings(["create", "refund", "cancel"]) + [("create", "refund", "cancel")]):
            a, b = f"A{n}", f"B{n}"
            await store.set(a, 10, source="test")
            await store.set(b, 10, source="test")
            events = shopify_events(5000 + n, a, b, restock_on_cancel)
            for name in ordering:
                topic, doc = events[name]
                assert (await post_shopify(client, doc, topic=topic)).status_code == 200
            results.add((ordering == ("create", "refund", "cancel"), tuple(await stock(store, [a, b]))))
    in_order = (10, 10) if restock_on_cancel else (8, 8)  # returned 1 of 3; the rest restocked or not
    assert results == {(False, in_order), (True, in_order)}


async def test_shopify_events_arriving_at_once_apply_once(settings, store):
    async with running(api_settings(settings, restock="refund")) as client:
        for n in range(20):
            a, b = f"C{n}", f"D{n}"
            await store.set(a, 10, source="test")
            await store.set(b, 10, source="test")
            events = shopify_events(7000 + n, a, b, restock_on_cancel=False)
            await asyncio.gather(*(post_shopify(client, doc, topic=topic)
                                   for topic, doc in list(events.values()) * 2))
            assert await stock(store, [a, b]) == [8, 8]


async def test_shopify_cancel_policy_cancellation_before_its_order_takes_nothing(settings, store):
    async with running(api_settings(settings, restock="cancel")) as client:
        await store.set("E", 10, source="test")
        order = shopify_order(8000, [(1, "E", 3)])
        await post_shopify(client, {**order, "cancelled_at": "2025-01-01T00:00:00Z"}, topic="orders/cancelled")
        r = await post_shopify(client, order)
        assert r.json()["lines"][0]["status"] == "cancelled"
        assert await stock(store, ["E"]) == [10]


# Amazon and Flipkart ----------------------------------------------------------------------------------


async def test_amazon_canceled_restocks_what_was_taken_whatever_its_quantity(settings, store):
    async with running(api_settings(settings)) as client:
        for n, ordering in enumerate(orderings(["take", "cancel"])):
            sku, order = f"F{n}", f"111-{n}"
            await store.set(sku, 10, source="test")
            docs = {"take": amazon_notification(order, "Unshipped", [("i1", sku, 2)]),
                    "cancel": amazon_notification(order, "Canceled", [("i1", sku, 0)])}  # (Amazon says 0)
            for name in ordering:
                assert (await post_amazon(client, {**docs[name], "NotificationMetadata": {
                    **docs[name]["NotificationMetadata"], "NotificationId": uuid.uuid4().hex}})).status_code == 200
            assert await stock(store, [sku]) == [10], ordering


def flipkart_events(item: str, sku: str) -> dict[str, dict]:
    created = {"eventType": "shipment_created", "source": "flipkart", "version": "v3", "shipmentId": "s-" + item,
               "timestamp": "2025-03-28T18:03:01+05:30", "attributes": {"orderItems": [
                   {"orderItemId": item, "orderId": "OD" + item, "sku": sku, "quantity": 3, "status": "APPROVED"}]}}

    def cancelled(qty: int) -> dict:  # two partial cancellations within the same second
        return {"eventType": "shipment_cancelled", "source": "flipkart", "version": "v3", "shipmentId": "s-" + item,
                "timestamp": "2025-04-12T12:12:15+05:30", "attributes": {"status": "CANCELLED", "orderItems": [
                    {"orderItemId": item, "quantity": qty, "reason": "buyer_cancellation"}]}}

    return {"take": created, "cancel1": cancelled(1), "cancel2": cancelled(2)}


async def test_flipkart_partial_cancellations_in_any_order_restock_each_once(settings, store):
    async with running(api_settings(settings)) as client:
        for n, ordering in enumerate(orderings(["take", "cancel1", "cancel2"])[::7]):
            sku = f"G{n}"
            await store.set(sku, 10, source="test")
            events = flipkart_events(f"99{n:04d}", sku)
            for name in ordering:
                r = await post_flipkart(client, events[name])
                assert r.status_code == 200, r.text
            assert await stock(store, [sku]) == [10], ordering  # 3 taken, 1 + 2 restocked


async def test_flipkart_published_sample_signature_verifies(settings, store):
    """Flipkart's sample signs the Unix time of X_Date (1432026135 for this date), not the header's text."""
    date = "Tue, 19 May 2015 09:02:15 GMT"
    headers = {"X_Date": date, "X_Authorization": flipkart_authorization(FK_APP, FK_SECRET, "1432026135", FK_URL),
               "Content-Type": "application/json"}
    doc = {"eventType": "shipment_packed", "attributes": {}}
    async with running(api_settings(settings)) as client:  # the skew check refuses a 2015 date ...
        r = await post_flipkart(client, doc, headers)
        assert r.status_code == 401 and "away from now" in r.json()["message"]
    lenient = api_settings(settings)
    lenient.sections["channels"]["flipkart"]["options"]["max_skew_s"] = 0
    async with running(lenient) as client:  # ... and the signature itself verifies
        assert (await post_flipkart(client, doc, headers)).status_code == 200
        assert (await post_flipkart(client, doc, flipkart_headers(date=date))).status_code == 200  # header-text form
        forged = {**headers, "X_Authorization": flipkart_authorization(FK_APP, "wrong", "1432026135", FK_URL)}
        assert (await post_flipkart(client, doc, forged)).status_code == 401
