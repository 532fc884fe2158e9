"""The web console in a real headless browser: Debian's chromium through chromedriver (selenium), against a
real `stocksync serve` process, a real worker for one channel and a second channel whose group, dead
letters and heartbeat are set in Redis, so every number on the page is known.

Each browser test takes a screenshot and checks its content: the page's rendered text (innerText) holds
the expected SKUs and numbers, and the PNG (decoded here with zlib and struct) is not blank. Screenshots are
written to $STOCKSYNC_SCREENSHOTS when set (to look at them), else under the test's tmp folder.

The browser: chromium and chromium-driver from Debian. .ci/run installs them; when they are missing and
this process may (root, apt-get), the session fixture installs them; otherwise the browser tests are
skipped with a message that says so (the HTTP checks at the top still run).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from dataclasses import replace
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from stocksync import library
from stocksync.channels import Rules
from stocksync.devtools.simulators import SIMULATORS, serve
from stocksync.devtools.testing import config, toml_channel, use_simulator_credentials
from stocksync.settings import Settings
from stocksync.store import StockStore

from .apihelp import ADMIN, ENV, auth, shopify_headers, shopify_order
from .helpers import stop_process, wait_for

try:  # a dev dependency: without it the browser tests are skipped, the HTTP checks still run
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:
    webdriver = None

ROOT = Path(__file__).resolve().parent.parent
READONLY = "tok-readonly-0123456789"
MUGS = [f"MUG-{i:02d}" for i in range(1, 13)]
TEES = ["TEE-S", "TEE-M", "TEE-L"]
FK_RISK = 1.75


# The browser ---------------------------------------------------------------------------------------------


def _browser_paths() -> tuple[str | None, str | None]:
    return shutil.which("chromium"), shutil.which("chromedriver")


def _install_browser() -> str:
    """apt-get install chromium chromium-driver where this process may; what went wrong, or ''."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        return "not root, or no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium",
                               "chromium-driver"], env=env, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return "apt-get timed out"
    return "" if done.returncode == 0 else done.stderr[-500:]


@pytest.fixture(scope="session")
def browser():
    if webdriver is None:
        pytest.skip("selenium is not installed (a dev dependency: pip install -e '.[dev]')")
    chromium, driver = _browser_paths()
    why = ""
    if not chromium or not driver:
        why = _install_browser()
        chromium, driver = _browser_paths()
    if not chromium or not driver:
        pytest.skip(f"no headless browser: chromium and chromium-driver are not installed and could not be ({why}); "
                    "apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000",
                "--hide-scrollbars", "--lang=en-US", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=driver, log_output=subprocess.DEVNULL)
    drv = webdriver.Chrome(options=options, service=service)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()


# The system: simulators, the API server, a worker, data --------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(redis_url: str, prefix: str, urls: dict[str, str]) -> str:
    shopify = config("shopify", urls["shopify"], Rules(buffer=2))
    shopify = replace(shopify, credentials={**shopify.credentials, "webhook_secret": "T_SHOPIFY_SECRET"})
    flipkart = config("flipkart", urls["flipkart"], Rules(share=50))
    return "\n".join([
        f'redis_url = "{redis_url}"', f'prefix = "{prefix}"', "",
        "[worker]", "block_ms = 100", "heartbeat_ms = 200", "trim_interval_ms = 0", "",
        toml_channel(shopify), toml_channel(flipkart),
        "[api.tokens.admin]", 'env = "T_TOKEN_ADMIN"', 'scopes = ["*"]', "",
        "[api.tokens.readonly]", 'env = "T_TOKEN_READONLY"', 'scopes = ["stock:read", "channels:read", "events:read"]', ""])


