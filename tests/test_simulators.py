"""The marketplace simulators, over real HTTP on loopback: shapes, auth, faults and the record."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from stocksync.devtools.simulators import (
    AmazonSim,
    FlipkartSim,
    ShopifySim,
    Simulator,
    WebhookSim,
    aserve,
    inventory_item_gid,
    serve,
)
from stocksync.devtools.simulators.flipkart import INVENTORY_PATH

FSN = "MOBFDG3VACEXZEYZ"
SET_QUANTITIES = """
mutation set($input: InventorySetQuantitiesInput!, $key: String!) {
  inventorySetQuantities(input: $input) @idempotent(key: $key) {
    inventoryAdjustmentGroup { id changes { name delta quantityAfterChange } }
    userErrors { code field message }
  }
}"""
READ_BY_SKU = """
query read($q: String!, $loc: ID!) {
  inventoryItems(first: 50, query: $q) {
    nodes { id sku inventoryLevel(locationId: $loc) { quantities(names: ["available"]) { name quantity } } }
  }
}"""
READ_BY_ID = """
query read($ids: [ID!]!) {
  nodes(ids: $ids) {
    ... on InventoryItem { id sku inventoryLevel(locationId: LOCATION) { quantities(names: ["available"]) { quantity } } }
  }
}"""

Request = tuple[str, str, bytes]  # method, path (with query), body
VERSIONS = itertools.count(1)  # webhook versions: every push is newer than the last


# ----- fixtures: one server per simulator for the module, state reset before each test -----------

SIMS = {"shopify": ShopifySim(), "amazon": AmazonSim(), "flipkart": FlipkartSim(), "webhook": WebhookSim()}


@pytest.fixture(scope="module")
def urls() -> Iterator[dict[str, str]]:
    with (
        serve(SIMS["shopify"]) as s,
        serve(SIMS["amazon"]) as a,
        serve(SIMS["flipkart"]) as f,
        serve(SIMS["webhook"]) as w,
    ):
        yield {"shopify": s, "amazon": a, "flipkart": f, "webhook": w}


@pytest.fixture(autouse=True)
def _fresh() -> None:
    for sim in SIMS.values():
        sim.reset()


@pytest.fixture(params=list(SIMS))
def channel(request: pytest.FixtureRequest, urls: dict[str, str]) -> Iterator[tuple[Simulator, httpx.Client]]:
    with httpx.Client(base_url=urls[request.param], timeout=5) as client:
        yield SIMS[request.param], client


# ----- building well-formed requests in each API's shape ------------------------------------------


def shopify_set(
    sim: ShopifySim,
    updates: dict[str, int],
    change_from: dict[str, int | None] | None = None,
    key: str | None = None,
) -> Request:
    quantities = [
        {
            "inventoryItemId": sim.item_id(sku),
            "locationId": sim.location_id,
            "quantity": qty,
            "changeFromQuantity": (change_from or {}).get(sku),
        }
        for sku, qty in updates.items()
    ]
    variables = {
        "key": key or str(uuid.uuid4()),
        "input": {
            "name": "available",
            "reason": "correction",
            "referenceDocumentUri": "gid://stocksync/Push/1",
            "quantities": quantities,
        },
    }
    return "POST", sim.graphql_path, orjson.dumps({"query": SET_QUANTITIES, "variables": variables})


def requests_for(sim: Simulator, updates: dict[str, int], version: int | None = None) -> list[Request]:
    """The calls a well-behaved adapter makes to list ``updates`` on ``sim``."""
    if isinstance(sim, ShopifySim):
        return [shopify_set(sim, updates)]
    if isinstance(sim, AmazonSim):
        return [
            (
                "PATCH",
                sim.listing_path(sku),
                orjson.dumps(
                    {
                        "productType": "PRODUCT",
                        "patches": [
                            {
                                "op": "replace",
                                "path": "/attributes/fulfillment_availability",
                                "value": [{"fulfillment_channel_code": "DEFAULT", "quantity": qty}],
                            }
                        ],
                    }
                ),
            )
            for sku, qty in updates.items()
        ]
    if isinstance(sim, FlipkartSim):
        body = {
            sku: {"product_id": FSN, "locations": [{"id": sim.location_id, "inventory": qty}]}
            for sku, qty in updates.items()
        }
        return [("POST", INVENTORY_PATH, orjson.dumps(body))]
    assert isinstance(sim, WebhookSim)
    version = next(VERSIONS) if version is None else version
    items = [{"sku": sku, "quantity": qty, "version": version} for sku, qty in updates.items()]
    return [("POST", sim.path, orjson.dumps({"items": items}))]


def send(
    client: httpx.Client, sim: Simulator, req: Request, headers: dict[str, str] | None = None
) -> httpx.Response:
    method, path, body = req
    return client.request(
        method, path, content=body, headers=sim.auth_headers(body) if headers is None else headers
    )


def item_results(sim: Simulator, response: httpx.Response) -> dict[str, str]:
    """SKU -> "ok" or the API's failure marker, read from the reply in the API's own shape."""
    data = response.json()
    if isinstance(sim, ShopifySim):
        payload = data["data"]["inventorySetQuantities"]
        failed = {int(e["field"][2]): e["code"] for e in payload["userErrors"]}
        skus = [q["sku"] for q in SIMS["shopify"].calls[-1].items]
        return {
            sku: failed.get(i, "ok" if payload["inventoryAdjustmentGroup"] else "not_applied")
            for i, sku in enumerate(skus)
        }
    if isinstance(sim, AmazonSim):
        return {data["sku"]: "ok" if data["status"] == "ACCEPTED" else data["status"]}
    if isinstance(sim, FlipkartSim):
        return {sku: "ok" if r["status"] == "SUCCESS" else r["status"] for sku, r in data.items()}
    return {r["sku"]: "ok" if r["status"] == "applied" else r["status"] for r in data["results"]}


# ----- every simulator ------------------------------------------------------------------------


def test_accepts_a_well_formed_update_and_lists_it(channel: tuple[Simulator, httpx.Client]) -> None:
    sim, client = channel
    for req in requests_for(sim, {"SKU-A": 7, "SKU-B": 0}):
        response = send(client, sim, req)
        assert response.status_code == 200, response.text
        assert set(item_results(sim, response).values()) == {"ok"}
    assert sim.quantities["SKU-A"] == 7 and sim.quantities["SKU-B"] == 0
    assert sim.history("SKU-A") == [7]
    call = sim.calls[-1]
    assert call.outcome == "ok" and call.accepted and call.status == 200
    assert {"sku": "SKU-B", "quantity": 0}.items() <= call.items[-1].items()
    secret_header = {
        "shopify": "x-shopify-access-token",
        "amazon": "x-amz-access-token",
        "flipkart": "authorization",
    }.get(sim.name)
    if secret_header:
        assert call.headers[secret_header] == "<redacted>"
    state = client.get("/_sim/state").json()
    assert state["quantities"]["SKU-A"] == 7 and state["history"]["SKU-A"] == [7]
    assert [c["seq"] for c in client.get("/_sim/calls").json()] == [c.seq for c in sim.calls]


@pytest.mark.parametrize("credential", ["missing", "wrong"])
def test_bad_auth_is_401_and_changes_nothing(
    channel: tuple[Simulator, httpx.Client], credential: str
) -> None:
    sim, client = channel
    sim.seed({"SKU-A": 3})
    req = requests_for(sim, {"SKU-A": 9})[0]
    headers = {"Content-Type": "application/json"}
    if credential == "wrong":
        headers.update({k: v + "x" for k, v in sim.auth_headers(req[2]).items() if k != "Content-Type"})
    response = send(client, sim, req, headers=headers)
    assert response.status_code == 401
    assert sim.quantities["SKU-A"] == 3 and sim.history("SKU-A") == []
    assert sim.calls[-1].outcome == "unauthorized" and not sim.calls[-1].accepted


def test_outage_answers_503_until_it_ends(channel: tuple[Simulator, httpx.Client]) -> None:
    sim, client = channel

    def push() -> int:  # a new request each time (Shopify replays a reused idempotency key)
        return send(client, sim, requests_for(sim, {"SKU-A": 4})[0]).status_code

    sim.outage(True)
    assert push() == 503
    assert "SKU-A" not in sim.quantities or sim.quantities["SKU-A"] != 4
    sim.outage(False)
    assert push() == 200
    # The same over HTTP, and a timed window.
    assert client.post("/_sim/faults", json={"outage": True}).json()["outage"] is True
    assert push() == 503
    client.post("/_sim/faults", json={"outage": False})
    assert push() == 200
    sim.outage(seconds=30)
    assert push() == 503
    assert [c.outcome for c in sim.calls] == ["outage", "ok", "outage", "ok", "outage"]
    assert sim.history("SKU-A") == [4, 4]


@pytest.mark.parametrize("name", ["amazon", "flipkart", "webhook"])  # Shopify: test_shopify_per_item_failure
def test_permanent_per_item_failure_rejects_exactly_that_sku(name: str, urls: dict[str, str]) -> None:
    sim = SIMS[name]
    sim.set_faults(reject_skus=["BAD"])
    results: dict[str, str] = {}
    with httpx.Client(base_url=urls[name]) as client:
        for req in requests_for(sim, {"GOOD-1": 5, "BAD": 6, "GOOD-2": 7}):
            response = send(client, sim, req)
            assert response.status_code == 200
            results.update(item_results(sim, response))
    assert results["GOOD-1"] == results["GOOD-2"] == "ok"
    assert results["BAD"] != "ok"
    assert sim.quantities == {"GOOD-1": 5, "GOOD-2": 7}
    assert sim.history("BAD") == []


def test_injected_5xx_is_repeatable_with_a_seed(channel: tuple[Simulator, httpx.Client]) -> None:
    sim, client = channel

    def statuses() -> list[int]:
        sim.reset()
        sim.set_faults(error_rate=0.5, seed=7)
        return [send(client, sim, requests_for(sim, {"SKU-A": n})[0]).status_code for n in range(12)]

    first = statuses()
    assert first == statuses()
    assert set(first) == {200, 500}
    assert len(sim.history("SKU-A")) == first.count(200)  # a 5xx applies nothing


def test_latency_is_added(channel: tuple[Simulator, httpx.Client]) -> None:
    sim, client = channel
    client.post("/_sim/faults", json={"latency_ms": 60, "jitter_ms": 20})
    start = time.monotonic()
    assert send(client, sim, requests_for(sim, {"SKU-A": 1})[0]).status_code == 200
    assert time.monotonic() - start >= 0.06


# ----- rate limits: a storm never gets more than rate + burst through in any 1 s window ----------


async def storm(url: str, sim: Simulator, seconds: float, concurrency: int = 8) -> list[httpx.Response]:
    """Fire requests from ``concurrency`` tasks for ``seconds`` (bounded: 400 requests at most)."""
    replies: list[httpx.Response] = []
    numbers = itertools.count()  # one SKU per request, so concurrent versions cannot go stale
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:

        async def worker() -> None:
            while time.monotonic() < deadline and len(replies) < 400:
                method, path, body = requests_for(sim, {f"R{next(numbers)}": 1})[0]
                replies.append(
                    await client.request(method, path, content=body, headers=sim.auth_headers(body))
                )

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return replies


def max_in_window(times: list[float], window: float = 1.0) -> int:
    times = sorted(times)
    return max((sum(1 for u in times[i:] if u < t + window) for i, t in enumerate(times)), default=0)


@pytest.mark.parametrize("name", ["amazon", "flipkart", "webhook"])
def test_rate_limit_storm(name: str) -> None:
    sim = type(SIMS[name])()  # a server of its own, started with aserve under asyncio

    async def run() -> list[httpx.Response]:
        async with aserve(sim) as url:
            sim.set_faults(rate_limit=5, burst=5)
            return await storm(url, sim, seconds=1.3)

    replies = asyncio.run(run())
    ok = [r for r in replies if r.status_code == 200]
    limited = [r for r in replies if r.status_code == 429]
    assert len(ok) + len(limited) == len(replies) and len(limited) > len(ok)
    assert all(int(r.headers["Retry-After"]) >= 1 for r in limited)
    accepted = [c.t for c in sim.calls if c.accepted]
    assert len(accepted) == len(ok) == sum(len(sim.history(sku)) for sku in sim.quantities)
    assert max_in_window(accepted) <= 5 + 5
    assert sim.max_rate() == max_in_window(accepted)
    assert len(ok) <= 5 + 5 * (max(accepted) - min(accepted)) + 1


def test_shopify_cost_based_throttling(urls: dict[str, str]) -> None:
    sim = SIMS["shopify"]
    sim.set_faults(rate_limit=20, burst=30)  # 20 points/s, bucket 30: three 10-point mutations at once
    replies = asyncio.run(storm(urls["shopify"], sim, seconds=1.3))
    throttled = [r.json() for r in replies if "errors" in r.json()]
    assert all(r.status_code == 200 for r in replies)  # Shopify throttles inside a 200
    assert throttled and len(throttled) + sum(1 for c in sim.calls if c.accepted) == len(replies)
    error = throttled[0]["errors"][0]
    assert error["extensions"]["code"] == "THROTTLED"
    status = throttled[0]["extensions"]["cost"]["throttleStatus"]
    assert (
        status["maximumAvailable"] == 30 and status["restoreRate"] == 20 and status["currentlyAvailable"] < 10
    )
    assert sim.max_rate(cost=True) <= 20 + 30
    assert max_in_window([c.t for c in sim.calls if c.accepted]) * 10 <= 20 + 30


# ----- Shopify specifics ------------------------------------------------------------------------


@pytest.fixture
def shopify(urls: dict[str, str]) -> Iterator[tuple[ShopifySim, httpx.Client]]:
    sim = SIMS["shopify"]
    with httpx.Client(base_url=urls["shopify"], timeout=5) as client:
        yield sim, client


def test_shopify_stale_change_from_quantity_changes_nothing(shopify: tuple[ShopifySim, httpx.Client]) -> None:
    sim, client = shopify
    gids = client.post("/_sim/seed", json={"A": 5, "B": 2}).json()["ids"]
    assert gids["A"] == inventory_item_gid("A")
    reply = send(client, sim, shopify_set(sim, {"A": 3, "B": 1}, change_from={"A": 4, "B": 2})).json()
    payload = reply["data"]["inventorySetQuantities"]
    assert payload["inventoryAdjustmentGroup"] is None
    assert [(e["code"], e["field"]) for e in payload["userErrors"]] == [
        ("CHANGE_FROM_QUANTITY_STALE", ["input", "quantities", "0", "changeFromQuantity"])
    ]
    assert sim.quantities["A"] == 5 and sim.quantities["B"] == 2 and sim.history("A") == []
    # The adapter re-reads the current quantity (here by SKU) and retries with it.
    read = send(
        client,
        sim,
        (
            "POST",
            sim.graphql_path,
            orjson.dumps(
                {"query": READ_BY_SKU, "variables": {"q": "sku:A OR sku:B", "loc": sim.location_id}}
            ),
        ),
    ).json()
    levels = {
        n["sku"]: n["inventoryLevel"]["quantities"][0]["quantity"]
        for n in read["data"]["inventoryItems"]["nodes"]
    }
    assert levels == {"A": 5, "B": 2}
    query = READ_BY_ID.replace("LOCATION", orjson.dumps(sim.location_id).decode())  # a string literal
    body = orjson.dumps({"query": query, "variables": {"ids": [gids["B"], "gid://shopify/InventoryItem/0"]}})
    by_gid = send(client, sim, ("POST", sim.graphql_path, body)).json()["data"]["nodes"]
    assert by_gid[0]["inventoryLevel"]["quantities"][0]["quantity"] == 2 and by_gid[1] is None
    payload = send(client, sim, shopify_set(sim, {"A": 3, "B": 1}, change_from=levels)).json()["data"][
        "inventorySetQuantities"
    ]
    assert payload["userErrors"] == []
    assert [c["delta"] for c in payload["inventoryAdjustmentGroup"]["changes"]] == [-2, -1]
    assert sim.quantities["A"] == 3 and sim.history("A") == [3]


def test_shopify_change_from_quantity_is_mandatory_from_2026_04(
    shopify: tuple[ShopifySim, httpx.Client],
) -> None:
    sim, client = shopify
    method, path, body = shopify_set(sim, {"A": 3})
    doc = orjson.loads(body)
    del doc["variables"]["input"]["quantities"][0]["changeFromQuantity"]
    payload = send(client, sim, (method, path, orjson.dumps(doc))).json()["data"]["inventorySetQuantities"]
    assert payload["userErrors"][0]["field"][-1] == "changeFromQuantity" and sim.history("A") == []
    doc["variables"]["key"] = "another-key"  # the failed key cannot be reused
    old = send(client, sim, (method, "/admin/api/2025-10/graphql.json", orjson.dumps(doc))).json()
    assert old["data"]["inventorySetQuantities"]["userErrors"] == [] and sim.history("A") == [3]


def test_shopify_per_item_failure(shopify: tuple[ShopifySim, httpx.Client]) -> None:
    sim, client = shopify
    sim.set_faults(reject_skus={"BAD"})
    response = send(client, sim, shopify_set(sim, {"GOOD": 5, "BAD": 6}))
    assert item_results(sim, response) == {"GOOD": "not_applied", "BAD": "NON_MUTABLE_INVENTORY_ITEM"}
    assert sim.history("GOOD") == []  # all-or-nothing, like the real mutation
    sim.partial_apply = True
    try:
        response = send(client, sim, shopify_set(sim, {"GOOD": 5, "BAD": 6}))
        assert item_results(sim, response) == {"GOOD": "ok", "BAD": "NON_MUTABLE_INVENTORY_ITEM"}
        assert sim.history("GOOD") == [5] and sim.history("BAD") == []
    finally:
        sim.partial_apply = False


def test_shopify_rejects_more_than_250_quantities(shopify: tuple[ShopifySim, httpx.Client]) -> None:
    sim, client = shopify
    reply = send(client, sim, shopify_set(sim, {f"S{i}": i for i in range(251)})).json()
    assert reply["errors"][0]["extensions"]["code"] == "MAX_INPUT_SIZE_EXCEEDED" and "data" not in reply
    assert not any(sim.history(f"S{i}") for i in range(251))
    assert sim.calls[-1].outcome == "bad_request"
    ok = send(client, sim, shopify_set(sim, {f"S{i}": i for i in range(250)})).json()
    assert ok["data"]["inventorySetQuantities"]["userErrors"] == [] and sim.quantities["S249"] == 249


def test_shopify_idempotency_key_replays_without_applying_again(
    shopify: tuple[ShopifySim, httpx.Client],
) -> None:
    sim, client = shopify
    req = shopify_set(sim, {"A": 4}, key="push-1")
    first, again = send(client, sim, req).json(), send(client, sim, req).json()
    assert first["data"] == again["data"] and sim.history("A") == [4]
    other = send(client, sim, shopify_set(sim, {"A": 5}, key="push-1")).json()
    assert (
        other["data"]["inventorySetQuantities"]["userErrors"][0]["code"]
        == "IDEMPOTENCY_KEY_PARAMETER_MISMATCH"
    )


# ----- Flipkart, Amazon and webhook specifics ------------------------------------------------------


def test_flipkart_rejects_more_than_10_skus(urls: dict[str, str]) -> None:
    sim = SIMS["flipkart"]
    with httpx.Client(base_url=urls["flipkart"]) as client:
        response = send(client, sim, requests_for(sim, {f"S{i}": i for i in range(11)})[0])
        assert response.status_code == 400 and sim.quantities == {}
        assert send(client, sim, requests_for(sim, {f"S{i}": i for i in range(10)})[0]).status_code == 200
    assert len(sim.quantities) == 10


def test_amazon_invalid_quantity_and_read_back(urls: dict[str, str]) -> None:
    sim = SIMS["amazon"]
    with httpx.Client(base_url=urls["amazon"]) as client:
        method, path, body = requests_for(sim, {"A": 2})[0]
        bad = send(client, sim, (method, path, body.replace(b'"quantity":2', b'"quantity":-1'))).json()
        assert bad["status"] == "INVALID" and bad["issues"][0]["severity"] == "ERROR"
        assert client.get(path, headers=sim.auth_headers()).status_code == 404
        assert send(client, sim, (method, path, body)).json()["status"] == "ACCEPTED"
        listing = client.get(path, headers=sim.auth_headers()).json()
        assert listing["fulfillmentAvailability"] == [{"fulfillmentChannelCode": "DEFAULT", "quantity": 2}]
        no_market = send(client, sim, (method, path.split("?")[0], body))
        assert no_market.status_code == 400 and no_market.json()["errors"][0]["code"] == "InvalidInput"
    assert sim.history("A") == [2]


def test_webhook_ignores_older_versions(urls: dict[str, str]) -> None:
    sim = SIMS["webhook"]
    with httpx.Client(base_url=urls["webhook"]) as client:
        assert item_results(sim, send(client, sim, requests_for(sim, {"A": 5}, version=3)[0])) == {"A": "ok"}
        assert item_results(sim, send(client, sim, requests_for(sim, {"A": 9}, version=2)[0])) == {
            "A": "stale"
        }
        body = requests_for(sim, {"A": 1}, version=4)[0][2]
        tampered = send(
            client,
            sim,
            ("POST", sim.path, body.replace(b'"quantity":1', b'"quantity":2')),
            headers=sim.auth_headers(body),
        )
        assert tampered.status_code == 401
    assert sim.history("A") == [5] and sim.versions() == {"A": 3}


def test_reset_over_http_restores_faults_and_forgets_state(urls: dict[str, str]) -> None:
    sim = SIMS["webhook"]
    with httpx.Client(base_url=urls["webhook"]) as client:
        client.post("/_sim/faults", json={"reject_skus": ["X"], "error_rate": 1})
        assert send(client, sim, requests_for(sim, {"A": 1})[0]).status_code == 500
        assert client.post("/_sim/faults", json={"nope": 1}).status_code == 400
        client.post("/_sim/reset")
        state: dict[str, Any] = client.get("/_sim/state").json()
    assert state["calls"] == 0 and state["quantities"] == {} and state["faults"]["error_rate"] == 0
