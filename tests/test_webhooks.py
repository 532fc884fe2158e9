"""Marketplace webhooks against a real Redis: verification first, each order line exactly once."""

from __future__ import annotations

import asyncio
import email.utils
import time

import orjson
import pytest
import redis.exceptions

from .apihelp import (
    amazon_notification,
    api_settings,
    auth,
    flipkart_headers,
    post_amazon,
    post_flipkart,
    post_shopify,
    running,
    shopify_headers,
    shopify_order,
)
from .helpers import snapshot

pytestmark = pytest.mark.usefixtures("api_env")


async def _available(store, sku: str) -> int:
    stock = await store.get(sku)
    return stock.available if stock else None


# Shopify -----------------------------------------------------------------------------------------------


async def test_shopify_order_decrements_each_line_once(settings, store):
    await store.set("A", 10, source="test")
    await store.set("B", 5, source="test")
    async with running(api_settings(settings)) as client:
        doc = shopify_order(1001, [(1, "A", 2), (2, "B", 1)])
        r = await post_shopify(client, doc)
        assert r.status_code == 200, r.text
        assert [line["status"] for line in r.json()["lines"]] == ["ok", "ok"]
        # The same order under a new webhook id (a redelivery after a timeout): nothing changes.
        r = await post_shopify(client, doc)
        assert r.json()["status"] == "applied" and all(line["replayed"] for line in r.json()["lines"])
        # The same webhook id again: recognised before anything is applied.
        r = await post_shopify(client, doc, webhook_id="dup-1")
        r = await post_shopify(client, doc, webhook_id="dup-1")
        assert r.json()["status"] == "duplicate"
    assert await _available(store, "A") == 8 and await _available(store, "B") == 4


async def test_shopify_unprefixed_headers_and_sku_map(settings, store, sync_redis):
    await store.set("RED-M", 3, source="test")
    await store.set("BLUE-S", 3, source="test")
    async with running(api_settings(settings)) as client:
        # SHOP-RED-M is mapped in the config; SHOP-BLUE-S through the admin endpoint (the Redis hash).
        r = await client.put("/v1/channels/shopify/sku-map/SHOP-BLUE-S", json={"sku": "BLUE-S"}, headers=auth())
        assert r.status_code == 200, r.text
        r = await post_shopify(client, shopify_order(7, [(1, "SHOP-RED-M", 1), (2, "SHOP-BLUE-S", 2)]), prefixed=False)
        assert r.status_code == 200, r.text
        assert [(line["sku"], line["status"]) for line in r.json()["lines"]] == [("RED-M", "ok"), ("BLUE-S", "ok")]
        r = await client.get("/v1/channels/shopify/sku-map", headers=auth(key=False))
        assert r.json()["map"] == {"SHOP-RED-M": "RED-M", "SHOP-BLUE-S": "BLUE-S"}
    assert await _available(store, "RED-M") == 2 and await _available(store, "BLUE-S") == 1