async def _seed(settings: Settings) -> None:
    """SKUs with a history; the flipkart group with 4 entries delivered to a consumer that is gone (one of them
    dead-lettered: 3 pending), its heartbeat (circuit open, a risk), and nothing pushed to it."""
    async with await StockStore.connect(settings) as store:
        for i, sku in enumerate(MUGS):
            await store.set(sku, 10 + i, source="warehouse", ref=f"seed-{sku}")
        for sku in TEES:
            await store.set(sku, 7, source="warehouse", ref=f"seed-{sku}")
        await store.decrement("MUG-03", 2, ref="amazon:A-1:1", source="amazon")
        await store.adjust("MUG-03", 5, ref="restock-77", source="warehouse")
        await store.decrement("MUG-03", 99, ref="shopify:S-9:1", source="shopify")  # refused: stock.rejected
        r, keys = store.redis, store.keys
        # The quantities model of on_hand, committed and reserved (what the hash holds is what the grid shows).
        await r.hset(keys.sku("TEE-M"), mapping={"on_hand": 10, "committed": 2, "reserved": 1})
        await r.xgroup_create(keys.events(0), "flipkart", id="0")
        [[_, entries]] = await r.xreadgroup("flipkart", "fk-gone", {keys.events(0): ">"}, count=4)
        dead = next((i, f) for i, f in entries if f["sku"] == "MUG-02")
        await library.dead_letter(keys, 0, "flipkart", "MUG-02", int(dead[1]["version"]), "refused", 1,
                                  "400 Bad Request: listing locked", [dead[0]]).run(r)
        await _heartbeat(r, keys, FK_RISK)


async def _heartbeat(r, keys, risk: float) -> None:
    now = int(time.time() * 1000)
    beat = {"consumer": "fk-gone", "ts_ms": now, "heartbeat_ms": 600_000, "circuit": "open",
            "last_push_ms": now - 5000, "oversell_risk_units": risk}
    await r.hset(keys.channel_status("flipkart"), "fk-gone", orjson.dumps(beat))


class System:
    def __init__(self, base: str, settings: Settings, sims: dict, shots: Path) -> None:
        self.base, self.settings, self.sims, self.shots = base, settings, sims, shots
        self.http = httpx.Client(base_url=base, timeout=10)

    def run(self, coro_fn):
        async def go():
            async with await StockStore.connect(self.settings) as store:
                return await coro_fn(store)
        return asyncio.run(go())


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=log.open("wb"))


