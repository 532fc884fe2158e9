"""The marketplace simulators sell: the order book, its webhooks (checked by stocksync's own verifiers and
parsers) and the marketplaces' order-list APIs, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import base64
import collections
import email.utils
import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stocksync.channels import ChannelConfig
from stocksync.devtools.simulators import AmazonSim, FlipkartSim, ShopifySim, serve
from stocksync.devtools.simulators.fastserve import serve_aiohttp
from stocksync.devtools.simulators.flipkart_orders import flipkart_signature
from stocksync.devtools.simulators.market import MarketSim
from stocksync.orders.webhooks import AmazonWebhook, FlipkartWebhook, ShopifyWebhook, Unverified

from .helpers import wait_for as wait_until

SECRETS = {"shopify": "shpss_sim_orders", "amazon": "amazon-destination-token", "flipkart": "fk-app-secret"}
FK_APP = "fk-app-id"
ORDERS_QUERY = """
query orders($first: Int!, $after: String, $q: String) {
  orders(first: $first, after: $after, sortKey: UPDATED_AT, query: $q) {
    pageInfo { hasNextPage endCursor }
    edges { cursor node { id name createdAt updatedAt cancelledAt
      lineItems(first: 10) { nodes { id sku quantity currentQuantity } }
      refunds(first: 2) { id createdAt refundLineItems(first: 10) { nodes { id quantity restockType lineItem { id sku } } } }
    } }
  }
}"""


# ----- a receiver that checks every delivery with stocksync's verifier and parser ----------------------


@dataclass
class Got:
    kind: str
    t: float
    headers: dict[str, str]
    body: bytes
    verified: bool
    takes: list[tuple[str, str, str | None, int]]
    restocks: list[tuple[str, int]]  # (line id, qty)
    delivery_id: str | None


class Receiver:
    """A tiny Starlette app on loopback: POST /hook/{kind} verifies the delivery as stocksync's receiver
    would (stocksync.orders.webhooks), records it, and answers the next of ``statuses`` (200 when none)."""

    def __init__(self) -> None:
        self.got: list[Got] = []
        self.statuses: collections.deque[int] = collections.deque()
        self.delay_s = 0.0
        self.url = ""
        self.hooks: dict[str, Any] = {}

    def build_hooks(self) -> None:
        env = {"SIMTEST_SHOPIFY": SECRETS["shopify"], "SIMTEST_AMAZON": SECRETS["amazon"],
               "SIMTEST_FK_APP": FK_APP, "SIMTEST_FK_SECRET": SECRETS["flipkart"]}
        with pytest.MonkeyPatch.context() as mp:  # the verifiers read their secrets when built
            for k, v in env.items():
                mp.setenv(k, v)
            self.hooks = {
                "shopify": ShopifyWebhook(ChannelConfig("shopify", "shopify", "", credentials={
                    "webhook_secret": "SIMTEST_SHOPIFY"}, options={"restock": "refund"})),
                "amazon": AmazonWebhook(ChannelConfig("amazon", "amazon", "", credentials={
                    "webhook_token": "SIMTEST_AMAZON"})),
                "flipkart": FlipkartWebhook(ChannelConfig("flipkart", "flipkart", "", credentials={
                    "app_id": "SIMTEST_FK_APP", "app_secret": "SIMTEST_FK_SECRET"},
                    options={"notification_url": self.url + "/hook/flipkart"})),
            }

    async def handle(self, request: Request) -> Response:
        kind, body = request.path_params["kind"], await request.body()
        hook = self.hooks[kind]
        try:
            hook.verify(request, body)
            verified = True
        except Unverified:
            verified = False
        delivery = hook.parse(request, body)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.got.append(Got(
            kind, time.monotonic(), dict(request.headers), body, verified,
            [(ln.order_id, ln.line_id, ln.channel_sku, ln.qty) for ln in delivery.takes],
            [(r.line.line_id, r.line.qty) for r in delivery.restocks], delivery.delivery_id))
        status = self.statuses.popleft() if self.statuses else 200
        return Response(b"{}", status, media_type="application/json")

    def clear(self) -> None:
        self.got.clear()
        self.statuses.clear()
        self.delay_s = 0.0


# ----- fixtures -------------------------------------------------------------------------------------


SIMS: dict[str, MarketSim] = {"shopify": ShopifySim(), "amazon": AmazonSim(), "flipkart": FlipkartSim()}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    app = Starlette(routes=[Route("/hook/{kind}", r.handle, methods=["POST"])])
    with serve(app) as url:
        r.url = url
        r.build_hooks()
        yield r


@pytest.fixture(scope="module")
def urls() -> Iterator[dict[str, str]]:
    with serve(SIMS["shopify"]) as s, serve(SIMS["amazon"]) as a, serve(SIMS["flipkart"]) as f:
        yield {"shopify": s, "amazon": a, "flipkart": f}


@pytest.fixture(autouse=True)
def _fresh(receiver: Receiver) -> None:
    for sim in SIMS.values():
        sim.reset()
    receiver.clear()


@pytest.fixture(params=list(SIMS))
def market(request: pytest.FixtureRequest, urls: dict[str, str], receiver: Receiver) -> Iterator[tuple[MarketSim, httpx.Client]]:
    """One simulator with its webhooks going to the receiver (late deliveries after 0.4 s)."""
    name = request.param
    with httpx.Client(base_url=urls[name], timeout=10) as client:
        body: dict[str, Any] = {"url": f"{receiver.url}/hook/{name}", "secret": SECRETS[name]}
        if name == "flipkart":
            body["app_id"] = FK_APP
        assert client.post("/_sim/webhooks", json=body).status_code == 200
        assert client.post("/_sim/market", json={"late_s": 0.4}).status_code == 200
        yield SIMS[name], client


def order(client: httpx.Client, lines: list[tuple[str, int]], webhook: str = "deliver") -> dict[str, Any]:
    r = client.post("/_sim/orders", json={"lines": [{"sku": s, "qty": q} for s, q in lines], "webhook": webhook})
    assert r.status_code == 200, r.text
    return r.json()


def got(receiver: Receiver, n: int, what: str = "deliveries") -> list[Got]:
    wait_until(lambda: len(receiver.got) >= n, what=f"{n} {what}")
    return list(receiver.got)


# ----- the order book ---------------------------------------------------------------------------------


def test_an_order_the_listing_covers_is_accepted_and_lowers_it(market: tuple[MarketSim, httpx.Client]) -> None:
    sim, client = market
    sim.seed({"A": 5, "B": 2})
    reply = order(client, [("A", 2), ("B", 2), ("A", 3)], webhook="drop")
    assert reply["accepted"] is True and reply["order_id"]
    assert sim.quantities == {"A": 0, "B": 0}
    assert sim.history("A") == []  # a sale is not a push: the record of what the API accepted is unchanged
    view = client.get(f"/_sim/orders/{reply['order_id']}").json()
    assert view["status"] == "open" and view["created_ms"] == view["updated_ms"]
    assert [(ln["sku"], ln["qty"], ln["current"]) for ln in view["lines"]] == [("A", 2, 2), ("B", 2, 2), ("A", 3, 3)]
    assert len({ln["line_id"] for ln in view["lines"]}) == 3
    assert client.get("/_sim/state").json()["orders"] == 1


def test_an_order_the_listing_does_not_cover_is_refused_and_changes_nothing(
    market: tuple[MarketSim, httpx.Client], receiver: Receiver,
) -> None:
    sim, client = market
    sim.seed({"A": 5, "B": 1})
    # Two lines of A add up to more than is listed; B alone would be covered.
    reply = order(client, [("B", 1), ("A", 3), ("A", 3)])
    assert reply == {"order_id": None, "accepted": False, "short": {"line": 2, "sku": "A", "wanted": 6, "listed": 5}}
    reply = order(client, [("NEVER-LISTED", 1)])
    assert reply["accepted"] is False and reply["short"]["listed"] == 0
    assert sim.quantities == {"A": 5, "B": 1}
    state = client.get("/_sim/state").json()
    assert state["orders"] == 0 and state["refused_orders"] == 2
    assert client.get("/_sim/webhooks").json()["deliveries"] == []
    # Nothing is on its way either: a covered order's webhook is the first (and only) one to arrive.
    covered = order(client, [("A", 5)])
    [first] = got(receiver, 1)
    assert covered["order_id"] in first.body.decode() and sim.quantities["A"] == 0


# ----- webhooks: each mode, verified by stocksync's receiver code -----------------------------------------


def _takes(sim: MarketSim, order_id: str) -> list[tuple[str, str, str | None, int]]:
    view = sim.order(order_id)
    assert view is not None
    return [(order_id, ln["line_id"], ln["sku"], ln["qty"]) for ln in view["lines"]]


@pytest.mark.parametrize("mode", ["deliver", "twice"])
def test_deliver_and_twice(market: tuple[MarketSim, httpx.Client], receiver: Receiver, mode: str) -> None:
    sim, client = market
    sim.seed({"A": 10, "B": 10})
    reply = order(client, [("A", 2), ("B", 1)], webhook=mode)
    n = 2 if mode == "twice" else 1
    deliveries = got(receiver, n)
    assert all(d.verified and d.kind == sim.name for d in deliveries), [d.headers for d in deliveries]
    assert all(d.takes == _takes(sim, reply["order_id"]) for d in deliveries)
    if mode == "twice":  # a redelivery: the same body, under the same delivery id where there is one
        assert deliveries[0].body == deliveries[1].body
        assert deliveries[0].delivery_id == deliveries[1].delivery_id
        if sim.name != "flipkart":  # Flipkart's notifications carry no delivery id
            assert deliveries[0].delivery_id == reply["delivery"]["delivery_id"]
    [record] = wait_until(lambda: [d for d in sim.deliveries if d.state == "delivered"], what="the record")
    assert record.delivered == n and [a["status"] for a in record.attempts] == [200] * n


def test_drop_is_never_sent_and_late_comes_after_late_s(market: tuple[MarketSim, httpx.Client], receiver: Receiver) -> None:
    sim, client = market
    sim.seed({"A": 10})
    dropped = order(client, [("A", 1)], webhook="drop")
    start = time.monotonic()
    late = order(client, [("A", 2)], webhook="late")
    assert receiver.got == []  # 0.4 s have not passed
    [arrived] = got(receiver, 1)
    assert arrived.t - start >= 0.4 and arrived.verified
    assert arrived.takes == _takes(sim, late["order_id"])  # the late one; the dropped one never left
    wait_until(lambda: all(d.state != "pending" for d in sim.deliveries),
               what="the late delivery's record")  # written once the receiver has answered
    states = {d.order_id: d.state for d in sim.deliveries}
    assert states == {dropped["order_id"]: "dropped", late["order_id"]: "delivered"}


def test_the_order_call_does_not_wait_for_its_webhook(market: tuple[MarketSim, httpx.Client], receiver: Receiver) -> None:
    sim, client = market
    sim.seed({"A": 1})
    receiver.delay_s = 1.5
    start = time.monotonic()
    order(client, [("A", 1)])
    assert time.monotonic() - start < 1.0
    assert got(receiver, 1)[0].verified


def test_failed_deliveries_are_retried_then_recorded(urls: dict[str, str], receiver: Receiver) -> None:
    sim = SIMS["shopify"]
    sim.seed({"A": 10})
    sim.set_webhook(f"{receiver.url}/hook/shopify", SECRETS["shopify"])
    sim.set_market(retry_delays_s=[0.05, 0.1])
    receiver.statuses.extend([500, 503])
    sim.place_order([("A", 1)])
    deliveries = got(receiver, 3)
    assert len({d.delivery_id for d in deliveries}) == 1 and all(d.verified for d in deliveries)
    record = wait_until(lambda: sim.deliveries[0].state != "pending" and sim.deliveries[0])
    assert record.state == "delivered" and [a["status"] for a in record.attempts] == [500, 503, 200]
    # Every attempt refused, or nobody listening: three attempts each, then recorded as failed.
    receiver.statuses.extend([502] * 3)
    sim.place_order([("A", 1)])
    sim.set_webhook("http://127.0.0.1:9/nobody", "x")
    sim.place_order([("A", 1)])
    failed = wait_until(lambda: [d for d in sim.deliveries if d.state == "failed"] if all(
        d.state != "pending" for d in sim.deliveries) else None, what="both failures")
    assert [[a["status"] for a in d.attempts] for d in failed] == [[502] * 3, [None] * 3]
    assert all(a["error"] for a in failed[1].attempts)


# ----- cancellations and refunds ------------------------------------------------------------------------


def test_cancel_restocks_and_delivers(market: tuple[MarketSim, httpx.Client], receiver: Receiver) -> None:
    sim, client = market
    sim.seed({"A": 5, "B": 5})
    placed = order(client, [("A", 2), ("B", 1)], webhook="drop")
    before = sim.order(placed["order_id"])
    r = client.post(f"/_sim/orders/{placed['order_id']}/cancel", json={"webhook": "deliver"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled" and r.json()["restocked"] == {"A": 2, "B": 1}
    assert sim.quantities == {"A": 5, "B": 5}
    view = sim.order(placed["order_id"])
    assert view["status"] == "cancelled" and view["updated_ms"] >= before["updated_ms"] and view["cancelled_ms"]
    [delivery] = got(receiver, 1)
    assert delivery.verified and delivery.takes == []
    assert sorted(delivery.restocks) == sorted((ln["line_id"], ln["qty"]) for ln in view["lines"])
    # Cancelling again is refused and changes nothing.
    again = client.post(f"/_sim/orders/{placed['order_id']}/cancel", json={})
    assert again.status_code == 409 and "already cancelled" in again.json()["message"]
    assert sim.quantities == {"A": 5, "B": 5} and len(sim.deliveries) == 2


def test_shopify_cancel_without_restock(urls: dict[str, str], receiver: Receiver) -> None:
    sim = SIMS["shopify"]
    sim.seed({"A": 5})
    sim.set_webhook(f"{receiver.url}/hook/shopify", SECRETS["shopify"])
    oid = sim.place_order([("A", 2)], webhook="drop")["order_id"]
    assert sim.cancel_order(oid, restock=False)["restocked"] == {}
    [delivery] = got(receiver, 1)
    doc = orjson.loads(delivery.body)
    assert delivery.headers["x-shopify-topic"] == "orders/cancelled" and doc["cancelled_at"]
    assert doc["refunds"][0]["refund_line_items"][0]["restock_type"] == "no_restock"
    assert delivery.restocks == [] and sim.quantities == {"A": 3}


def test_shopify_refunds(urls: dict[str, str], receiver: Receiver) -> None:
    sim = SIMS["shopify"]
    sim.seed({"A": 5, "B": 5})
    sim.set_webhook(f"{receiver.url}/hook/shopify", SECRETS["shopify"], prefixed=False)
    oid = sim.place_order([("A", 3), ("B", 1)], webhook="drop")["order_id"]
    line_a = sim.order(oid)["lines"][0]["line_id"]
    with httpx.Client(base_url=urls["shopify"]) as client:
        r = client.post(f"/_sim/orders/{oid}/refund", json={"lines": [{"line_id": line_a, "qty": 1}],
                                                            "restock_type": "return"})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "partially_refunded" and r.json()["restocked"] == {"A": 1}
        [delivery] = got(receiver, 1)
        assert delivery.verified and delivery.headers["shopify-topic"] == "refunds/create"
        assert delivery.restocks == [(line_a, 1)]
        # More than is left of the line: refused, nothing changes.
        too_many = client.post(f"/_sim/orders/{oid}/refund", json={"lines": [{"line_id": line_a, "qty": 3}]})
        assert too_many.status_code == 409 and "2 unit(s) left" in too_many.json()["message"]
        # The rest, without restock: refunded, but nothing goes back on the listing or to stocksync.
        r = client.post(f"/_sim/orders/{oid}/refund", json={"restock_type": "no_restock"})
        assert r.json()["status"] == "refunded" and r.json()["restocked"] == {}
    assert got(receiver, 2)[1].restocks == []
    assert sim.quantities == {"A": 3, "B": 4}
    assert [(ln["refunded"], ln["restocked"]) for ln in sim.order(oid)["lines"]] == [(3, 1), (1, 0)]


def test_amazon_refund_sends_nothing_and_flipkart_refund_is_a_partial_cancellation(
    urls: dict[str, str], receiver: Receiver,
) -> None:
    amazon, flipkart = SIMS["amazon"], SIMS["flipkart"]
    amazon.seed({"A": 5})
    flipkart.seed({"A": 5})
    amazon.set_webhook(f"{receiver.url}/hook/amazon", SECRETS["amazon"])
    flipkart.set_webhook(f"{receiver.url}/hook/flipkart", SECRETS["flipkart"], app_id=FK_APP)
    a = amazon.place_order([("A", 2)], webhook="drop")["order_id"]
    refund = amazon.refund_order(a)
    assert refund["delivery"] is None and refund["restocked"] == {} and amazon.quantities == {"A": 3}
    with httpx.Client(base_url=urls["amazon"]) as client:
        r = client.post(f"/_sim/orders/{a}/refund", json={"restock_type": "return"})
        assert r.status_code == 400 and "no_restock" in r.json()["message"]
    f = flipkart.place_order([("A", 3)], webhook="drop")["order_id"]
    item = flipkart.order(f)["lines"][0]["line_id"]
    assert flipkart.refund_order(f, [{"line_id": item, "qty": 2}])["restocked"] == {"A": 2}
    [delivery] = got(receiver, 1)
    assert delivery.verified and orjson.loads(delivery.body)["eventType"] == "shipment_cancelled"
    assert delivery.restocks == [(item, 2)] and flipkart.quantities == {"A": 4}


# ----- the order-list APIs -------------------------------------------------------------------------------


def _graphql(client: httpx.Client, sim: ShopifySim, query: str, **variables: Any) -> dict[str, Any]:
    body = orjson.dumps({"query": query, "variables": variables})
    r = client.post(sim.graphql_path, content=body, headers=sim.auth_headers())
    assert r.status_code == 200, r.text
    return r.json()


def test_shopify_orders_query_pages_by_updated_at(urls: dict[str, str]) -> None:
    sim = SIMS["shopify"]
    sim.seed({"A": 100})
    since = email.utils.formatdate(time.time() - 1, usegmt=True)
    ids = sim.bulk_orders([[("A", 1)]] * 25)["order_ids"]
    sim.cancel_order(ids[3], webhook="drop")  # updated last: it comes last
    sim.refund_order(ids[5], restock_type="cancel", webhook="drop")
    stamp = email.utils.parsedate_to_datetime(since).strftime("%Y-%m-%dT%H:%M:%SZ")
    seen, after, pages = [], None, 0
    with httpx.Client(base_url=urls["shopify"]) as client:
        while True:
            reply = _graphql(client, sim, ORDERS_QUERY, first=10, after=after, q=f"updated_at:>='{stamp}'")
            conn, pages = reply["data"]["orders"], pages + 1
            seen += [e["node"] for e in conn["edges"]]
            cost = reply["extensions"]["cost"]
            assert cost["requestedQueryCost"] == 2 + 10 * (1 + 12 + 2 * (1 + 12))
            assert cost["actualQueryCost"] < cost["requestedQueryCost"]
            if not conn["pageInfo"]["hasNextPage"]:
                break
            after = conn["pageInfo"]["endCursor"]
        later = _graphql(client, sim, ORDERS_QUERY, first=5, q="updated_at:>'2999-01-01T00:00:00Z'")
    assert pages == 3 and later["data"]["orders"]["edges"] == []
    assert [n["id"].rsplit("/", 1)[1] for n in seen] == [i for i in ids if i not in (ids[3], ids[5])] + [ids[3], ids[5]]
    cancelled, refunded = seen[-2], seen[-1]
    assert cancelled["cancelledAt"] and cancelled["lineItems"]["nodes"][0]["currentQuantity"] == 0
    [rli] = refunded["refunds"][0]["refundLineItems"]["nodes"]
    assert rli["restockType"] == "CANCEL" and rli["lineItem"]["id"] == refunded["lineItems"]["nodes"][0]["id"]


def test_shopify_orders_query_cost_and_throttle(urls: dict[str, str]) -> None:
    sim = SIMS["shopify"]
    sim.seed({"A": 100})
    sim.bulk_orders([[("A", 1)]] * 10)
    sim.set_faults(rate_limit=1, burst=220)  # one point a second: the bucket alone decides
    with httpx.Client(base_url=urls["shopify"]) as client:
        too_big = _graphql(client, sim, ORDERS_QUERY.replace("first: 10", "first: 250"), first=10)
        assert too_big["errors"][0]["extensions"]["code"] == "MAX_COST_EXCEEDED" and "data" not in too_big
        replies = [_graphql(client, sim, ORDERS_QUERY, first=5) for _ in range(4)]
    ok = [r for r in replies if "data" in r]
    # 197 points asked each time (2 + 5 x 39), 22 used (5 orders of one line, no refund): the rest goes back
    # to the bucket, so 220 points allow two queries before a THROTTLED, not one.
    assert [r["extensions"]["cost"]["requestedQueryCost"] for r in ok] == [197, 197]
    assert [r["extensions"]["cost"]["actualQueryCost"] for r in ok] == [22, 22]
    assert len(ok) == 2 and replies[2]["errors"][0]["extensions"]["code"] == "THROTTLED"
    assert replies[2]["extensions"]["cost"]["throttleStatus"]["currentlyAvailable"] < 197


def test_amazon_get_orders_pages_and_limits(urls: dict[str, str]) -> None:
    sim = SIMS["amazon"]
    sim.seed({"A": 100, "B": 100})
    ids = sim.bulk_orders([[("A", 1), ("B", 2)]] * 25)["order_ids"]
    sim.cancel_order(ids[0], webhook="drop")
    headers = sim.auth_headers()
    seen, token = [], None
    with httpx.Client(base_url=urls["amazon"], headers=headers) as client:
        while True:  # the default usage plan: 20 calls at once, then one a minute
            params = {"MarketplaceIds": sim.marketplace_id}
            params.update({"NextToken": token} if token else {"LastUpdatedAfter": "2020-01-01T00:00:00Z",
                                                              "MaxResultsPerPage": "10"})
            r = client.get("/orders/v0/orders", params=params)
            assert r.status_code == 200, r.text
            assert r.headers["x-amzn-RateLimit-Limit"] == "0.0167"
            payload = r.json()["payload"]
            seen += payload["Orders"]
            assert payload["LastUpdatedBefore"]
            if not (token := payload.get("NextToken")):
                break
        assert [o["AmazonOrderId"] for o in seen] == ids[1:] + ids[:1]
        assert seen[-1]["OrderStatus"] == "Canceled" and seen[0]["OrderStatus"] == "Unshipped"
        items = client.get(f"/orders/v0/orders/{ids[1]}/orderItems").json()["payload"]["OrderItems"]
        assert [(i["SellerSKU"], i["QuantityOrdered"]) for i in items] == [("A", 1), ("B", 2)]
        assert client.get("/orders/v0/orders/111-0000000-0000000/orderItems").status_code == 404
        # Past the burst: 429 with the operation's own rate, whatever the other operations did.
        statuses = [client.get("/orders/v0/orders", params={"MarketplaceIds": sim.marketplace_id,
                                                            "CreatedAfter": "2020-01-01"}).status_code
                    for _ in range(20 - 3 + 1)]
        assert statuses == [200] * 17 + [429]
        limited = client.get("/orders/v0/orders", params={"MarketplaceIds": sim.marketplace_id,
                                                          "CreatedAfter": "2020-01-01"})
        assert limited.status_code == 429 and limited.json()["errors"][0]["code"] == "QuotaExceeded"
        assert limited.headers["x-amzn-RateLimit-Limit"] == "0.0167" and int(limited.headers["Retry-After"]) >= 59
        items_calls = [client.get(f"/orders/v0/orders/{ids[1]}/orderItems").status_code for _ in range(30)]
        assert items_calls == [200] * 28 + [429] * 2  # burst 30, two used above (the 404 counts)
    assert sim.max_rate() == 0 and sim.max_rate(op="getOrders") == 20  # the listing API's limiter is apart


def test_amazon_rates_are_settable(urls: dict[str, str]) -> None:
    sim = SIMS["amazon"]
    with httpx.Client(base_url=urls["amazon"], headers=sim.auth_headers()) as client:
        r = client.post("/_sim/market", json={"limits": {"getOrders": {"rate": 1000, "burst": 1}}})
        assert r.json()["limits"]["getOrders"] == {"rate": 1000.0, "burst": 1.0}
        params = {"MarketplaceIds": sim.marketplace_id, "LastUpdatedAfter": "2020-01-01T00:00:00Z"}
        statuses = [client.get("/orders/v0/orders", params=params).status_code for _ in range(30)]
        assert statuses.count(200) >= 2  # a call a millisecond refills: not stuck at the burst of 1
        client.post("/_sim/market", json={"limits": {"getOrders": None}})
        assert all(client.get("/orders/v0/orders", params=params).status_code == 200 for _ in range(30))
        sim.reset()
        assert sim.market()["limits"]["getOrders"] == {"rate": 0.0167, "burst": 20.0}


def test_flipkart_shipment_search_pages_and_details(urls: dict[str, str]) -> None:
    sim = SIMS["flipkart"]
    sim.seed({"A": 100})
    ids = sim.bulk_orders([[("A", 2)]] * 45)["order_ids"]
    sim.cancel_order(ids[0], webhook="drop")
    item = sim.order(ids[1])["lines"][0]["line_id"]
    sim.refund_order(ids[1], [{"line_id": item, "qty": 1}], webhook="drop")  # partial: still APPROVED
    pre = {"filter": {"type": "preDispatch", "states": ["APPROVED"],
                      "modifiedDate": {"from": "2020-01-01T00:00:00+05:30"}}, "pagination": {"pageSize": 20}}
    shipments = []
    with httpx.Client(base_url=urls["flipkart"], headers=sim.auth_headers()) as client:
        r = client.post("/sellers/v3/shipments/filter", json=pre)
        while True:
            assert r.status_code == 200, r.text
            shipments += r.json()["shipments"]
            if not r.json()["hasMore"]:
                break
            r = client.get("/sellers" + r.json()["nextPageUrl"])
        cancelled = client.post("/sellers/v3/shipments/filter", json={"filter": {"type": "cancelled"}}).json()
        detail = client.get("/sellers/v3/shipments", params={"orderItemIds": item}).json()["shipments"]
    assert [s["orderItems"][0]["orderId"] for s in shipments] == ids[2:] + [ids[1]]  # modified last
    assert {s["orderItems"][0]["status"] for s in shipments} == {"APPROVED"}
    assert [(s["orderItems"][0]["orderId"], s["orderItems"][0]["status"], s["orderItems"][0]["cancelledQuantity"])
            for s in cancelled["shipments"]] == [(ids[0], "CANCELLED", 2), (ids[1], "APPROVED", 1)]
    assert [s["orderItems"][0]["orderItemId"] for s in detail] == [item]


def test_flipkart_search_limit_when_set(urls: dict[str, str]) -> None:
    sim = SIMS["flipkart"]
    sim.set_market(limits={"searchShipments": {"rate": 0.01, "burst": 2}})
    body = {"filter": {"type": "preDispatch"}}
    with httpx.Client(base_url=urls["flipkart"], headers=sim.auth_headers()) as client:
        statuses = [client.post("/sellers/v3/shipments/filter", json=body).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


ORDER_APIS = [
    ("shopify", "POST", None, orjson.dumps({"query": ORDERS_QUERY, "variables": {"first": 1}})),
    ("amazon", "GET", "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&CreatedAfter=2020-01-01", b""),
    ("amazon", "GET", "/orders/v0/orders/111-0000000-0000000", b""),
    ("amazon", "GET", "/orders/v0/orders/111-0000000-0000000/orderItems", b""),
    ("flipkart", "POST", "/sellers/v3/shipments/filter", b'{"filter": {"type": "preDispatch"}}'),
    ("flipkart", "GET", "/sellers/v3/shipments/filter?next_token=x", b""),
    ("flipkart", "GET", "/sellers/v3/shipments?orderIds=OD1", b""),
]


@pytest.mark.parametrize("credential", ["missing", "wrong"])
@pytest.mark.parametrize(("name", "method", "path", "body"), ORDER_APIS)
def test_order_apis_need_the_inventory_apis_credentials(
    urls: dict[str, str], name: str, method: str, path: str | None, body: bytes, credential: str,
) -> None:
    sim = SIMS[name]
    sim.seed({"A": 1})
    sim.place_order([("A", 1)], webhook="drop")
    headers = {k: v + "x" for k, v in sim.auth_headers().items() if k != "Content-Type"}
    with httpx.Client(base_url=urls[name]) as client:
        r = client.request(method, path or sim.graphql_path, content=body,
                           headers={"Content-Type": "application/json", **(headers if credential == "wrong" else {})})
    assert r.status_code == 401, r.text
    assert sim.calls[-1].outcome == "unauthorized"


def listed_order_ids(client: httpx.Client, sim: MarketSim) -> list[str]:
    """The first page of the marketplace's own order-list API, as order ids."""
    if isinstance(sim, ShopifySim):
        nodes = _graphql(client, sim, ORDERS_QUERY, first=10)["data"]["orders"]["edges"]
        return [e["node"]["legacyResourceId"] for e in nodes]
    if isinstance(sim, AmazonSim):
        r = client.get("/orders/v0/orders", params={"MarketplaceIds": sim.marketplace_id, "CreatedAfter": "2020-01-01"})
        return [o["AmazonOrderId"] for o in r.json()["payload"]["Orders"]]
    r = client.post("/sellers/v3/shipments/filter", json={"filter": {"type": "preDispatch"}})
    return [s["orderItems"][0]["orderId"] for s in r.json()["shipments"]]


