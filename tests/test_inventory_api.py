"""The admin API and the command line of the inventory model: bundles, reservations, counts, shipments,
per-SKU rules; bad input gets a 4xx (exit 2) with a reason and changes nothing."""

from __future__ import annotations

import orjson
import pytest

from stocksync.devtools.testing import wait_for
from stocksync.settings import Settings

from .apihelp import READER, api_settings, auth, running
from .helpers import snapshot
from .test_cli import stocksync

pytestmark = pytest.mark.usefixtures("api_env")


async def test_bundles_through_the_api(settings, store, sync_redis):
    await store.set("MUG", 9, source="test")
    await store.set("PLATE", 4, source="test")
    async with running(api_settings(settings)) as client:
        r = await client.put("/v1/bundles/MUG-2PACK", json={"components": {"MUG": 2}}, headers=auth())
        assert r.status_code == 200 and (r.json()["status"], r.json()["available"]) == ("ok", 4), r.text
        r = await client.put("/v1/bundles/GIFT", json={"components": {"MUG": 1, "PLATE": 1}}, headers=auth())
        assert r.json()["available"] == 4
        r = await client.get("/v1/bundles/GIFT", headers=auth(key=False))
        assert r.json()["components"] == {"MUG": 1, "PLATE": 1}
        r = await client.get("/v1/skus/MUG", headers=auth(key=False))
        assert (r.json()["on_hand"], r.json()["committed"], r.json()["bundles"]) == (9, 0, ["MUG-2PACK", "GIFT"])
        r = await client.get("/v1/skus/GIFT", headers=auth(key=False))
        assert (r.json()["on_hand"], r.json()["components"]) == (None, {"MUG": 1, "PLATE": 1})
        assert {b["sku"] for b in (await client.get("/v1/bundles", headers=auth(key=False))).json()["bundles"]} == {
            "MUG-2PACK", "GIFT"}
        before = snapshot(sync_redis, store.keys.prefix)
        for body, status in (({"components": {}}, 422), ({"components": {"MUG": 0}}, 422), ({"parts": {}}, 422),
                             ({"components": {"NOPE": 1}}, 422), ({"components": {"GIFT": 1}}, 422),
                             ({"components": {"MUG": 100000}}, 422)):
            r = await client.put("/v1/bundles/SET", json=body, headers=auth())
            assert r.status_code == status and r.json()["message"], (body, r.text)
        assert (await client.put("/v1/bundles/GIFT", json={"components": {"MUG": 1}}, headers=auth(READER))).status_code == 403
        assert snapshot(sync_redis, store.keys.prefix) == before
        # (PUT /v1/skus binds its Idempotency-Key before the library refuses, as for its other refusals)
        r = await client.put("/v1/skus/GIFT", json={"available": 3}, headers=auth())
        assert r.status_code == 422 and "is a bundle" in r.json()["message"]
        assert (await store.get("GIFT")).available == 4
        deleting = auth()
        r = await client.delete("/v1/bundles/GIFT", headers=deleting)
        assert r.status_code == 200 and r.json()["available"] == 0
        r = await client.delete("/v1/bundles/GIFT", headers=deleting)  # a retry of the same request: done
        assert r.status_code == 200 and r.json()["replayed"] and r.headers["Idempotent-Replayed"] == "true"
        assert (await client.delete("/v1/bundles/GIFT", headers=auth())).status_code == 404  # a new request
        # a key reused for another request is refused, naming it, and changes nothing
        r = await client.put("/v1/bundles/GIFT", json={"components": {"MUG": 1}}, headers=deleting)
        assert r.status_code == 422 and r.json()["error"] == "idempotency_key_reused"
        assert await client.get("/v1/bundles/GIFT", headers=auth(key=False)) and (await store.get("GIFT")).available == 0