async def test_uncoverable_and_unmapped_lines_answer_200_and_are_listed(settings, store, sync_redis):
    await store.set("A", 1, source="test")
    async with running(api_settings(settings)) as client:
        r = await post_shopify(client, shopify_order(2002, [(1, "A", 3), (2, "NOPE", 1), (3, None, 1)]))
        assert r.status_code == 200
        assert [line["status"] for line in r.json()["lines"]] == ["insufficient", "unknown_sku", "no_sku"]
        r = await client.get("/v1/rejections", headers=auth(key=False))
        [rejection] = r.json()["rejections"]
        assert rejection["channel"] == "shopify" and rejection["order_id"] == "2002"
        assert [(line["line_id"], line["reason"], line["action"]) for line in rejection["lines"]] == [
            ("1", "insufficient", "cancel"), ("2", "unknown_sku", "fix_map"), ("3", "no_sku", "none")]
        # Applying again before the map is fixed changes nothing; after, the line is taken and leaves the list.
        r = await client.post("/v1/rejections/shopify/2002:apply", headers=auth())
        assert r.status_code == 200 and [line["status"] for line in r.json()["lines"]] == ["unknown_sku"]
        await store.set("MUG", 4, source="test")
        r = await client.put("/v1/channels/shopify/sku-map/NOPE", json={"sku": "MUG"}, headers=auth())
        assert r.status_code == 200
        for _ in range(2):  # the second changes nothing: the line was taken (exactly once, by its reference)
            r = await client.post("/v1/rejections/shopify/2002:apply", headers=auth())
        assert [line["line_id"] for line in r.json()["remaining"]] == ["1", "3"]
        assert await _available(store, "MUG") == 3
        assert (await client.post("/v1/rejections/shopify/9999:apply", headers=auth())).status_code == 404
        # Resolved by an operator: gone from the list.
        r = await client.delete("/v1/rejections/shopify/2002", headers=auth())
        assert r.status_code == 204
        assert (await client.get("/v1/rejections", headers=auth(key=False))).json()["rejections"] == []
    assert await _available(store, "A") == 1
    events = sync_redis.xrange(store.keys.events(store.keys.partition("A")))
    rejected = [f for _, f in events if f["type"] == "stock.rejected"]
    assert len(rejected) == 1 and rejected[0]["ref"] == "shopify:2002:1"


async def test_shopify_cancellation_restocks_once_per_policy(settings, store):
    await store.set("A", 10, source="test")
    refund = {"id": 900, "order_id": 3003, "refund_line_items": [
        {"id": 51, "line_item_id": 1, "quantity": 2, "restock_type": "cancel", "line_item": {"id": 1, "sku": "A"}}]}
    async with running(api_settings(settings, restock="refund")) as client:
        await post_shopify(client, shopify_order(3003, [(1, "A", 2)]))
        assert await _available(store, "A") == 8
        cancelled = {**shopify_order(3003, [(1, "A", 2)]), "cancelled_at": "2025-01-01T00:00:00Z", "refunds": [refund]}
        for _ in range(3):
            assert (await post_shopify(client, cancelled, topic="orders/cancelled")).status_code == 200
            assert (await post_shopify(client, refund, topic="refunds/create")).status_code == 200
        assert await _available(store, "A") == 10
        # A refund without restock changes nothing; a refund of an order not seen yet waits for its take.
        no_restock = {**refund, "id": 901, "refund_line_items": [{**refund["refund_line_items"][0], "id": 52,
                                                                  "restock_type": "no_restock"}]}
        await post_shopify(client, no_restock, topic="refunds/create")
        r = await post_shopify(client, {**refund, "order_id": 4444}, topic="refunds/create")
        assert r.json()["lines"][0]["status"] == "waiting"
        assert await _available(store, "A") == 10
        r = await post_shopify(client, shopify_order(4444, [(1, "A", 2)]))
        assert [(line["op"], line["status"]) for line in r.json()["lines"]] == [("take", "ok"), ("restock", "ok")]
    assert await _available(store, "A") == 10


async def test_shopify_cancel_policy(settings, store):
    await store.set("A", 10, source="test")
    async with running(api_settings(settings, restock="cancel")) as client:
        doc = shopify_order(5005, [(1, "A", 4)])
        await post_shopify(client, doc)
        results = await asyncio.gather(*[post_shopify(client, doc, topic="orders/cancelled") for _ in range(10)])
        assert all(r.status_code == 200 for r in results)
    assert await _available(store, "A") == 10


async def test_same_order_twenty_times_concurrently_decrements_once(settings, store):
    await store.set("A", 100, source="test")
    async with running(api_settings(settings)) as client:
        doc = shopify_order(6006, [(1, "A", 3), (2, "A", 1)])
        results = await asyncio.gather(*[post_shopify(client, doc) for _ in range(20)])
        assert {r.status_code for r in results} == {200}
        cancelled = {**doc, "refunds": [{"id": 1, "order_id": 6006, "refund_line_items": [
            {"id": 70 + lid, "line_item_id": lid, "quantity": q, "restock_type": "cancel", "line_item": {"sku": "A"}}
            for lid, q in ((1, 3), (2, 1))]}]}
        assert await _available(store, "A") == 96
        results = await asyncio.gather(*[post_shopify(client, cancelled, topic="orders/cancelled") for _ in range(20)])
        assert {r.status_code for r in results} == {200}
    assert await _available(store, "A") == 100


