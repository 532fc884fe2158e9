"""redis-py's asyncio connection torn down by another task mid-command (seen in failovers: AttributeError
"'NoneType' object has no attribute 'writelines'"), reproduced on a real server by disconnecting the
connection's writer between redis-py's is-connected check and its write: the API answers 503 (Redis
unavailable), not 500, the retry under the same reference applies once, and only that AttributeError is
taken for a connection error (stocksync.connection.torn_down)."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError

from stocksync.connection import TornDown, torn_down, torn_down_as_connection_error

from .apihelp import api_settings, auth, post_shopify, running, shopify_order

pytestmark = pytest.mark.usefixtures("api_env")


@pytest.fixture
def tear_down_next(monkeypatch):
    """Arm: the next command sent on any connection finds its writer gone (as when a concurrent
    disconnect runs between redis-py's check_health and its writelines)."""
    armed = []
    original = AbstractConnection.check_health

    async def check_health(self):
        await original(self)
        if armed:
            armed.clear()
            self._writer = None

    monkeypatch.setattr(AbstractConnection, "check_health", check_health)
    return lambda: armed.append(True)


async def test_an_admin_change_on_a_torn_down_connection_answers_503_and_its_retry_applies_once(
        settings, store, tear_down_next):
    await store.set("T", 5, ref="t-set")
    tear_down_next()  # the store's own call: a connection error (StockStore converts it)
    with pytest.raises(TornDown, match="writelines"):
        await store.adjust("T", -1, ref="t-0")
    async with running(api_settings(settings)) as client:
        # through the API the Idempotency-Key's record is written first, outside the store (the app's
        # handler converts it)
        tear_down_next()
        r = await client.post("/v1/skus/T/adjust", json={"delta": -1}, headers=auth(key="t-1"))
        assert (r.status_code, r.json()["error"]) == (503, "unavailable"), r.text
        r = await client.post("/v1/skus/T/adjust", json={"delta": -1}, headers=auth(key="t-1"))
        assert r.status_code == 200, r.text
        r = await client.post("/v1/skus/T/adjust", json={"delta": -1}, headers=auth(key="t-1"))
        assert r.status_code == 200 and r.json()["replayed"], r.text
    stock = await store.get("T")
    assert (stock.available, stock.version) == (4, 2)  # (the two failures applied nothing; t-1 once)


async def test_a_webhook_batch_on_a_torn_down_connection_is_sent_again(settings, store, tear_down_next):
    """The intake's hand-packed round trip meets it: a connection error, so the batch goes again through
    redis-py (every command of a batch can be sent twice)."""
    await store.set("U", 5, ref="u-set")
    async with running(api_settings(settings)) as client:
        tear_down_next()
        r = await post_shopify(client, shopify_order(9101, [(1, "U", 2)]), webhook_id="wh-9101")
        assert r.status_code == 200, r.text
    assert (await store.get("U")).available == 3


def test_only_redis_pys_torn_down_connection_counts():
    class Conn:
        _writer = None

    try:
        Conn()._writer.writelines([b""])  # raised here, in our code: a bug of ours, not a dead connection
    except AttributeError as e:
        ours = e
    assert not torn_down(ours) and not torn_down(ValueError("'NoneType' object has no attribute 'x'"))
    with pytest.raises(AttributeError):
        with torn_down_as_connection_error():
            raise ours
    assert issubclass(TornDown, RedisConnectionError)  # (every caller that handles Redis down handles it)
