"""The README's command lines are real: each `stocksync ...` line parses with the real CLI, and the
operations recipes run against a real server (default prefix, private server) and answer sensibly."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from stocksync import functions
from stocksync.cli import build_parser
from stocksync.devtools.testing import SIMULATOR_ENV, config, toml_channel
from stocksync.embedded import EmbeddedRedis

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def indented_commands(section: str | None = None) -> list[str]:
    text = README if section is None else README.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line[4:].split("  #", 1)[0].strip() for line in text.splitlines() if line.startswith("    ")]
    return [line for line in lines if line.startswith(("stocksync ", "redis-cli ", "make "))]


PLACEHOLDERS = {"SKU": "MUG", "N": "5", "V": "1", "DELTA": "-1", "ID": "0"}


def variants(command: str) -> list[list[str]]:
    """A README line as argv lists: optional [parts] dropped and kept, `a | b` alternatives split,
    placeholders (SKU, N, ...) replaced by values."""
    out = []
    for alt in command.removeprefix("stocksync ").split(" | "):
        for text in (re.sub(r"\[[^]]*\]", "", alt), alt.replace("[", "").replace("]", "")):
            out.append([PLACEHOLDERS.get(w, w) for w in shlex.split(text)])
    return out


def test_every_stocksync_line_parses():
    # "stocksync serve | worker | status | dlq list|replay" is a summary, its commands have lines of their own
    lines = [c for c in indented_commands() if c.startswith("stocksync ") and "serve | worker" not in c]
    assert len(lines) >= 10
    for command in lines:
        for argv in variants(command):
            build_parser().parse_args(argv)  # exits (SystemExit) on an unknown command or option


def test_both_make_targets_exist():
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    for command in indented_commands():
        if command.startswith("make "):
            assert re.search(rf"^{command.split()[1]}:", makefile, re.M), command


@pytest.mark.skipif(not shutil.which("redis-cli"), reason="redis-cli is not installed")
def test_operations_recipes_run(tmp_path):
    settings = tmp_path / "stocksync.toml"
    settings.write_text(toml_channel(config("amazon", "http://127.0.0.1:9")))
    with EmbeddedRedis() as server:
        client = redis.Redis(port=server.port, decode_responses=True)
        client.function_load(functions.library_source(48 * 3600))
        client.xgroup_create("{stocksync:0}:events", "amazon", id="0", mkstream=True)
        client.close()
        env = {**os.environ, **SIMULATOR_ENV, "REDIS_URL": server.url, "STOCKSYNC_CONFIG": str(settings)}
        outputs = {}
        for command in indented_commands("Operations"):
            argv = shlex.split(command)
            if argv[:2] == ["stocksync", "tail"]:
                continue  # follows forever: tests/test_cli.py runs it
            if argv[0] == "redis-cli":
                argv = ["redis-cli", "-p", str(server.port), *argv[1:]]
            else:
                argv = [sys.executable, "-m", "stocksync", *argv[1:]]
            run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
            assert run.returncode == 0, f"{command}: {run.stderr}"
            outputs[command] = run.stdout
        assert "amazon" in outputs["stocksync status"]
        assert "amazon" in outputs["redis-cli XINFO GROUPS {stocksync:0}:events"]