async def test_two_hundred_webhooks_for_the_last_fifty_units_sell_exactly_fifty(settings, store, sync_redis):
    await store.set("LAST", 50, source="test")
    async with running(api_settings(settings)) as client:
        results = await asyncio.gather(*[post_shopify(client, shopify_order(10_000 + i, [(1, "LAST", 1)]))
                                         for i in range(200)])
        statuses = [r.json()["lines"][0]["status"] for r in results]
        assert {r.status_code for r in results} == {200}
        assert statuses.count("ok") == 50 and statuses.count("insufficient") == 150
        listed = (await client.get("/v1/rejections?limit=1000", headers=auth(key=False))).json()["rejections"]
        assert len(listed) == 150
    assert await _available(store, "LAST") == 0


# Bad input ---------------------------------------------------------------------------------------------


async def test_missing_or_wrong_signature_is_401_and_changes_nothing(settings, store, sync_redis):
    await store.set("A", 10, source="test")
    async with running(api_settings(settings)) as client:
        before = snapshot(sync_redis, settings.prefix)
        body = orjson.dumps(shopify_order(1, [(1, "A", 1)]))
        headers = shopify_headers(body, "orders/create")
        r = await client.post("/webhooks/shopify", content=body, headers={**headers, "X-Shopify-Hmac-Sha256": "AAAA"})
        assert r.status_code == 401
        del headers["X-Shopify-Hmac-Sha256"]
        assert (await client.post("/webhooks/shopify", content=body, headers=headers)).status_code == 401
        # Signed, then tampered with: the signature covers the raw body.
        tampered = body.replace(b'"quantity":1', b'"quantity":9')
        r = await client.post("/webhooks/shopify", content=tampered, headers=shopify_headers(body, "orders/create"))
        assert r.status_code == 401
        doc = amazon_notification("111-1", "Unshipped", [("i1", "A", 1)])
        assert (await post_amazon(client, doc, token="wrong")).status_code == 401
        r = await post_flipkart(client, {"eventType": "shipment_created"}, flipkart_headers(secret="wrong"))
        assert r.status_code == 401
        metrics = (await client.get("/metrics")).text
        assert 'stocksync_webhook_verification_failures_total{channel="shopify"} 3.0' in metrics
        assert snapshot(sync_redis, settings.prefix) == before


async def test_bad_bodies(settings, store, sync_redis):
    await store.set("A", 10, source="test")
    async with running(api_settings(settings, max_body_bytes=2048)) as client:
        before = snapshot(sync_redis, settings.prefix)
        big = b"{" + b" " * 5000 + b"}"
        r = await client.post("/webhooks/shopify", content=big, headers=shopify_headers(big, "orders/create"))
        assert r.status_code == 413

        async def chunks():  # no Content-Length: refused once the limit is passed, not after the end
            for _ in range(100):
                yield b" " * 1000

        r = await client.post("/webhooks/shopify", content=chunks(), headers=shopify_headers(b"", "orders/create"))
        assert r.status_code == 413
        bad = b'{"id": 1, "line_items": ['
        r = await client.post("/webhooks/shopify", content=bad, headers=shopify_headers(bad, "orders/create"))
        assert r.status_code == 400 and "not valid JSON" in r.json()["message"]
        r = await post_shopify(client, {"id": 1, "line_items": [{"id": 1, "sku": "A", "quantity": -2}]})
        assert r.status_code == 422 and r.json()["field"] == "line_items[0].quantity"
        r = await post_shopify(client, {"id": 1, "line_items": [{"id": 1, "sku": "A", "quantity": 1.5}]})
        assert r.status_code == 422 and r.json()["field"] == "line_items[0].quantity"
        r = await post_shopify(client, {"id": 1})
        assert r.status_code == 422 and r.json()["field"] == "line_items"
        r = await post_amazon(client, {"NotificationType": "ORDER_CHANGE", "Payload": {}})
        assert r.status_code == 422 and r.json()["field"] == "Payload.OrderChangeNotification"
        assert (await client.post("/webhooks/nowhere", content=b"{}")).status_code == 404
        assert snapshot(sync_redis, settings.prefix) == before


