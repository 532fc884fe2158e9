"""The event loop of the worker and simulator processes: uvloop when importable, else asyncio's."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import urllib.request

import orjson
import pytest

from consumers.runner import use_event_loop
from stocksync.devtools.simulators import AmazonSim
from stocksync.devtools.simulators.fastserve import new_event_loop, serve_aiohttp
from stocksync.settings import SettingsError

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


@pytest.fixture
def restore_policy():
    policy = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(policy)


def test_asyncio_leaves_the_policy_alone(restore_policy, monkeypatch):
    monkeypatch.delenv("STOCKSYNC_LOOP", raising=False)
    before = asyncio.get_event_loop_policy()
    assert use_event_loop("asyncio") == "asyncio"
    assert asyncio.get_event_loop_policy() is before


def test_the_variable_chooses_when_no_argument(restore_policy, monkeypatch):
    monkeypatch.setenv("STOCKSYNC_LOOP", "asyncio")
    before = asyncio.get_event_loop_policy()
    assert use_event_loop() == "asyncio"
    assert asyncio.get_event_loop_policy() is before


def test_auto_takes_uvloop_when_importable(restore_policy, monkeypatch):
    monkeypatch.delenv("STOCKSYNC_LOOP", raising=False)
    chosen = use_event_loop()
    assert chosen == ("uvloop" if HAVE_UVLOOP else "asyncio")
    loop = asyncio.new_event_loop()
    try:
        assert (type(loop).__module__.startswith("uvloop")) == HAVE_UVLOOP
    finally:
        loop.close()


def test_without_uvloop_auto_falls_back_and_uvloop_is_an_error(restore_policy, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    before = asyncio.get_event_loop_policy()
    assert use_event_loop("auto") == "asyncio"
    assert asyncio.get_event_loop_policy() is before
    with pytest.raises(SettingsError, match="not installed"):
        use_event_loop("uvloop")
    with pytest.raises(ImportError):
        new_event_loop("uvloop")
    loop = new_event_loop("auto")
    try:
        assert isinstance(loop, asyncio.BaseEventLoop)
    finally:
        loop.close()


def test_a_bad_choice_is_refused(restore_policy):
    with pytest.raises(SettingsError, match="auto, uvloop or asyncio"):
        use_event_loop("trio")
    with pytest.raises(ValueError, match="auto, uvloop or asyncio"):
        new_event_loop("trio")


@pytest.mark.parametrize("loop", ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(
    not HAVE_UVLOOP, reason="uvloop is not installed"))])
def test_the_amazon_simulator_answers_on_either_loop(loop):
    sim = AmazonSim()
    with serve_aiohttp(sim, loop=loop) as url:
        body = orjson.dumps({"productType": "PRODUCT", "patches": [{
            "op": "replace", "path": "/attributes/fulfillment_availability",
            "value": [{"fulfillment_channel_code": "DEFAULT", "quantity": 7}]}]})
        request = urllib.request.Request(url + sim.listing_path("A/1"), data=body, method="PATCH",
                                         headers=sim.auth_headers())
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert orjson.loads(reply.read())["status"] == "ACCEPTED"
    assert sim.quantities == {"A/1": 7}