async def test_a_bundle_across_partitions_gets_422_with_the_way_out(redis_url, prefix, store):
    settings = api_settings(Settings(redis_url=redis_url, prefix=prefix + "p", partitions=8))
    async with running(settings) as client:
        keys = client.app.state.ctx.store.keys
        other = next(s for s in map(str, range(1000)) if keys.partition(s) != keys.partition("GIFT"))
        for sku in ("X{k}", f"{other}{{k}}", other):
            await client.put(f"/v1/skus/{sku}", json={"available": 5}, headers=auth())
        r = await client.put("/v1/bundles/GIFT", json={"components": {other: 1}}, headers=auth())
        assert r.status_code == 422 and "{group}" in r.json()["message"]
        r = await client.put("/v1/bundles/GIFT{k}", json={"components": {f"{other}{{k}}": 1, "X{k}": 2}}, headers=auth())
        assert r.status_code == 200 and r.json()["available"] == 2


async def test_reservations_through_the_api(settings, store, sync_redis):
    await store.set("MUG", 5, source="test")
    async with running(api_settings(settings)) as client:
        body = {"lines": {"MUG": 2}, "ttl_s": 600}
        r = await client.post("/v1/reservations", json=body, headers=auth(key="checkout-1"))
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        assert (r.json()["status"], r.json()["ttl_ms"]) == ("held", 600_000)
        again = await client.post("/v1/reservations", json=body, headers=auth(key="checkout-1"))
        assert again.status_code == 200 and again.json()["id"] == rid and again.headers["idempotent-replayed"] == "true"
        r = await client.get(f"/v1/reservations/{rid}", headers=auth(key=False))
        assert (r.json()["state"], r.json()["lines"]) == ("held", {"MUG": 2})
        assert (await client.get("/v1/skus/MUG", headers=auth(key=False))).json()["reserved"] == 2
        r = await client.post(f"/v1/reservations/{rid}:commit", headers=auth())
        assert r.status_code == 200 and r.json()["status"] == "committed"
        r = await client.post(f"/v1/reservations/{rid}:commit", headers=auth())
        assert r.status_code == 200 and r.headers["idempotent-replayed"] == "true"
        assert (await client.delete(f"/v1/reservations/{rid}", headers=auth())).status_code == 409
        short = await client.post("/v1/reservations", json={"lines": {"MUG": 4}, "ttl_s": 60}, headers=auth())
        assert short.status_code == 409 and short.json()["short_lines"] == [{"sku": "MUG", "qty": 4, "available": 3}]
        r = await client.post("/v1/reservations", json={"lines": {"MUG": 1}, "ttl_s": 60}, headers=auth())
        other = r.json()["id"]
        assert (await client.delete(f"/v1/reservations/{other}", headers=auth())).json()["status"] == "released"
        before = snapshot(sync_redis, store.keys.prefix)
        for bad in ({"lines": {}, "ttl_s": 60}, {"lines": {"MUG": 0}, "ttl_s": 60}, {"lines": {"MUG": 1}},
                    {"lines": {"MUG": 1}, "ttl_s": 0}, {"lines": {"MUG": 1}, "ttl_s": 604801},
                    {"lines": ["MUG"], "ttl_s": 1}):
            r = await client.post("/v1/reservations", json=bad, headers=auth())
            assert r.status_code == 422, (bad, r.text)
        assert (await client.post("/v1/reservations", json=body, headers=auth(key="checkout-1") | {
            "Idempotency-Key": "checkout-1"}, params={})).status_code == 200  # (same key, same body: a replay)
        r = await client.post("/v1/reservations", json={"lines": {"MUG": 1}, "ttl_s": 5}, headers=auth(key="checkout-1"))
        assert r.status_code == 422 and r.json()["error"] == "idempotency_key_reused"
        for path in ("/v1/reservations/nope:commit", "/v1/reservations/0-deadbeef:commit"):
            assert (await client.post(path, headers=auth())).status_code == 404
        assert (await client.get("/v1/reservations/7-x", headers=auth(key=False))).status_code == 404
        assert snapshot(sync_redis, store.keys.prefix) == before


