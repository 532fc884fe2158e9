"""`make bench`: every benchmark in turn, then BENCHMARKS.md rewritten from their JSON.

Benchmarks never overlap (this machine has two cores): each runs alone, under the same lock file the
developers use by hand (`flock /tmp/stocksync-bench.lock ...`). `--quick` passes through for a short run.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import time

from . import report

BENCHMARKS = ("decrement", "inventory", "propagation", "api", "market", "reconcile", "durability", "cluster")
LOCK = "/tmp/stocksync-bench.lock"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    failed = []
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in BENCHMARKS:
            started = time.monotonic()
            print(f"== bench.{name} {' '.join(args)}", flush=True)
            if subprocess.run([sys.executable, "-m", f"bench.{name}", *args]).returncode != 0:
                failed.append(name)
            print(f"== bench.{name}: {time.monotonic() - started:.0f} s", flush=True)
    report.main()
    if failed:
        print(f"failed: {', '.join(failed)} (their sections keep the previous results)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