def _ready(base: str, proc: subprocess.Popen) -> bool:
    assert proc.poll() is None, "the server exited"
    try:
        return httpx.get(base + "/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _shopify_current(r: redis.Redis, prefix: str) -> bool:
    pushed = r.hgetall(f"{{{prefix}:0}}:pushed:shopify")
    return all(int(pushed.get(s, 0)) >= int(r.hget(f"{{{prefix}:0}}:sku:{s}", "version")) for s in MUGS + TEES)


@pytest.fixture(scope="module")
def system(redis_url, tmp_path_factory):
    prefix = f"tcon{os.getpid()}{int(time.time() * 1000) % 10**6}"
    folder = tmp_path_factory.mktemp("console")
    shots = Path(os.environ.get("STOCKSYNC_SCREENSHOTS") or folder / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    use_simulator_credentials()
    sims = {name: SIMULATORS[name]() for name in ("shopify", "flipkart")}
    settings = Settings(redis_url=redis_url, prefix=prefix)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    port = _free_port()
    env = {**os.environ, **ENV, "T_TOKEN_READONLY": READONLY}
    procs = []
    try:
        with serve(sims["shopify"]) as shop_url, serve(sims["flipkart"]) as fk_url:
            cfg = folder / "stocksync.toml"
            cfg.write_text(_config(redis_url, prefix, {"shopify": shop_url, "flipkart": fk_url}))
            asyncio.run(_seed(settings))
            procs.append(_start(["stocksync", "--config", str(cfg), "serve", "--port", str(port)], env, folder / "serve.log"))
            procs.append(_start(["consumers", "--config", str(cfg), "worker", "--channel", "shopify", "--consumer",
                                 "shop-w1"], env, folder / "worker.log"))
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: _ready(base, procs[0]), 30, what="the server")
            wait_for(lambda: _shopify_current(r, prefix), 30, what="the shopify worker's first pushes")
            yield System(base, settings, sims, shots)
    finally:
        for proc in procs:
            stop_process(proc)
        for pattern in (f"\\{{{prefix}:*", f"{prefix}:*"):
            keys = list(r.scan_iter(match=pattern, count=1000))
            if keys:
                r.delete(*keys)
        r.close()


# Screenshots checked for content ----------------------------------------------------------------------------


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit truecolour PNG, decoded with zlib alone."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw, stride, rows, prev = zlib.decompress(b"".join(idat)), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev, strict=True))
        elif kind == 3:
            for i in range(stride):
                line[i] = (line[i] + ((line[i - bpp] if i >= bpp else 0) + prev[i]) // 2) & 255
        elif kind == 4:
            for i in range(stride):
                left, up_left = (line[i - bpp], prev[i - bpp]) if i >= bpp else (0, 0)
                line[i] = (line[i] + _paeth(left, prev[i], up_left)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, [bytes(r[i] for i in range(len(r)) if i % bpp < 3) if bpp == 4 else r for r in rows[::8]]


BRAND = bytes.fromhex("1f5f8b")  # the header's colour in console.css


def check_screenshot(png: bytes) -> dict:
    """The screenshot is a page, not a blank: many colours, a good share of pixels off the background, dark
    text, and the header in the stylesheet's colour (so console.css was served and applied)."""
    width, height, rows = png_pixels(png)
    colours = Counter(row[i:i + 3] for row in rows for i in range(0, len(row), 3))
    total = sum(colours.values())
    ink = 1 - colours.most_common(1)[0][1] / total
    text = sum(n for c, n in colours.items() if c[0] + c[1] + c[2] < 200) / total  # (the header, 265, is not)
    assert width >= 800 and height >= 600, (width, height)
    assert len(colours) >= 40 and ink >= 0.04 and text >= 0.001, (
        f"a blank page? {len(colours)} colours, {ink:.1%} off the background, {text:.2%} dark text")
    assert rows[0].count(BRAND) * 3 >= width, "the header is not in the stylesheet's colour"
    return {"colours": len(colours), "ink": ink, "text": text}


# What a page owes a screen reader, at the least: a label on every field, headers on every table, a name on
# every button and link.
ACCESSIBLE = """
const bad = [];
for (const e of document.querySelectorAll("input, select, textarea"))
  if (!e.labels || !e.labels.length) bad.push("a field without a label: " + e.outerHTML.slice(0, 80));
for (const t of document.querySelectorAll("table"))
  if (!t.querySelector("thead th") || t.querySelectorAll("tbody td").length && !t.querySelector("th[scope]"))
    bad.push("a table without headers: " + (t.id || t.outerHTML.slice(0, 60)));
for (const b of document.querySelectorAll("button, a"))
  if (!b.textContent.trim() && !b.getAttribute("aria-label")) bad.push("no name: " + b.outerHTML.slice(0, 80));
return bad;
"""


def shoot(drv, system: System, name: str) -> str:
    """Take a screenshot, check it and the page's accessibility basics, and return the page's text."""
    png = drv.get_screenshot_as_png()
    (system.shots / f"{name}.png").write_bytes(png)
    check_screenshot(png)
    assert drv.execute_script(ACCESSIBLE) == [], name
    return drv.execute_script("return document.body.innerText")


# Driving the page --------------------------------------------------------------------------------------------


def wait_until(drv, condition, what: str, seconds: float = 15):
    """The condition's first truthy value; on a timeout, an error that shows what the page said."""
    try:
        return WebDriverWait(drv, seconds, poll_frequency=0.05).until(lambda d: condition(d), what)
    except TimeoutException:
        page = drv.execute_script("return document.location.href + '\\n' + document.body.innerText")
        raise AssertionError(f"timed out after {seconds} s waiting for {what}; the page:\n{page[:3000]}") from None


def text_of(drv, selector: str) -> str:
    return drv.execute_script("const e = document.querySelector(arguments[0]); return e ? e.innerText : ''", selector)


def cells(drv, selector: str) -> list[str]:
    return drv.execute_script("return Array.from(document.querySelectorAll(arguments[0])).map(c => c.innerText.trim())",
                              selector)


def sign_in(drv, system: System, token: str, path: str = "/console") -> None:
    drv.get(system.base + path)
    drv.execute_script("sessionStorage.clear()")
    drv.get(system.base + path)
    wait_until(drv, lambda d: d.find_element(By.ID, "token").is_displayed(), "the sign-in form")
    box = drv.find_element(By.ID, "token")
    box.send_keys(token)
    drv.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
    wait_until(drv, lambda d: d.find_element(By.ID, "content").is_displayed(), "the signed-in page")


def click(drv, selector: str) -> None:
    """Click the element once it is there. A live page (the channels' refresh loop) can render it again
    between the find and the click: then the click is tried again on the new element."""
    def clicked(d) -> bool:
        try:
            found = d.find_elements(By.CSS_SELECTOR, selector)
            if found:
                found[0].click()
            return bool(found)
        except StaleElementReferenceException:
            return False
    wait_until(drv, clicked, f"{selector} to appear and take a click")


def notice(drv) -> str:
    return text_of(drv, "#notice")


# The tests ---------------------------------------------------------------------------------------------------


def test_the_pages_need_no_token_and_every_data_call_does(system):
    http = system.http
    page = http.get("/console")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"] and "set-cookie" not in page.headers
    assert '<label for="token">' in page.text and "<script>" not in page.text  # no inline script
    for path in ("/console/skus", "/console/history", "/console/rejections", "/docs"):
        assert http.get(path).status_code == 200, path
    script = http.get("/console/static/console.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert http.get("/console/static/console.js", headers={"If-None-Match": script.headers["etag"]}).status_code == 304
    for name in ("nope.js", "../pages.py", "..%2Fpages.py", "%2e%2e/assets.py"):
        assert http.get(f"/console/static/{name}").status_code == 404, name
    for path in ("/v1/whoami", "/v1/skus:listings", "/v1/skus:history?sku=MUG-03", "/v1/channels", "/v1/rejections"):
        assert http.get(path).status_code == 401, path
    who = http.get("/v1/whoami", headers={"Authorization": f"Bearer {READONLY}"}).json()
    assert who == {"token": "readonly", "scopes": ["stock:read", "events:read", "channels:read"]}


def test_the_reads_behind_the_grid_and_the_history(system):
    headers = {"Authorization": f"Bearer {READONLY}"}
    page = system.http.get("/v1/skus:listings", params={"prefix": "MUG-0", "limit": 1000}, headers=headers).json()
    rows = {row["sku"]: row for row in page["skus"]}
    assert sorted(rows) == MUGS[:9] and page["next_cursor"] is None
    mug = rows["MUG-03"]  # 12, -2, +5: 15 at version 3 (the refused take changed nothing)
    assert (mug["available"], mug["version"], mug["stock"]["source"]) == (15, 3, "warehouse")
    assert mug["channels"]["shopify"] == {"listed": 13, "accepted_version": 3, "current": True, "auto_buffer": False}
    assert mug["channels"]["flipkart"] == {"listed": 7, "accepted_version": 0, "current": False, "auto_buffer": False}
    history = system.http.get("/v1/skus:history", params={"sku": "MUG-03", "limit": 2}, headers=headers).json()
    assert [(e["type"], e["delta"], e["version"]) for e in history["events"]] == [("stock.rejected", -99, 3),
                                                                                 ("stock.changed", 5, 3)]
    more = system.http.get("/v1/skus:history", params={"sku": "MUG-03", "before": history["next_before"]},
                           headers=headers).json()
    assert [(e["delta"], e["ref"]) for e in more["events"]] == [(-2, "amazon:A-1:1"), (12, "seed-MUG-03")]
    assert more["next_before"] is None
    for bad in ({"sku": "MUG-03", "before": "99999999999999999999-0"}, {"sku": "MUG-03", "limit": 0}, {}):
        assert system.http.get("/v1/skus:history", params=bad, headers=headers).status_code == 422, bad


def _row(drv, table: str, channel: str) -> list[str]:
    return cells(drv, f"{table} tbody tr[data-channel='{channel}'] > *")


def test_sign_in_and_see_the_channels_live(system, browser):
    drv = browser
    drv.get(system.base + "/console")
    drv.execute_script("sessionStorage.clear()")
    drv.get(system.base + "/console")
    wait_until(drv, lambda d: d.find_element(By.ID, "token").is_displayed(), "the sign-in form")
    drv.find_element(By.ID, "token").send_keys("not-a-token")
    drv.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
    sign_in_refused = wait_until(drv, lambda d: text_of(d, "#login-error"), "the refusal")
    assert "not valid (401)" in sign_in_refused
    assert drv.execute_script("return sessionStorage.getItem('stocksync.token')") is None
    sign_in(drv, system, ADMIN)
    assert drv.execute_script("return sessionStorage.getItem('stocksync.token')") == ADMIN
    assert drv.execute_script("return document.cookie") == ""
    wait_until(drv, lambda d: len(_row(d, "#channels", "flipkart")) == 10, "the channels table")
    lag = system.run(lambda store: store.redis.xlen(store.keys.events(0))) - 4  # 4 delivered to fk-gone
    flipkart = _row(drv, "#channels", "flipkart")
    assert flipkart[:2] == ["flipkart", "open"] and flipkart[2].startswith("1\nfk-gone")
    assert flipkart[3:7] == [str(lag), "3", flipkart[5], "1"] and flipkart[5].endswith(("s", "min"))
    assert flipkart[7].endswith("ago") and flipkart[8] == f"{FK_RISK:.2f}"
    assert "Replay 1" in flipkart[9] and "List dead letters" in flipkart[9]
    shopify = _row(drv, "#channels", "shopify")
    assert shopify[:2] == ["shopify", "closed"] and shopify[2].startswith("1\nshop-w1")
    assert shopify[3:7] == ["0", "0", "-", "0"] and shopify[8] == "0.00" and shopify[9] == ""
    assert _row(drv, "#risk", "flipkart")[:2] == ["flipkart", f"{FK_RISK:.2f}"]
    text = shoot(drv, system, "channels")
    assert "Channels live" in text and "Signed in as admin" in text and "Oversell risk per channel" in text
    # It refreshes by itself: a new heartbeat's risk shows without a reload.
    system.run(lambda store: _heartbeat(store.redis, store.keys, 4.5))
    wait_until(drv, lambda d: _row(d, "#channels", "flipkart")[8] == "4.50", "the table to refresh itself", 10)
    click(drv, "button[data-action=list][data-channel=flipkart]")
    wait_until(drv, lambda d: "MUG-02" in text_of(d, "#dead-letters"), "the dead letters")
    assert "listing locked" in text_of(drv, "#dead-letters")


def test_replay_the_dead_letters_of_a_channel(system, browser):
    drv = browser
    click(drv, "button[data-action=replay][data-channel=flipkart]")
    wait_until(drv, lambda d: "replayed" in notice(d), "the replay's outcome")
    assert notice(drv) == "flipkart: replayed 1 SKU(s) (MUG-02)."
    wait_until(drv, lambda d: _row(d, "#channels", "flipkart")[6] == "0", "no dead letter left")
    # The current quantity went to the channel, its rules applied (share 50: 11 // 2).
    assert system.sims["flipkart"].quantities.get("MUG-02") == 5
    shoot(drv, system, "channels-replayed")


def _grid_page(drv) -> dict[str, list[str]]:
    rows = drv.execute_script(
        "return Array.from(document.querySelectorAll('#grid tbody tr[data-sku]')).map(r => "
        "[r.dataset.sku, ...Array.from(r.children).map(c => c.innerText.trim())])")
    return {r[0]: r[1:] for r in rows}


def _quantity_columns(heads: list[str]) -> int:
    """The index of the version column, once the heads are checked: the quantity columns are those the
    page's hashes hold (sold SKUs have `committed` since library 0.6), in the order on_hand, committed,
    reserved, available; then the version and one column per channel, with its rules."""
    v = heads.index("version")
    assert heads[0] == "SKU" and heads[v - 1] == "available"
    assert [h for h in ("on_hand", "committed", "reserved", "available") if h in heads[1:v]] == heads[1:v]
    assert heads[v + 1].startswith("flipkart\nshare 50%") and heads[v + 2].startswith("shopify\nbuffer 2")
    return v


def test_the_sku_grid_searches_by_prefix_and_pages(system, browser):
    drv = browser
    drv.get(system.base + "/console/skus")
    wait_until(drv, lambda d: _grid_page(d), "the first page")
    Select(drv.find_element(By.ID, "limit")).select_by_visible_text("10")
    drv.find_element(By.ID, "prefix").send_keys("MUG-")
    drv.find_element(By.CSS_SELECTOR, "#search button[type=submit]").click()
    wait_until(drv, lambda d: "prefix MUG-" in text_of(d, "#grid-caption"), "the search")
    seen, pages = {}, 0
    while True:
        page, v = _grid_page(drv), _quantity_columns(cells(drv, "#grid thead th"))
        assert page and all(sku.startswith("MUG-") for sku in page) and len(page) <= 10
        seen.update({sku: [row[0], row[v - 1], *row[v:v + 3]] for sku, row in page.items()})
        pages += 1
        if pages == 1:
            assert "Page 1" in text_of(drv, "#page-label")
            shoot(drv, system, "skus")
        if not drv.find_element(By.ID, "next").is_enabled():
            break
        drv.find_element(By.ID, "next").click()
        wait_until(drv, lambda d, n=pages: f"Page {n + 1}" in text_of(d, "#page-label"), "the next page")
    assert sorted(seen) == MUGS and pages >= 2
    assert seen["MUG-03"] == ["MUG-03", "15", "3", "7 never", "13 current"]
    assert seen["MUG-02"] == ["MUG-02", "11", "1", "5 current", "9 current"]
    drv.find_element(By.ID, "prev").click()
    wait_until(drv, lambda d, n=pages: f"Page {n - 1}" in text_of(d, "#page-label"), "the page before")
    # Where the hashes hold on_hand, committed and reserved, the grid shows them.
    drv.find_element(By.ID, "prefix").clear()
    drv.find_element(By.ID, "prefix").send_keys("TEE-")
    drv.find_element(By.CSS_SELECTOR, "#search button[type=submit]").click()
    wait_until(drv, lambda d: sorted(_grid_page(d)) == sorted(TEES), "the TEE- SKUs")
    assert cells(drv, "#grid thead th")[:6] == ["SKU", "on hand", "committed", "reserved", "available", "version"]
    assert _grid_page(drv)["TEE-M"][:6] == ["TEE-M", "10", "2", "1", "7", "1"]
    assert _grid_page(drv)["TEE-L"][:6] == ["TEE-L", "-", "-", "-", "7", "1"]
    text = shoot(drv, system, "skus-quantities")
    assert "3 SKU(s) on page 1, prefix TEE-; the last page" in text


def test_a_skus_history_newest_first(system, browser):
    drv = browser
    drv.get(system.base + "/console/skus?prefix=MUG-03")
    wait_until(drv, lambda d: "MUG-03" in _grid_page(d), "the SKU")
    drv.find_element(By.LINK_TEXT, "MUG-03").click()
    wait_until(drv, lambda d: len(cells(d, "#events tbody tr[data-id]")) == 4, "the history")
    rows = drv.execute_script("return Array.from(document.querySelectorAll('#events tbody tr')).map(r => "
                              "Array.from(r.children).map(c => c.innerText.trim()))")
    assert [r[1:] for r in rows] == [
        ["stock.rejected", "-99", "15", "3", "shopify", "shopify:S-9:1", "insufficient"],
        ["stock.changed", "+5", "15", "3", "warehouse", "restock-77", ""],
        ["stock.changed", "-2", "10", "2", "amazon", "amazon:A-1:1", ""],
        ["stock.changed", "+12", "12", "1", "warehouse", "seed-MUG-03", ""]]
    assert rows[0][0] >= rows[-1][0]  # times, newest first
    text = shoot(drv, system, "history")
    assert "Events of MUG-03, newest first" in text and "available\n15" in text


def _order(drv, member: str) -> str:
    return text_of(drv, f"section.order[data-order='{member}']")


def test_rejections_fix_the_map_apply_again_and_resolve(system, browser):
    for order_id, lines in ((5001, [(1, "SHOP-MUG-X", 2), (2, "MUG-01", 999)]), (5002, [(1, "TEE-S", 50)])):
        body = orjson.dumps(shopify_order(order_id, lines))
        assert system.http.post("/webhooks/shopify", content=body,
                                headers=shopify_headers(body, "orders/create")).status_code == 200
    drv = browser
    drv.get(system.base + "/console/rejections")
    wait_until(drv, lambda d: _order(d, "shopify|5001") and _order(d, "shopify|5002"), "the rejections")
    order = _order(drv, "shopify|5001")
    assert "unknown_sku" in order and "fix_map" in order and "map the channel SKU" in order
    assert "insufficient" in order and "cancel" in order
    text = shoot(drv, system, "rejections")
    assert "shopify order 5001" in text and "shopify order 5002" in text
    form = "section.order[data-order='shopify|5001'] form[data-channel-sku='SHOP-MUG-X']"
    drv.find_element(By.CSS_SELECTOR, form + " input").send_keys("MUG-05")
    drv.find_element(By.CSS_SELECTOR, form + " button").click()
    wait_until(drv, lambda d: "now maps to MUG-05" in notice(d), "the map saved")
    click(drv, "section.order[data-order='shopify|5001'] button[data-action=apply]")
    wait_until(drv, lambda d: "line(s) taken" in notice(d), "the order applied again")
    assert notice(drv) == "shopify order 5001: 1 line(s) taken, 1 still listed (2: insufficient)."
    assert system.http.get("/v1/skus/MUG-05", headers=auth(key=False)).json()["available"] == 14 - 2
    wait_until(drv, lambda d: "SHOP-MUG-X" not in _order(d, "shopify|5001"), "the line taken off the list")
    click(drv, "section.order[data-order='shopify|5002'] button[data-action=resolve]")
    wait_until(drv, lambda d: "resolved" in notice(d) and not _order(d, "shopify|5002"), "the order resolved")
    shoot(drv, system, "rejections-acted")


def test_a_read_only_token_sees_everything_and_is_offered_no_action(system, browser):
    async def dead_letter_again(store):
        [[_, entries]] = await store.redis.xreadgroup("flipkart", "fk-gone", {store.keys.events(0): ">"}, count=1)
        (entry_id, fields), = entries
        await library.dead_letter(store.keys, 0, "flipkart", fields["sku"], int(fields["version"]), "refused", 1,
                                  "400", [entry_id]).run(store.redis)

    system.run(dead_letter_again)
    drv = browser
    sign_in(drv, system, READONLY)
    wait_until(drv, lambda d: _row(d, "#channels", "flipkart") and _row(d, "#channels", "flipkart")[6] == "1",
               "the channels")
    assert "Signed in as readonly (stock:read, events:read, channels:read)" in text_of(drv, "#whoami")
    assert "List dead letters" in _row(drv, "#channels", "flipkart")[9]
    assert not drv.find_elements(By.CSS_SELECTOR, "button[data-action=replay]")
    # Tried anyway (the script's own function), the refusal says why.
    drv.execute_script("StocksyncChannels.replay('flipkart', document.createElement('button'))")
    wait_until(drv, lambda d: "refused" in notice(d), "the refusal")
    assert "Not allowed with this token (403)" in notice(drv) and "channels:write" in notice(drv)
    shoot(drv, system, "channels-readonly")
    drv.get(system.base + "/console/rejections")
    wait_until(drv, lambda d: _order(d, "shopify|5001"), "the rejections")
    assert not drv.find_elements(By.CSS_SELECTOR, "section.order button, section.order form")
    drv.get(system.base + "/console/skus")
    wait_until(drv, lambda d: _grid_page(d), "the grid")
    drv.get(system.base + "/console/history?sku=MUG-03")
    wait_until(drv, lambda d: len(cells(d, "#events tbody tr[data-id]")) == 4, "the history")


def test_docs_lists_every_path_of_the_openapi_document(system, browser):
    doc = system.http.get("/openapi.json").json()
    drv = browser
    drv.get(system.base + "/docs")
    wait_until(drv, lambda d: cells(d, "#paths section.path h3"), "the document")
    assert cells(drv, "#paths section.path h3") == list(doc["paths"])
    for path, item in doc["paths"].items():
        section = text_of(drv, f"section.path[data-path='{path}']")
        for method, op in item.items():
            if method != "parameters":
                assert method.upper() in section and op["summary"] in section, (path, method)
    text = shoot(drv, system, "docs")
    assert f"{len(doc['paths'])} paths" in text and "Idempotency-Key" in text and "SkuPage" in text
    drv.find_element(By.ID, "path-filter").send_keys("dead-letters")
    wait_until(drv, lambda d: len(cells(d, "#paths section.path:not([hidden]) h3")) == 2, "the filter")
