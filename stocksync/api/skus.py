"""Inventory in and out over HTTP (stocksync.inventory does the work; the CLI's `stocksync sku list|import|
export` does the same):

    GET  /v1/skus?limit=100&cursor=...&prefix=...   a page of SKUs with their stock, and `next_cursor`
                                                    (null at the end); a page may hold fewer than `limit`
    POST /v1/skus:import[?dry_run=true]             a CSV body (sku,available[,expected_version]), each row
                                                    exactly once; the report of every row refused
    GET  /v1/skus:export                            every SKU as CSV, streamed

Scopes: stock:read for the reads, stock:write for the import. The import takes an Idempotency-Key like
every write, bound to the file's content (the same key with another file: 422); the rows' references
come from the content itself, so the same file imported again under any key changes nothing. Its body is
bounded by [api] max_body_bytes (4 MiB, about 150,000 rows): import a larger file in parts, or with the CLI.
"""

from __future__ import annotations

import hashlib

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from stocksync import inventory
from stocksync.validate import invalid

from .context import context
from .httputil import json_response, read_body
from .idempotency import bind_key, idempotency_key


def _limit(request: Request) -> int:
    text = request.query_params.get("limit", "100")
    if not text.isdigit() or not 1 <= int(text) <= inventory.MAX_PAGE:
        raise invalid("limit", f"must be a whole number from 1 to {inventory.MAX_PAGE}")
    return int(text)


async def list_skus(request: Request) -> Response:
    ctx = context(request)
    ctx.auth.require(request, "stock:read")
    page = await inventory.list_page(ctx.store, request.query_params.get("cursor") or None, _limit(request),
                                     request.query_params.get("prefix", ""))
    return json_response({"skus": [{"sku": s.sku, "available": s.available, "reserved": s.reserved,
                                    "version": s.version, "updated_ms": s.updated_ms, "source": s.source}
                                   for s in page.items], "next_cursor": page.next_cursor})


def _flag(request: Request, name: str) -> bool:
    text = request.query_params.get(name, "false").lower()
    if text not in ("true", "false", "1", "0"):
        raise invalid(name, "must be true or false")
    return text in ("true", "1")


async def import_skus(request: Request) -> Response:
    ctx = context(request)
    token = ctx.auth.require(request, "stock:write")
    dry_run = _flag(request, "dry_run")
    key = None if dry_run else idempotency_key(request)  # (a dry run changes nothing)
    body = await read_body(request, ctx.max_body)
    parsed = inventory.parse_csv(body)  # (a file that cannot be read: 422, nothing changed)
    if key is not None:
        await bind_key(request, ctx, key, {"csv_sha256": hashlib.sha256(body).hexdigest()})
    report = await inventory.import_rows(ctx.store, parsed, dry_run=dry_run, source=token.name)
    return json_response(report.as_dict())


async def export_skus(request: Request) -> Response:
    ctx = context(request)
    ctx.auth.require(request, "stock:read")
    return StreamingResponse(inventory.export_lines(ctx.store), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": 'attachment; filename="stocksync-skus.csv"'})


def routes() -> list[Route]:
    return [
        Route("/v1/skus", list_skus, methods=["GET"]),
        Route("/v1/skus:import", import_skus, methods=["POST"]),
        Route("/v1/skus:export", export_skus, methods=["GET"]),
    ]
