"""Inventory in and out (stocksync.inventory): SKUs listed page by page across partitions, CSV import (each
row exactly once, refused rows with their lines, a dry run), CSV export; through the library, the API and
the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from stocksync import inventory
from stocksync.settings import Settings
from stocksync.store import StockStore
from stocksync.validate import Invalid

from .apihelp import api_settings, auth, running
from .helpers import snapshot

pytestmark = pytest.mark.usefixtures("api_env")


async def walk(store, limit: int, prefix: str = "") -> tuple[list[str], int]:
    """Every SKU through the pages, and how many pages it took."""
    seen, cursor, pages = [], None, 0
    while True:
        page = await inventory.list_page(store, cursor, limit, prefix)
        assert len(page.items) <= limit
        seen += [s.sku for s in page.items]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            return seen, pages


@pytest.fixture
async def store4(settings):
    s = await StockStore.connect(settings.with_(partitions=4))
    yield s
    await s.close()


async def test_pages_cover_every_partition_each_sku_once(store4):
    skus = [f"MUG-{i:03d}" for i in range(120)] + [f"TEE-{i:03d}" for i in range(40)]
    await store4.set_many([(s, i, None) for i, s in enumerate(skus)], ref_of=lambda s: f"r-{s}", source="t")
    assert {store4.keys.partition(s) for s in skus} == {0, 1, 2, 3}
    seen, pages = await walk(store4, 37)
    assert sorted(seen) == sorted(skus) and pages >= 5
    mugs, _ = await walk(store4, 25, prefix="MUG-")
    assert sorted(mugs) == skus[:120]
    page = await inventory.list_page(store4, None, 5, "TEE-")
    stock = {s.sku: s for s in page.items}
    assert all(stock[s].available == skus.index(s) and stock[s].version == 1 for s in stock)


async def test_a_page_of_one_keeps_what_scan_gave_beyond_it_in_the_cursor(store):
    skus = [f"S{i}" for i in range(30)]
    await store.set_many([(s, 1, None) for s in skus], ref_of=lambda s: f"r-{s}", source="t")
    first = await inventory.list_page(store, None, 1)
    assert len(first.items) == 1 and first.next_cursor
    again = await inventory.list_page(store, first.next_cursor, 1)
    assert again == await inventory.list_page(store, first.next_cursor, 1)  # a cursor is stable
    seen, pages = await walk(store, 1)
    assert sorted(seen) == sorted(skus) and pages in (30, 31)  # (the last page may come empty)


async def test_a_prefix_is_matched_literally_and_kept_by_the_cursor(store):
    for sku in ("A*1", "AB1", "A?2", "A[1]", "A\\x", "B*1"):
        await store.set(sku, 1, source="t")
    assert sorted((await walk(store, 10, "A*"))[0]) == ["A*1"]
    assert sorted((await walk(store, 10, "A["))[0]) == ["A[1]"]
    assert sorted((await walk(store, 10, "A\\"))[0]) == ["A\\x"]
    page = await inventory.list_page(store, None, 1, "A")
    with pytest.raises(Invalid, match="was given for prefix 'A', not 'B'"):
        await inventory.list_page(store, page.next_cursor, 1, "B")
    for bad in ("nope", "eyJ4IjoxfQ", "W10"):
        with pytest.raises(Invalid, match="cursor"):
            await inventory.list_page(store, bad, 10)


@pytest.mark.cluster
async def test_pages_on_a_cluster(cluster):
    settings = Settings(redis_url=cluster.url, cluster=True, prefix=f"c{uuid.uuid4().hex[:10]}", partitions=12)
    store = await StockStore.connect(settings)
    try:
        skus = [f"K{i}" for i in range(100)]
        await store.set_many([(s, 2, None) for s in skus], ref_of=lambda s: f"r-{s}", source="t")
        seen, _ = await walk(store, 16)
        assert sorted(seen) == sorted(skus)
    finally:
        await store.close()


# CSV ----------------------------------------------------------------------------------------------------


def test_parse_csv_reads_rows_and_refuses_bad_ones_with_their_lines():
    data = ('\ufeffSKU, Available ,expected_version\n'
            'MUG,10,\n'
            '\n'
            '"TEE, red",3,2\n'
            '"LINE\nBREAK",1,\n'
            'BAD,-1,\n'
            'FRAC,1.5,\n'
            ',4,\n'
            'MUG,2,\n'
            'HUGE,99999999999,\n'
            'VER,1,x\n').encode()
    parsed = inventory.parse_csv(data)
    assert [(r.line, r.sku, r.available, r.expected_version) for r in parsed.rows] == [
        (2, "MUG", 10, None), (4, "TEE, red", 3, 2)]
    refused = {r.line: (r.sku, r.reason) for r in parsed.refused}
    assert refused[5] == ("LINE\nBREAK", "sku: must not contain control characters")  # (where the row starts)
    assert refused[7][0] == "BAD" and "available: must be a whole number" in refused[7][1]
    assert "available" in refused[8][1] and "sku" in refused[9][1]
    assert refused[10] == ("MUG", "already on line 2")
    assert "at most 2147483647" in refused[11][1] and "expected_version" in refused[12][1]
    assert parsed.reference(parsed.rows[0]) == f"csv:{parsed.digest}:2" and len(parsed.digest) == 16


@pytest.mark.parametrize("data, message", [
    (b"", "the file is empty"),
    (b"name,qty\nMUG,1\n", "first line must name the columns"),
    (b"sku,available,colour\nMUG,1,red\n", "colour"),
    (b"sku,available\n\xff\xfe,1\n", "not UTF-8"),
])
def test_a_file_that_cannot_be_read_is_refused_whole(data, message):
    with pytest.raises(Invalid, match=message):
        inventory.parse_csv(data)


def test_an_export_header_is_importable():
    parsed = inventory.parse_csv(b"sku,available,reserved,version,updated_ms,source\nMUG,4,0,7,1,cli\n")
    assert [(r.sku, r.available, r.expected_version) for r in parsed.rows] == [("MUG", 4, None)]


async def test_import_is_exactly_once_per_row_and_a_dry_run_changes_nothing(store, sync_redis, settings):
    await store.set("OLD", 5, source="t")
    await store.set("SAME", 3, source="t")
    data = b"sku,available,expected_version\nNEW,1,\nOLD,6,\nSAME,3,\nPINNED,2,4\n"
    parsed = inventory.parse_csv(data)
    before = snapshot(sync_redis, settings.prefix)
    plan = await inventory.import_rows(store, parsed, dry_run=True)
    assert snapshot(sync_redis, settings.prefix) == before
    assert (plan.new, plan.changed, plan.unchanged, plan.replayed) == (1, 1, 1, 0)
    assert [(r.line, r.sku) for r in plan.refused] == [(5, "PINNED")] and "conflict" in plan.refused[0].reason
    progress = []
    report = await inventory.import_rows(store, parsed, progress=lambda done, total: progress.append((done, total)))
    assert (report.applied, report.replayed, len(report.refused)) == (3, 0, 1) and progress[-1] == (4, 4)
    assert (await store.get("OLD")).available == 6
    after = snapshot(sync_redis, settings.prefix)
    again = await inventory.import_rows(store, parsed)
    assert (again.applied, again.replayed, [r.line for r in again.refused]) == (0, 3, [5])
    assert snapshot(sync_redis, settings.prefix) == after  # the same file again changed nothing
    replan = await inventory.import_rows(store, parsed, dry_run=True)
    # every row was seen (the refused one too: it would answer its conflict again)
    assert replan.replayed == 4 and replan.new == replan.changed == replan.unchanged == 0 and not replan.refused


async def test_export_lists_every_sku_and_imports_as_it_is(store, redis_url):
    for i in range(1203):  # more than two chunks
        await store.set(f"E{i}", i, source="t")
    text = "".join([chunk async for chunk in inventory.export_lines(store)])
    lines = text.splitlines()
    assert lines[0] == "sku,available,reserved,version,updated_ms,source" and len(lines) == 1204
    other = await StockStore.connect(Settings(redis_url=redis_url, prefix=f"t{uuid.uuid4().hex[:12]}"))
    try:
        report = await inventory.import_rows(other, inventory.parse_csv(text.encode()))
        assert report.applied == 1203 and report.ok
        assert [(s.sku, s.available) for s in await other.get_many(["E0", "E1202"])] == [("E0", 0), ("E1202", 1202)]
    finally:
        for p in range(other.keys.partitions):
            await other.redis.delete(*[other.keys.sku(f"E{i}") for i in range(1203)], other.keys.events(p))
        await other.close()


# Through the API -------------------------------------------------------------------------------------


async def test_api_lists_imports_and_exports(settings):
    async with running(api_settings(settings)) as client:
        r = await client.post("/v1/skus:import", content=b"sku,available\nA,1\nB,2\nB,3\n",
                              headers={**auth(key="imp-1"), "Content-Type": "text/csv"})
        assert r.status_code == 200, r.text
        assert r.json() == {"rows": 3, "applied": 2, "replayed": 0, "dry_run": False,
                            "refused": [{"line": 4, "sku": "B", "reason": "already on line 3"}]}
        again = await client.post("/v1/skus:import", content=b"sku,available\nA,1\nB,2\nB,3\n",
                                  headers={**auth(key="imp-2"), "Content-Type": "text/csv"})
        assert again.json()["replayed"] == 2 and again.json()["applied"] == 0  # another key: the rows replay
        other = await client.post("/v1/skus:import", content=b"sku,available\nA,9\n", headers=auth(key="imp-1"))
        assert other.status_code == 422 and other.json()["error"] == "idempotency_key_reused"
        assert (await client.post("/v1/skus:import", content=b"sku,available\nA,9\n",
                                  headers=auth(key=False))).status_code == 400
        dry = await client.post("/v1/skus:import?dry_run=true", content=b"sku,available\nA,9\nC,1\n",
                                headers=auth(key=False))
        assert dry.status_code == 200 and (dry.json()["changed"], dry.json()["new"]) == (1, 1)
        bad = await client.post("/v1/skus:import", content=b"nope\n", headers=auth())
        assert bad.status_code == 422 and bad.json()["field"] == "header"

        page = await client.get("/v1/skus?limit=1", headers=auth(key=False))
        assert page.status_code == 200 and len(page.json()["skus"]) == 1 and page.json()["next_cursor"]
        names, cursor = [s["sku"] for s in page.json()["skus"]], page.json()["next_cursor"]
        while cursor:  # (the session's server holds other tests' keys: SCAN may need several pages)
            rest = await client.get("/v1/skus", params={"limit": 10, "cursor": cursor}, headers=auth(key=False))
            names += [s["sku"] for s in rest.json()["skus"]]
            cursor = rest.json()["next_cursor"]
        assert sorted(names) == ["A", "B"]
        assert page.json()["skus"][0].keys() == {"sku", "available", "reserved", "version", "updated_ms", "source"}
        for query in ("limit=0", "limit=1001", "limit=x", "cursor=zzz"):
            r = await client.get(f"/v1/skus?{query}", headers=auth(key=False))
            assert r.status_code == 422, query

        export = await client.get("/v1/skus:export", headers=auth(key=False))
        assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
        rows = sorted(export.text.splitlines()[1:])
        assert rows[0].startswith("A,1,0,1,") and rows[1].startswith("B,2,0,1,") and rows[1].endswith(",admin")


# Through the command line ----------------------------------------------------------------------------


def stocksync(settings, *args, stdin=None):
    env = {**os.environ, "REDIS_URL": settings.redis_url, "STOCKSYNC_PREFIX": settings.prefix}
    return subprocess.run([sys.executable, "-m", "stocksync", *args], capture_output=True, text=True, env=env,
                          timeout=60, input=stdin)


def test_cli_import_twice_dry_run_export_and_list(settings, tmp_path, sync_redis):
    csv_file = tmp_path / "stock.csv"
    csv_file.write_text("sku,available\nMUG-1,5\nMUG-2,6\nTEE-1,x\nTEE-2,7\n")
    dry = stocksync(settings, "sku", "import", str(csv_file), "--dry-run")
    assert dry.returncode == 1 and "dry run: 4 rows: 3 new SKUs" in dry.stdout
    assert "refused line 4: TEE-1: available: must be a whole number" in dry.stderr
    assert "3/3 rows" in dry.stderr  # the progress bar's last state
    assert snapshot(sync_redis, settings.prefix) == {} or "MUG-1" not in str(snapshot(sync_redis, settings.prefix))
    first = stocksync(settings, "sku", "import", str(csv_file))
    assert first.returncode == 1 and "4 rows: 3 set, 0 imported already (unchanged), 1 refused" in first.stdout
    before = snapshot(sync_redis, settings.prefix)
    second = stocksync(settings, "sku", "import", str(csv_file))
    assert "3 imported already" in second.stdout and snapshot(sync_redis, settings.prefix) == before
    csv_file.write_text("sku,available\nMUG-1,4\n")
    assert stocksync(settings, "sku", "import", str(csv_file)).returncode == 0  # another file: applied
    assert "available=4" in stocksync(settings, "sku", "get", "MUG-1").stdout

    listed = stocksync(settings, "sku", "list", "--prefix", "MUG-")
    assert sorted(line.split("\t")[0] for line in listed.stdout.splitlines()) == ["MUG-1", "MUG-2"]
    assert "2 SKU(s)" in listed.stderr
    out = tmp_path / "export.csv"
    exported = stocksync(settings, "sku", "export", str(out))
    assert exported.returncode == 0 and "3 SKU(s) exported" in exported.stderr
    assert sorted(out.read_text().splitlines())[0].startswith("MUG-1,4,0,2,")
    piped = stocksync(settings, "sku", "export")
    assert sorted(piped.stdout.splitlines()) == sorted(out.read_text().splitlines())
    again = stocksync(settings, "sku", "import", "-", stdin=out.read_text())
    assert again.returncode == 0 and "3 rows: 3 set" in again.stdout


@pytest.mark.parametrize("content, message", [
    (None, "cannot read"),
    ("name,qty\n", "first line must name the columns"),
])
def test_cli_import_of_a_file_it_cannot_read_is_exit_2(settings, tmp_path, content, message):
    path = tmp_path / "in.csv"
    if content is not None:
        path.write_text(content)
    out = stocksync(settings, "sku", "import", str(path))
    assert out.returncode == 2 and message in out.stderr
