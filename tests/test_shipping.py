"""Shipping and restocking order lines through committed (library 0.6), from the marketplaces' own
webhooks and the admin API: a Shopify fulfillment, Amazon's Shipped, a Flipkart dispatch; cancellations
before shipping and returns after it; a fulfillment that comes before its order; lines taken before 0.6."""

from __future__ import annotations

import pytest

from stocksync.bundles import Bundles

from .apihelp import (
    amazon_notification,
    api_settings,
    auth,
    post_amazon,
    post_flipkart,
    post_shopify,
    running,
    shopify_order,
)
from .helpers import snapshot

pytestmark = pytest.mark.usefixtures("api_env")


async def books(store, sku):
    q = await store.quantities(sku)
    return q.available, q.committed, q.on_hand


def fulfillment(fid: int, order_id: int, lines: list[tuple[int, str, int]]) -> dict:
    return {"id": fid, "order_id": order_id, "status": "success", "line_items": [
        {"id": lid, "sku": sku, "quantity": qty, "gift_card": False} for lid, sku, qty in lines]}


def refund(rid: int, order_id: int, items: list[tuple[int, int, str, int]]) -> dict:
    return {"id": rid, "order_id": order_id, "refund_line_items": [
        {"id": rli, "line_item_id": lid, "quantity": qty, "restock_type": kind, "line_item": {"sku": "A"}}
        for rli, lid, kind, qty in items]}


async def test_shopify_fulfillment_cancellation_and_return(settings, store):
    await store.set("A", 10, source="test")
    async with running(api_settings(settings)) as client:
        await post_shopify(client, shopify_order(501, [(1, "A", 3)]))
        assert await books(store, "A") == (7, 3, 10)
        for _ in range(2):  # a redelivery ships nothing more
            r = await post_shopify(client, fulfillment(9001, 501, [(1, "A", 2)]), "fulfillments/create")
            assert r.status_code == 200, r.text
        [line] = r.json()["lines"]
        assert (line["op"], line["status"], line["shipped"], line["replayed"]) == ("ship", "ok", 2, True)
        assert await books(store, "A") == (7, 1, 8)
        # The unit not shipped is cancelled (back to available); a shipped one comes back (a return).
        await post_shopify(client, refund(71, 501, [(1, 1, "cancel", 1)]), "refunds/create")
        assert await books(store, "A") == (8, 0, 8)
        await post_shopify(client, refund(72, 501, [(2, 1, "return", 1)]), "refunds/create")
        assert await books(store, "A") == (9, 0, 9)
        # Nothing is left to ship or cancel; a third refund of the line gives back nothing more than taken.
        r = await post_shopify(client, fulfillment(9002, 501, [(1, "A", 1)]), "fulfillments/create")
        assert r.json()["lines"][0]["status"] == "shipped_already"
        await post_shopify(client, refund(73, 501, [(3, 1, "return", 5)]), "refunds/create")
        assert await books(store, "A") == (10, 0, 10)


async def test_a_fulfillment_before_its_order_waits_for_the_take(settings, store):
    await store.set("A", 10, source="test")
    async with running(api_settings(settings)) as client:
        r = await post_shopify(client, fulfillment(9100, 600, [(1, "A", 2)]), "fulfillments/create")
        assert r.json()["lines"][0]["status"] == "waiting"
        assert await books(store, "A") == (10, 0, 10)
        await post_shopify(client, shopify_order(600, [(1, "A", 2)]))
        assert await books(store, "A") == (8, 0, 8)  # taken, then shipped by the fulfillment that waited


async def test_amazon_shipped_ships_the_whole_order_once(settings, store):
    await store.set("A", 10, source="test")
    await store.set("B", 10, source="test")
    async with running(api_settings(settings)) as client:
        await post_amazon(client, amazon_notification("111-1", "Unshipped", [("I1", "A", 2)]))
        assert await books(store, "A") == (8, 2, 10)
        for _ in range(2):
            await post_amazon(client, amazon_notification("111-1", "Shipped", [("I1", "A", 2)]))
        assert await books(store, "A") == (8, 0, 8)
        # Shipped is the first notification seen: the line is taken, then shipped.
        r = await post_amazon(client, amazon_notification("111-2", "Shipped", [("I1", "B", 3)]))
        assert [(line["op"], line["status"]) for line in r.json()["lines"]] == [("take", "ok"), ("ship", "ok")]
        assert await books(store, "B") == (7, 0, 7)