@pytest.mark.parametrize("name", list(SIMS))
def test_the_aiohttp_server_serves_the_order_endpoints(name: str) -> None:
    sim = type(SIMS[name])()  # a server of its own: fastserve's (the benchmarks'), not uvicorn
    sim.seed({"A": 3})
    with serve_aiohttp(sim, loop="asyncio") as url, httpx.Client(base_url=url, headers=sim.auth_headers()) as client:
        placed = order(client, [("A", 2)], webhook="drop")["order_id"]
        assert listed_order_ids(client, sim) == [placed]
        assert client.get(f"/_sim/orders/{placed}").json()["status"] == "open"
        assert client.post(f"/_sim/orders/{placed}/cancel", json={"webhook": "drop"}).json()["restocked"] == {"A": 2}
    assert sim.quantities == {"A": 3}


# ----- bulk, settings, reset --------------------------------------------------------------------------


def test_bulk_orders(market: tuple[MarketSim, httpx.Client], receiver: Receiver) -> None:
    sim, client = market
    sim.seed({"A": 10, "B": 1})
    r = client.post("/_sim/orders/bulk", json={"count": 4, "lines": [{"sku": "A", "qty": 3}]}).json()
    assert (r["accepted"], r["refused"], r["refused_at"]) == (3, 1, [3]) and len(set(r["order_ids"])) == 3
    r = client.post("/_sim/orders/bulk", json={"orders": [{"lines": [{"sku": "B", "qty": 1}]},
                                                          {"lines": [{"sku": "B", "qty": 1}]},
                                                          {"lines": [{"sku": "A", "qty": 1}]}]}).json()
    assert (r["accepted"], r["refused_at"]) == (2, [1])
    assert sim.quantities == {"A": 0, "B": 0} and client.get("/_sim/state").json()["orders"] == 5
    assert sim.deliveries == []  # no webhooks: a benchmark fills the book, then reads it back


