"""Bearer tokens of the admin API and their scopes.

The config file names where each token is, never the token itself:

    [api.tokens.warehouse]
    env = "STOCKSYNC_TOKEN_WAREHOUSE"      # the environment variable holding the token, or
    # sha256 = "<hex digest of the token>"
    scopes = ["stock:read", "stock:write", "orders:write"]

Scopes: stock:read, stock:write, orders:write, events:read, channels:read, channels:write, or "*".
No token: 401. A token without the endpoint's scope: 403. The token's name is the `source` of its changes.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.requests import Request

from stocksync.settings import SettingsError

from .httputil import HTTPError

log = logging.getLogger(__name__)
SCOPES = ("stock:read", "stock:write", "orders:write", "events:read", "channels:read", "channels:write")


@dataclass(frozen=True)
class Token:
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return "*" in self.scopes or scope in self.scopes


class Auth:
    def __init__(self, tokens: Mapping[str, Mapping], env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.by_digest: dict[bytes, Token] = {}
        for name, table in tokens.items():
            if not isinstance(table, Mapping):
                raise SettingsError(f"api.tokens.{name} must be a table")
            scopes = table.get("scopes", [])
            unknown = set(scopes) - set(SCOPES) - {"*"}
            if not isinstance(scopes, list) or unknown:
                raise SettingsError(f"api.tokens.{name}.scopes: unknown scope(s) {sorted(unknown)}; known: {SCOPES}")
            if "sha256" in table:
                digest = bytes.fromhex(str(table["sha256"]))
            elif env.get(str(table.get("env", ""))):
                digest = hashlib.sha256(env[table["env"]].encode()).digest()
            else:
                log.warning("api.tokens.%s: environment variable %s is not set; token disabled", name, table.get("env"))
                continue
            self.by_digest[digest] = Token(name, frozenset(scopes))
        if not self.by_digest:
            log.warning("no API token configured: every /v1 request will be refused (401)")

    def require(self, request: Request, scope: str) -> Token:
        header = request.headers.get("authorization", "")
        kind, _, value = header.partition(" ")
        if kind.lower() != "bearer" or not value.strip():
            raise HTTPError(401, "unauthorized", "an Authorization: Bearer <token> header is required",
                            headers={"WWW-Authenticate": "Bearer"})
        # A lookup by digest: its timing says nothing about the token itself.
        token = self.by_digest.get(hashlib.sha256(value.strip().encode()).digest())
        if token is None:
            raise HTTPError(401, "unauthorized", "the token is not valid", headers={"WWW-Authenticate": "Bearer"})
        if not token.allows(scope):
            raise HTTPError(403, "forbidden", f"the token {token.name!r} lacks the scope {scope}")
        return token