async def test_flipkart_dispatch_then_a_cancellation_restocks_nothing_shipped(settings, store):
    await store.set("A", 10, source="test")
    item = "1883380307363601"
    async with running(api_settings(settings)) as client:
        created = {"eventType": "shipment_created", "shipmentId": "s-9", "attributes": {"orderItems": [
            {"orderItemId": item, "orderId": "OD1", "sku": "A", "quantity": 2, "status": "APPROVED"}]}}
        await post_flipkart(client, created)
        dispatched = {"eventType": "shipment_dispatched", "shipmentId": "s-9", "attributes": {"orderItems": [
            {"orderItemId": item, "quantity": 2}]}}
        for _ in range(2):
            assert (await post_flipkart(client, dispatched)).status_code == 200
        assert await books(store, "A") == (8, 0, 8)
        cancelled = {"eventType": "shipment_cancelled", "shipmentId": "s-9", "attributes": {"orderItems": [
            {"orderItemId": item, "quantity": 2}]}}
        r = await post_flipkart(client, cancelled)
        assert r.json()["lines"][0]["status"] == "restocked_already"  # (nothing unshipped to cancel)
        assert await books(store, "A") == (8, 0, 8)


async def test_a_line_taken_before_0_6_ships_as_nothing_and_restocks_as_before(settings, store, sync_redis):
    await store.set("A", 7, source="test")  # (0.5 took 3 of 10: they left on_hand then)
    sync_redis.set(store.keys.webhook_line("shopify") + ":700:1", "t|3|A")
    async with running(api_settings(settings)) as client:
        r = await post_shopify(client, fulfillment(9200, 700, [(1, "A", 3)]), "fulfillments/create")
        assert (r.json()["lines"][0]["status"], r.json()["lines"][0]["shipped"]) == ("taken_before_0.6", 0)
        assert await books(store, "A") == (7, 0, 7)
        await post_shopify(client, refund(74, 700, [(4, 1, "cancel", 1)]), "refunds/create")
        assert await books(store, "A") == (8, 0, 8)


async def test_the_api_ships_lines_of_a_marketplace_order(settings, store, sync_redis):
    await store.set("A", 10, source="test")
    await store.set("B", 10, source="test")
    await Bundles(store).set("AB", {"A": 1, "B": 1})
    async with running(api_settings(settings)) as client:
        await post_shopify(client, shopify_order(800, [(1, "A", 2), (2, "AB", 3)]))
        assert (await books(store, "A"), await books(store, "B")) == ((5, 5, 10), (7, 3, 10))
        headers = auth(key="ship-800-a")
        body = {"lines": [{"line_id": "1", "qty": 1}, {"line_id": "2"}]}
        r = await client.post("/v1/orders/shopify/800:ship", json=body, headers=headers)
        assert r.status_code == 200, r.text
        assert [(x["status"], x["shipped"]) for x in r.json()["lines"]] == [("ok", 1), ("ok", 3)]
        before = snapshot(sync_redis, store.keys.prefix)
        r = await client.post("/v1/orders/shopify/800:ship", json=body, headers=headers)  # the same shipment
        assert all(x["replayed"] for x in r.json()["lines"])
        assert snapshot(sync_redis, store.keys.prefix) == before
        assert (await books(store, "A"), await books(store, "B")) == ((5, 1, 6), (7, 0, 7))
        for bad in ({"lines": []}, {"lines": [{"line_id": "1", "qty": 0}]}, {"lines": [{"qty": 1}]},
                    {"lines": [{"line_id": "1"}, {"line_id": "1"}]}, {"nope": 1}):
            r = await client.post("/v1/orders/shopify/800:ship", json=bad, headers=auth())
            assert r.status_code == 422, (bad, r.text)
        assert (await client.post("/v1/orders/nope/800:ship", json=body, headers=auth())).status_code == 404
        assert snapshot(sync_redis, store.keys.prefix) == before
