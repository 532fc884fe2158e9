"""stocksync.library holds one typed wrapper per function the Lua library registers, and each wrapper calls
the function it is listed under, with a reply its parser reads (against a real server)."""

from __future__ import annotations

import re
from pathlib import Path

from stocksync import library
from stocksync.library import Claim, OrderOutcome, Outcome, RestockClaim, Status, Stock

LUA = (Path(__file__).resolve().parent.parent / "lua" / "stocksync.lua").read_text()


def registered() -> set[str]:
    plain = re.findall(r"redis\.register_function\('(\w+)'", LUA)
    named = re.findall(r"function_name\s*=\s*'(\w+)'", LUA)
    return set(plain) | set(named)


def test_every_registered_function_has_a_wrapper_and_every_wrapper_a_function():
    assert registered(), "no redis.register_function found in lua/stocksync.lua"
    assert set(library.FUNCTIONS) == registered()


def sample_calls(keys) -> dict[str, library.Call]:
    """One valid call of each wrapper, in an order that works on a fresh prefix."""
    return {
        "stocksync_set": library.set_available(keys, "MUG", 10, "test", "r-set"),
        "stocksync_decrement": library.decrement(keys, "MUG", 2, "test", "r-dec"),
        "stocksync_adjust": library.adjust(keys, "MUG", 1, "test", "r-adj"),
        "stocksync_order": library.order(keys, 0, [("MUG", 1)], "test", "r-order"),
        "stocksync_get": library.get(keys, "MUG"),
        "stocksync_ref": library.ref(keys, 0, "r-dec"),
        "stocksync_legacy_until": library.legacy_until(),
        "stocksync_version": library.version(),
        "stocksync_idem_ttl": library.idem_ttl(),
        "stocksync_push_claim": library.push_claim(keys, 0, "shop", "me", ["MUG"], 5000),
        "stocksync_push_done": library.push_done(keys, 0, "shop", "me", {"MUG": 3}, [], ["MUG"]),
        "stocksync_recheck": library.recheck(keys, 0, "shop", "due", 1_700_000_000_000, ["MUG"]),
        "stocksync_trim": library.trim(keys, 0, 0),
        "stocksync_reap_consumers": library.reap_consumers(keys, 0, "shop", 0, "me"),
        "stocksync_dead_letter": library.dead_letter(keys, 0, "shop", "MUG", 3, "permanent", 1, "x", ["1-1"]),
        "stocksync_dlq_resolve": library.dlq_resolve(keys, 0, "shop", "MUG", 3, ["1-1"]),
        "stocksync_restock_claim": library.restock_claim(keys, "shop", "O1:L1", "cancel", 1, 2, 3600),
        "stocksync_ship_claim": library.ship_claim(keys, "shop", "O1:L1", "ship:F1", 1, 2, 3600),
        "stocksync_count": library.count(keys, "PLATE", 5, "test", "r-count"),
        "stocksync_bundle_set": library.bundle_set(keys, "SET", {"MUG": 1, "PLATE": 1}, "test", "r-bundle"),
        "stocksync_reserve": library.reserve(keys, 0, "0-res", [("SET", 1)], 60_000, "test"),
        "stocksync_commit": library.commit(keys, 0, "0-res", "test"),
        "stocksync_reservation": library.reservation(keys, 0, "0-res"),
        "stocksync_ship": library.ship(keys, "SET", 1, "test", "r-ship"),
        "stocksync_cancel": library.cancel(keys, "MUG", 1, "test", "r-cancel"),
        "stocksync_release": library.release(keys, 0, "0-res", "test"),
        "stocksync_expire": library.expire(keys, 0, 10),
        "stocksync_stock": library.stock(keys, "MUG"),
        "stocksync_bundle_delete": library.bundle_delete(keys, "SET", "test", "r-unbundle"),
    }


async def test_each_wrapper_calls_its_function_and_reads_the_reply(store):
    keys = store.keys
    await store.redis.xgroup_create(keys.events(0), "shop", id="0", mkstream=True)
    calls = sample_calls(keys)
    assert set(calls) == set(library.FUNCTIONS)
    got = {}
    for name, call in calls.items():
        assert call.command[1] == name
        got[name] = await call.run(store.redis)
    assert got["stocksync_set"] == Outcome("MUG", Status.OK, 10, 1, False)
    assert got["stocksync_decrement"] == Outcome("MUG", Status.OK, 8, 2, False)
    assert isinstance(got["stocksync_order"], OrderOutcome) and got["stocksync_order"].lines[0].available == 8
    assert got["stocksync_get"] == Stock("MUG", 8, 0, 4, got["stocksync_get"].updated_ms, "test")
    assert got["stocksync_version"] == library.version().parse(got["stocksync_version"])
    assert got["stocksync_idem_ttl"] == store.settings.idem_ttl_s
    assert got["stocksync_ref"] == Status.OK and got["stocksync_legacy_until"] == 0  # (a fresh install)
    assert got["stocksync_push_claim"] == [Claim("MUG", True, 8, 4, 0)]
    assert got["stocksync_push_done"] == (1, 0, 1)
    assert got["stocksync_recheck"] == 1
    assert got["stocksync_dead_letter"] is None  # 1-1 was never pending
    assert got["stocksync_restock_claim"] == RestockClaim(library.RestockStatus.RESERVED, 1, False)
    assert got["stocksync_ship_claim"] == RestockClaim(library.RestockStatus.RESERVED, 1, False)
    assert got["stocksync_count"] == Outcome("PLATE", Status.OK, 5, 1, False)
    assert got["stocksync_bundle_set"].status == library.BundleStatus.OK and got["stocksync_bundle_set"].available == 5
    assert got["stocksync_reserve"].ok and got["stocksync_reserve"].ms_left == 60_000
    assert got["stocksync_commit"].status == library.ReservationStatus.OK
    assert got["stocksync_reservation"].state == "committed" and got["stocksync_reservation"].lines == {"SET": 1}
    assert got["stocksync_ship"].units == 1 and got["stocksync_cancel"].units == 1  # (from what MUG has committed)
    assert got["stocksync_release"].status == library.ReservationStatus.COMMITTED
    assert got["stocksync_expire"] == (0, 0)
    assert got["stocksync_stock"].on_hand == got["stocksync_stock"].available + got["stocksync_stock"].committed
    assert got["stocksync_bundle_delete"].status == library.BundleStatus.OK


async def test_a_refusal_is_invalid_argument_and_a_pipeline_keeps_it_in_place(store):
    from stocksync.errors import InvalidArgument

    bad = library.decrement(store.keys, "MUG", 0, "test", "r0")
    good = library.set_available(store.keys, "MUG", 1, "test", "r1")
    first, second = await library.pipelined(store.redis, [bad, good])
    assert isinstance(first, InvalidArgument) and "qty must be between 1 and" in str(first)
    assert second.status == Status.OK