def test_reset_stops_deliveries_under_way(urls: dict[str, str], receiver: Receiver) -> None:
    sim = SIMS["amazon"]
    sim.seed({"A": 1})
    sim.set_webhook(f"{receiver.url}/hook/amazon", SECRETS["amazon"])
    sim.set_market(late_s=30)
    sim.place_order([("A", 1)], webhook="late")
    assert sim.outbox.pending() == 1
    sim.reset()
    wait_until(lambda: sim.outbox.pending() == 0, what="the late delivery to be cancelled")
    assert sim.deliveries == [] and sim.market()["late_s"] == 2.0 and sim.state()["webhook_url"] is None


def test_flipkart_signature_forms() -> None:
    date = "Tue, 19 May 2015 09:02:15 GMT"
    url, secret = "https://stock.example.com/webhooks/flipkart", "s3cret"

    def expected(stamp: str) -> str:
        digest = hashlib.sha1((stamp + url + "POST" + secret).encode()).hexdigest()
        return "FKLOGIN " + base64.b64encode(f"app:{digest}".encode()).decode()

    assert flipkart_signature("app", secret, date, url) == expected(date)  # what the receiver checks today
    assert flipkart_signature("app", secret, date, url, timestamp_form="unix") == expected("1432026135")
    with pytest.raises(ValueError):
        flipkart_signature("app", secret, date, url, timestamp_form="text")


