"""The admin API (/v1), health, readiness, metrics and the OpenAPI document, against a real Redis."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from stocksync import functions
from stocksync.api.app import template
from stocksync.devtools.testing import wait_for

from .apihelp import READER, api_settings, auth, running
from .helpers import snapshot

pytestmark = pytest.mark.usefixtures("api_env")


async def test_tokens_and_scopes(settings, store, sync_redis):
    await store.set("A", 5, source="test")
    async with running(api_settings(settings)) as client:
        before = snapshot(sync_redis, settings.prefix)
        assert (await client.get("/v1/skus/A")).status_code == 401
        r = await client.get("/v1/skus/A", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert (await client.get("/v1/skus/A", headers=auth(READER, key=False))).status_code == 200
        r = await client.put("/v1/skus/A", json={"available": 1}, headers=auth(READER))
        assert r.status_code == 403 and "stock:write" in r.json()["message"]
        assert (await client.get("/v1/events", headers=auth(READER, key=False))).status_code == 403
        assert snapshot(sync_redis, settings.prefix) == before


async def test_sku_endpoints(settings, store):
    async with running(api_settings(settings)) as client:
        r = await client.put("/v1/skus/A", json={"available": 10, "expected_version": 0}, headers=auth(key="put-1"))
        assert r.status_code == 200 and r.json() == {"sku": "A", "status": "ok", "available": 10, "version": 1,
                                                      "replayed": False}
        # The same Idempotency-Key again: the first outcome, nothing changed.
        r = await client.put("/v1/skus/A", json={"available": 10, "expected_version": 0}, headers=auth(key="put-1"))
        assert r.status_code == 200 and r.json()["replayed"] and r.headers["idempotent-replayed"] == "true"
        r = await client.put("/v1/skus/A", json={"available": 3, "expected_version": 0}, headers=auth())
        assert r.status_code == 409 and r.json()["error"] == "conflict" and r.json()["version"] == 1
        r = await client.post("/v1/skus/A/adjust", json={"delta": -4}, headers=auth())
        assert r.status_code == 200 and r.json()["available"] == 6
        r = await client.post("/v1/skus/A/adjust", json={"delta": -40}, headers=auth())
        assert r.status_code == 409 and r.json()["error"] == "insufficient" and r.json()["available"] == 6
        r = await client.get("/v1/skus/A", headers=auth(key=False))
        assert r.status_code == 200 and r.json()["available"] == 6 and r.json()["version"] == 2
        assert r.json()["source"] == "admin"
        assert (await client.get("/v1/skus/NOPE", headers=auth(key=False))).status_code == 404
        r = await client.post("/v1/skus/NOPE/adjust", json={"delta": 1}, headers=auth())
        assert r.status_code == 404


async def test_a_sku_with_a_slash_in_the_path(settings, store):
    """SKUs like TEE/M exist: sent as is or percent-encoded, the path names the whole SKU."""
    async with running(api_settings(settings)) as client:
        r = await client.put("/v1/skus/TEE/M", json={"available": 5}, headers=auth())
        assert r.status_code == 200 and r.json()["sku"] == "TEE/M", r.text
        r = await client.post("/v1/skus/TEE%2FM/adjust", json={"delta": -2}, headers=auth())
        assert r.status_code == 200 and r.json()["available"] == 3, r.text
        r = await client.get("/v1/skus/TEE%2FM", headers=auth(key=False))
        assert r.status_code == 200 and r.json()["sku"] == "TEE/M" and r.json()["available"] == 3
        r = await client.put("/v1/channels/shopify/sku-map/SHOP/TEE-M", json={"sku": "TEE/M"}, headers=auth())
        assert r.status_code == 200, r.text
        assert await store.redis.hget(store.keys.sku_map("shopify"), "SHOP/TEE-M") == "TEE/M"
        metrics = (await client.get("/metrics")).text
        assert 'route="/v1/skus/{sku}/adjust"' in metrics and ":path" not in metrics


async def test_bad_admin_input(settings, store, sync_redis):
    await store.set("A", 5, source="test")
    async with running(api_settings(settings)) as client:
        before = snapshot(sync_redis, settings.prefix)
        r = await client.put("/v1/skus/A", json={"available": 1}, headers=auth(key=False))
        assert r.status_code == 400 and r.json()["error"] == "idempotency_key_required"
        for body, field in [({"available": -1}, "available"), ({"available": 1.5}, "available"),
                            ({"available": "3"}, "available"), ({}, "available"), ({"available": True}, "available"),
                            ({"available": 1, "extra": 1}, "extra"), ({"available": 1, "expected_version": -1},
                                                                      "expected_version")]:
            r = await client.put("/v1/skus/A", json=body, headers=auth())
            assert (r.status_code, r.json()["field"]) == (422, field), body
        r = await client.put("/v1/skus/A", content=b"{nope", headers=auth())
        assert r.status_code == 400 and r.json()["error"] == "invalid_json"
        r = await client.post("/v1/skus/A/adjust", json={"delta": 0}, headers=auth())
        assert r.status_code == 422 and r.json()["field"] == "delta"
        r = await client.post("/v1/orders", json={"lines": [{"sku": "A", "qty": 0}]}, headers=auth())
        assert r.status_code == 422 and r.json()["field"] == "lines[0].qty"
        r = await client.post("/v1/orders", json={"lines": []}, headers=auth())
        assert r.status_code == 422 and r.json()["field"] == "lines"
        r = await client.post("/v1/skus:batch", json={"items": [{"sku": "A", "available": 1}] * 2}, headers=auth())
        assert r.status_code == 422 and r.json()["field"] == "items[1].sku"
        r = await client.put("/v1/skus/A", content=b"[" + b"1," * 2_200_000 + b"1]", headers=auth())
        assert r.status_code == 413
        assert snapshot(sync_redis, settings.prefix) == before


async def test_orders_all_or_nothing(settings, store):
    await store.set("A", 5, source="test")
    await store.set("B", 1, source="test")
    async with running(api_settings(settings)) as client:
        r = await client.post("/v1/orders", json={"lines": [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 2}]},
                              headers=auth())
        assert r.status_code == 409
        assert r.json()["short_lines"] == [{"sku": "B", "qty": 2, "available": 1}]
        r = await client.post("/v1/orders", json={"lines": [{"sku": "A", "qty": 2}, {"sku": "X", "qty": 1}]},
                              headers=auth())
        assert r.status_code == 404 and r.json()["unknown_skus"] == ["X"]
        order = {"lines": [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 1}]}
        results = await asyncio.gather(*[client.post("/v1/orders", json=order, headers=auth(key="o-1"))
                                         for _ in range(10)])
        assert {r.status_code for r in results} == {200}
        assert sum(not r.json()["replayed"] for r in results) == 1
    assert (await store.get("A")).available == 3 and (await store.get("B")).available == 0


async def test_batch_import(settings, store):
    async with running(api_settings(settings)) as client:
        items = [{"sku": f"S{i}", "available": i} for i in range(300)]
        r = await client.post("/v1/skus:batch", json={"items": items}, headers=auth(key="import-1"))
        assert r.status_code == 200 and all(x["status"] == "ok" for x in r.json()["results"])
        r = await client.post("/v1/skus:batch", json={"items": items}, headers=auth(key="import-1"))
        assert all(x["replayed"] for x in r.json()["results"])
        r = await client.post("/v1/skus:batch", json={"items": [{"sku": "S1", "available": 9, "expected_version": 5}]},
                              headers=auth())
        assert r.json()["results"][0]["status"] == "conflict"
    assert (await store.get("S299")).available == 299 and (await store.get("S1")).version == 1


async def _blocked_in_xread(store) -> bool:
    return any(c.get("cmd") in ("xread", "xreadgroup") for c in await store.redis.client_list())


async def test_events_sse_and_resume(settings, store):
    await store.set("A", 10, source="test")
    async with running(api_settings(settings, sse_keepalive_s=0.2)) as client:
        task = asyncio.create_task(client.get("/v1/events?limit=2", headers=auth(key=False)))
        # the stream starts from now (the set above is not in it): wait until it is reading
        await wait_for(lambda: _blocked_in_xread(store), what="the SSE stream to start reading")
        await asyncio.sleep(0.3)  # the behaviour under test: a quiet stream sends a keepalive every 0.2 s
        await store.adjust("A", -1, source="test")
        await store.adjust("A", -2, source="test")
        r = await task
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        frames = [f for f in r.text.split("\n\n") if f.startswith("id:")]
        assert len(frames) == 2
        ids = [f.split("\n")[0][4:] for f in frames]
        data = [orjson.loads(f.split("data: ", 1)[1]) for f in frames]
        assert [d["delta"] for d in data] == [-1, -2] and data[1]["available"] == 7
        assert ": keepalive" in r.text
        # Resume after the first: the second comes again, then a new one.
        await store.adjust("A", -3, source="test")
        r = await client.get("/v1/events?limit=2", headers={**auth(key=False), "Last-Event-ID": ids[0]})
        again = [orjson.loads(f.split("data: ", 1)[1]) for f in r.text.split("\n\n") if f.startswith("id:")]
        assert [d["delta"] for d in again] == [-2, -3]
        r = await client.get("/v1/events", headers={**auth(key=False), "Last-Event-ID": "nope"})
        assert r.status_code == 400


async def test_health_ready_metrics_openapi(settings, store, monkeypatch):
    async with running(api_settings(settings)) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        r = await client.get("/readyz")
        assert r.status_code == 200 and r.json()["library"] == functions.library_version()
        await client.get("/v1/skus/A", headers=auth(key=False))
        metrics = (await client.get("/metrics")).text
        assert 'stocksync_http_requests_total{method="GET",route="/v1/skus/{sku}",status="404"} 1.0' in metrics
        doc = (await client.get("/openapi.json")).json()
        documented = {(path, method) for path, ops in doc["paths"].items() for method in ops if method != "parameters"}
        served = {(template(r.path), m.lower()) for r in client.app.routes for m in r.methods if m != "HEAD"}
        assert served == documented
        # The loaded library is not the version this package expects: not ready.
        monkeypatch.setattr(functions, "library_version", lambda: "99.0.0")
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "wrong_library"


async def test_channels_and_dead_letters(settings, store):
    async with running(api_settings(settings)) as client:
        r = await client.get("/v1/channels", headers=auth(key=False))
        assert r.status_code == 200 and {"shopify", "amazon", "flipkart", "ebay"} <= set(r.json()["channels"])
        r = await client.get("/v1/channels/shopify/dead-letters", headers=auth(key=False))
        assert r.status_code == 200 and r.json()["dead_letters"] == []
        assert (await client.get("/v1/channels/nope/dead-letters", headers=auth(key=False))).status_code == 404
        assert (await client.get("/v1/channels", headers=auth(READER, key=False))).status_code == 403


async def test_idempotency_key_names_one_request(settings, store, sync_redis):
    await store.set("A", 10, source="test")
    async with running(api_settings(settings)) as client:
        r = await client.post("/v1/skus/A/adjust", json={"delta": -3}, headers=auth(key="adj-1"))
        assert r.status_code == 200 and r.json()["available"] == 7
        before = snapshot(sync_redis, settings.prefix)
        # The same key with the same body: the first outcome again, nothing changed.
        r = await client.post("/v1/skus/A/adjust", json={"delta": -3}, headers=auth(key="adj-1"))
        assert r.status_code == 200 and r.headers["idempotent-replayed"] == "true"
        assert r.json() == {"sku": "A", "status": "ok", "available": 7, "version": 2, "replayed": True}
        # The same document written otherwise is the same body.
        r = await client.post("/v1/skus/A/adjust", content=b'{ "delta" : -3 }', headers=auth(key="adj-1"))
        assert r.status_code == 200 and r.json()["replayed"] and r.json()["available"] == 7
        # The same key with another body (or method, or path): refused, not the first outcome, nothing changed.
        for method, path, body in [("POST", "/v1/skus/A/adjust", {"delta": -5}),
                                   ("PUT", "/v1/skus/A", {"available": 1}),
                                   ("POST", "/v1/skus/B/adjust", {"delta": -3}),
                                   ("POST", "/v1/skus:batch", {"items": [{"sku": "A", "available": 1}]}),
                                   ("POST", "/v1/orders", {"lines": [{"sku": "A", "qty": 1}]})]:
            r = await client.request(method, path, json=body, headers=auth(key="adj-1"))
            assert r.status_code == 422, (method, path, r.text)
            assert r.json()["error"] == "idempotency_key_reused", r.text
            assert "Idempotency-Key reused with a different request body" in r.json()["message"]
            assert "idempotent-replayed" not in r.headers
        assert snapshot(sync_redis, settings.prefix) == before
        # A request refused before it changed anything (a bad field) does not take the key.
        r = await client.put("/v1/skus/A", json={"available": -1}, headers=auth(key="put-2"))
        assert r.status_code == 422 and r.json()["field"] == "available"
        r = await client.put("/v1/skus/A", json={"available": 4}, headers=auth(key="put-2"))
        assert r.status_code == 200 and r.json()["available"] == 4 and not r.json()["replayed"]
    assert (await store.get("A")).available == 4 and (await store.get("B")) is None


async def test_idempotency_key_sent_with_two_bodies_at_once(settings, store):
    await store.set("A", 10, source="test")
    async with running(api_settings(settings)) as client:
        orders = [{"lines": [{"sku": "A", "qty": 1 + i % 2}]} for i in range(10)]
        results = await asyncio.gather(*[client.post("/v1/orders", json=order, headers=auth(key="o-2"))
                                         for order in orders])
    # One body took the key: its requests answer one outcome (taken once), the other body's are refused.
    taken = {r.json()["lines"][0]["qty"] for r in results if r.status_code == 200}
    assert len(taken) == 1 and sum(not r.json()["replayed"] for r in results if r.status_code == 200) == 1
    assert sorted(r.status_code for r in results) == [200] * 5 + [422] * 5
    assert all(r.json()["error"] == "idempotency_key_reused" for r in results if r.status_code == 422)
    assert (await store.get("A")).available == 10 - taken.pop()
