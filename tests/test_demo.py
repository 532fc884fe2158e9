"""`make demo` and `stocksync demo --keep`, run as a user runs them: a real process, no REDIS_URL.

The demo prints the pids of the processes it starts ("child pids: ..."); after it ends, none of them may
still be running. Waits are for conditions (a line printed, a process ended) with deadlines, never sleeps.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent


def demo_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("STOCKSYNC_")}


def child_pids(output: str) -> list[int]:
    match = re.search(r"child pids: ([\d ]+)", output)
    assert match, output
    pids = [int(p) for p in match.group(1).split()]
    assert len(pids) == 5, pids  # Redis, the API, three workers
    return pids


def running(pid: int) -> bool:
    """Still running as one of the demo's processes (a reused pid or a zombie does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z" and (b"stocksync" in cmdline or b"redis" in cmdline or b"valkey" in cmdline)


def section(output: str, title: str) -> str:
    start = output.index(title)
    end = output.find("\n== ", start + 1)
    return output[start : end if end != -1 else len(output)]


def test_demo_runs_under_a_minute_and_leaves_nothing_behind():
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "stocksync", "demo"], capture_output=True, text=True,
                         env=demo_env(), cwd=ROOT, timeout=120)
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stdout + out.stderr
    assert elapsed < 60, elapsed

    article = section(out.stdout, "== 1. The article's scenario")
    assert ("stocksync: sold 10 of 10, 2 orders (5 units) flagged for cancellation, oversold 0 at the marketplaces; "
            "the stock never went below 0") in article
    polled = re.search(r"15-minute polling .*: sold (\d+) of 10, oversold (\d+)", article)
    assert polled and int(polled.group(2)) > 0, article
    flash = section(out.stdout, "== 2. Flash sale")
    # The flash sale's buyers bought only what their marketplace listed: every flagged unit was oversold
    # there, and is counted so; polling, on the same buyers, oversells more.
    ours = re.search(r"stocksync: sold 50 of 50, \d+ orders \((\d+) units\) flagged for cancellation, oversold (\d+) "
                     r"at the marketplaces; the stock never went below 0", flash)
    theirs = re.search(r"15-minute polling .*oversold (\d+)", flash)
    assert ours and theirs and ours.group(1) == ours.group(2), flash
    assert int(ours.group(2)) < int(theirs.group(1)), flash
    # every channel converged, in both scenarios, with a time measured from the simulators' calls
    assert len(re.findall(r"every channel listed the final quantity \d+ ms after the last sale", out.stdout)) == 2
    assert re.search(r"Oversell risk the workers estimated during the sale .*: shopify \d+\.\d\d, amazon", flash)
    lost = section(out.stdout, "== 3. A lost webhook")
    assert re.search(r"The Shopify order poller found it \d+ ms later and took 3: available 1", lost), lost
    assert "refused by Amazon (it lists 1): nothing oversold" in lost
    assert re.search(r"15-minute polling on the same buyers: sold 5 of 4, oversold 1", lost), lost
    assert "OK: the stock never went below 0, stocksync oversold fewer units than polling, and every channel converged" \
        in out.stdout

    assert not [pid for pid in child_pids(out.stdout) if running(pid)]


class Lines:
    """A process's stdout, line by line, read on a thread so that waits can have deadlines."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pattern: str, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {seconds} s:\n" + "\n".join(self.seen)) from None
            if line is None:
                raise AssertionError(f"the demo ended before printing {pattern!r}:\n" + "\n".join(self.seen))
            self.seen.append(line)
            if re.search(pattern, line):
                return line


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_keep_stays_up_its_curl_works_and_ctrl_c_stops_everything():
    proc = subprocess.Popen([sys.executable, "-m", "stocksync", "demo", "--keep"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=demo_env(), cwd=ROOT)
    try:
        lines = Lines(proc)
        pids = child_pids(lines.wait_for(r"child pids:", 60))
        curl = lines.wait_for(r"^\s*curl -s -H 'Authorization: Bearer [^']+' http://\S+/v1/skus/MUG-BLUE$", 90)
        load = lines.wait_for(r"^\s*set -a; \. \S+; set \+a$", 10)
        status = lines.wait_for(r"stocksync status$", 10)
        lines.wait_for(r"dlq replay amazon$", 10)
        assert all(running(pid) for pid in pids)

        table = subprocess.run(f"{load.strip()}\n{status.strip()}", shell=True, capture_output=True, text=True,
                               cwd=ROOT, timeout=60, env=demo_env())
        assert table.returncode == 0, table.stderr
        assert [line.split()[0] for line in table.stdout.splitlines()[1:]] == ["shopify", "amazon", "flipkart"]

        reply = subprocess.run(shlex.split(curl), capture_output=True, timeout=30)
        assert reply.returncode == 0, reply.stderr
        doc = orjson.loads(reply.stdout)
        assert doc["sku"] == "MUG-BLUE" and doc["available"] == 0, doc

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, "\n".join(lines.seen)
        lines.wait_for(r"nothing left running", 5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not [pid for pid in pids if running(pid)]


def test_compose_file_is_consistent():
    """compose.yaml (no Docker Compose here to run it): its inline config loads, every worker's channel is
    configured with an adapter that can be built, every webhook verifies, every credential is provided."""
    import tomllib

    from consumers.adapters import make_adapter
    from stocksync.channels import load_channels
    from stocksync.orders.webhooks import build
    from stocksync.settings import Settings

    yaml = pytest.importorskip("yaml")  # PyYAML: not a dev dependency of its own (schemathesis brings it)
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = doc["services"]
    content = doc["configs"]["stocksync"]["content"]
    data = tomllib.loads(content)
    settings = Settings(sections={k: v for k, v in data.items() if isinstance(v, dict)})
    channels = load_channels(settings)
    workers = {name: s for name, s in services.items() if name.startswith("worker-")}
    named = {s["command"][s["command"].index("--channel") + 1] for s in workers.values()}
    assert named == set(channels) == {"shopify", "amazon", "flipkart"}
    env = services["api"]["environment"]
    for service in [services["api"], *workers.values()]:
        assert service["environment"] == env and service["build"] == "."
        assert service["configs"][0]["target"] == env["STOCKSYNC_CONFIG"]
    needed = {var for c in channels.values() for var in c.credentials.values()}
    needed |= {t["env"] for t in data["api"]["tokens"].values()}
    assert needed <= set(env), needed - set(env)
    # (no defaults: compose refuses to start until each secret is set, tests/test_deploy.py checks that)
    with pytest.MonkeyPatch.context() as mp:
        for k in needed:
            mp.setenv(k, f"value-of-{k}")
        hooks, disabled = build(channels)
        assert not disabled and set(hooks) == set(channels)
        for c in channels.values():
            make_adapter(c)  # required options present
    assert env["REDIS_URL"].startswith("redis://redis:")
    assert "--appendonly" in services["redis"]["command"]