def test_flipkart_unix_form_is_a_webhook_option(urls: dict[str, str], receiver: Receiver) -> None:
    sim = SIMS["flipkart"]
    sim.seed({"A": 1})
    url = f"{receiver.url}/hook/flipkart"
    assert sim.set_webhook(url, SECRETS["flipkart"], app_id=FK_APP, timestamp_form="unix")["options"] == {
        "app_id": FK_APP, "signed_url": None, "timestamp_form": "unix"}
    sim.place_order([("A", 1)])
    [delivery] = got(receiver, 1)
    x_date = delivery.headers["x_date"]
    stamp = str(int(email.utils.parsedate_to_datetime(x_date).timestamp()))
    assert delivery.headers["x_authorization"] == flipkart_signature(FK_APP, SECRETS["flipkart"], stamp, url)


# ----- bad input to every control endpoint: 4xx with a reason, nothing changed -----------------------------


BAD: list[tuple[str, str, str, Any, int, str]] = [
    ("POST", "/_sim/orders", "{", None, 400, "malformed JSON"),
    ("POST", "/_sim/orders", "[]", None, 400, "JSON object"),
    ("POST", "/_sim/orders", "", {}, 400, "missing field"),
    ("POST", "/_sim/orders", "", {"lines": []}, 400, "1 to 250"),
    ("POST", "/_sim/orders", "", {"lines": [{"sku": "A", "qty": 0}]}, 400, "qty must be a whole number"),
    ("POST", "/_sim/orders", "", {"lines": [{"sku": "A", "qty": 1.5}]}, 400, "qty must be a whole number"),
    ("POST", "/_sim/orders", "", {"lines": [{"sku": "", "qty": 1}]}, 400, "sku must be"),
    ("POST", "/_sim/orders", "", {"lines": [{"sku": "A", "qty": 1, "x": 1}]}, 400, "lines[0] must be"),
    ("POST", "/_sim/orders", "", {"lines": [{"sku": "A", "qty": 1}], "webhook": "maybe"}, 400, "webhook must be"),
    ("POST", "/_sim/orders", "", {"lines": [{"sku": "A", "qty": 1}], "webhok": "drop"}, 400, "unknown field"),
    ("POST", "/_sim/orders/bulk", "", {"count": 0, "lines": [{"sku": "A", "qty": 1}]}, 400, "count must be"),
    ("POST", "/_sim/orders/bulk", "", {"orders": [{"lines": [{"sku": "A", "qty": -1}]}]}, 400, "orders[0].lines[0]"),
    ("POST", "/_sim/orders/bulk", "", {"orders": [{"line": []}]}, 400, "each of orders"),
    ("GET", "/_sim/orders/NOPE", "", None, 404, "no order"),
    ("POST", "/_sim/orders/NOPE/cancel", "", {}, 404, "no order"),
    ("POST", "/_sim/orders/{id}/cancel", "", {"restock": "yes"}, 400, "restock must be"),
    ("POST", "/_sim/orders/{id}/cancel", "", {"webhook": "later"}, 400, "webhook must be"),
    ("POST", "/_sim/orders/{id}/refund", "", {"restock_type": "lost"}, 400, "restock_type must be"),
    ("POST", "/_sim/orders/{id}/refund", "", {"lines": [{"line_id": "0", "qty": 1}]}, 400, "has no line"),
    ("POST", "/_sim/orders/{id}/refund", "", {"lines": [{"line_id": "{line}", "qty": 9}]}, 409, "left"),
    ("POST", "/_sim/orders/{id}/refund", "", {"lines": "all"}, 400, "lines must be"),
    ("POST", "/_sim/webhooks", "", {"secret": "s"}, 400, "missing field"),
    ("POST", "/_sim/webhooks", "", {"url": "ftp://x", "secret": "s"}, 400, "http://"),
    ("POST", "/_sim/webhooks", "", {"url": "http://x", "secret": ""}, 400, "secret"),
    ("POST", "/_sim/webhooks", "", {"url": "http://x", "secret": "s", "colour": "red"}, 400, "unknown webhook option"),
    ("GET", "/_sim/webhooks?since=x", "", None, 400, "since"),
    ("POST", "/_sim/market", "", {"late_s": -1}, 400, "late_s"),
    ("POST", "/_sim/market", "", {"retry_delays_s": "fast"}, 400, "retry_delays_s"),
    ("POST", "/_sim/market", "", {"timeout_s": 0}, 400, "timeout_s"),
    ("POST", "/_sim/market", "", {"speed": 2}, 400, "unknown setting"),
    ("POST", "/_sim/market", "", {"late_s": 1, "limits": {"nope": None}}, 400, "unknown operation"),
    # the control endpoints every simulator had before it sold
    ("POST", "/_sim/seed", "{", None, 400, "malformed JSON"),
    ("POST", "/_sim/seed", "", {"A": -1}, 400, ">= 0"),
    ("POST", "/_sim/seed", "", {"A": "7"}, 400, "{sku: quantity}"),
    ("GET", "/_sim/calls?since=x", "", None, 400, "since"),
    ("POST", "/_sim/faults", "[]", None, 400, "JSON object"),
    ("POST", "/_sim/faults", "", {"latency_ms": 5, "nope": 1}, 400, "unknown fault"),
    ("POST", "/_sim/faults", "", {"rate_limit": 0}, 400, "rate_limit must be > 0"),
    ("POST", "/_sim/reset", "{", None, 400, "malformed JSON"),
    ("POST", "/_sim/reset", "", {"faults": "yes"}, 400, "faults"),
]


