"""Everything on a Redis Cluster with replicas, as real processes: the sandbox of `stocksync demo --cluster`
(3 primaries + 3 replicas, 12 partitions; the API, a worker per marketplace with its order poller), then
every read and write of the API and the console's reads, and the CLI's commands (status, dlq, resync, tail,
sku list/export/import, rules, bundles, reservations, rejections, reconcile), each checked for what it
answers, not only its exit code. Finally no child process logged an error.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis

from stocksync.devtools.demo import Api, applied, wait_listed
from stocksync.devtools.sandbox import CHANNELS, Sandbox
from stocksync.keys import Keys, crc16
from stocksync.settings import Settings

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parent.parent


def _spread(per_primary: int) -> list[str]:
    """SKUs of the sandbox's deployment (prefix stocksync, 12 partitions), per_primary on each of the three
    primaries (slots split evenly, as EmbeddedCluster does)."""
    keys, picked = Keys("stocksync", 12), {0: [], 1: [], 2: []}
    for i in range(1000):
        sku = f"CL-{i}"
        primary = min((crc16(keys.tag(keys.partition(sku))[1:-1].encode()) % 16384) // (16384 // 3), 2)
        if len(picked[primary]) < per_primary:
            picked[primary].append(sku)
    return [s for i in range(per_primary) for s in (picked[0][i], picked[1][i], picked[2][i])]


SKUS = _spread(3)  # on every primary


@pytest.fixture(scope="module")
def box():
    with Sandbox(Settings(), lambda _: None, cluster=True) as box:
        yield box


def cli(box: Sandbox, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "stocksync", *args], env=box.child_env(), cwd=ROOT, input=stdin,
                         capture_output=True, timeout=60)
    assert out.returncode == 0, (args, out.returncode, out.stdout.decode(), out.stderr.decode())
    return out


@pytest.fixture
async def api(box):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        yield Api(box, http)


async def test_the_sandbox_spreads_skus_over_every_primary(box, api):
    assert box.settings.cluster and box.keys.partitions == 12
    with redis.RedisCluster.from_url(box.redis_url) as r:
        homes = {r.get_node_from_key(box.keys.sku(s)).port for s in SKUS}
        nodes = r.cluster_nodes()
    assert len(homes) == 3
    assert sum("slave" in n["flags"] for n in nodes.values()) == 3  # a replica behind every primary
    for i, sku in enumerate(SKUS):
        await api.set_stock(sku, 10 + i)
    for i, sku in enumerate(SKUS):
        assert await wait_listed(box, sku, 10 + i)


async def test_orders_of_every_marketplace_and_the_admin_api(box, api):
    for channel, sku in zip(CHANNELS, SKUS, strict=False):
        _, status, _ = await api.order(channel, sku, 2)
        assert status == "ok"
    _, status, _ = await api.order("amazon", SKUS[3], 99)
    assert status == "insufficient"
    auth = {**api.auth, "Idempotency-Key": uuid.uuid4().hex}
    async with api.http.post(f"{api.url}/v1/skus/{SKUS[4]}/adjust", json={"delta": 5}, headers=auth) as r:
        assert r.status == 200, await r.text()
    async with api.http.post(f"{api.url}/v1/skus:batch", headers={**api.auth, "Idempotency-Key": uuid.uuid4().hex},
                             json={"items": [{"sku": s, "available": 7} for s in SKUS[5:]]}) as r:
        assert r.status == 200, await r.text()
    expected = {SKUS[0]: 8, SKUS[1]: 9, SKUS[2]: 10, SKUS[3]: 13, SKUS[4]: 19, **dict.fromkeys(SKUS[5:], 7)}
    assert len(expected) == 9
    for sku, qty in expected.items():
        assert await api.available(sku) == qty
        assert await wait_listed(box, sku, qty), (sku, {n: s.quantities.get(sku) for n, s in box.sims.items()}, [box.log_tail(n, 5) for n in box.procs])


async def test_every_read_of_the_api_and_the_console(box, api):
    reads = {"/v1/skus?limit=1000": lambda j: {s["sku"] for s in j["skus"]} >= set(SKUS),
             "/v1/skus:export": None, "/v1/channels": lambda j: set(j["channels"]) == set(CHANNELS),
             "/v1/rejections": lambda j: len(j["rejections"]) >= 1, "/v1/bundles": None,
             "/v1/skus:listings?limit=100": None, f"/v1/skus:history?sku={SKUS[0]}": None, "/v1/whoami": None,
             "/v1/channels/amazon/dead-letters": None, "/v1/channels/amazon/rules": None, "/metrics": None,
             "/console": None, "/readyz": None}
    for path, check in reads.items():
        async with api.http.get(api.url + path, headers=api.auth) as r:
            body = await r.read()
            assert r.status == 200, (path, r.status, body[:300])
            if check:
                assert check(orjson.loads(body)), (path, body[:500])
    async with api.http.get(api.url + "/v1/skus:export", headers=api.auth) as r:
        text = await r.text()
    assert all(f"\n{s}," in text for s in SKUS), text[:300]


async def test_rules_bundles_and_reservations_on_a_cluster(box, api):
    async with api.http.put(f"{api.url}/v1/channels/shopify/rules/{SKUS[1]}", json={"buffer": 3},
                            headers=keyed(api)) as r:
        assert r.status == 200, await r.text()
    assert await wait_listed_on(box, "shopify", SKUS[1], 9 - 3)
    async with api.http.delete(f"{api.url}/v1/channels/shopify/rules/{SKUS[1]}", headers=keyed(api)) as r:
        assert r.status == 204, await r.text()
    assert await wait_listed_on(box, "shopify", SKUS[1], 9)
    await api.set_stock("CUP{cl}", 4)
    await api.put_bundle("CUP-2{cl}", {"CUP{cl}": 2})
    assert await wait_listed(box, "CUP-2{cl}", 2)
    headers = {**api.auth, "Idempotency-Key": uuid.uuid4().hex}
    async with api.http.post(f"{api.url}/v1/reservations", json={"lines": {"CUP{cl}": 1}, "ttl_s": 60},
                             headers=headers) as r:
        assert r.status == 201, await r.text()
        res = await r.json()
    async with api.http.post(f"{api.url}/v1/reservations/{res['id']}:commit", headers=keyed(api)) as r:
        assert r.status == 200, await r.text()
    assert await wait_listed(box, "CUP{cl}", 3)


async def test_an_order_across_primaries_through_the_api(box, api):
    """POST /v1/orders whose SKUs live on three primaries: held per partition, then all committed (200, the
    same key again changes nothing) or none (409 with the short line, nothing held)."""
    a, b, c = SKUS[6], SKUS[7], SKUS[8]  # (7 each after the batch above)
    assert len({box.keys.partition(s) for s in (a, b, c)}) == 3
    order = {"lines": [{"sku": a, "qty": 1}, {"sku": b, "qty": 2}, {"sku": c, "qty": 3}]}
    headers = keyed(api)
    for replay in (False, True):  # the second is a replay, and says so
        async with api.http.post(f"{api.url}/v1/orders", json=order, headers=headers) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["replayed"] is replay and (r.headers.get("Idempotent-Replayed") == "true") is replay
    assert [await api.available(s) for s in (a, b, c)] == [6, 5, 4]
    too_many = {"lines": [{"sku": a, "qty": 1}, {"sku": c, "qty": 5}]}
    async with api.http.post(f"{api.url}/v1/orders", json=too_many, headers=keyed(api)) as r:
        assert r.status == 409 and [x["sku"] for x in (await r.json())["short_lines"]] == [c]
    assert [(await api.quantities(s))["reserved"] for s in (a, c)] == [0, 0]
    assert [await api.available(s) for s in (a, b, c)] == [6, 5, 4]
    for sku, qty in ((a, 6), (b, 5), (c, 4)):
        assert await wait_listed(box, sku, qty), sku


def keyed(api: Api) -> dict[str, str]:
    return {**api.auth, "Idempotency-Key": uuid.uuid4().hex}


async def wait_listed_on(box: Sandbox, channel: str, sku: str, qty: int) -> bool:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if box.sims[channel].quantities.get(sku) == qty and applied(box.sims[channel], sku):
            return True
        await asyncio.sleep(0.01)
    return False


def test_the_command_line_on_a_cluster(box, tmp_path):
    status = orjson.loads(cli(box, "status", "--json").stdout)
    assert set(status) == set(CHANNELS)
    assert all(any(w["alive"] for w in s["workers"]) for s in status.values()), status
    cli(box, "status", "--healthy")
    assert cli(box, "tail", "--from", "0", "--count", "5").stdout.count(b"\n") == 5
    listed = cli(box, "sku", "list").stdout.decode()
    assert all(f"{s}\t" in listed for s in SKUS)
    export = cli(box, "sku", "export").stdout
    cli(box, "sku", "import", "-", "--dry-run", stdin=export)
    assert b"available=" in cli(box, "sku", "get", SKUS[0]).stdout
    cli(box, "sku", "set", "CLI-1", "6", "--ref", "cli-1")
    cli(box, "rules", "set", "amazon", "CLI-1", "--max-listed", "2")
    assert b"CLI-1" in cli(box, "rules", "list", "amazon").stdout
    cli(box, "rules", "delete", "amazon", "CLI-1")
    cli(box, "dlq", "list", "amazon")
    cli(box, "dlq", "replay", "amazon")
    resync = cli(box, "resync", "flipkart", "--missing").stdout.decode()
    assert "0 failed" in resync, resync
    assert b"CUP-2{cl}" in cli(box, "bundle", "list").stdout
    assert b"amazon" in cli(box, "rejections", "list").stdout
    cli(box, "reconcile", "orders", "shopify")
    cli(box, "functions", "load")


def test_no_child_logged_an_error(box):
    for name in box.procs:
        text = (box.dir / f"{name}.log").read_text(errors="replace")
        bad = [line for line in text.splitlines() if '"level": "error"' in line or "Traceback" in line
               or '"level":"error"' in line]
        assert not bad, (name, bad[:5])


def test_demo_cluster_runs_and_leaves_nothing_behind():
    """`stocksync demo --cluster`, as a user runs it: every replay passes on 3 primaries + 3 replicas, and
    none of the processes it started (six Redis nodes, the API, three workers) is left running."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("STOCKSYNC_")}
    out = subprocess.run([sys.executable, "-m", "stocksync", "demo", "--cluster"], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "3 primaries + 3 replicas" in out.stdout
    assert "\nOK: the stock never went below 0, stocksync oversold fewer units than polling" in out.stdout
    pids = [int(p) for p in re.search(r"child pids: ([\d ]+)", out.stdout).group(1).split()]
    assert len(pids) == 10
    assert not [p for p in pids if Path(f"/proc/{p}").exists()
                and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
