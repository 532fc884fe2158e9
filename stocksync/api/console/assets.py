"""The console's files, read once from the package: the page templates (templates/*.html) and the static
assets served under /console/static/ (static/: CSS, JavaScript, the icon). Nothing comes from a CDN.

    ASSETS        {name: Asset} of static/, the only files /console/static/{name} serves (no path is ever
                  joined from a request, so nothing outside static/ can be named)
    template(n)   the text of templates/<n>.html
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".svg": "image/svg+xml", ".html": "text/html; charset=utf-8"}


@dataclass(frozen=True)
class Asset:
    name: str
    body: bytes
    media_type: str
    etag: str


def load_static(folder: Path = HERE / "static") -> dict[str, Asset]:
    """Every file of the folder with a known type, by name."""
    out = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in TYPES:
            body = path.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            out[path.name] = Asset(path.name, body, TYPES[path.suffix], etag)
    return out


ASSETS = load_static()


@cache
def template(name: str) -> str:
    return (HERE / "templates" / f"{name}.html").read_text(encoding="utf-8")
