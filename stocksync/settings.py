"""Settings: defaults, then an optional TOML file, then the environment (the environment wins).

    REDIS_URL             redis://127.0.0.1:6379/0
    STOCKSYNC_CLUSTER     1 to talk to a Redis Cluster through RedisCluster
    STOCKSYNC_PREFIX      key prefix (default stocksync)
    STOCKSYNC_PARTITIONS  partitions for a new deployment (stored in <prefix>:meta on first use)
    STOCKSYNC_IDEM_TTL    seconds a reference is remembered (default 172800, 48 hours)
    STOCKSYNC_ALLOW_EVICTION  1 to let serve and worker start on a Redis whose maxmemory-policy can evict
                          keys (volatile-*, allkeys-*), which breaks exactly-once and the push leases
                          (stocksync.preflight); default: refused
    STOCKSYNC_WAIT_S      how long serve and worker wait at start for a Redis that is unreachable or still
                          loading its data, trying again with a log line per attempt (default 300; 0:
                          exit at once). Configuration errors (a bad URL, an evicting policy) never wait
    STOCKSYNC_DURABILITY  when a change counts as done (a webhook answers 200), stocksync.durability:
                          local (default: the primary applied it), replicated (and at least
                          STOCKSYNC_MIN_REPLICAS replicas have it: WAIT), fsync (and the primary wrote it
                          to its append-only file on disk: WAITAOF 1 0; needs appendonly yes)
    STOCKSYNC_MIN_REPLICAS    replicas that must have a change in replicated mode (default 1)
    STOCKSYNC_DURABILITY_TIMEOUT_MS   how long a change waits for them (default 1000); past it the
                          caller gets a retryable error (HTTP 503), and retries with the same reference
    STOCKSYNC_CONFIG      path of a TOML file with the same names in lower case, and the
                          sections later parts read (channels, api, ...)
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .keys import DEFAULT_PREFIX, check_prefix


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


_ENV = {
    "redis_url": "REDIS_URL",
    "cluster": "STOCKSYNC_CLUSTER",
    "prefix": "STOCKSYNC_PREFIX",
    "partitions": "STOCKSYNC_PARTITIONS",
    "idem_ttl_s": "STOCKSYNC_IDEM_TTL",
    "allow_eviction": "STOCKSYNC_ALLOW_EVICTION",
    "wait_s": "STOCKSYNC_WAIT_S",
    "durability": "STOCKSYNC_DURABILITY",
    "min_replicas": "STOCKSYNC_MIN_REPLICAS",
    "durability_timeout_ms": "STOCKSYNC_DURABILITY_TIMEOUT_MS",
}
DURABILITY = ("local", "replicated", "fsync")


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    cluster: bool = False
    prefix: str = DEFAULT_PREFIX
    partitions: int = 1
    idem_ttl_s: int = 48 * 3600
    allow_eviction: bool = False
    wait_s: float = 300.0
    durability: str = "local"
    min_replicas: int = 1
    durability_timeout_ms: int = 1000
    # Sections of the TOML file that other parts of stocksync read (channels, api, ...).
    sections: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            check_prefix(self.prefix)
        except ValueError as e:
            raise SettingsError(f"prefix: {e}") from None
        if not 1 <= self.partitions <= 16384:
            raise SettingsError(f"partitions must be between 1 and 16384, got {self.partitions}")
        if not 60 <= self.idem_ttl_s <= 366 * 86400:
            raise SettingsError(f"idem_ttl_s must be between 60 s and 366 days, got {self.idem_ttl_s}")
        self._check_durability()
        if not 0 <= self.wait_s <= 86400:
            raise SettingsError(f"wait_s must be between 0 and 86400 s, got {self.wait_s}")
        if urlsplit(self.redis_url).scheme not in ("redis", "rediss", "unix", "redis+sentinel"):
            raise SettingsError("redis_url must start with redis://, rediss://, unix:// or redis+sentinel://, got "
                                f"{redact(self.redis_url)}")

    def _check_durability(self) -> None:
        if self.durability not in DURABILITY:
            raise SettingsError(f"durability must be one of {', '.join(DURABILITY)}, got {self.durability!r}")
        if not 1 <= self.min_replicas <= 100:
            raise SettingsError(f"min_replicas must be between 1 and 100, got {self.min_replicas}")
        if not 1 <= self.durability_timeout_ms <= 60000:
            raise SettingsError(f"durability_timeout_ms must be between 1 and 60000, got {self.durability_timeout_ms}")

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        sections: dict[str, Any] = {}
        path = path or env.get("STOCKSYNC_CONFIG")
        if path:
            values, sections = _read_toml(Path(path))
        for name, var in _ENV.items():
            if env.get(var, "") != "":
                values[name] = env[var]
        return cls(**_coerce(values), sections=sections)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def section(self, name: str) -> Mapping[str, Any]:
        return self.sections.get(name, {})

    def __repr__(self) -> str:  # never print a password
        return f"Settings(redis_url={redact(self.redis_url)!r}, cluster={self.cluster}, prefix={self.prefix!r}, partitions={self.partitions}, idem_ttl_s={self.idem_ttl_s}, durability={self.durability})"


def _read_toml(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"config file {path} is not valid TOML: {e}") from None
    names = {f.name for f in fields(Settings)} - {"sections"}
    values = {k: v for k, v in data.items() if k in names}
    sections = {k: v for k, v in data.items() if isinstance(v, dict)}
    unknown = set(data) - names - set(sections)
    if unknown:
        raise SettingsError(f"config file {path}: unknown setting(s) {', '.join(sorted(unknown))}")
    return values, sections


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    for name in ("partitions", "idem_ttl_s", "min_replicas", "durability_timeout_ms"):
        if name in out:
            try:
                out[name] = int(out[name])
            except (TypeError, ValueError):
                raise SettingsError(f"{name} must be an integer, got {out[name]!r}") from None
    if "wait_s" in out:
        try:
            out["wait_s"] = float(out["wait_s"])
        except (TypeError, ValueError):
            raise SettingsError(f"wait_s must be a number of seconds, got {out['wait_s']!r}") from None
    if "durability" in out:
        out["durability"] = str(out["durability"]).strip().lower()
    for name in ("cluster", "allow_eviction"):
        if name in out and not isinstance(out[name], bool):
            text = str(out[name]).strip().lower()
            if text not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise SettingsError(f"{name} must be true or false, got {out[name]!r}")
            out[name] = text in ("1", "true", "yes", "on")
    return out


def redact(url: str) -> str:
    """The URL with any password replaced, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
