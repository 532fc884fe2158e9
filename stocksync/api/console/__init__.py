"""The web console: server-rendered pages and local static files (no build step, nothing from a CDN),
served by the API with the same bearer tokens (stocksync.api.console.pages says how a browser signs in).

    routes()    every route of the console: its pages, /docs, its static files, and the reads it needs
                beyond the rest of /v1 (whoami, skus:listings, skus:history)
"""

from __future__ import annotations

from starlette.routing import Route

from . import history, listings, pages, whoami


def routes() -> list[Route]:
    return [*pages.routes(), *whoami.routes(), *listings.routes(), *history.routes()]
