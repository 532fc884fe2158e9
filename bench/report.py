"""Rewrites the generated parts of BENCHMARKS.md from bench/results/*.json.

Each benchmark module has `markdown(result) -> str`, the tables of its section with the machine, the
versions and the date of the run. In BENCHMARKS.md that text stands between
`<!-- generated: NAME -->` and `<!-- end: NAME -->`; everything outside the markers is written by people
(what the figures mean, what costs what) and is kept as it is. A section without markers is appended.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import orjson

from .common import RESULTS

DOC = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def generated(name: str) -> str | None:
    path = RESULTS / f"{name}.json"
    module = importlib.import_module(f"bench.{name}")
    if not path.exists() or not hasattr(module, "markdown"):
        return None
    return module.markdown(orjson.loads(path.read_bytes())).strip()


def rewrite(text: str, name: str, body: str) -> str:
    block = f"<!-- generated: {name} -->\n{body}\n<!-- end: {name} -->"
    pattern = re.compile(rf"<!-- generated: {name} -->.*?<!-- end: {name} -->", re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    return text.rstrip() + f"\n\n{block}\n"


def main() -> int:
    from .run_all import BENCHMARKS

    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    for name in BENCHMARKS:
        body = generated(name)
        if body:
            text = rewrite(text, name, body)
    DOC.write_text(text)
    print(f"rewrote {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
