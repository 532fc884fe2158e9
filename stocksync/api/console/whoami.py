"""GET /v1/whoami: the name and scopes of the token the request carries (any valid token may ask), so
that the console offers only the actions the token may take."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..auth import SCOPES
from ..context import context
from ..httputil import HTTPError, json_response


async def whoami(request: Request) -> Response:
    ctx = context(request)
    name, scopes = None, []
    for scope in SCOPES:
        try:
            token = ctx.auth.require(request, scope)  # (401 for a missing or unknown token: raised)
        except HTTPError as e:
            if e.status != 403:
                raise
            continue
        name = token.name
        scopes.append(scope)
    return json_response({"token": name, "scopes": scopes})


def routes() -> list[Route]:
    return [Route("/v1/whoami", whoami, methods=["GET"])]
