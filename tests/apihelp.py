"""What the API tests share: an app wired to the test's prefix, an in-process client, signed requests."""

from __future__ import annotations

import email.utils
import itertools
from contextlib import asynccontextmanager

import httpx
import orjson

from stocksync.api.app import create_app
from stocksync.orders.webhooks import flipkart_authorization, shopify_signature
from stocksync.settings import Settings

SHOPIFY_SECRET = "shpss_test_secret"
AMAZON_TOKEN = "amazon-destination-token"
FK_APP, FK_SECRET = "fk-app-id", "fk-app-secret"
FK_URL = "https://stock.example.com/webhooks/flipkart"
ADMIN, READER = "tok-admin-0123456789", "tok-reader-0123456789"

# The config file of a `stocksync serve` started by a test: Shopify's webhook and an admin token (ENV).
SERVE_CONFIG = """
[channels.shopify]
kind = "shopify"
url = "http://127.0.0.1:9/shopify"
credentials = { webhook_secret = "T_SHOPIFY_SECRET" }

[api.tokens.admin]
env = "T_TOKEN_ADMIN"
scopes = ["*"]
"""

ENV = {"T_SHOPIFY_SECRET": SHOPIFY_SECRET, "T_AMAZON_TOKEN": AMAZON_TOKEN, "T_FK_APP": FK_APP,
       "T_FK_SECRET": FK_SECRET, "T_TOKEN_ADMIN": ADMIN, "T_TOKEN_READER": READER}

_ids = itertools.count(1)


def api_settings(settings: Settings, restock: str = "refund", **api: object) -> Settings:
    channels = {
        "shopify": {"kind": "shopify", "url": "http://127.0.0.1:9/shopify",
                    "credentials": {"webhook_secret": "T_SHOPIFY_SECRET"}, "options": {"restock": restock},
                    "sku_map": {"SHOP-RED-M": "RED-M"}},
        "amazon": {"kind": "amazon", "url": "http://127.0.0.1:9/amazon",
                   "credentials": {"webhook_token": "T_AMAZON_TOKEN"}},
        "flipkart": {"kind": "flipkart", "url": "http://127.0.0.1:9/flipkart",
                     "credentials": {"app_id": "T_FK_APP", "app_secret": "T_FK_SECRET"},
                     "options": {"notification_url": FK_URL}},
        "ebay": {"kind": "webhook", "url": "http://127.0.0.1:9/ebay"},
    }
    tokens = {"admin": {"env": "T_TOKEN_ADMIN", "scopes": ["*"]},
              "reader": {"env": "T_TOKEN_READER", "scopes": ["stock:read"]}}
    return settings.with_(sections={"channels": channels, "api": {"tokens": tokens, **api}})


@asynccontextmanager
async def running(settings: Settings):
    """The app with its lifespan run, and an httpx client talking to it in-process."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            client.app = app
            yield client


def auth(token: str = ADMIN, key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if key is not False:
        headers["Idempotency-Key"] = key or f"k{next(_ids)}"
    return headers


def shopify_headers(body: bytes, topic: str, webhook_id: str | None = None, prefixed: bool = True) -> dict:
    p = "X-Shopify-" if prefixed else "shopify-"
    return {f"{p}Hmac-Sha256": shopify_signature(body, SHOPIFY_SECRET), f"{p}Topic": topic,
            f"{p}Webhook-Id": webhook_id or f"wh-{next(_ids)}", "Content-Type": "application/json"}


def shopify_order(order_id: int, lines: list[tuple[int, str | None, int]]) -> dict:
    return {"id": order_id, "name": f"#{order_id}", "line_items": [
        {"id": lid, "sku": sku, "quantity": qty, "gift_card": False} for lid, sku, qty in lines]}


async def post_shopify(client, doc: dict, topic: str = "orders/create", webhook_id: str | None = None,
                       prefixed: bool = True) -> httpx.Response:
    body = orjson.dumps(doc)
    return await client.post("/webhooks/shopify", content=body,
                             headers=shopify_headers(body, topic, webhook_id, prefixed))


def amazon_notification(order_id: str, status: str, items: list[tuple[str, str, int]],
                        notification_id: str | None = None, fulfillment: str = "MFN") -> dict:
    return {
        "NotificationVersion": "1.0", "NotificationType": "ORDER_CHANGE", "PayloadVersion": "1.0",
        "EventTime": "2025-01-11T00:09:53.109Z",
        "NotificationMetadata": {"ApplicationId": "app-id", "SubscriptionId": "sub-id",
                                 "PublishTime": "2025-01-11T00:09:53.109Z",
                                 "NotificationId": notification_id or f"n-{next(_ids)}"},
        "Payload": {"OrderChangeNotification": {
            "NotificationLevel": "OrderLevel", "SellerId": "A3TH9S8BH6GOGM", "AmazonOrderId": order_id,
            "OrderChangeType": "OrderStatusChange",
            "OrderChangeTrigger": {"TimeOfOrderChange": "2025-01-11T00:09:53.109Z", "ChangeReason": "OrderStatusChange"},
            "Summary": {"MarketplaceId": "ATVPDKIKX0DER", "OrderStatus": status, "FulfillmentType": fulfillment,
                        "OrderItems": [{"OrderItemId": iid, "SellerSKU": sku, "Quantity": qty}
                                       for iid, sku, qty in items]}}},
    }


async def post_amazon(client, doc: dict, token: str = AMAZON_TOKEN) -> httpx.Response:
    return await client.post("/webhooks/amazon", content=orjson.dumps(doc),
                             headers={"x-stocksync-token": token, "Content-Type": "application/json"})


def flipkart_headers(date: str | None = None, secret: str = FK_SECRET) -> dict:
    date = date or email.utils.formatdate(usegmt=True)
    return {"X_Date": date, "X_Authorization": flipkart_authorization(FK_APP, secret, date, FK_URL, "POST"),
            "Content-Type": "application/json"}


async def post_flipkart(client, doc: dict, headers: dict | None = None) -> httpx.Response:
    return await client.post("/webhooks/flipkart", content=orjson.dumps(doc), headers=headers or flipkart_headers())