# Amazon ------------------------------------------------------------------------------------------------


async def test_amazon_order_change_once_per_item_and_restock_once_on_cancel(settings, store):
    await store.set("A", 10, source="test")
    await store.set("B", 10, source="test")
    items = [("oi-1", "A", 2), ("oi-2", "B", 3)]
    async with running(api_settings(settings)) as client:
        for status in ("Pending", "Unshipped", "Unshipped", "PartiallyShipped"):
            r = await post_amazon(client, amazon_notification("114-1", status, items))
            assert r.status_code == 200, r.text
        same = amazon_notification("114-1", "Unshipped", items, notification_id="fixed")
        await post_amazon(client, same)
        assert (await post_amazon(client, same)).json()["status"] == "duplicate"
        assert (await _available(store, "A"), await _available(store, "B")) == (8, 7)
        # EventBridge wraps the notification in an event's detail.
        for _ in range(3):
            cancel = {"version": "0", "detail-type": "ORDER_CHANGE",
                      "detail": amazon_notification("114-1", "Canceled", items)}
            assert (await post_amazon(client, cancel)).status_code == 200
        assert (await _available(store, "A"), await _available(store, "B")) == (10, 10)
        # Cancelled before we saw it taken: no restock, and a late Pending does not take it either.
        await post_amazon(client, amazon_notification("114-2", "Canceled", [("oi-9", "A", 1)]))
        r = await post_amazon(client, amazon_notification("114-2", "Pending", [("oi-9", "A", 1)]))
        assert r.json()["lines"][0]["status"] == "cancelled"
        # Fulfilled by Amazon: not the shared stock.
        r = await post_amazon(client, amazon_notification("114-3", "Unshipped", [("oi-5", "A", 1)], fulfillment="AFN"))
        assert r.json()["status"] == "ignored"
        r = await post_amazon(client, {"NotificationType": "ANY_OFFER_CHANGED", "Payload": {}})
        assert r.json()["status"] == "ignored"
    assert (await _available(store, "A"), await _available(store, "B")) == (10, 10)


# Flipkart ----------------------------------------------------------------------------------------------


def _fk_created(shipment: str, items: list[tuple[str, str, float]]) -> dict:
    return {"eventType": "shipment_created", "source": "flipkart", "version": "v3", "shipmentId": shipment,
            "timestamp": "2025-03-28T18:03:01+05:30", "attributes": {"orderItems": [
                {"orderItemId": oid, "orderId": "OD" + oid, "sku": sku, "quantity": qty, "status": "APPROVED"}
                for oid, sku, qty in items]}}


async def test_flipkart_signature_events_and_cancellation(settings, store):
    await store.set("A", 10, source="test")
    async with running(api_settings(settings)) as client:
        created = _fk_created("s-1", [("1883380307363600", "A", 3.0)])  # Flipkart sends 3.0 for 3
        for _ in range(3):
            r = await post_flipkart(client, created)
            assert r.status_code == 200, r.text
        assert await _available(store, "A") == 7
        cancelled = {"eventType": "shipment_cancelled", "source": "flipkart", "version": "v3",
                     "timestamp": "2025-04-12T12:12:15+05:30", "shipmentId": "s-1",
                     "attributes": {"status": "CANCELLED", "orderItems": [
                         {"orderItemId": "1883380307363600", "quantity": 1, "reason": "buyer_cancellation"}]}}
        for _ in range(2):
            assert (await post_flipkart(client, cancelled)).status_code == 200
        assert await _available(store, "A") == 8
        # A second partial cancellation of the same item is a new event; more than was taken is capped.
        later = {**cancelled, "timestamp": "2025-04-12T13:00:00+05:30"}
        later["attributes"] = {"status": "CANCELLED", "orderItems": [{"orderItemId": "1883380307363600", "quantity": 5}]}
        await post_flipkart(client, later)
        assert await _available(store, "A") == 10  # 3 taken, 1 + 2 restocked
        # Unknown event types are accepted (a failure would block the group).
        r = await post_flipkart(client, {"eventType": "shipment_packed", "attributes": {}})
        assert r.status_code == 200 and r.json()["status"] == "ignored"
        # A correct signature with an old X_Date is refused: the signature does not cover the body.
        stale = email.utils.formatdate(time.time() - 3600, usegmt=True)
        assert (await post_flipkart(client, created, flipkart_headers(date=stale))).status_code == 401