async def test_an_expired_reservation_cannot_be_committed(settings, store):
    await store.set("MUG", 5, source="test")
    async with running(api_settings(settings)) as client:
        r = await client.post("/v1/reservations", json={"lines": {"MUG": 2}, "ttl_s": 1}, headers=auth())
        rid = r.json()["id"]

        async def expired():
            return (await client.get(f"/v1/reservations/{rid}", headers=auth(key=False))).json()["state"] == "expired"

        await wait_for(expired, 5, "the reservation to expire")
        assert (await client.get("/v1/skus/MUG", headers=auth(key=False))).json()["available"] == 5
        r = await client.post(f"/v1/reservations/{rid}:commit", headers=auth())
        assert r.status_code == 409 and r.json()["error"] == "expired"


async def test_count_ship_cancel_through_the_api(settings, store, sync_redis):
    await store.set("MUG", 10, source="test")
    await store.decrement("MUG", 4, ref="o1", source="shopify")
    async with running(api_settings(settings)) as client:
        r = await client.post("/v1/skus/MUG/count", json={"on_hand": 12}, headers=auth(key="count-1"))
        assert r.status_code == 200 and (r.json()["available"], r.json()["on_hand"]) == (8, 12)
        r = await client.post("/v1/skus/MUG/count", json={"on_hand": 12}, headers=auth(key="count-1"))
        assert r.headers["idempotent-replayed"] == "true"
        r = await client.post("/v1/skus/MUG/count", json={"on_hand": 3}, headers=auth())
        assert r.status_code == 409 and r.json()["error"] == "insufficient"
        r = await client.post("/v1/skus/MUG/ship", json={"qty": 3}, headers=auth())
        assert (r.status_code, r.json()["shipped"]) == (200, 3)
        r = await client.post("/v1/skus/MUG/cancel", json={"qty": 1}, headers=auth())
        assert (r.status_code, r.json()["from_committed"], r.json()["available"]) == (200, 1, 9)
        q = await store.quantities("MUG")
        assert (q.on_hand, q.committed, q.available) == (9, 0, 9)
        before = snapshot(sync_redis, store.keys.prefix)
        for path, body in (("count", {"on_hand": -1}), ("count", {"qty": 1}), ("ship", {"qty": 0}),
                           ("cancel", {"qty": "1"}), ("ship", {})):
            r = await client.post(f"/v1/skus/MUG/{path}", json=body, headers=auth())
            assert r.status_code == 422 and r.json()["message"], (path, body)
        assert (await client.post("/v1/skus/MUG/ship", json={"qty": 1}, headers=auth(READER))).status_code == 403
        assert snapshot(sync_redis, store.keys.prefix) == before
        assert (await client.post("/v1/skus/NOPE/ship", json={"qty": 1}, headers=auth())).status_code == 404


async def test_per_sku_rules_through_the_api(settings, store, sync_redis):
    async with running(api_settings(settings)) as client:
        r = await client.put("/v1/channels/shopify/rules/MUG", json={"buffer": 3, "max_listed": 10}, headers=auth())
        assert r.status_code == 200 and r.json()["rules"]["buffer"] == 3, r.text
        r = await client.get("/v1/channels/shopify/rules/MUG", headers=auth(key=False))
        assert r.json()["override"] == {"buffer": 3, "max_listed": 10}
        r = await client.get("/v1/channels/shopify/rules", headers=auth(key=False))
        assert r.json()["overrides"] == {"MUG": {"buffer": 3, "max_listed": 10}}
        assert sync_redis.get(store.keys.rules_version("shopify")) == "1"
        before = snapshot(sync_redis, store.keys.prefix)
        for body in ({}, {"buffer": -1}, {"share": 50}, {"end_when": "2"}, {"buffer": "lots"}, []):
            r = await client.put("/v1/channels/shopify/rules/MUG", json=body, headers=auth())
            assert r.status_code == 422, (body, r.text)
        assert (await client.put("/v1/channels/nope/rules/MUG", json={"buffer": 1}, headers=auth())).status_code == 404
        assert snapshot(sync_redis, store.keys.prefix) == before
        assert (await client.delete("/v1/channels/shopify/rules/MUG", headers=auth())).status_code == 204
        assert (await client.delete("/v1/channels/shopify/rules/MUG", headers=auth())).status_code == 404


