"""The command line as an operator meets it: --config and --log-level anywhere, help that says what each
option does and its default, one port (8000) everywhere, an unknown channel refused by every command that
takes one, `tail --count`, `status --healthy`; and the API's Last-Event-ID: 0."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from stocksync import commandline
from stocksync.api import serve
from stocksync.cli import build_parser

from .apihelp import api_settings, auth, running

ROOT = Path(__file__).resolve().parent.parent
CONFIG = '[channels.amazon]\nkind = "amazon"\nurl = "http://127.0.0.1:9"\ncredentials = { access_token = "X" }\n'


def stocksync(settings, *args, env=None, timeout=60):
    environment = {**os.environ, "REDIS_URL": settings.redis_url, "STOCKSYNC_PREFIX": settings.prefix, **(env or {})}
    return subprocess.run([sys.executable, "-m", "stocksync", *args], capture_output=True, text=True,
                          env=environment, timeout=timeout, cwd=ROOT)


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "stocksync.toml"
    path.write_text(CONFIG)
    return path


def test_config_is_taken_anywhere_on_the_line(settings, config):
    for argv in (["--config", str(config), "status"], ["status", "--config", str(config)],
                 ["status", "--json", "--config", str(config)]):
        out = stocksync(settings, *argv)
        assert out.returncode == 0 and "amazon" in out.stdout, (argv, out.stderr)
    listed = stocksync(settings, "rejections", "list", "--channel", "amazon", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    args = build_parser().parse_args(["--config", "a.toml", "sku", "get", "X"])
    assert args.config == "a.toml"
    assert build_parser().parse_args(["sku", "get", "X", "--config", "b.toml"]).config == "b.toml"
    assert build_parser().parse_args(["sku", "get", "X"]).config is None


def test_log_level_anywhere_sets_the_json_logs(settings):
    out = stocksync(settings, "sku", "get", "NOPE", "--log-level", "DEBUG")
    records = [orjson.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    assert any(r["level"] == "debug" for r in records), out.stderr
    quiet = stocksync(settings, "sku", "get", "NOPE")
    assert quiet.stderr.strip() == "NOPE: unknown SKU"
    bad = stocksync(settings, "sku", "get", "X", "--log-level", "loud")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def parsers(parser: argparse.ArgumentParser, path: str = "stocksync"):
    yield path, parser
    for child in commandline.subparsers_of(parser):
        yield from parsers(child, child.prog)


def test_every_option_says_what_it_does_and_its_default():
    missing = []
    for prog, parser in parsers(build_parser()):
        formatter = commandline.HelpFormatter(prog)
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            text = formatter._get_help_string(action) % {"default": action.default, "prog": prog}
            if not action.help:
                missing.append(f"{prog} {action.option_strings[0]}: no help")
            elif action.default not in (None, False, argparse.SUPPRESS) and str(action.default) not in text:
                missing.append(f"{prog} {action.option_strings[0]}: default {action.default!r} not said")
            elif action.default is None and action.nargs != 0 and "default" not in text and "(0:" not in text:
                missing.append(f"{prog} {action.option_strings[0]}: says nothing of what happens without it")
    assert not missing, "\n".join(missing)


def test_worker_help_shows_meaning_and_defaults():
    out = subprocess.run([sys.executable, "-m", "stocksync", "worker", "--help"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    text = " ".join(out.stdout.split())
    assert "--lease-ms N per-SKU push lease (ms)" in text and "(default: worker.lease_ms of the config file, else 15000)" in text
    assert "--metrics-port PORT serve /metrics (Prometheus) and /healthz on this port (0: none) (default: 0)" in text
    assert "--log-level {debug,info,warning,error}" in text


def test_the_api_port_is_8000_everywhere():
    assert build_parser().parse_args(["serve"]).port == serve.DEFAULT_PORT == 8000
    for name in ("README.md", "Dockerfile", "docs/runbook.md", "compose.yaml", "stocksync/api/serve.py"):
        text = (ROOT / name).read_text()
        assert "8000" in text and not re.search(r"\b8080\b", text), name


@pytest.mark.parametrize("argv", [
    ["dlq", "list", "ebay"], ["dlq", "replay", "ebay"], ["resync", "ebay"], ["status", "--channel", "ebay"],
    ["worker", "--channel", "ebay"], ["rejections", "list", "--channel", "ebay"],
    ["rejections", "apply", "ebay", "1"], ["status", "-c", "amazon", "-c", "ebay"],
])
def test_an_unknown_channel_is_exit_2_naming_the_configured_ones(settings, config, argv):
    out = stocksync(settings, "--config", str(config), *argv)
    assert out.returncode == 2, out.stderr
    assert "no channel named 'ebay' is configured (configured: amazon)" in out.stderr
    assert "dead letter" not in out.stderr + out.stdout


def test_tail_stops_after_count_events(settings):
    for i in range(3):
        assert stocksync(settings, "sku", "set", f"T{i}", str(i + 1)).returncode == 0
    out = stocksync(settings, "tail", "--from", "0", "--count", "2", timeout=30)
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and "T0 +1 -> 1" in lines[0] and "T1 +2 -> 2" in lines[1]
    assert stocksync(settings, "tail", "--count", "-1").returncode == 2


def test_status_healthy_is_exit_1_without_a_live_worker(settings, config):
    out = stocksync(settings, "--config", str(config), "status", "--healthy")
    assert out.returncode == 1 and "no live worker for amazon" in out.stderr


@pytest.mark.usefixtures("api_env")
@pytest.mark.parametrize("how", ["header", "query"])
async def test_last_event_id_0_means_from_the_beginning(settings, store, how):
    for i in range(3):
        await store.set(f"E{i}", i + 1, source="t")
    async with running(api_settings(settings)) as client:
        params = {"limit": 3, **({"since": "0"} if how == "query" else {})}
        headers = auth(key=False) | ({"Last-Event-ID": "0"} if how == "header" else {})
        r = await client.get("/v1/events", params=params, headers=headers)
        assert r.status_code == 200, r.text
        skus = [orjson.loads(line[6:])["sku"] for line in r.text.splitlines() if line.startswith("data: ")]
        assert skus == ["E0", "E1", "E2"]
        for bad in ("x", "0-", "-1", "1-2-3"):
            r = await client.get("/v1/events", params={"since": bad, "limit": 1}, headers=auth(key=False))
            assert r.status_code == 400, bad


@pytest.mark.usefixtures("api_env")
async def test_the_api_refuses_an_unknown_channel_naming_the_configured_ones(settings):
    async with running(api_settings(settings)) as client:
        for path in ("/v1/rejections?channel=nope", "/v1/channels/nope/dead-letters", "/v1/channels/nope/sku-map"):
            r = await client.get(path, headers=auth(key=False))
            assert r.status_code == 404 and r.json()["error"] == "unknown_channel", path
            assert r.json()["message"] == ("no channel named 'nope' is configured (configured: amazon, ebay, "
                                           "flipkart, shopify)")
        assert (await client.get("/v1/rejections?channel=amazon", headers=auth(key=False))).status_code == 200