async def test_webhook_requests_are_counted_by_route_and_status(settings, store):
    await store.set("A", 10, source="test")
    async with running(api_settings(settings)) as client:
        assert (await post_shopify(client, shopify_order(9001, [(1, "A", 1)]))).status_code == 200
        body = b'{"id": 9002, "line_items": []}'
        bad = {**shopify_headers(body, "orders/create"), "X-Shopify-Hmac-Sha256": "AAAA"}
        assert (await client.post("/webhooks/shopify", content=body, headers=bad)).status_code == 401
        assert (await client.get("/webhooks/shopify")).status_code == 405
        metrics = (await client.get("/metrics")).text
    for line in ('stocksync_http_requests_total{method="POST",route="/webhooks/{channel}",status="200"} 1.0',
                 'stocksync_http_requests_total{method="POST",route="/webhooks/{channel}",status="401"} 1.0',
                 'stocksync_webhook_verification_failures_total{channel="shopify"} 1.0',
                 'stocksync_webhook_deliveries_total{channel="shopify",result="applied"} 1.0',
                 'stocksync_stock_changes_total{op="decrement",outcome="ok"} 1.0'):
        assert line in metrics, line


# A cancellation racing its order, and quantities that change between notifications -----------------------


def _hold(intake, when):
    """Stop the first of the intake's batches for which when(commands) holds, until the gate opens."""
    held, gate = asyncio.Event(), asyncio.Event()
    call = intake.batcher.call

    async def hold(commands):
        if not held.is_set() and when(commands):
            held.set()
            await gate.wait()
        return await call(commands)

    intake.batcher.call = hold
    return held, gate


def _takes(commands) -> bool:
    return any(c[:2] == ("FCALL", "stocksync_decrement") for c in commands)


def _records_a_take(commands) -> bool:
    return any(c[0] == "SET" and ":wh:line:" in c[1] and c[2].startswith("t|") for c in commands)


@pytest.mark.parametrize("stop", [_takes, _records_a_take], ids=["before-the-take", "before-its-record"])
async def test_amazon_cancel_racing_its_order_leaves_nothing_taken(settings, store, stop):
    await store.set("A", 10, source="test")
    async with running(api_settings(settings)) as client:
        held, gate = _hold(client.app.state.ctx.intake, stop)
        # The take has read no line record; it stops before it decrements, or before it records the line.
        take = asyncio.create_task(post_amazon(client, amazon_notification("115-1", "Unshipped", [("I1", "A", 2)])))
        await asyncio.wait_for(held.wait(), 5)
        # Meanwhile the cancellation runs to the end: it marks the line, and restocks only what it finds taken.
        r = await post_amazon(client, amazon_notification("115-1", "Canceled", [("I1", "A", 2)]))
        assert r.status_code == 200
        gate.set()
        r = await take
        assert r.status_code == 200 and r.json()["lines"][0]["status"] == "cancelled", r.json()
        assert await _available(store, "A") == 10
        # The cancellation again, and another status change: restocked once, taken once.
        for status in ("Canceled", "Unshipped", "Canceled"):
            assert (await post_amazon(client, amazon_notification("115-1", status, [("I1", "A", 2)]))).status_code == 200
    assert await _available(store, "A") == 10