def _snapshot(sim: MarketSim, client: httpx.Client) -> Any:
    state = client.get("/_sim/state").json()
    del state["calls"], state["max_rate_1s"]
    return state, [sim.order(d.order_id) for d in sim.deliveries], len(sim.deliveries), sim.market(), \
        client.get("/_sim/webhooks").json()["url"]


@pytest.mark.parametrize(("method", "path", "raw", "body", "status", "message"), BAD,
                         ids=[f"{m} {p} {s} {msg}" for m, p, _, _, s, msg in BAD])
def test_bad_control_requests_are_4xx_and_change_nothing(
    market: tuple[MarketSim, httpx.Client], method: str, path: str, raw: str, body: Any, status: int, message: str,
) -> None:
    sim, client = market
    sim.seed({"A": 5})
    placed = order(client, [("A", 2)], webhook="drop")["order_id"]
    line = sim.order(placed)["lines"][0]["line_id"]
    path = path.replace("{id}", placed)
    if body is not None:
        raw = orjson.dumps(body).decode().replace("{line}", line)
    before = _snapshot(sim, client)
    r = client.request(method, path, content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert message in r.json()["message"], r.json()
    assert _snapshot(sim, client) == before


BAD_API: list[tuple[str, str, str, Any, str]] = [
    ("amazon", "GET", "/orders/v0/orders?CreatedAfter=2020-01-01", None, "MarketplaceIds"),
    ("amazon", "GET", "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER", None, "Exactly one"),
    ("amazon", "GET", "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&CreatedAfter=2020-01-01&LastUpdatedAfter=2020-01-01",
     None, "Exactly one"),
    ("amazon", "GET", "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&CreatedAfter=yesterday", None, "ISO 8601"),
    ("amazon", "GET", "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&LastUpdatedAfter=2020-01-01"
                      "&LastUpdatedBefore=2999-01-01", None, "120 seconds"),
    ("amazon", "GET", "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&LastUpdatedAfter=2020-01-01"
                      "&MaxResultsPerPage=101", None, "MaxResultsPerPage"),
    ("amazon", "GET", "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&NextToken=garbage", None, "NextToken"),
    ("amazon", "GET", "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&CreatedAfter=2020-01-01&OrderStatuses=Lost",
     None, "OrderStatuses"),
    ("flipkart", "POST", "/sellers/v3/shipments/filter", {"filter": {"type": "soon"}}, "filter.type"),
    ("flipkart", "POST", "/sellers/v3/shipments/filter", {"filter": {"type": "preDispatch", "states": ["SHIPPED"]}},
     "filter.states"),
    ("flipkart", "POST", "/sellers/v3/shipments/filter",
     {"filter": {"type": "preDispatch", "modifiedDate": {"from": "then"}}}, "modifiedDate.from"),
    ("flipkart", "POST", "/sellers/v3/shipments/filter", {"filter": {"type": "preDispatch"},
                                                          "pagination": {"pageSize": 21}}, "pageSize"),
    ("flipkart", "POST", "/sellers/v3/shipments/filter", {"filter": {"type": "preDispatch", "colour": 1}},
     "unknown filter field"),
    ("flipkart", "GET", "/sellers/v3/shipments/filter?next_token=abc", None, "next_token"),
    ("flipkart", "GET", "/sellers/v3/shipments", None, "one of shipmentIds"),
    ("shopify", "POST", "graphql", {"query": "{ orders { edges { node { id } } } }"}, "`first`"),
    ("shopify", "POST", "graphql", {"query": "{ orders(first: 5, sortKey: PRICE) { nodes { id } } }"}, "sortKey"),
    ("shopify", "POST", "graphql", {"query": "{ orders(first: 5, after: \"bm9wZQ==\") { nodes { id } } }"}, "cursor"),
    ("shopify", "POST", "graphql", {"query": '{ orders(first: 5, query: "updated_at:>=soon") { nodes { id } } }'},
     "updated_at"),
    ("shopify", "POST", "graphql", {"query": '{ orders(first: 5, query: "sku:A OR sku:B") { nodes { id } } }'}, "OR"),
    ("shopify", "POST", "graphql", {"query": "{ orders(first: 5, reverse: true) { nodes { id } } }"}, "reverse"),
]


@pytest.mark.parametrize(("name", "method", "path", "body", "message"), BAD_API,
                         ids=[f"{n} {msg}" for n, _, _, _, msg in BAD_API])
def test_bad_order_api_requests_are_refused_with_a_reason(
    urls: dict[str, str], name: str, method: str, path: str, body: Any, message: str,
) -> None:
    sim = SIMS[name]
    sim.seed({"A": 5})
    sim.place_order([("A", 1)], webhook="drop")
    before = sim.state()["quantities"], sim.order(sim.book.by_number(1).order_id)
    with httpx.Client(base_url=urls[name]) as client:
        r = client.request(method, sim.graphql_path if path == "graphql" else path, headers=sim.auth_headers(),
                           content=orjson.dumps(body) if body is not None else b"")
    text = r.text
    if name == "shopify":  # GraphQL answers its errors inside a 200, as Shopify does
        assert r.status_code == 200 and "data" not in r.json() and message in r.json()["errors"][0]["message"], text
    else:
        assert r.status_code == 400 and message in text, text
    assert (sim.state()["quantities"], sim.order(sim.book.by_number(1).order_id)) == before


def test_the_whole_loop_with_threads_of_buyers(urls: dict[str, str], receiver: Receiver) -> None:
    """Buyers on many threads for the last units: exactly what was listed is sold, each sale delivered once."""
    sim = SIMS["shopify"]
    sim.seed({"LAST": 20})
    sim.set_webhook(f"{receiver.url}/hook/shopify", SECRETS["shopify"])
    results: list[dict[str, Any]] = []

    def buyer() -> None:
        with httpx.Client(base_url=urls["shopify"]) as client:
            for _ in range(5):
                results.append(order(client, [("LAST", 1)]))

    threads = [threading.Thread(target=buyer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = [r for r in results if r["accepted"]]
    assert len(accepted) == 20 and len(results) == 40 and sim.quantities == {"LAST": 0}
    deliveries = got(receiver, 20)
    assert sorted(d.takes[0][0] for d in deliveries) == sorted(r["order_id"] for r in accepted)
    assert all(d.verified for d in deliveries)
