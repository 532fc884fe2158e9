"""The README's redis-cli examples, run verbatim against a fresh server, must print what the README says."""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from stocksync import functions
from stocksync.embedded import EmbeddedRedis

README = Path(__file__).resolve().parent.parent / "README.md"


def console_examples(text: str) -> list[tuple[str, str]]:
    """(command, expected output) for every `$ ` line of the README's console blocks."""
    examples = []
    for block in re.findall(r"```console\n(.*?)```", text, re.S):
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, _, output = chunk.partition("\n")
            examples.append((command, output.rstrip("\n")))
    return examples


def test_the_readme_has_examples():
    commands = [c for c, _ in console_examples(README.read_text())]
    assert len(commands) >= 5 and all(c.startswith("redis-cli ") for c in commands)


@pytest.mark.skipif(not shutil.which("redis-cli"), reason="redis-cli is not installed")
def test_readme_redis_cli_examples_run_verbatim():
    with EmbeddedRedis() as server:
        client = redis.Redis(port=server.port)
        client.function_load(functions.library_source(48 * 3600))
        client.close()
        for command, expected in console_examples(README.read_text()):
            argv = shlex.split(command)
            run = subprocess.run([argv[0], "-p", str(server.port), "--no-raw", *argv[1:]],
                                 capture_output=True, text=True, timeout=10)
            assert run.stdout.rstrip("\n") == expected, command


def test_readme_python_example_runs(redis_url, prefix, monkeypatch):
    [block] = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("STOCKSYNC_PREFIX", prefix)
    monkeypatch.delenv("STOCKSYNC_CONFIG", raising=False)
    body = "\n".join("    " + line for line in block.splitlines())
    namespace: dict = {}
    exec(f"async def example():\n{body}\n    await store.close()\n    return outcome\n", namespace)  # the README's lines
    outcome = asyncio.run(namespace["example"]())
    assert (outcome.status, outcome.available, outcome.version) == ("ok", 7, 2)