async def test_a_later_notification_with_another_quantity_does_not_change_what_was_taken(settings, store):
    await store.set("A", 10, source="test")
    async with running(api_settings(settings)) as client:
        await post_amazon(client, amazon_notification("116-1", "Unshipped", [("I1", "A", 2)]))
        r = await post_amazon(client, amazon_notification("116-1", "Shipped", [("I1", "A", 5)]))
        [line] = [line for line in r.json()["lines"] if line["op"] == "take"]
        assert (line["status"], line["qty"], line["replayed"]) == ("ok", 2, True)
        [ship] = [line for line in r.json()["lines"] if line["op"] == "ship"]
        assert (ship["status"], ship["shipped"]) == ("ok", 2)  # what was taken shipped, not what it says
        # Two notifications of a new line at once, with different quantities: one takes, the record is its.
        await asyncio.gather(post_amazon(client, amazon_notification("116-2", "Pending", [("I1", "A", 1)])),
                             post_amazon(client, amazon_notification("116-2", "Unshipped", [("I1", "A", 4)])))
        assert await _available(store, "A") in (7, 4)
        # Cancelled with the larger quantities: restocks what was taken and not shipped, not what the last
        # notification said (116-1's two units shipped: they are gone).
        for order in ("116-1", "116-2"):
            r = await post_amazon(client, amazon_notification(order, "Canceled", [("I1", "A", 5)]))
            assert r.status_code == 200
    assert await _available(store, "A") == 8
    q = await store.quantities("A")
    assert (q.on_hand, q.committed) == (8, 0)


async def test_restock_claim_reserves_once_per_restock_and_never_beyond_what_was_taken(store, sync_redis):
    key = store.keys.webhook_line_restocks("shopify", "1:1")

    def claim(*args):
        return sync_redis.fcall("stocksync_restock_claim", 1, key, *args)

    assert claim("cancel", 3, 5, 60) == ["reserved", 3, 0]
    assert claim("cancel", 3, 5, 60) == ["reserved", 3, 1]  # not marked applied yet: apply it again, same ref
    assert claim("r1", 4, 5, 60) == ["reserved", 2, 0]  # capped at what is left
    assert claim("r2", 1, 5, 60) == ["none", 0, 0]
    sync_redis.hset(key, "cancel", "d3")
    assert claim("cancel", 3, 5, 60) == ["done", 3, 1]
    assert 0 < sync_redis.ttl(key) <= 60
    # Units restocked before the hash existed (the old :restocked counter) count too.
    other = store.keys.webhook_line_restocks("shopify", "1:2")
    assert sync_redis.fcall("stocksync_restock_claim", 1, other, "x", 5, 5, 60, 4) == ["reserved", 1, 0]
    before = sync_redis.hgetall(key)
    for args, message in (((key, "a", 0, 5, 60), "units"), ((key, "a", 1, -1, 60), "taken"),
                          ((key, "", 1, 5, 60), "restock id"), ((key, "a", 1, 5), "expected 4 or 5"),
                          ((store.keys.webhook_line("shopify") + ":1:1", "a", 1, 5, 60), "expected 1 key")):
        with pytest.raises(redis.exceptions.ResponseError, match=f"^stocksync: .*{message}"):
            sync_redis.fcall("stocksync_restock_claim", 1, *args)
    assert sync_redis.hgetall(key) == before


async def test_rejections_written_before_per_line_fields_are_still_listed_and_resolved(settings, store, sync_redis):
    await store.set("A", 0, source="test")
    member = "shopify|8008"
    old = {"channel": "shopify", "order_id": "8008", "ts_ms": 1, "lines": [
        {"line_id": "1", "channel_sku": "A", "sku": "A", "qty": 1, "reason": "insufficient", "available": 0}]}
    sync_redis.hset(store.keys.rejections, member, orjson.dumps(old))
    sync_redis.zadd(store.keys.rejections_index, {member: 1})
    async with running(api_settings(settings)) as client:
        await post_shopify(client, shopify_order(8008, [(2, "A", 1)]))
        [rejection] = (await client.get("/v1/rejections", headers=auth(key=False))).json()["rejections"]
        assert [line["line_id"] for line in rejection["lines"]] == ["1", "2"] and rejection["ts_ms"] == 1
        assert (await client.delete("/v1/rejections/shopify/8008", headers=auth())).status_code == 204
        assert (await client.get("/v1/rejections", headers=auth(key=False))).json()["rejections"] == []


