"""The one table of limits (stocksync.limits) matches the function library's constants."""

from __future__ import annotations

import re
from pathlib import Path

from stocksync import limits

LUA = (Path(__file__).resolve().parent.parent / "lua" / "stocksync.lua").read_text()


def test_every_lua_limit_is_in_the_table_with_the_same_value():
    constants = {name: int(value) for name, value in re.findall(r"^local (MAX_\w+) = (\d+)\b", LUA, re.M)}
    assert constants, "no `local MAX_... = N` constant in lua/stocksync.lua"
    assert constants == limits.LUA_NAMES


def test_no_bare_limit_literal_is_left_in_the_lua_functions():
    body = re.sub(r"^local MAX_\w+ = \d+.*$", "", LUA, flags=re.M)
    body = re.sub(r"--\[\[.*?\]\]|--[^\n]*", "", body, flags=re.S)  # comments may say the numbers
    for value in {v for v in limits.LUA_NAMES.values() if v >= 1000}:  # (small numbers have other uses)
        assert not re.search(rf"(?<![\w.]){value}(?![\w.])", body), f"{value} is written out in lua/stocksync.lua"
