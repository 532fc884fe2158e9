"""Small helpers every benchmark shares: machine and versions, timing, medians, tables, JSON results.

Benchmarks are scripts (`python -m bench.<name>`), not tests. Each one prints a table and writes
bench/results/<name>.json with the machine, the versions and the date, so that a figure in
BENCHMARKS.md can be traced to a run.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

RESULTS = Path(__file__).resolve().parent / "results"


# Machine and versions ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, kernel and load when the run started."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    mem_gb = None
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem_gb = round(kb / 1024 / 1024, 1)
    except (OSError, AttributeError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "kernel": platform.release(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def python_versions(*packages: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        out[name] = package_version(name)
    return out


def redis_server_version(info_server: dict[str, Any]) -> str:
    """'Redis 7.0.15' or 'Valkey 9.1.2', from INFO server of a live server."""
    if info_server.get("valkey_version"):
        return f"Valkey {info_server['valkey_version']}"
    name = str(info_server.get("server_name") or "Redis").capitalize()
    return f"{name} {info_server.get('redis_version')}"


def tool_version(*argv: str) -> str | None:
    if not shutil.which(argv[0]):
        return None
    out = subprocess.run(argv, capture_output=True, text=True).stdout.strip()
    return out or None


def today() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


# Timing and statistics -----------------------------------------------------------------------------


def median(values: Iterable[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


class Timer:
    """`with Timer() as t: ...` then t.seconds (wall clock, perf_counter)."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def rotated(items: Sequence[Any], round_no: int) -> list[Any]:
    """The items starting at a different one each round, so that no variant always runs first."""
    k = round_no % len(items) if items else 0
    return list(items[k:]) + list(items[:k])


def interleaved(variants: Sequence[Any], rounds: int, run: Callable[[Any, int], None]) -> None:
    """Run every variant once per round, in a rotated order."""
    for r in range(rounds):
        for v in rotated(variants, r):
            run(v, r)


# Output --------------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if digits == 0:
            return f"{value:,.0f}"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], markdown: bool = False) -> str:
    """A plain or Markdown table; numbers right-aligned, other cells left-aligned."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    numeric = [all(_looks_numeric(r[i]) for r in cells[1:]) for i in range(len(headers))]
    if markdown:
        cells = [[c.replace("|", "\\|") for c in r] for r in cells]
        lines = ["| " + " | ".join(cells[0]) + " |",
                 "| " + " | ".join("---:" if n else "---" for n in numeric) + " |"]
        lines += ["| " + " | ".join(r) + " |" for r in cells[1:]]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for j, r in enumerate(cells):
        out.append("  ".join(c.rjust(w) if numeric[i] and j else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _looks_numeric(cell: str) -> bool:
    return cell == "" or bool(re.fullmatch(r"[-+]?[\d,]*\.?\d+[x%]?|-", cell))


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    tmp.replace(path)
    return path


def log(*parts: Any) -> None:
    """Progress on stderr, so that stdout is the result."""
    import sys

    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)
