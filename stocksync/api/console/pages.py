"""The console's pages: HTML shells rendered on the server (the layout, the navigation, each page's
tables and forms, empty) and the static files their scripts and styles come from.

    GET /console               channels: lag, pending, circuit, workers, dead letters (replay), oversell risk
    GET /console/skus          the SKU grid: search by prefix, pages, what each channel lists
    GET /console/history       one SKU's events, newest first (?sku=)
    GET /console/rejections    orders that could not be covered: apply again, resolve, fix a SKU map
    GET /docs                  the OpenAPI document as a page (rendered from /openapi.json)
    GET /console/static/{name} the CSS, JavaScript and icon (stocksync/api/console/static/)

The shells carry no data and need no token: the page's script asks for a token once (kept in the tab's
sessionStorage), and every data call is a fetch of the /v1 API with `Authorization: Bearer`. No cookie is
ever set, so there is nothing for a cross-site request to ride on. The pages forbid inline scripts and
any other origin (Content-Security-Policy), and the scripts write data as text, never as HTML.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from functools import cache
from string import Template

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stocksync import __version__

from ..httputil import HTTPError
from .assets import ASSETS, template

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class Page:
    name: str  # its template (templates/<name>.html) and script (static/<name>.js)
    path: str
    title: str
    needs_token: bool = True


PAGES = (
    Page("channels", "/console", "Channels"),
    Page("skus", "/console/skus", "SKUs"),
    Page("history", "/console/history", "SKU history"),
    Page("rejections", "/console/rejections", "Rejections"),
    Page("docs", "/docs", "API reference", needs_token=False),
)


def nav(current: Page) -> str:
    links = []
    for page in PAGES:
        here = ' aria-current="page"' if page is current else ""
        links.append(f'<a href="{page.path}"{here}>{html.escape(page.title)}</a>')
    return "\n    ".join(links)


@cache
def render(page: Page) -> str:
    body = Template(template(page.name)).substitute(version=html.escape(__version__))
    return Template(template("base")).substitute(
        title=html.escape(page.title), page=page.name, auth="token" if page.needs_token else "none",
        version=html.escape(__version__), nav=nav(page), body=body)


def endpoint(page: Page):
    async def show(request: Request) -> Response:
        return Response(render(page), media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    show.__name__ = f"console_{page.name}"
    return show


async def static(request: Request) -> Response:
    asset = ASSETS.get(request.path_params["name"])
    if asset is None:
        raise HTTPError(404, "not_found", "no such console file")
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def routes() -> list[Route]:
    return [*(Route(page.path, endpoint(page), methods=["GET"]) for page in PAGES),
            Route("/console/static/{name:path}", static, methods=["GET"])]