def _shopify_line_item(line_id: int, sku: str) -> dict:
    """A line item with the fields Shopify's orders webhooks carry (sizes as in its published examples)."""
    money = {"shop_money": {"amount": "199.00", "currency_code": "USD"},
             "presentment_money": {"amount": "199.00", "currency_code": "USD"}}
    return {"id": line_id, "admin_graphql_api_id": f"gid://shopify/LineItem/{line_id}", "attributed_staffs": [],
            "current_quantity": 1, "fulfillable_quantity": 1, "fulfillment_service": "manual",
            "fulfillment_status": None, "gift_card": False, "grams": 567, "name": "IPod Nano - 8GB - Pink " * 2,
            "price": "199.00", "price_set": money, "pre_tax_price": "191.00", "pre_tax_price_set": money,
            "product_exists": True, "product_id": 632910392, "product_has_variants": True, "tax_code": "",
            "properties": [{"name": "Custom Engraving Front", "value": "Happy Birthday Mom!"},
                           {"name": "Custom Engraving Back", "value": "Engraved on the back of the device"}],
            "quantity": 1, "requires_shipping": True, "sku": sku, "taxable": True, "title": "IPod Nano - 8GB",
            "total_discount": "0.00", "total_discount_set": money, "variant_id": 808950810,
            "variant_inventory_management": "shopify", "variant_title": "Pink", "vendor": "Apple Computers Inc.",
            "tax_lines": [{"channel_liable": False, "price": "3.98", "price_set": money, "rate": 0.06,
                           "title": "State Tax"}, {"channel_liable": False, "price": "1.99", "price_set": money,
                                                   "rate": 0.01, "title": "County Tax"}],
            "duties": [], "discount_allocations": [{"amount": "3.33", "amount_set": money,
                                                    "discount_application_index": 0}],
            "origin_location": {"id": 24826418, "country_code": "US", "province_code": "NY",
                                "name": "Apple Computers Inc.", "address1": "1 Infinite Loop", "address2": "",
                                "city": "Cupertino", "zip": "95014"}}


async def test_a_250_line_shopify_cancellation_with_its_refund_passes_the_body_limit(settings, store):
    skus = [f"BIG{i:03d}" for i in range(250)]
    for sku in skus:
        await store.set(sku, 5, source="test")
    items = [_shopify_line_item(10_000 + i, sku) for i, sku in enumerate(skus)]
    order = {"id": 7777, "name": "#7777", "line_items": items}
    refund = {"id": 778, "order_id": 7777, "refund_line_items": [
        {"id": 20_000 + i, "line_item_id": item["id"], "quantity": 1, "restock_type": "cancel", "line_item": item,
         "location_id": 24826418, "subtotal": 199.0, "total_tax": 5.97,
         "subtotal_set": item["price_set"], "total_tax_set": item["price_set"]} for i, item in enumerate(items)]}
    cancelled = {**order, "cancelled_at": "2025-01-01T00:00:00Z", "cancel_reason": "customer", "refunds": [refund]}
    body = orjson.dumps(cancelled)
    assert len(body) > 1 << 20  # over the old 1 MiB limit
    async with running(api_settings(settings)) as client:
        assert (await post_shopify(client, order)).status_code == 200
        r = await post_shopify(client, cancelled, topic="orders/cancelled")
        assert r.status_code == 200, r.text[:300]
        assert sum(line["status"] == "ok" for line in r.json()["lines"]) == 250
    assert [(await store.get(sku)).available for sku in skus] == [5] * 250