def test_the_command_line(settings, tmp_path):
    assert stocksync(settings, "sku", "set", "MUG", "10").returncode == 0
    assert stocksync(settings, "sku", "set", "PLATE", "4").returncode == 0
    out = stocksync(settings, "bundle", "set", "GIFT", "MUG=1", "PLATE=1")
    assert out.returncode == 0 and '"available":4' in out.stdout, out.stderr
    assert stocksync(settings, "sku", "adjust", "MUG", "-2").returncode == 0
    got = stocksync(settings, "sku", "get", "GIFT")
    assert got.returncode == 0 and "bundle of MUGx1 PLATEx1" in got.stdout
    out = stocksync(settings, "sku", "count", "MUG", "12")
    assert out.returncode == 0 and "on_hand=12" in out.stdout
    assert stocksync(settings, "sku", "ship", "MUG", "1").returncode == 0  # (nothing committed: shipped=0)
    assert stocksync(settings, "sku", "count", "GIFT", "3").returncode == 2  # a bundle: refused
    for bad in (("bundle", "set", "X", "MUG"), ("bundle", "set", "X", "MUG=0"), ("bundle", "set", "X", "NOPE=1"),
                ("rules", "set", "nope", "MUG", "--buffer", "1"), ("sku", "count", "MUG", "-1")):
        assert stocksync(settings, *bad).returncode == 2, bad
    assert stocksync(settings, "bundle", "get", "MUG").returncode == 1
    assert '"GIFT"' in stocksync(settings, "bundle", "list").stdout
    config = tmp_path / "bundles.toml"
    config.write_text('[bundles]\n"MUG-2PACK" = { MUG = 2 }\n"GIFT" = { MUG = 1, PLATE = 1 }\n')
    out = stocksync(settings, "bundle", "apply", env={"STOCKSYNC_CONFIG": str(config)})
    assert out.returncode == 0 and '"status":"unchanged"' in out.stdout and '"sku":"MUG-2PACK","status":"ok"' in out.stdout
    assert stocksync(settings, "bundle", "delete", "MUG-2PACK").returncode == 0
    shop = tmp_path / "shop.toml"
    shop.write_text('[channels.shop]\nkind = "webhook"\nurl = "http://127.0.0.1:9/shop"\nbuffer = 2\n')
    env = {"STOCKSYNC_CONFIG": str(shop)}
    out = stocksync(settings, "rules", "set", "shop", "MUG", "--buffer", "auto", "--end-when", "1", env=env)
    assert out.returncode == 0 and '"buffer":"auto"' in out.stdout, out.stderr
    assert orjson.loads(stocksync(settings, "rules", "list", "shop", env=env).stdout)["overrides"] == {
        "MUG": {"buffer": "auto", "end_when": 1}}
    assert stocksync(settings, "rules", "set", "shop", "MUG", "--buffer", "x", env=env).returncode == 2
    assert stocksync(settings, "rules", "set", "shop", "MUG", env=env).returncode == 2  # (nothing to set)
    assert stocksync(settings, "rules", "delete", "shop", "MUG", env=env).returncode == 0
    assert stocksync(settings, "rules", "delete", "shop", "MUG", env=env).returncode == 1
    assert stocksync(settings, "reservation", "show", "0-nope").returncode == 1
    assert "ended 0" in stocksync(settings, "reservation", "expire").stdout
