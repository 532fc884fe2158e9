"""Write constraints.txt: the runtime dependencies of stocksync (and theirs, all the way down) at the
versions installed in this environment, the one the tests ran in. `make constraints` runs it after an
upgrade; the Dockerfile installs exactly these; tests/test_deploy.py checks the file matches the venv.

    python deploy/constraints.py [OUT]      (default: constraints.txt beside pyproject.toml)
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
HEADER = ("# Runtime dependencies of stocksync at the versions its tests ran with (python deploy/constraints.py,\n"
          "# `make constraints`; tests/test_deploy.py holds it to the venv). The Dockerfile installs these.\n")


def closure(package: str = "stocksync") -> dict[str, str]:
    """{distribution name: installed version} of every runtime requirement, recursively (extras followed,
    markers evaluated for this interpreter)."""
    found: dict[str, str] = {}
    todo = [(package, frozenset())]
    while todo:
        name, extras = todo.pop()
        dist = metadata.distribution(name)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
                continue
            key = canonicalize_name(req.name)
            if key not in found or req.extras:
                found[key] = metadata.version(req.name)
                todo.append((req.name, frozenset(req.extras)))
    return dict(sorted(found.items()))


def render(pins: dict[str, str]) -> str:
    return HEADER + "".join(f"{name}=={version}\n" for name, version in pins.items())


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "constraints.txt"
    out.write_text(render(closure()))
    print(f"wrote {out}")
