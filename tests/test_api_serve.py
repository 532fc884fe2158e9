"""`stocksync serve` for real: uvicorn on a free loopback port, signed webhooks, JSON logs, SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import orjson

from .apihelp import ADMIN, ENV, SERVE_CONFIG, SHOPIFY_SECRET, auth, shopify_headers, shopify_order


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def test_serve_takes_webhooks_logs_json_and_stops_gracefully(tmp_path, redis_url, prefix, sync_redis):
    config = tmp_path / "stocksync.toml"
    config.write_text(SERVE_CONFIG)
    port = _free_port()
    env = {**os.environ, **ENV, "REDIS_URL": redis_url, "STOCKSYNC_PREFIX": prefix}
    proc = subprocess.Popen([sys.executable, "-m", "stocksync", "--config", str(config), "serve", "--port", str(port),
                             "--access-log"], env=env, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline and proc.poll() is None, "the server did not become ready"
                time.sleep(0.05)
            r = client.put("/v1/skus/A", json={"available": 5}, headers=auth())
            assert r.status_code == 200, r.text
            body = orjson.dumps(shopify_order(42, [(1, "A", 2)]))
            for _ in range(3):
                r = client.post("/webhooks/shopify?x=1", content=body, headers=shopify_headers(body, "orders/create"))
                assert r.status_code == 200, r.text
            assert client.get("/v1/skus/A", headers=auth(key=False)).json()["available"] == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    # uvicorn re-raises the signal once shutdown is complete, so the exit status says "terminated by SIGTERM".
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "Application shutdown complete" in err
    records = [orjson.loads(line) for line in err.splitlines() if line.strip()]
    assert any(r.get("msg") == "request" and r.get("path") == "/webhooks/shopify" for r in records), err
    assert any("shutdown" in r["msg"].lower() for r in records), err
    for secret in (SHOPIFY_SECRET, ADMIN):
        assert secret not in err


def _healthz_count(text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("stocksync_http_requests_total{") and 'route="/healthz"' in line)


def test_two_server_processes_sum_their_metrics_on_every_scrape(tmp_path, redis_url, prefix):
    """With --workers 2 and PROMETHEUS_MULTIPROC_DIR, whichever process answers /metrics counts both."""
    config = tmp_path / "stocksync.toml"
    config.write_text(SERVE_CONFIG)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    port = _free_port()
    env = {**os.environ, **ENV, "REDIS_URL": redis_url, "STOCKSYNC_PREFIX": prefix,
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "stocksync", "--config", str(config), "serve", "--port", str(port),
                             "--workers", "2"], env=env, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        sent = 0
        # a new connection per request, until both processes have counted some (their files appear)
        while len(list(metrics_dir.glob("counter_*.db"))) < 2 or sent < 20:
            assert time.monotonic() < deadline and proc.poll() is None, "both processes never answered"
            try:
                with httpx.Client(base_url=base, timeout=10) as client:
                    if client.get("/healthz").status_code == 200:
                        sent += 1
            except httpx.TransportError:
                time.sleep(0.05)
        for _ in range(6):  # each scrape may land on either process: every one must see all requests
            with httpx.Client(base_url=base, timeout=10) as client:
                assert _healthz_count(client.get("/metrics").text) == sent
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def _wait_ready(base: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None, "the server did not become ready"
        time.sleep(0.05)


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_half_sent_requests_are_closed_within_the_read_timeout_while_the_server_answers(tmp_path, redis_url, prefix):
    config = tmp_path / "stocksync.toml"
    config.write_text(SERVE_CONFIG + "\n[api]\nread_timeout_s = 3\n")
    port = _free_port()
    env = {**os.environ, **ENV, "REDIS_URL": redis_url, "STOCKSYNC_PREFIX": prefix}
    proc = subprocess.Popen([sys.executable, "-m", "stocksync", "--config", str(config), "serve", "--port", str(port)],
                            env=env, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    clients: list[socket.socket] = []
    try:
        _wait_ready(base, proc)
        fds_before = _open_fds(proc.pid)
        start = time.monotonic()
        for i in range(300):  # half a head, and half a body after a whole head
            s = socket.create_connection(("127.0.0.1", port))
            head = b"POST /webhooks/shopify HTTP/1.1\r\nHost: x\r\n"
            s.sendall(head if i % 2 else head + b"Content-Length: 100\r\nContent-Type: application/json\r\n\r\n{")
            s.settimeout(30)
            clients.append(s)
        assert httpx.get(base + "/healthz", timeout=5).status_code == 200  # the server still answers
        for s in clients:
            assert s.recv(1024) == b""  # closed by the server, without a reply
        assert time.monotonic() - start < 30
        deadline = time.monotonic() + 10
        while _open_fds(proc.pid) > fds_before + 5:
            assert time.monotonic() < deadline, "the server kept descriptors of closed clients"
            time.sleep(0.05)
        r = httpx.post(base + "/webhooks/shopify", content=b"{}", headers={"X-Shopify-Topic": "orders/create"})
        assert r.status_code == 401  # a whole request is served as before
    finally:
        for s in clients:
            s.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
