"""The intake's group commit (stocksync.orders.batcher), against a real server."""

from __future__ import annotations

import asyncio

from stocksync.orders.batcher import Batcher, pack


class CountingBatcher(Batcher):
    """Counts the round trips it makes."""

    def __init__(self, redis) -> None:
        super().__init__(redis)
        self.round_trips = 0

    async def _direct(self, commands):
        self.round_trips += 1
        return await super()._direct(commands)


async def test_concurrent_callers_share_one_round_trip_and_get_their_own_replies(settings, store):
    batcher = CountingBatcher(store.redis)
    keys = [f"{settings.prefix}:b{i}" for i in range(20)]
    replies = await asyncio.gather(*(batcher.call([("SET", k, str(i)), ("GET", k)]) for i, k in enumerate(keys)))
    assert [r[1] for r in replies] == [str(i) for i in range(20)]
    assert batcher.round_trips == 1


async def test_callers_arriving_during_a_round_trip_go_in_the_next_one(settings, store):
    batcher = CountingBatcher(store.redis)
    key = f"{settings.prefix}:later"
    first = asyncio.ensure_future(batcher.call([("SET", key, "1")]))
    await asyncio.sleep(0)  # the first batch is on its way (one loop turn: not a wait for time)
    later = await asyncio.gather(*(batcher.call([("INCR", key)]) for _ in range(5)))
    await first
    assert sorted(r[0] for r in later) == [2, 3, 4, 5, 6]
    assert batcher.round_trips == 2


async def test_an_error_reply_is_that_command_s_value_and_a_dropped_connection_is_survived(settings, store,
                                                                                            sync_redis):
    batcher = Batcher(store.redis)
    key = f"{settings.prefix}:batcher-test"
    replies = await asyncio.gather(
        batcher.call([("SET", key, "abc"), ("INCR", key)]),
        batcher.call([("GET", key), ("EXISTS", key + ":none"), ("HMGET", key + ":h", "a", "b")]),
    )
    assert replies[0][0] in ("OK", True) and "not an integer" in str(replies[0][1])
    assert isinstance(replies[0][1], Exception)
    assert replies[1] == ["abc", 0, [None, None]]
    # A killed connection: the next batch reconnects (or goes through redis-py's retrying pipeline).
    sync_redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    assert await batcher.call([("GET", key)]) == ["abc"]
    assert await batcher.call([("SET", key, b"\x00v"), ("GET", key)]) in (["OK", "\x00v"], [True, "\x00v"])


def test_pack_writes_resp_as_redis_reads_it():
    assert pack(("SET", "k", 12, b"\x00v", "é")) == b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n$2\r\n\x00v\r\n$2\r\n\xc3\xa9\r\n"
